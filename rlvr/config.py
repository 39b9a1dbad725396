"""Run configuration: one flat dataclass per command, every field with a default and a doc.

The CLI builds its options from these fields (`--prompts-per-step` for `prompts_per_step`),
`--config FILE.toml` supplies values, flags override the file, and `validate()` refuses a bad
value with a ConfigError naming the field and the fix.

This module is the floor of the house: plain data, importing no other part of rlvr. The checks
that need another part (the task exists, the model loads, the verifier imports, the world size
divides B) live in that part and run, with `validate()`, from one place before any work starts:
`rlvr.train.preflight.check_train_config`.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A bad setting; `field` is the option's name as the user typed it."""

    def __init__(self, field_name: str, message: str) -> None:
        self.field = field_name
        self.message = message
        flag = "--" + field_name.replace("_", "-")
        super().__init__(f"{flag}: {message}")


def check_episodes(cfg) -> None:
    """--env's settings (that the environment loads is checked by rlvr.train.preflight)."""
    if cfg.env_system not in ("auto", "tools", "none"):
        raise ConfigError("env_system", f"must be auto, tools or none, got {cfg.env_system!r}")
    if cfg.env_examples < 0:
        raise ConfigError("env_examples", f"must be 0 or more, got {cfg.env_examples}")
    if not cfg.env_timeout > 0:
        raise ConfigError("env_timeout", f"must be > 0 seconds, got {cfg.env_timeout}")
    if cfg.max_turns < 1:
        raise ConfigError("max_turns", f"must be at least 1, got {cfg.max_turns}")
    if cfg.episode_tokens < 0:
        raise ConfigError("episode_tokens", f"must be 0 (up to the model's context) or more, got {cfg.episode_tokens}")
    if not cfg.env:
        require_defaults(cfg, ("env_examples", "env_system", "env_timeout", "max_turns", "episode_tokens"),
                         "sets up episodes, which are off: give --env NAME, or drop it")


def require_defaults(cfg, names: tuple[str, ...], message: str) -> None:
    """ConfigError(`message`) for the first of `names` set away from its declared default: options
    that act only when another option is on."""
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    for name in names:
        if getattr(cfg, name) != defaults[name]:
            raise ConfigError(name, message)


def check_async(cfg) -> None:
    """--max-staleness and the options that only act with it (what needs the world size and the
    engine is checked by rlvr.train.preflight)."""
    if cfg.max_staleness < 0:
        raise ConfigError("max_staleness", f"must be 0 (synchronous) or more policy versions, got {cfg.max_staleness}")
    if cfg.async_mode not in ("deterministic", "concurrent"):
        raise ConfigError("async_mode", f"must be deterministic or concurrent, got {cfg.async_mode!r}")
    if cfg.stale_loss not in ("decoupled", "naive"):
        raise ConfigError("stale_loss", f"must be decoupled or naive, got {cfg.stale_loss!r}")
    if not cfg.generator_timeout > 0:
        raise ConfigError("generator_timeout", f"must be > 0 seconds, got {cfg.generator_timeout}")
    if not cfg.max_staleness:
        require_defaults(cfg, ("async_mode", "stale_loss", "generator_timeout"),
                         "acts on stale rollouts, and --max-staleness is 0 (synchronous): give --max-staleness N "
                         "(N ≥ 1), or drop it")


def check_micro_batch_size(value) -> None:
    if str(value) != "auto" and not (str(value).isdigit() and int(value) >= 0):
        raise ConfigError("micro_batch_size", f"must be auto or a number of rows (0 = the whole batch), got {value!r}")


class RunFailed(RuntimeError):
    """A run that started and could not go on (exit 1); the message names the option involved.
    `every_rank`: with data parallelism, every rank stops alike from the same values (so only
    rank 0 needs to say why)."""

    def __init__(self, message: str, *, every_rank: bool = False) -> None:
        super().__init__(message)
        self.every_rank = every_rank


def opt(default: Any, doc: str, **meta: Any) -> Any:
    """A config field: default plus the one-line doc that `--help` shows."""
    kwargs = {"default_factory": lambda: list(default)} if isinstance(default, list) else {"default": default}
    return field(metadata={"help": doc, **meta}, **kwargs)


# The groups of `--help`, in the order they are shown, each with the doc page that explains its
# options (a help group and a doc page carry the same name). A config class files its fields into
# them with a HELP_GROUPS table {group: (field, ...)}; tests/test_cli.py checks that every option of
# train, eval, compare and plan is in one.
HELP_GROUP_DOCS = {
    "comparison": "docs/compare.md",
    "plan": "docs/compare.md#before-a-comparison-rlvr-plan",
    "model and data": "docs/models.md, docs/data.md, docs/rewards.md",
    "sampling and engine": "docs/training.md#one-step, docs/engines.md",
    "episodes": "docs/episodes.md",
    "objective": "docs/training.md#objectives",
    "entropy": "docs/entropy.md",
    "large-K strategies": "docs/sampling.md",
    "optimisation": "docs/training.md#one-step, docs/performance.md",
    "evaluation": "docs/evaluation.md",
    "run and logging": "docs/training.md#resuming, docs/training.md#trackers",
    "processes": "docs/distributed.md",
    "asynchronous": "docs/async.md",
}
UNGROUPED = "options in no help group yet"  # shown, never hidden; tests/test_cli.py fails on it


