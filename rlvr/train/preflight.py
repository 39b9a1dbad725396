"""The one place a training config is checked before any work starts.

`TrainConfig.validate()` checks values alone (rlvr/config.py imports nothing else). The checks
that need another part of rlvr live in that part and are called from here: the estimator and
aggregation names (rlvr.algo's registries), the trackers (rlvr.train.trackers), the model
(rlvr.backends), the task and its prompts' fit in the model's context (rlvr.tasks, rlvr.backends),
the validation slice (rlvr.eval), the verifier (rlvr.rewards), the output directory, and the
processes (rlvr.distributed). Each raises ConfigError naming the field and the fix (exit 2).
`rlvr train`, `rlvr compare`, `rlvr plan` and `train()` itself call `check_train_config`.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from rlvr.algo.advantages import ADVANTAGES, BATCH_LEVEL
from rlvr.algo.correction import CORRECTIONS
from rlvr.algo.losses import AGGREGATIONS, KL_ESTIMATORS, OBJECTIVES
from rlvr.backends import ModelError, ModelSettings, check_model, check_prompts_fit, load_prompts, resolve
from rlvr.config import ConfigError, TrainConfig, check_writable
from rlvr.distributed import FSDP_ON_CPU_ENV, check_processes, launched_world_size
from rlvr.eval.runner import validation_items
from rlvr.rollout.engines import EngineSettings, check_engine
from rlvr.rollout.episodes import check_env
from rlvr.rewards import check_reward, evaluation_verifier, parse_reward
from rlvr.tasks import SPLITS, check_task, get_task, task_options
from rlvr.tasks.code_items import AUTO, CODE_PROGRAMS, check_code_program, may_hold_code
from rlvr.train.trackers import check_loggers


def check_train_config(cfg: TrainConfig) -> None:
    """Raises ConfigError for the first bad setting of a training run, before any work starts."""
    cfg.validate()
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cuda was asked for but torch sees no GPU; use --device cpu")
    for field_name, registry in (("advantage", ADVANTAGES), ("loss_agg", AGGREGATIONS), ("policy_loss", OBJECTIVES),
                                 ("kl_estimator", KL_ESTIMATORS), ("is_correction", CORRECTIONS)):
        name = getattr(cfg, field_name)
        if name not in registry:
            raise ConfigError(field_name, f"unknown {name!r}; known: {', '.join(registry.names())}")
    if cfg.advantage in BATCH_LEVEL and cfg.adaptive_k:
        raise ConfigError("advantage", f"{cfg.advantage} normalises by statistics of all the step's groups, taken "
                                       "in one call on groups of one size; --adaptive-k gives groups of different "
                                       "sizes: drop one of them")
    try:
        check_loggers(cfg.log)
    except ValueError as err:
        raise ConfigError("log", str(err)) from None
    check_model_and_task(cfg)
    if cfg.select_split == "validation" and cfg.eval_every:
        try:
            validation_items(get_task(cfg.task, seed=cfg.seed, options=task_options(cfg)), cfg.eval_problems,
                             cfg.eval_problems)
        except ValueError as err:
            raise ConfigError("select_split", str(err)) from None
    check_reward(cfg.reward, cfg.task)
    if cfg.eval_reward:
        if parse_reward(cfg.eval_reward) is not None:
            raise ConfigError("eval_reward", f"{cfg.eval_reward!r} is a weighted mix; an evaluation's verifier is one "
                                             "verifier, whose score 1 means correct: name one")
        try:
            check_reward(cfg.eval_reward, cfg.task)
        except ConfigError as err:
            raise ConfigError("eval_reward", err.message) from None
    components = parse_reward(cfg.reward)
    if cfg.reward_shaping == "passk" and components is not None:
        raise ConfigError("reward", "--reward-shaping passk needs 0/1 rewards, and weighted verifiers make them "
                                    "graded; use one verifier, or drop --reward-shaping")
    if cfg.adaptive_k and components is not None and sum(w for _, w in components) > 1 + 1e-9:
        raise ConfigError("reward", f"--adaptive-k estimates each level's success rate from rewards in [0, 1], "
                                    f"and these weights add up to {sum(w for _, w in components):g}; scale them to "
                                    "add up to 1 at most, or drop --adaptive-k")
    check_writable(cfg.out)
    check_world(cfg)
    check_engine(EngineSettings.of(cfg), cfg.model, ranks=world_size(cfg))
    if cfg.engine_tp > 1 and cfg.group_filter:
        raise ConfigError("engine_tp", "the ranks of one engine must sample equally often, and --group-filter's extra "
                                       "rounds leave some ranks without prompts; use --engine-tp 1 with it")
    check_env(cfg)
    check_async_world(cfg)


def check_async_world(cfg: TrainConfig) -> None:
    """--async-mode concurrent where it can run: one process, and an engine the generator thread
    can own (docs/async.md)."""
    if not cfg.max_staleness or cfg.async_mode != "concurrent":
        return
    if world_size(cfg) > 1:
        raise ConfigError("async_mode", f"concurrent generation runs in a thread of one process, and this run has "
                                        f"{world_size(cfg)} processes whose collectives the thread would interleave "
                                        "with the trainer's; use --async-mode deterministic (the same schedule and "
                                        "numbers) or --nproc 1")
    if cfg.engine != "rlvr":
        raise ConfigError("async_mode", f"concurrent generation needs an engine the generator thread owns, and "
                                        f"--engine {cfg.engine} runs colocated in the training process (a vLLM "
                                        "server on another device is not built); use --async-mode deterministic, "
                                        "or --engine rlvr (the thread samples on its own copy of the weights)")


def check_model_and_task(cfg: Any, splits: tuple[str, ...] = SPLITS) -> None:
    """--model loads and suits its settings; --task builds, and the prompts of its `splits` plus
    --max-new-tokens fit the model's context. `cfg`: any command's config with those fields
    (train, eval)."""
    check_model(cfg.model, cfg)
    try:
        check_code_program(getattr(cfg, "code_program", AUTO))
    except ValueError as err:
        raise ConfigError("code_program", str(err)) from None
    items = check_task(cfg.task, cfg.seed, getattr(cfg, "answer_format", "auto"), options=task_options(cfg),
                       splits=splits)
    check_prompts_fit(cfg.model, cfg, items, cfg.max_new_tokens, cfg.task)


def code_program(cfg: Any) -> str:
    """--code-program, resolved: `auto` is prompt+completion for a model prompted with the raw
    text it continues, completion for one prompted through its chat template."""
    chosen = getattr(cfg, "code_program", AUTO)
    if chosen in CODE_PROGRAMS:
        return chosen
    if not may_hold_code(cfg.task):  # no code problems: no tokenizer to load for a setting nothing reads
        return "completion"
    try:
        chat = load_prompts(cfg.model, ModelSettings.of(cfg)).chat
    except ModelError as err:
        raise ConfigError("model", str(err)) from None
    return "completion" if chat else "prompt+completion"


def resolved_task_options(cfg: Any) -> dict:
    """The options the command's task is built with (rlvr.tasks.get_task), --code-program resolved."""
    return task_options(cfg, code_program(cfg))