def help_group_title(name: str) -> str:
    return f"{name} ({HELP_GROUP_DOCS[name]})" if name in HELP_GROUP_DOCS else name


def help_groups_of(cls) -> dict[str, str]:
    """field name -> help group, from the class's HELP_GROUPS table ({} when it has none)."""
    return {name: group for group, names in getattr(cls, "HELP_GROUPS", {}).items() for name in names}


def option_group(parser: argparse.ArgumentParser, name: str):
    """The parser's argument group `name` (titled with its doc page), made on first use."""
    groups = vars(parser).setdefault("rlvr_help_groups", {})
    if name not in groups:
        groups[name] = parser.add_argument_group(help_group_title(name))
    return groups[name]


@dataclass
class TrainConfig:
    # what to train
    model: str = opt("tiny", "model to start from: 'tiny' (built-in), 'smollm2', a .gguf file, a transformers or LoRA "
                             "adapter directory, or an rlvr run directory (docs/models.md)")
    task: str = opt("arith", "task: a built-in name (see `rlvr tasks`), rg:<name> (reasoning-gym), jsonl:<path>, or "
                             "hf:<path> (a save_to_disk directory, or a parquet, JSON/JSONL or CSV file or folder)")
    prompt_key: str = opt("prompt", "hf: tasks: the column holding the prompt (a 'messages' column of chat turns "
                                    "is used when there is no 'prompt')")
    answer_key: str = opt("answer", "hf: tasks: the column holding the reference answer")
    split: str = opt("train", "hf: tasks: the split trained on")
    eval_split: str = opt("", "hf: tasks: the split held-out evaluations use ('' = ~10% of --split, carved by a "
                              "hash of the prompt)")
    answer_format: str = opt("auto", "how the final answer is stated and read: auto (the task's own), last-number, "
                                     "boxed, answer-tag or last-line (docs/models.md)")
    chat_template: str = opt("auto", "auto: prompt chat models through their chat template with a natural-language "
                                     "question; none: the task's raw prompt")
    system_prompt: str = opt("", "system message for chat models ('' = the chat template's default)")
    reward: str = opt("task", "verifier: 'task' (the task's own), 'format' (an answer in the task's format), "
                              "'code_exec' (runs the completion against the item's tests: humaneval, jsonl, hf), "
                              "'math_verify', or module:function returning a float in [0, 1]; several with "
                              "weights: task:0.8,format:0.2 (or a TOML table)")
    reward_workers: int = opt(2, "verifier worker processes (0 = call it in the training process: no timeout, "
                                 "a crash ends the run)")
    code_program: str = opt("auto", "the program code_exec runs for HumanEval-form items: prompt+completion (a "
                                    "base model continues the prompt), completion (a chat model's whole program, "
                                    "after the prompt's helpers), or auto (by the model: chat template or not)")
    reward_timeout: float = opt(10.0, "seconds one verifier call may take; then its worker is killed and replaced")
    reward_error_value: float = opt(0.0, "reward of a call that timed out, raised, crashed or returned a bad value")
    max_reward_error_frac: float = opt(0.5, "stop the run (exit 1) when more than this fraction of a step's "
                                            "verifier calls fail, or of its episodes' environments (--env) "
                                            "(1 = never)")
    seed: int = opt(0, "seed of the prompt stream, sampling and initialisation")
    out: str = opt("runs/train", "run directory (created; re-running the same command resumes it)")
    # the step
    steps: int = opt(100, "optimizer steps to train")
    k: int = opt(8, "K: completions sampled per prompt (the group size), at least 2")
    prompts_per_step: int = opt(8, "B: distinct prompts per step; each step samples B·K completions")
    temperature: float = opt(1.0, "sampling temperature of the training rollouts (> 0)")
    top_k: int = opt(0, "sample from the k most probable tokens only, renormalised (0 = off); the training "
                        "forward's log-probs and entropies are of the same truncated distribution")
    top_p: float = opt(1.0, "nucleus sampling: the smallest set of most probable tokens holding this mass (1 = off)")
    min_p: float = opt(0.0, "keep the tokens with at least this fraction of the largest probability (0 = off)")
    max_new_tokens: int = opt(8, "longest completion in tokens")
    # episodes: multi-turn, tool-using rollouts (docs/episodes.md)
    env: str = opt("", "sample episodes with an environment: a built-in (calc, guess; `rlvr tasks` lists them) or "
                       "module:Class (a TRL environment_factory class or an OpenEnv Environment); '' = single "
                       "completions")
    env_examples: int = opt(1, "--env: example conversations placed before the question (a model whose chat template "
                               "has no tool-call format learns the call format from them)")
    env_system: str = opt("auto", "--env: the system message that opens an episode: tools (lists the tools and the "
                                  "call format), none, or auto (tools, unless example conversations show the calls of "
                                  "the fallback format: docs/episodes.md)")
    env_timeout: float = opt(10.0, "--env: seconds one environment call (reset, a tool, get_reward) may take; "
                                   "then it counts as a failure")
    max_turns: int = opt(4, "--env: model turns per episode at most; an episode still calling tools then is "
                            "truncated")
    episode_tokens: int = opt(0, "--env: model and environment tokens per episode after the prompt at most "
                                 "(0 = up to the model's context); --max-new-tokens bounds each model turn")
    # the generation engine (docs/engines.md)
    engine: str = opt("rlvr", "what samples the rollouts: rlvr (its own decode loop on the training model) or vllm "
                              "(vLLM colocated in this process, weights reloaded after every update)")
    engine_dtype: str = opt("auto", "--engine vllm: its weights' precision, bfloat16 or float32 (auto: the trainer's "
                                    "compute precision, float32 on CPU and bfloat16 on CUDA)")
    engine_memory: float = opt(0.0, "--engine vllm: on CUDA the share of GPU memory it may take (0 = 0.3), on CPU "
                                    "its KV cache in GiB (0 = sized to a step's rollouts)")
    engine_tp: int = opt(1, "--engine vllm with several ranks: ranks that share one tensor-parallel engine (CUDA; "
                            "1 = an engine on every rank)")
    trainer_view: str = opt("fused", "--engine vllm or --max-staleness: where the trainer's log-probs and exact "
                                     "entropies of the rollouts come from: fused (the update's own first forward) or "
                                     "separate (a forward before the update; --top-entropy-tokens always uses it)")
    is_correction: str = opt("token-tis", "--engine vllm or --max-staleness: how the policy gradient corrects "
                                          "for the sampler's distribution differing from the trainer's: none, "
                                          "token-tis, seq-tis (truncated importance sampling), token-mask or "
                                          "seq-mask (docs/engines.md, docs/async.md)")
    is_cap: float = opt(2.0, "C of --is-correction: weights are capped at C (tis), or tokens/sequences whose ratio "
                             "lies outside [1/C, C] are dropped (mask)")
    drift_threshold: float = opt(0.05, "--engine vllm: engine drift when the EMA of mismatch/kl (nats per token) "
                                       "stays above this ...")
    drift_patience: int = opt(5, "... for this many steps")
    on_drift: str = opt("warn", "what to do on engine drift: warn, stop, or resync (reload every weight into the "
                                "engine and drop its prefix cache)")
    # rollouts off the critical path (docs/async.md)
    max_staleness: int = opt(0, "rollouts may be up to N policy versions old when they are trained: the rollouts of "
                                "later steps are generated while earlier steps train (0 = synchronous)")
    async_mode: str = opt("deterministic", "--max-staleness ≥ 1: deterministic (step t's rollouts sampled with "
                                           "exactly the weights after step t−1−N, in the training thread: "
                                           "reproducible and resumable bit for bit) or concurrent (the same "
                                           "schedule, generated in a thread on its own copy of the weights while "
                                           "the trainer trains)")
    stale_loss: str = opt("decoupled", "--max-staleness ≥ 1: decoupled (PPO clipped against the policy at the "
                                       "train step, each token weighted by that policy over the sampler's per "
                                       "--is-correction) or naive (clipped against the sampler's log-probs, no "
                                       "weight)")
    generator_timeout: float = opt(600.0, "--async-mode concurrent: seconds the trainer waits for a step's "
                                          "rollouts before the run fails (exit 1)")
    advantage: str = opt("grpo", "advantage estimator: grpo, dr_grpo, rloo, grpo_batch_std (the std over the step's "
                                 "rewards) or reinforce_pp (REINFORCE++-baseline)")
    loss_agg: str = opt("token-mean", "loss aggregation: token-mean, seq-mean or token-sum")
    clip_low: float = opt(0.2, "ε_low: policy ratio clipped below at 1 − ε_low")
    clip_high: float = opt(0.2, "ε_high: policy ratio clipped above at 1 + ε_high (> clip-low is clip-higher)")
    beta: float = opt(0.0, "weight of the KL penalty to the frozen start policy (0 = none, no reference model)")
    kl_estimator: str = opt("k3", "estimator of the --beta KL penalty per token: k1, k2, k3 or k3+ (k3's value with "
                                  "k2's gradient); docs/training.md says which is unbiased in value and in gradient")
    policy_loss: str = opt("ppo", "surrogate of the importance ratio: ppo (PPO-clip) or cispo (MiniMax-M1: the ratio "
                                  "clipped to [1 − clip-low, 1 + clip-high] as a stop-gradient weight on log π)")
    ratio_level: str = opt("token", "importance ratio per token, or per sequence (GSPO: the geometric mean of the "
                                    "completion's token ratios, clipped as one; pair it with --loss-agg seq-mean)")
    dual_clip: float = opt(0.0, "dual-clip c > 1 (Ye et al. 2020): the loss of a token with A < 0 is capped at −A·c "
                                "(0 = off; verl's default is 3)")
    positive_weight: float = opt(1.0, "λ of W-REINFORCE (Zhu et al. 2025): the term of samples with positive "
                                      "advantage is scaled by λ, e.g. 0.1 (1 = off)")
    mask_truncated: bool = opt(False, "completions cut at --max-new-tokens get no policy gradient (DAPO's overlong "
                                      "filtering); completion/truncated_frac counts them")
    entropy_coef: float = opt(0.0, "entropy bonus weight: loss −= coef · entropy (the start value with --entropy-target)")
    entropy_target: float = opt(0.0, "adaptive entropy bonus: move the coef by --entropy-coef-step toward this entropy in nats (0 = off)")
    entropy_coef_step: float = opt(0.001, "Δ of --entropy-target: change of the coefficient per step")
    entropy_coef_max: float = opt(0.05, "c_max of --entropy-target: the coefficient's ceiling")
    clip_cov: bool = opt(False, "Clip-Cov (Cui et al. 2025): cut the gradient of a few tokens with high log-prob/advantage covariance")
    clip_cov_ratio: float = opt(2e-4, "Clip-Cov: share of tokens cut per step (at least one)")
    clip_cov_low: float = opt(1.0, "Clip-Cov: lower bound of the covariance window tokens are drawn from")
    clip_cov_high: float = opt(5.0, "Clip-Cov: upper bound of that window")
    kl_cov: bool = opt(False, "KL-Cov (Cui et al. 2025): penalise |log π − log π_old| on the top-covariance tokens")
    kl_cov_ratio: float = opt(2e-3, "KL-Cov: share of tokens penalised per update (at least one)")
    kl_cov_coef: float = opt(1.0, "KL-Cov: weight of the penalty")
    top_entropy_tokens: float = opt(0.0, "train only on the top Q fraction of tokens by entropy, e.g. 0.2 (0 = all tokens)")
    updates_per_step: int = opt(1, "policy updates on one rollout batch (1 = on-policy; more reuses it with clipping)")
    micro_batch_size: str = opt("auto", "rows per forward/backward chunk (0 = the whole batch), or auto: whole groups "
                                        "up to a token budget that keeps memory flat in K; does not change the result")
    grad_noise: bool = opt(True, "measure the gradient's noise every step from partial sums the update already has "
                                 "(grad/noise_scale, docs/metrics.md): the step's rows are accumulated in an order "
                                 "that exposes them; off keeps the plain micro-batch order")
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass (Hugging Face models): "
                                              "less memory, ~30% more update time")
    lora_rank: int = opt(0, "LoRA rank r (Hugging Face models; 0 = train every weight); only the adapter is trained and saved")
    lora_alpha: float = opt(16.0, "LoRA alpha: the adapter's output is scaled by alpha / r")
    lora_targets: str = opt("all-linear", "LoRA target modules: all-linear, or comma-separated names such as q_proj,v_proj")
    # sampling strategies and reward structures for large K (docs/sampling.md)
    group_filter: bool = opt(False, "DAPO dynamic sampling: drop groups whose rewards are all equal and sample more prompts until B groups have signal")
    max_extra_rollouts: int = opt(-1, "--group-filter's budget: extra completions a step may sample beyond its B·K (-1 = 2·B·K; 0 = drop without refilling)")
    downsample: int = opt(0, "PODS: sample K per prompt, train on the N of them with the largest reward variance (0 = off; 2 ≤ N ≤ K)")
    adaptive_k: bool = opt(False, "per-prompt group sizes under the fixed budget of B·K samples, maximising the expected groups with signal")
    reward_shaping: str = opt("none", "none, or passk: Pass@k Training's analytic group advantage (replaces --advantage)")
    passk_k: int = opt(4, "k of --reward-shaping passk: a k-subset of a group scores 1 when it holds a correct sample (≤ K)")
    overlong_buffer: int = opt(0, "DAPO soft overlong penalty: ramp over the last L tokens before --max-new-tokens (0 = off)")
    overlong_penalty: float = opt(1.0, "the overlong penalty's largest value, subtracted from the reward at --max-new-tokens")
    # the optimizer
    lr: float = opt(2e-4, "AdamW learning rate")
    warmup_steps: int = opt(0, "linear learning-rate warm-up steps, then constant")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    max_grad_norm: float = opt(1.0, "gradient-norm clip (0 = off)")
    max_bad_steps: int = opt(5, "stop the run (exit 1) after this many steps in a row skipped for a non-finite "
                                "loss or gradient (0 = never)")
    # entropy collapse
    on_collapse: str = opt("warn", "what to do when entropy collapses: warn, stop or rollback")
    collapse_ratio: float = opt(0.3, "collapse when the entropy EMA falls below this fraction of its step-0 value ...")
    collapse_patience: int = opt(10, "... and stays there this many steps")
    reward_collapse_ratio: float = opt(0.5, "reward collapse when the training-reward EMA falls below this fraction of "
                                             "its best so far ... (0 = off; --on-collapse acts on it too)")
    reward_collapse_patience: int = opt(20, "... and stays there this many steps")
    max_rollbacks: int = opt(2, "rollbacks at most; a collapse after that stops the run")
    rollback_entropy_boost: float = opt(0.01, "each rollback adds this to the entropy coefficient in force")
    # evaluation, checkpoints, logging
    eval_every: int = opt(0, "evaluate on held-out problems every N steps, and at step 0 (0 = never)")
    eval_problems: int = opt(200, "distinct held-out problems per in-training evaluation (all of them when the split has fewer)")
    eval_samples: int = opt(16, "samples per problem in evaluation (n of pass@k)")
    eval_temperature: float = opt(1.0, "sampling temperature of evaluation samples")
    eval_reward: str = opt("", "the verifier of the evaluations ('' = --reward; with weighted verifiers, the one "
                               "of largest weight); a completion is correct when it scores 1")
    passk_eval_samples: int = opt(0, "at step 0 and at the end, one more held-out evaluation with this many samples "
                                     "per problem, reporting pass@k for k = 1, 4, 16, 64 (those ≤ it): what the "
                                     "policy still reaches at large k (passk.jsonl; 0 = off)")
    eval_show: int = opt(4, "held-out problems whose greedy and first sampled completions each evaluation writes "
                            "to samples.jsonl")
    keep_best: str = opt("hm@4", "with --eval-every: keep the model of the best evaluation by this metric in best/ "
                                 "(none = off)")
    select_split: str = opt("heldout", "where --keep-best and --early-stop measure: heldout (the reported problems: "
                                       "the best value is then biased upward) or validation (a disjoint slice)")
    early_stop: int = opt(0, "stop after this many evaluations in a row without a significant gain over the best "
                             "(paired bootstrap, 95%) (0 = never)")
    checkpoint_every: int = opt(50, "write a checkpoint every N steps (0 = only at the end)")
    keep_checkpoints: int = opt(2, "how many of the newest checkpoints to keep")
    log: str = opt("jsonl", "loggers, comma-separated: jsonl (always on), tensorboard, wandb, mlflow "
                            "(docs/training.md, Trackers)")
    mlflow_uri: str = opt("", "MLflow tracking server for --log mlflow (default: a file store in the run "
                              "directory, file:OUT/mlruns)")
    device: str = opt("cpu", "cpu or cuda")
    threads: int = opt(0, "torch CPU threads per process (0 = torch's default; with --nproc N on the CPU, cores / N)")
    # data parallelism (docs/distributed.md)
    nproc: int = opt(1, "processes (ranks) to launch on this machine, one per GPU with --device cuda; a step's prompts "
                        "are split among them, the result is that of 1 process (under torchrun: leave it at 1)")
    dist_timeout: float = opt(600.0, "seconds a collective waits for the other ranks before the run fails (exit 1), "
                                     "e.g. when a rank died or hangs")
    fsdp: bool = opt(False, "shard a Hugging Face model's weights, gradients and optimizer state over the ranks "
                            "(FSDP2, bf16 compute; CUDA only)")
    quiet: bool = opt(False, "no progress bar (the summary line is still printed)")
    force: bool = opt(False, "start over in an --out that holds a run of a different config")

    # Which help group (HELP_GROUP_DOCS) shows each option; a new field goes into one of them.
    HELP_GROUPS = {
        "model and data": ("model", "task", "prompt_key", "answer_key", "split", "eval_split", "answer_format",
                           "chat_template", "system_prompt", "reward", "reward_workers", "code_program",
                           "reward_timeout", "reward_error_value", "max_reward_error_frac", "lora_rank", "lora_alpha",
                           "lora_targets"),
        "sampling and engine": ("k", "prompts_per_step", "temperature", "top_k", "top_p", "min_p", "max_new_tokens",
                                "engine", "engine_dtype", "engine_memory", "engine_tp", "trainer_view",
                                "is_correction", "is_cap", "drift_threshold", "drift_patience", "on_drift"),
        "episodes": ("env", "env_examples", "env_system", "env_timeout", "max_turns", "episode_tokens"),
        "objective": ("advantage", "loss_agg", "clip_low", "clip_high", "beta", "kl_estimator", "policy_loss",
                      "ratio_level", "dual_clip", "positive_weight", "mask_truncated"),
        "entropy": ("entropy_coef", "entropy_target", "entropy_coef_step", "entropy_coef_max", "clip_cov",
                    "clip_cov_ratio", "clip_cov_low", "clip_cov_high", "kl_cov", "kl_cov_ratio", "kl_cov_coef",
                    "top_entropy_tokens", "on_collapse", "collapse_ratio", "collapse_patience",
                    "reward_collapse_ratio", "reward_collapse_patience", "max_rollbacks", "rollback_entropy_boost"),
        "large-K strategies": ("group_filter", "max_extra_rollouts", "downsample", "adaptive_k", "reward_shaping",
                               "passk_k", "overlong_buffer", "overlong_penalty"),
        "optimisation": ("steps", "lr", "warmup_steps", "weight_decay", "max_grad_norm", "max_bad_steps",
                         "updates_per_step", "micro_batch_size", "gradient_checkpointing", "grad_noise"),
        "evaluation": ("eval_every", "eval_problems", "eval_samples", "eval_temperature", "eval_reward",
                       "passk_eval_samples", "eval_show", "keep_best", "select_split", "early_stop"),
        "run and logging": ("seed", "out", "checkpoint_every", "keep_checkpoints", "log", "mlflow_uri", "quiet",
                            "force"),
        "processes": ("device", "threads", "nproc", "dist_timeout", "fsdp"),
        "asynchronous": ("max_staleness", "async_mode", "stale_loss", "generator_timeout"),
    }

    # Fields that may change between an interrupted run and its resumption.
    # The guards and the worker count change no step that succeeds; a stopped run may raise them.
    # `out` is among them: a run directory that was moved or copied is still the same run.
    # `log` and `mlflow_uri` only say where the metrics go (a tracker added on resume gets the rows after it).
    # `nproc` and `dist_timeout`: a run's samples and results do not depend on the world size, so a
    # checkpoint resumes at any (docs/distributed.md).
    RESUMABLE_CHANGES = ("steps", "quiet", "force", "threads", "log", "reward_workers", "reward_timeout",
                         "max_reward_error_frac", "max_bad_steps", "out", "mlflow_uri", "nproc", "dist_timeout",
                          "async_mode", "generator_timeout")

    def validate(self) -> None:
        """Raises ConfigError for the first bad field, before any work starts."""
        check_basic_values(self)
        positive_ints = ("steps", "k", "prompts_per_step", "max_new_tokens", "updates_per_step",
                         "eval_problems", "eval_samples", "keep_checkpoints", "collapse_patience")
        require_positive(self, positive_ints)
        check_micro_batch_size(self.micro_batch_size)
        check_episodes(self)
        check_async(self)
        if self.on_drift not in ("warn", "stop", "resync"):
            raise ConfigError("on_drift", f"must be warn, stop or resync, got {self.on_drift!r}")
        if self.trainer_view not in ("fused", "separate"):
            raise ConfigError("trainer_view", f"must be fused or separate, got {self.trainer_view!r}")
        if not self.is_cap > 1:
            raise ConfigError("is_cap", f"must be > 1 (a cap of 1 would give every token weight ≤ 1), got {self.is_cap}")
        if not self.drift_threshold > 0:
            raise ConfigError("drift_threshold", f"must be > 0 nats per token, got {self.drift_threshold}")
        require_positive(self, ("drift_patience",))
        for name in ("lora_rank", "passk_eval_samples", "eval_show", "early_stop", "warmup_steps", "eval_every", "checkpoint_every", "threads", "seed",
                     "reward_workers", "max_bad_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"must be 0 or more, got {getattr(self, name)}")
        if self.k < 2:
            raise ConfigError("k", f"K must be at least 2 for group-relative advantages, got {self.k}")
        if not self.lr > 0:
            raise ConfigError("lr", f"must be > 0, got {self.lr}")
        if not self.temperature > 0:
            raise ConfigError("temperature", f"training samples need temperature > 0, got {self.temperature}")
        if not self.eval_temperature >= 0:
            raise ConfigError("eval_temperature", f"must be ≥ 0, got {self.eval_temperature}")
        check_truncation(self)
        for name in ("clip_low", "clip_high"):
            value = getattr(self, name)
            if not 0 <= value < (1 if name == "clip_low" else 100):
                raise ConfigError(name, f"must be in [0, 1) for clip-low and ≥ 0 for clip-high, got {value}")
        for name in ("beta", "weight_decay", "max_grad_norm"):
            if not getattr(self, name) >= 0:
                raise ConfigError(name, f"must be ≥ 0, got {getattr(self, name)}")
        if self.on_collapse not in ("warn", "stop", "rollback"):
            raise ConfigError("on_collapse", f"must be warn, stop or rollback, got {self.on_collapse!r}")
        if not 0 < self.collapse_ratio < 1:
            raise ConfigError("collapse_ratio", f"must be in (0, 1), got {self.collapse_ratio}")
        if not 0 <= self.reward_collapse_ratio < 1:
            raise ConfigError("reward_collapse_ratio", f"must be in [0, 1) (0 = off), got {self.reward_collapse_ratio}")
        require_positive(self, ("reward_collapse_patience",))
        self.validate_selection()
        for name in ("max_rollbacks", "rollback_entropy_boost", "entropy_target", "entropy_coef_step",
                     "entropy_coef_max", "kl_cov_coef", "positive_weight"):
            if not getattr(self, name) >= 0:
                raise ConfigError(name, f"must be ≥ 0, got {getattr(self, name)}")
        if self.entropy_target and not 0 <= self.entropy_coef <= self.entropy_coef_max:
            raise ConfigError("entropy_coef", f"the start value {self.entropy_coef} must lie in [0, --entropy-coef-max "
                                              f"{self.entropy_coef_max}] with --entropy-target")
        if not self.reward_timeout > 0:
            raise ConfigError("reward_timeout", f"must be > 0 seconds, got {self.reward_timeout}")
        for name in ("clip_cov_ratio", "kl_cov_ratio", "top_entropy_tokens", "reward_error_value",
                     "max_reward_error_frac"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(name, f"must be a fraction in [0, 1], got {getattr(self, name)}")
        if not self.clip_cov_low < self.clip_cov_high:
            raise ConfigError("clip_cov_low", f"must be below --clip-cov-high ({self.clip_cov_high}), got {self.clip_cov_low}")
        self.validate_objective()
        if self.kl_cov and self.updates_per_step < 2:
            raise ConfigError("kl_cov", "KL-Cov penalises |log π − log π_old|, which is 0 on an on-policy update; "
                                        "use it with --updates-per-step 2 or more")
        self.validate_sampling()
        if self.device not in ("cpu", "cuda"):
            raise ConfigError("device", f"must be cpu or cuda, got {self.device!r}")
        if self.lora_rank and not self.lora_alpha > 0:
            raise ConfigError("lora_alpha", f"must be > 0 with --lora-rank, got {self.lora_alpha}")


    def selection_metrics(self) -> list[str]:
        """Derived: the evaluation metrics --keep-best may name (those an evaluation reports)."""
        ks = [k for k in (4, 8) if k <= self.eval_samples]
        ranked = [f"hm@{k}_ranked" for k in (1, *ks)]
        return ["pass@1", *(f"hm@{k}" for k in ks), *ranked, "pass@1_greedy"]

    def validate_selection(self) -> None:
        """--keep-best, --early-stop and --select-split."""
        if self.keep_best != "none" and self.keep_best not in self.selection_metrics():
            raise ConfigError("keep_best", f"unknown metric {self.keep_best!r}; with --eval-samples "
                                           f"{self.eval_samples} it is one of {', '.join(self.selection_metrics())}, "
                                           "or none")
        if self.early_stop and not self.eval_every:
            raise ConfigError("early_stop", "counts evaluations; give --eval-every N")
        if self.early_stop and self.keep_best == "none":
            raise ConfigError("early_stop", "needs the metric to judge gains by: give --keep-best METRIC")
        if self.select_split not in ("heldout", "validation"):
            raise ConfigError("select_split", f"must be heldout or validation, got {self.select_split!r}")

    def validate_objective(self) -> None:
        """--policy-loss, --ratio-level, --dual-clip, --kl-estimator and the token controls, alone
        and in combination (names are checked against their registries by the preflight)."""
        if self.ratio_level not in ("token", "sequence"):
            raise ConfigError("ratio_level", f"must be token or sequence, got {self.ratio_level!r}")
        if self.dual_clip and not self.dual_clip > 1:
            raise ConfigError("dual_clip", f"caps the loss of negative-advantage tokens at −A·c with c > 1 (verl uses "
                                           f"3); got {self.dual_clip}; give a value above 1, or 0 for off")
        if self.dual_clip and self.policy_loss != "ppo":
            raise ConfigError("dual_clip", f"is a bound of PPO-clip's surrogate; --policy-loss {self.policy_loss} has "
                                           "its own: drop one of them")
        if self.kl_estimator != "k3" and not self.beta > 0:
            raise ConfigError("kl_estimator", "chooses the estimator of the KL penalty, which is off: give --beta X "
                                              "> 0, or drop --kl-estimator")
        for name in ("clip_cov", "kl_cov"):
            if getattr(self, name) and (self.policy_loss != "ppo" or self.ratio_level != "token" or self.dual_clip):
                raise ConfigError(name, "selects tokens of PPO-clip's token-level surrogate (Cui et al. 2025); it "
                                        "does not combine with --policy-loss cispo, --ratio-level sequence or "
                                        "--dual-clip: drop one of them")
        if self.clip_cov and self.kl_cov:
            raise ConfigError("kl_cov", "and --clip-cov are two alternative losses of Cui et al. 2025 (KL-Cov "
                                        "trains every token unclipped, Clip-Cov keeps PPO's clip); choose one")

    def validate_sampling(self) -> None:
        """The sampling strategies and reward structures, alone and in combination."""
        if self.max_extra_rollouts < -1:
            raise ConfigError("max_extra_rollouts", f"must be -1 (2·B·K), 0 or more completions, got {self.max_extra_rollouts}")
        if self.downsample:
            if self.downsample < 2:
                raise ConfigError("downsample", f"reward variance needs at least 2 samples per group, got {self.downsample}; "
                                                "use 2 or more, or 0 to turn down-sampling off")
            if self.downsample > self.k:
                raise ConfigError("downsample", f"keeps N of the K = {self.k} samples of a group, so N ≤ K; got "
                                                f"{self.downsample}: lower it or raise --k")
            if self.adaptive_k:
                raise ConfigError("downsample", "needs the same K for every prompt; drop --adaptive-k or --downsample")
        if self.reward_shaping not in ("none", "passk"):
            raise ConfigError("reward_shaping", f"must be none or passk, got {self.reward_shaping!r}")
        if self.reward_shaping == "passk":
            group = self.downsample or self.k
            if not 1 <= self.passk_k <= group:
                what = f"--downsample ({self.downsample}), the trained group size" if self.downsample else f"K ({self.k})"
                raise ConfigError("passk_k", f"needs 1 ≤ k ≤ {what}, got {self.passk_k}: the pass@k of a group of "
                                             f"{group} samples is defined for k up to {group}")
            if self.advantage != "grpo":
                raise ConfigError("advantage", f"--reward-shaping passk replaces the advantage estimator with its own "
                                               f"(std-normalised, like grpo); drop --advantage {self.advantage}")
            if self.overlong_buffer:
                raise ConfigError("overlong_buffer", "--reward-shaping passk needs 0/1 rewards and the overlong penalty "
                                                     "makes them graded; use one of the two")
        if not 0 <= self.overlong_buffer <= self.max_new_tokens:
            raise ConfigError("overlong_buffer", f"must lie in [0, --max-new-tokens {self.max_new_tokens}], got "
                                                 f"{self.overlong_buffer}")
        if not self.overlong_penalty >= 0:
            raise ConfigError("overlong_penalty", f"must be ≥ 0, got {self.overlong_penalty}")

    def extra_rollout_budget(self) -> int:
        """Derived: completions --group-filter may add to a step (-1 resolves to 2·B·K)."""
        if self.max_extra_rollouts < 0:
            return 2 * self.prompts_per_step * self.k
        return self.max_extra_rollouts


MAX_INT = 2**31 - 1  # no setting needs more; beyond it seeds and counters overflow


def require_positive(cfg, names) -> None:
    """ConfigError for the first of `names` (int fields) below 1."""
    for name in names:
        if getattr(cfg, name) < 1:
            raise ConfigError(name, f"must be at least 1, got {getattr(cfg, name)}")


def check_truncation(cfg) -> None:
    """--top-k ≥ 0, --top-p in (0, 1], --min-p in [0, 1) (rlvr.types.Truncation)."""
    if cfg.top_k < 0:
        raise ConfigError("top_k", f"must be 0 (off) or more, got {cfg.top_k}")
    if not 0 < cfg.top_p <= 1:
        raise ConfigError("top_p", f"must be in (0, 1] (1 = off), got {cfg.top_p}")
    if not 0 <= cfg.min_p < 1:
        raise ConfigError("min_p", f"must be in [0, 1) (0 = off), got {cfg.min_p}")


def check_basic_values(cfg) -> None:
    """What every field must satisfy: finite floats, ints in range, strings without NUL bytes."""
    for f in config_fields(type(cfg)):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f.name, f"must be a finite number, got {value}")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            raise ConfigError(f.name, f"{value} is out of range (at most {MAX_INT})")
        if isinstance(value, str) and "\0" in value:
            raise ConfigError(f.name, "contains a NUL character")
    if getattr(cfg, "out", None) == "":
        raise ConfigError("out", "give a directory (an empty path would be the working directory)")


def check_writable(out: str, field_name: str = "out") -> None:
    """The nearest existing ancestor of `out` must be a writable directory (nothing is created here)."""
    import tempfile

    probe = Path(out)
    try:
        while not probe.exists():
            probe = probe.parent
        writable = probe.is_dir() and os.access(probe, os.W_OK)
    except OSError as err:  # e.g. a name longer than the file system allows
        raise ConfigError(field_name, f"cannot use {out!r}: {err.strerror}") from None
    reason = "not a writable directory"
    if writable:  # permission bits say yes, but /proc, read-only mounts and full disks still refuse: try
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".rlvr-probe-", dir=probe))
        except OSError as err:
            writable, reason = False, err.strerror
    if not writable:
        raise ConfigError(field_name, f"cannot create or write {out!r} ({probe}: {reason}); choose another directory")


def config_fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def add_fields(parser: argparse.ArgumentParser, cls, skip: tuple = (), config_flag: bool = True) -> None:
    """One flag per config field; defaults are SUPPRESSed so we can tell what was given. A class
    with HELP_GROUPS shows its flags in those groups, in HELP_GROUP_DOCS' order (`--config` in
    "run and logging"); a field missing from its table lands in UNGROUPED."""
    defaults = cls()
    group_of = help_groups_of(cls)
    if group_of:
        for name in HELP_GROUP_DOCS:  # made in this order, so --help shows them in it
            if name in group_of.values():
                option_group(parser, name)
    for f in config_fields(cls):
        if f.name in skip:
            continue
        target = option_group(parser, group_of.get(f.name, UNGROUPED)) if group_of else parser
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help_text = f"{f.metadata['help']} (default: {default})".replace("%", "%%")  # argparse %-formats help
        type_name = f.type if isinstance(f.type, str) else f.type.__name__
        if type_name == "bool":
            target.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        elif type_name.startswith("list"):
            item = f.metadata.get("item", int)
            target.add_argument(flag, nargs="*" if item is str else "+", type=item, default=argparse.SUPPRESS,
                                help=help_text, action="extend" if item is str else "store")
        else:
            target.add_argument(flag, type={"int": int, "float": float}.get(type_name, str),
                                default=argparse.SUPPRESS, help=help_text,
                                metavar={"int": "N", "float": "X"}.get(type_name, "VALUE"))
    if config_flag:
        target = option_group(parser, "run and logging") if group_of else parser
        target.add_argument("--config", default=None, metavar="FILE.toml",
                            help="read settings from a TOML file; flags given on the command line override it")