def eval_verifier(cfg: Any) -> str:
    """The verifier of a training run's evaluations: --eval-reward, else --reward (the largest
    weight's of a weighted mix)."""
    return evaluation_verifier(cfg.reward, cfg.eval_reward)


def world_size(cfg: TrainConfig) -> int:
    """The ranks this run will have: torchrun's WORLD_SIZE when launched by it, else --nproc."""
    return launched_world_size() or cfg.nproc


def check_world(cfg: TrainConfig) -> None:
    """--nproc, --dist-timeout and --fsdp, and what data parallelism cannot do exactly."""
    check_processes(cfg.nproc, cfg.dist_timeout, cfg.device)
    world = world_size(cfg)
    ranks = f"{world} processes" if launched_world_size() is None else f"torchrun's {world} processes"
    b = cfg.prompts_per_step
    if world > b:
        raise ConfigError("nproc", f"{ranks} need at least one prompt each, but a step has {b} (--prompts-per-step); "
                                   f"use --nproc {b} or fewer (a divisor of {b}), or --prompts-per-step {world}")
    if b % world:
        raise ConfigError("prompts_per_step", f"{b} prompts per step cannot be split into equal shards of whole "
                                              f"groups for {ranks}; use --prompts-per-step "
                                              f"{b // world * world} or {(b // world + 1) * world}, or a number "
                                              f"of processes that divides {b}")
    if world > 1:
        for name, what in (("clip_cov", "draws tokens at random among the batch's by covariance"),
                           ("kl_cov", "penalises the batch's top tokens by covariance"),
                           ("top_entropy_tokens", "keeps the batch's top tokens by entropy")):
            if getattr(cfg, name):
                raise ConfigError(name, f"{what}; with {world} processes each rank would rank only its own "
                                        "shard and the run would differ from 1 process. Run it with one "
                                        "process (--nproc 1), or drop it")
        if cfg.advantage in BATCH_LEVEL:
            raise ConfigError("advantage", f"{cfg.advantage} normalises by statistics of the whole step's rewards; "
                                           f"with {world} processes each rank would take its own shard's and the run "
                                           "would differ from 1 process. Run it with one process (--nproc 1), or "
                                           "use grpo, dr_grpo or rloo")
    if cfg.fsdp:
        check_fsdp(cfg)


def check_fsdp(cfg: TrainConfig) -> None:
    """--fsdp: a Hugging Face model on GPUs, without the options a sharded model cannot run."""
    if resolve(cfg.model).backend != "hf":
        raise ConfigError("fsdp", "shards Hugging Face models over GPUs; the built-in model (0.8 M "
                                  "parameters) fits every rank: use plain data parallelism (--nproc N "
                                  "without --fsdp)")
    if cfg.device != "cuda" and not os.environ.get(FSDP_ON_CPU_ENV):
        raise ConfigError("fsdp", "runs on GPUs (--device cuda, NCCL); on the CPU use plain data "
                                  "parallelism (--nproc N without --fsdp)")
    for name, why in (("group_filter", "gives ranks different numbers of samples"),
                      ("adaptive_k", "gives ranks different numbers of samples"),
                      ("beta", "needs a second (reference) copy of the model")):
        if getattr(cfg, name):
            raise ConfigError(name, f"{why}, which --fsdp does not support yet (every forward of a sharded "
                                    f"model is a collective); drop --{name.replace('_', '-')} or --fsdp")
    if str(cfg.micro_batch_size) == "auto":
        raise ConfigError("micro_batch_size", "auto sizes micro-batches by each rank's own token counts, "
                                              "but with --fsdp every forward is a collective and all ranks "
                                              "must run the same number: give --micro-batch-size N (rows, "
                                              "0 = the whole shard)")