def build(cls, args: argparse.Namespace):
    """defaults <- --config file <- command-line flags."""
    values = load_toml(args.config, cls) if args.config else {}
    values.update({f.name: getattr(args, f.name) for f in config_fields(cls) if hasattr(args, f.name)})
    return cls(**values)


def load_toml(path: str, *classes) -> dict[str, Any]:
    """Reads FILE.toml; keys may be spelt prompts_per_step or prompts-per-step and must be
    fields of one of `classes` (a command may take several, e.g. compare's and train's)."""
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("config", f"file {path!r} does not exist") from None
    except OSError as err:
        raise ConfigError("config", f"cannot read {path!r}: {err.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError("config", f"{path} is not valid TOML: {err}") from None
    known = {f.name: f for cls in reversed(classes) for f in config_fields(cls)}
    values = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError("config", f"{path}: unknown setting {key!r}; see --help for the settings")
        if name == "reward" and isinstance(value, dict):  # [reward] task = 0.8 ... : weighted verifiers
            value = weighted_reward(path, value)
        values[name] = coerce(name, value, known[name].type)
    return values


def weighted_reward(path: str, table: dict) -> str:
    """A TOML table of verifier = weight -> the --reward spelling name:weight,name:weight."""
    for name, weight in table.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ConfigError("reward", f"{path}: the weight of {name!r} must be a number, got {weight!r}")
    if not table:
        raise ConfigError("reward", f"{path}: the [reward] table names no verifier")
    return ",".join(f"{name}:{float(weight)!r}" for name, weight in table.items())


def to_toml(values: dict[str, Any]) -> str:
    """A flat TOML document of scalars and lists (what load_toml reads back)."""
    import json

    def literal(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return repr(value)
        if isinstance(value, list):
            return "[" + ", ".join(literal(v) for v in value) + "]"
        return json.dumps(str(value))  # a TOML basic string: JSON's escapes are valid TOML

    return "".join(f"{key} = {literal(value)}\n" for key, value in values.items())


def coerce(name: str, value: Any, type_name: Any) -> Any:
    """Checks a TOML value's type against the field's (ints are accepted for floats)."""
    type_name = type_name if isinstance(type_name, str) else type_name.__name__
    expected = {"int": int, "float": (int, float), "str": str, "bool": bool}.get(type_name)
    if expected is None:
        return value
    if isinstance(value, bool) and type_name != "bool" or not isinstance(value, expected):
        raise ConfigError(name, f"expected a {type_name}, got {value!r}")
    return float(value) if type_name == "float" else value


def to_dict(cfg) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in config_fields(type(cfg))}
