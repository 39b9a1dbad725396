"""The RLVR training loop: one run of group-sampled clipped policy gradient.

Run it:  rlvr train --k 8 --steps 100 --out runs/k8      (or rlvr.trainer.train(TrainConfig(...)))
         rlvr train --nproc 4 ...  or  torchrun --nproc-per-node 4 -m rlvr train ...
         (data parallel: each rank takes a shard of the step's prompts; the same run as one
         process, see rlvr/distributed.py and docs/distributed.md)

One step, data flowing one way:
  B prompts -> K samples each, one batch, exact token entropy from the sampling logits
  -> rewards (verifier; failures contained) -> the samples to train on (all, unless a sampling
  strategy of docs/sampling.md is on) -> group advantages (by name)
  -> clipped policy-gradient loss, `updates_per_step` optimizer updates -> metrics -> checkpoint.

Where it departs from the papers:
  * The "old" log-probs of the first update are the current policy's own, detached, from the
    same forward pass that computes the loss: the ratio is exactly 1 on-policy and no extra
    forward pass is spent. Later updates on the same batch reuse those log-probs, as PPO does.
  * The prompt stream and the sampling noise are functions of (seed, step) and the checkpointed
    stream position (which --group-filter moves by more than B per step); each group's noise
    has its own generator, seeded by its prompt's stream position. So a resumed run samples
    exactly what an uninterrupted one would have, at any number of processes, and evaluation
    (its own generators) does not perturb training.
  * Entropy is the exact entropy of the full next-token distribution at the sampling
    temperature (TERMS.md), not the sampled token's negative log-prob.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import shutil
import sys
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from rlvr import __version__, distributed
from rlvr.backends import ModelSettings, load_policy
from rlvr.checkpoint import (clean_temporaries, load_latest, replace_dir, rng_state, save_checkpoint, set_rng_state,
                             write_text_atomic)
from rlvr.config import ConfigError, RunFailed, TrainConfig, to_dict
from rlvr.distributed import SINGLE, World
from rlvr.entropy import (AdaptiveEntropyCoefficient, CollapseDetector, EntropyCoefficient, EntropyMonitor,
                          RewardMonitor, masked_mean, masked_quantiles)
from rlvr.evaluation import (evaluate_policy, flat_eval_metrics, heldout_items, paired_bootstrap_gain,
                             per_problem_values, validation_items)
from rlvr.loggers import Trackers
from rlvr.losses import LossSettings, policy_loss, top_entropy_select
from rlvr.reward_pool import RewardPool, WorkerStartError
from rlvr.rewards import RewardFailure
from rlvr.verifiers import TIMEOUT
from rlvr.rollout import Scorer, micro_batches, select_rows
from rlvr.sampling import (Sampler, advantage_function, answer_diversity, gather_samples, group_advantages,
                           overlong_penalty, select_for_training)
from rlvr.tasks import get_task

EVAL_KS = (1, 4, 8)
HEADLINE = "hm@4"  # the metric the progress bar shows and gains are reported for


def stream_seed(seed: int, step: int, stream: int = 0) -> int:
    """Independent, reproducible seeds per (run seed, step, stream): 0 sampling, 1 evaluation."""
    return (seed * 1_000_003 + step * 7_919 + stream * 104_729) % (2**63 - 1)


def _release_free_heap() -> None:
    """Returns freed heap pages to the OS (glibc malloc_trim), so the resident set before a step
    is the memory in use, not what earlier steps freed; without it the allocator's retained
    pages hide the step's working set. A no-op where glibc is absent."""
    import ctypes
    import ctypes.util

    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM = None


class StepMemory:
    """Peak memory of the training steps alone, in MiB (TERMS.md: peak memory).

    CPU: the process's peak resident set (VmHWM). Linux lets a process reset that high-water
    mark (/proc/self/clear_refs, "5"), so it is reset before every step and evaluation's large
    decoding batches never count as a step's memory. Where the reset is not allowed, the
    lifetime peak (ru_maxrss) is reported instead and `resets` is False.

    The memory a step itself needs is peak minus the memory in use before it, but the resident
    set before a step also holds heap the previous steps freed and the allocator kept. So on
    probe steps (step 1 and every PROBE_EVERY-th after it) the freed heap is first returned to
    the OS, and the resident set then is the memory in use. Probing costs its step ~15% more
    time (the step faults its pages back in: measured, A/B on alternate steps), so it is not
    done every step; the median step time is unaffected. GPU: allocated-memory statistics
    from torch.cuda, every step."""

    PROBE_EVERY = 25

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"
        self.resets = self.cuda or self._reset_cpu()

    @staticmethod
    def _reset_cpu() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            return True
        except OSError:
            return False

    @staticmethod
    def _status_mib(key: str) -> float | None:
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) / 1024  # kB
        except OSError:
            pass
        return None

    def start(self, step: int) -> float | None:
        """Resets the peak; on probe steps returns the memory in use before the step in MiB
        (None on other steps, and where the peak cannot be reset)."""
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated() / 2**20
        if not self.resets:
            return None
        probe = (step - 1) % self.PROBE_EVERY == 0
        if probe:
            _release_free_heap()
        self._reset_cpu()
        return self._status_mib("VmRSS") if probe else None

    def peak(self) -> float:
        """Peak since start() in MiB."""
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        hwm = self._status_mib("VmHWM") if self.resets else None
        return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class RunDir:
    """The files of a run directory (INTERFACE.md) and the decision to resume or start over."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.root = Path(cfg.out)
        self.config_file = self.root / "config.json"
        self.metrics_file = self.root / "metrics.jsonl"
        self.events_file = self.root / "events.jsonl"
        self.evals_file = self.root / "evals.jsonl"  # every evaluation in full, per-problem counts included
        self.samples_file = self.root / "samples.jsonl"  # a few completions of every evaluation, for people
        self.best = self.root / "best"  # --keep-best: the model of the best evaluation, and best.json
        self.checkpoints = self.root / "checkpoints"
        self.final = self.root / "final"

    def check_compatible(self, cfg: TrainConfig) -> None:
        """Refuses (exit 2) an --out that holds a run of another config, unless --force."""
        if not self.config_file.is_file() or cfg.force:
            return
        old = json.loads(self.config_file.read_text()).get("config", {})
        new, defaults = to_dict(cfg), to_dict(type(cfg)())
        # A setting added since that run was made is taken at its default, which is what it ran with.
        old = {name: old.get(name, defaults[name]) for name in new}
        diffs = [f"{name}: {old[name]!r} -> {new[name]!r}" for name in new
                 if name not in cfg.RESUMABLE_CHANGES and old[name] != new[name]]
        if diffs:
            raise ConfigError("out", f"{cfg.out} holds a run with a different config ({'; '.join(diffs)}); "
                                     "use another --out, or --force to start over there")

    def start_fresh(self) -> None:
        for path in (self.metrics_file, self.events_file, self.evals_file, self.samples_file, self.root / "eval.json"):
            path.unlink(missing_ok=True)
        for path in (self.checkpoints, self.final, self.best):
            shutil.rmtree(path, ignore_errors=True)

    def write_config(self, cfg: TrainConfig, world_size: int = 1) -> None:
        """`world_size`: the processes of this (part of the) run; the results do not depend on it."""
        self.root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.config_file, json.dumps({"rlvr_version": __version__, "world_size": world_size,
                                                        "config": to_dict(cfg)}, indent=2) + "\n")

    def save_final(self, policy, extra: dict) -> None:
        """final/ appears complete or not at all: a re-run treats an existing final/ as done."""
        tmp = self.root / f".tmp-final-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        policy.save(tmp, extra=extra)
        replace_dir(tmp, self.final)

    def save_best(self, policy, best: dict, extra: dict) -> None:
        """best/ holds the model of the best evaluation and best.json; replaced atomically."""
        tmp = self.root / f".tmp-best-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        policy.save(tmp, extra=extra)
        (tmp / "best.json").write_text(json.dumps({k: v for k, v in best.items() if k != "per_problem"}) + "\n")
        replace_dir(tmp, self.best)

    def truncate_metrics(self, last_step: int) -> None:
        """Drops metric and evaluation rows after the checkpoint being resumed (or rolled back
        to): the resumed run re-creates them."""
        for path in (self.metrics_file, self.evals_file, self.samples_file):
            if not path.is_file():
                continue
            kept = []
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line torn by the kill
                    continue
                if row.get("step", math.inf) <= last_step:
                    kept.append(line)
            write_text_atomic(path, "".join(line + "\n" for line in kept))


class JsonlWriter:
    """Appends one JSON object per line and flushes, so a kill loses at most the current line."""

    def __init__(self, path: Path) -> None:
        self.handle = open(path, "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        self.handle.write(json.dumps(row, allow_nan=True) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


class NullWriter:
    """Where ranks other than 0 write their metrics, events and evaluations: nowhere (rank 0
    writes the run directory; every rank computes the same rows)."""

    def write(self, row: dict) -> None:
        pass

    def rewind(self, step: int) -> None:
        pass

    def close(self) -> None:
        pass


class MetricsLog:
    """metrics.jsonl plus the --log trackers (rlvr/loggers.py): every row goes to all of them, and
    a rollback rewinds all of them. A resumed run's trackers start after its checkpoint's step."""

    def __init__(self, run: RunDir, cfg: TrainConfig, start_step: int) -> None:
        self.run = run
        self.jsonl = JsonlWriter(run.metrics_file)
        self.trackers = Trackers(cfg.log, run.root, to_dict(cfg), start_step)

    def write(self, row: dict) -> None:
        self.jsonl.write(row)
        self.trackers.log(row)

    def rewind(self, step: int) -> None:
        """Drops the rows after `step` everywhere (with evals.jsonl's)."""
        self.jsonl.close()
        self.run.truncate_metrics(step)
        self.jsonl = JsonlWriter(self.run.metrics_file)
        self.trackers.rewind(step)

    def close(self) -> None:
        self.jsonl.close()
        self.trackers.close()


@dataclass
class StepResult:
    metrics: dict
    skipped: str | None  # why the update was not applied ("loss" or "gradient" was non-finite), or None


# What train_step reports per step, averaged over its updates (plus tokens/trained_frac).
UPDATE_METRICS = ("loss/policy", "loss/entropy", "loss/kl", "clip/frac", "grad/norm", "clip/cov_tokens",
                  "clip/kl_cov_tokens")


def loss_settings(cfg: TrainConfig, entropy_coef: float) -> LossSettings:
    return LossSettings(
        clip_low=cfg.clip_low, clip_high=cfg.clip_high, aggregation=cfg.loss_agg, beta=cfg.beta,
        entropy_coef=entropy_coef, clip_cov_ratio=cfg.clip_cov_ratio if cfg.clip_cov else 0.0,
        clip_cov_bounds=(cfg.clip_cov_low, cfg.clip_cov_high),
        kl_cov_ratio=cfg.kl_cov_ratio if cfg.kl_cov else 0.0, kl_cov_coef=cfg.kl_cov_coef,
    )


def micro_batch_rows(value) -> int | None:
    """--micro-batch-size: rows per micro-batch (0 = the whole batch), or None for auto."""
    return None if str(value) == "auto" else int(value)


class PhaseClock:
    """Seconds spent per phase of the update (forward, backward, optimizer); on CUDA it waits for
    the device at each boundary so the time lands in the phase that queued the work."""

    def __init__(self, device: torch.device) -> None:
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.seconds: dict[str, float] = {}
        self.sync()
        self.last = time.perf_counter()

    def lap(self, phase: str) -> None:
        self.sync()
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self.last
        self.last = now


def train_step(policy, optimizer, batch, advantages, cfg: TrainConfig, reference=None, entropy_coef: float | None = None,
               generator: torch.Generator | None = None, *, scorer=None, totals: tuple[int, int] | None = None
               ) -> StepResult:
    """`updates_per_step` optimizer updates on one rollout batch; returns the step's loss metrics.

    `entropy_coef` is the coefficient in force (controllers and rollbacks move it; default the
    config's). With `top_entropy_tokens`, only that top fraction of the rollout tokens by entropy
    is trained on, and the loss is normalised over them. The batch is split into micro-batches
    (`--micro-batch-size`); each runs through `scorer` (default `Scorer(policy)`; data
    parallelism passes a wrapped one: then every micro-batch but the last runs under its
    `no_sync()`), and the loss is normalised by `totals` = (tokens, sequences) of the whole step
    (default: this batch's), so the gradient does not depend on the split."""
    entropy_coef = cfg.entropy_coef if entropy_coef is None else entropy_coef
    settings = loss_settings(cfg, entropy_coef)
    clock = PhaseClock(policy.device)
    scorer = scorer if scorer is not None else Scorer(policy, cfg.temperature)
    rows = batch.num_rows
    token_mask = batch.completion_mask  # (N, T)
    if cfg.top_entropy_tokens > 0 and bool(token_mask.any()):
        token_mask = top_entropy_select(batch.entropy, token_mask, cfg.top_entropy_tokens)
    total_tokens, total_rows = totals if totals is not None else (max(1, int(token_mask.sum())), rows)
    chunks = micro_batches(batch, micro_batch_rows(cfg.micro_batch_size), policy.update_token_budget, policy.can_pack)
    old_logprobs = torch.zeros_like(batch.logprobs)
    ref_logprobs = None
    if cfg.beta > 0:
        with torch.no_grad():
            ref_scorer = Scorer(reference, cfg.temperature)
            ref_logprobs = torch.cat([ref_scorer(batch, c)[0] for c in chunks])
    sums = dict.fromkeys(UPDATE_METRICS, 0.0)
    skipped = None
    params = [p for p in policy.module.parameters() if p.requires_grad]
    no_sync = getattr(scorer, "no_sync", None)
    clock.lap("other")
    for update in range(cfg.updates_per_step):
        optimizer.zero_grad(set_to_none=True)
        for i, c in enumerate(chunks):
            with no_sync() if no_sync is not None and i < len(chunks) - 1 else nullcontext():
                logprobs, entropy = scorer(batch, c, with_entropy=entropy_coef != 0)
                if update == 0:
                    old_logprobs[c] = logprobs.detach()
                loss, m = policy_loss(logprobs, old_logprobs[c], advantages[c], token_mask[c], settings,
                                      total_tokens, total_rows, None if ref_logprobs is None else ref_logprobs[c],
                                      entropy, generator)
                clock.lap("forward")
                if not torch.isfinite(loss):
                    skipped = "loss"
                    if no_sync is None:
                        break
                    # Data parallel: every rank must run the same backward collectives, so this one
                    # goes on; the non-finite gradient reaches every rank and all skip the update.
                loss.backward()
                clock.lap("backward")
            sums["loss/policy"] += m["loss/policy"]
            sums["clip/cov_tokens"] += m.get("clip/cov_tokens", 0.0)
            sums["clip/kl_cov_tokens"] += m.get("clip/kl_cov_tokens", 0.0)
            sums["loss/entropy"] += -entropy_coef * m.get("loss/entropy", 0.0)
            sums["loss/kl"] += cfg.beta * m.get("loss/kl", 0.0)
            sums["clip/frac"] += m["clip/frac_sum"] / total_tokens
        if skipped is None or no_sync is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
            sums["grad/norm"] += float(norm)
            skipped = skipped or (None if torch.isfinite(norm) else "gradient")
        if skipped is not None:  # never apply a non-finite update; the step is counted and logged
            optimizer.zero_grad(set_to_none=True)
            break
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)  # the gradients' memory is free while the next step samples
        clock.lap("optimizer")
    metrics = {key: value / cfg.updates_per_step for key, value in sums.items()}
    metrics["tokens/trained_frac"] = total_tokens / max(1, batch.generated_tokens())
    metrics["perf/micro_batches"] = len(chunks)
    metrics.update({f"perf/{phase}_seconds": seconds for phase, seconds in clock.seconds.items() if phase != "other"})
    return StepResult(metrics, skipped)


def no_update() -> StepResult:
    """The metrics of a step that trained on nothing (no group had signal): no update is made."""
    return StepResult(dict.fromkeys((*UPDATE_METRICS, "tokens/trained_frac"), 0.0), skipped=None)


def make_entropy_controller(cfg: TrainConfig) -> EntropyCoefficient:
    if cfg.entropy_target > 0:
        return AdaptiveEntropyCoefficient(cfg.entropy_coef, cfg.entropy_target, cfg.entropy_coef_step, cfg.entropy_coef_max)
    return EntropyCoefficient(cfg.entropy_coef)


class RunState:
    """Everything a checkpoint restores: policy, optimizer, entropy monitor/controller/detector,
    RNG states, the step-0 evaluation, and the run-level counters. None of it is per rank: with
    data parallelism every rank holds the same state, so a checkpoint resumes at any world size."""

    def __init__(self, cfg: TrainConfig, device: torch.device, world: World = SINGLE) -> None:
        self.cfg, self.device, self.world = cfg, device, world
        torch.manual_seed(cfg.seed)
        if world.fsdp:  # every rank reads the whole model into CPU memory once; fully_shard moves its shard to the GPU
            self.policy = load_policy(cfg.model, dataclasses.replace(ModelSettings.of(cfg), device="cpu"))
            distributed.fsdp_shard(self.policy, world)
        else:
            self.policy = load_policy(cfg.model, ModelSettings.of(cfg))
        self.policy.module.train()
        trainable = [p for p in self.policy.module.parameters() if p.requires_grad]
        # Fused: one kernel over all tensors, no per-parameter Python loop and no temporaries of
        # the parameters' size (CPU's default is a loop). FSDP2's sharded tensors keep the default.
        self.optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay,
                                           fused=not world.fsdp)
        # The training forward; with W > 1 under DDP (gradients summed over the ranks) or FSDP2.
        self.scorer = distributed.wrap_scorer(Scorer(self.policy, cfg.temperature), world)
        self.monitor = EntropyMonitor(half_life=10)
        self.controller = make_entropy_controller(cfg)
        self.detector = CollapseDetector(cfg.collapse_ratio, cfg.collapse_patience)
        self.reward_monitor = RewardMonitor(half_life=10)
        self.reward_detector = CollapseDetector(cfg.reward_collapse_ratio, cfg.reward_collapse_patience)
        self.best: dict | None = None  # the best evaluation so far: step, value, per-problem values (--keep-best)
        self.evals_without_gain = 0  # evaluations since the last significant gain over the best (--early-stop)
        self.sampler = Sampler(cfg, world)  # prompt stream position, --adaptive-k's estimator
        self.baseline_eval: list[dict] | None = None  # step-0 per-problem results, for paired gains
        self.step = 0
        self.rollbacks = 0  # run-level: survives rollbacks, restored on resume
        self.bad_steps = 0  # consecutive steps skipped for a non-finite loss or gradient
        self.stopped: str | None = None  # why the run ended early, if it did

    @property
    def entropy_coef(self) -> float:
        """The coefficient in force: the controller's value plus what rollbacks added."""
        return self.controller.value + self.rollbacks * self.cfg.rollback_entropy_boost

    def sampling_seed(self, step: int, stream: int) -> int:
        # A retry after a rollback draws new samples for the same prompts.
        return stream_seed(self.cfg.seed, step, stream if self.rollbacks == 0 else 100 * self.rollbacks + stream)

    def state_dict(self) -> dict:
        """With --fsdp a collective (every rank calls it): the weights and optimizer state are
        gathered in full, keyed by parameter name; only rank 0's copy holds them."""
        if self.world.fsdp:
            model = distributed.full_model_state(self.policy)
            optimizer = distributed.full_optimizer_state(self.policy, self.optimizer)
        else:
            model, optimizer = self.policy.trainable_state_dict(), self.optimizer.state_dict()
        return {"model": model, "optimizer": optimizer, "fsdp": self.world.fsdp,
                "entropy_monitor": self.monitor.state_dict(), "entropy_controller": self.controller.state_dict(),
                "collapse_detector": self.detector.state_dict(), "sampler": self.sampler.state_dict(), "rng": rng_state(),
                "baseline_eval": self.baseline_eval, "rollbacks": self.rollbacks, "stopped": self.stopped,
                "bad_steps": self.bad_steps, "reward_monitor": self.reward_monitor.state_dict(),
                "reward_detector": self.reward_detector.state_dict(), "best": self.best,
                "evals_without_gain": self.evals_without_gain}

    def load_state_dict(self, state: dict, *, keep_counters: bool = False) -> None:
        """keep_counters: a rollback restores the policy but not the run's rollback count. With
        --fsdp a collective: rank 0's weights and optimizer state are broadcast and re-sharded."""
        if self.world.fsdp:
            distributed.load_full_state(self.policy, self.optimizer, state.get("model", {}), state.get("optimizer", {}))
        else:
            self.policy.load_trainable_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.monitor.load_state_dict(state["entropy_monitor"])
        self.controller.load_state_dict(state["entropy_controller"])
        self.detector.load_state_dict(state["collapse_detector"])
        self.sampler.load_state_dict(state.get("sampler"), state["step"])
        set_rng_state(state["rng"])
        self.baseline_eval = state["baseline_eval"]
        self.step = state["step"]
        self.bad_steps = state.get("bad_steps", 0)  # absent from checkpoints of rlvr before 0.1.0's guards
        if "reward_monitor" in state:  # absent from checkpoints written before the reward detector
            self.reward_monitor.load_state_dict(state["reward_monitor"])
            self.reward_detector.load_state_dict(state["reward_detector"])
            if not keep_counters:  # a rollback keeps the best so far: best/ on disk is still that model
                self.best, self.evals_without_gain = state["best"], state["evals_without_gain"]
        if not keep_counters:
            self.rollbacks, self.stopped = state["rollbacks"], state["stopped"]

    def reset_to_start(self) -> None:
        """Back to the starting model (a rollback with no checkpoint before the onset)."""
        kept = self.rollbacks, self.baseline_eval, self.best, self.evals_without_gain
        self.__init__(self.cfg, self.device, self.world)
        self.rollbacks, self.baseline_eval, self.best, self.evals_without_gain = kept


def train(cfg: TrainConfig, progress: bool = True, console=None) -> dict:
    """Runs (or resumes) one training run; returns the summary ({} on ranks other than 0).
    Raises ConfigError on bad input.

    Launched by torchrun (or `rlvr train --nproc N`), this process is one of W ranks: it joins
    the process group, trains on its shard of every step and leaves the writing to rank 0."""
    cfg.validate()
    world = distributed.start(cfg.device, cfg.dist_timeout, cfg.fsdp)
    try:
        return _train(cfg, world, progress, console)
    finally:
        distributed.stop(world)


def _check_run_dir(run: RunDir, cfg: TrainConfig) -> None:
    """Rank 0, before any work: --out must hold no run of another config (or --force empties it)."""
    run.check_compatible(cfg)
    if cfg.force:
        run.start_fresh()


def _prepare_run_dir(run: RunDir, cfg: TrainConfig, world_size: int) -> tuple[dict | None, bool]:
    """Rank 0, once the model has loaded: cleans what a killed run left, picks the checkpoint to
    resume -> (its state or None, whether final/ is written)."""
    clean_temporaries(run.checkpoints)
    clean_temporaries(run.root)
    state = load_latest(run.checkpoints) if run.config_file.is_file() else None
    if state is None:
        run.start_fresh()
    else:
        run.truncate_metrics(state["step"])
    run.write_config(cfg, world_size)
    return state, run.final.is_dir()


def shared_checkpoint(world: World, read) -> tuple:
    """`read()` -> (checkpoint state or None, anything else), run on rank 0 only, with its result
    on every rank. With --fsdp the state's weights and optimizer state stay on rank 0
    (RunState.load_state_dict broadcasts them shard by shard); everything else is sent along."""
    held: dict = {}

    def on_rank0():
        held["state"], extra = read()
        state = held["state"]
        if state is not None and world.fsdp:
            state = {k: v for k, v in state.items() if k not in ("model", "optimizer")}
        return state, extra

    state, extra = world.agree(on_rank0, "reading the checkpoint")
    return (held["state"] if world.main else state), extra


def _train(cfg: TrainConfig, world: World, progress: bool, console) -> dict:
    threads = cfg.threads
    if not threads and world.parallel and cfg.device == "cpu":  # the ranks of a machine share its cores
        threads = max(1, (os.cpu_count() or 1) // world.local_size)
    if threads:
        torch.set_num_threads(threads)
    run = RunDir(cfg)
    world.agree(lambda: _check_run_dir(run, cfg), "checking the run directory")
    device = torch.device(cfg.device)
    task = get_task(cfg.task, seed=cfg.seed, answer_format=cfg.answer_format)
    st = RunState(cfg, device, world)
    reference = st.policy.reference() if cfg.beta > 0 else None  # the start policy, taken before any resume
    state, final_written = shared_checkpoint(world, lambda: _prepare_run_dir(run, cfg, world.size))
    if state is not None:
        st.load_state_dict(state)

    def open_logs() -> tuple:
        """evals.jsonl and samples.jsonl (rank 0; the other ranks write nothing)."""
        if not world.main:
            return NullWriter(), NullWriter()
        return JsonlWriter(run.evals_file), JsonlWriter(run.samples_file)

    metrics_log = MetricsLog(run, cfg, st.step) if world.main else NullWriter()
    events_log = JsonlWriter(run.events_file) if world.main else NullWriter()
    evals_log, samples_log = open_logs()
    model = st.policy.describe()
    events_log.write({"event": "model", "step": st.step, **model,
                      "message": f"{cfg.model}: {model['backend']} backend, {model['parameters']:,} parameters, "
                                 f"{model['trainable_parameters']:,} trained"})
    if world.parallel:
        events_log.write({"event": "distributed", "step": st.step, "world_size": world.size, "fsdp": world.fsdp,
                          "message": f"{world.size} ranks ({'nccl' if cfg.device == 'cuda' else 'gloo'}"
                                     f"{', FSDP2' if world.fsdp else ', DDP'}), {cfg.prompts_per_step // world.size} "
                                     f"of the {cfg.prompts_per_step} prompts of a step each"})
    if st.step:
        events_log.write({"event": "resume", "step": st.step, "message": f"resumed from checkpoint at step {st.step}"
                                                                          f" with {world.size} process(es)"})
    if (st.step >= cfg.steps or st.stopped) and final_written:
        metrics_log.close(), events_log.close(), evals_log.close(), samples_log.close()
        return summarize(run, cfg, already_done=True) if world.main else {}

    eval_settings = dict(problems=cfg.eval_problems, samples=cfg.eval_samples, temperature=cfg.eval_temperature,
                         ks=[k for k in EVAL_KS if k <= cfg.eval_samples], max_new_tokens=cfg.max_new_tokens,
                         seed=stream_seed(cfg.seed, 0, 1), world=world)
    # drawn once: the same problems at every evaluation (none drawn for a run that never evaluates)
    eval_items = heldout_items(task, cfg.eval_problems) if cfg.eval_every else None
    selection_items = validation_items(task, cfg.eval_problems, cfg.eval_problems) \
        if cfg.select_split == "validation" and cfg.eval_every else None

    def save_model(save) -> None:
        """`save(policy)` on rank 0. With --fsdp the weights are first gathered (collective) into
        an unsharded CPU copy of the model, so final/ and best/ hold the same files as 1 process."""
        if world.fsdp:
            full = distributed.full_model_state(st.policy)
            if world.main:
                copy = load_policy(cfg.model, dataclasses.replace(ModelSettings.of(cfg), device="cpu"))
                copy.load_trainable_state_dict(full)
                save(copy)
        elif world.main:
            save(st.policy)

    def evaluate(step: int) -> dict:
        with distributed.decoding(st.policy, world):
            result = evaluate_policy(st.policy, task, items=eval_items, show=cfg.eval_show, **eval_settings)
        for sample in result.pop("samples", []):
            samples_log.write({"step": step, **sample})
        flat = flat_eval_metrics(result)
        if st.baseline_eval is None:
            st.baseline_eval = result["per_problem"]
        if HEADLINE in result["metrics"]:
            gain = paired_bootstrap_gain(per_problem_values(st.baseline_eval, HEADLINE),
                                         per_problem_values(result["per_problem"], HEADLINE))
            flat[f"eval/{HEADLINE}_gain"] = gain["value"]
            flat[f"eval/{HEADLINE}_gain_ci_low"], flat[f"eval/{HEADLINE}_gain_ci_high"] = gain["ci"]
        eval_json = {"model": cfg.model, "task": cfg.task, "split": "heldout", "step": step,
                     "n_samples": cfg.eval_samples, "temperature": cfg.eval_temperature,
                     "n_problems": len(result["per_problem"]), **result}
        if world.main:
            write_text_atomic(run.root / "eval.json", json.dumps(eval_json) + "\n")
        evals_log.write(eval_json)
        events_log.write({"event": "eval", "step": step, "message": ", ".join(
            f"{name} {m['value']:.3f} [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]" for name, m in result["metrics"].items())})
        if cfg.keep_best != "none":
            if selection_items is None:
                selected = result
            else:
                with distributed.decoding(st.policy, world):
                    selected = evaluate_policy(st.policy, task, items=selection_items, **eval_settings)
            flat.update(select_best(step, selected))
        return flat

    def select_best(step: int, result: dict) -> dict:
        """--keep-best and --early-stop: is this evaluation the best so far, and a significant gain?"""
        metric = cfg.keep_best
        value, values = result["metrics"][metric]["value"], per_problem_values(result["per_problem"], metric)
        gain = None if st.best is None else paired_bootstrap_gain(st.best["values"], values)
        if st.best is None or value > st.best["value"]:
            st.best = {"step": step, "metric": metric, "value": value, "ci": result["metrics"][metric]["ci"],
                       "split": cfg.select_split, "values": values.tolist()}
            best = st.best
            save_model(lambda policy: run.save_best(policy, best, extra={"trained_by": "rlvr train", "steps": step,
                                                                           "config": to_dict(cfg)}))
        significant = gain is None or gain["ci"][0] > 0
        st.evals_without_gain = 0 if significant and st.best["step"] == step else st.evals_without_gain + 1
        return {"eval/selected": value, "eval/best": st.best["value"], "eval/best_step": st.best["step"],
                "eval/evals_without_gain": st.evals_without_gain}

    def checkpoint() -> None:
        state = st.state_dict()  # with --fsdp a collective: every rank gathers, rank 0 keeps the full state
        if world.main:
            save_checkpoint(run.checkpoints, st.step, state, keep=cfg.keep_checkpoints)

    try:
        pool = RewardPool(cfg.reward, cfg.task, cfg.seed, cfg.reward_workers, cfg.reward_timeout, cfg.answer_format)
        pool_error = None
    except WorkerStartError as err:
        pool, pool_error = None, str(err)
    pool_errors = [(rank, e) for rank, e in enumerate(world.gather(pool_error, "starting the reward workers")) if e]
    if pool_errors:
        if pool is not None:
            pool.close()
        metrics_log.close(), events_log.close(), evals_log.close(), samples_log.close()
        rank, error = pool_errors[0]
        raise ConfigError("reward", f"the reward workers{f' of rank {rank}' if world.parallel else ''} could not "
                                    f"load it: {error}")
    bar = _Progress(cfg, enabled=progress and not cfg.quiet, console=console, mute=not world.main)
    last_eval: dict = {}
    if st.step == 0 and cfg.eval_every:
        last_eval = evaluate(0)
        metrics_log.write({"step": 0, **last_eval})
    bar.start(st.step)
    memory = StepMemory(cfg.device)
    try:
        while st.step < cfg.steps:
            st.step += 1
            step = st.step
            row = run_step(st, cfg, task, pool, reference, memory, events_log)
            if cfg.eval_every and step % cfg.eval_every == 0:
                last_eval = evaluate(step)
                row.update(last_eval)
            metrics_log.write(row)
            bar.update(step, row, last_eval)
            if cfg.max_bad_steps and st.bad_steps >= cfg.max_bad_steps:
                stop_failed(events_log, step, f"--max-bad-steps: {st.bad_steps} steps in a row (up to step {step}) "
                            "had a non-finite loss or gradient and were skipped; the newest checkpoint holds the "
                            "last good weights. Lower --lr or --max-grad-norm, or raise --max-bad-steps")

            if cfg.early_stop and st.evals_without_gain >= cfg.early_stop:
                st.stopped = f"early stop at step {step}"
                events_log.write({"event": "early_stop", "step": step, "best_step": st.best["step"],
                                  "best_value": st.best["value"], "message": (
                                      f"--early-stop: {st.evals_without_gain} evaluations without a significant gain "
                                      f"over {cfg.keep_best} {st.best['value']:.3f} at step {st.best['step']}")})
                checkpoint()
                break
            action = None
            onsets = (("entropy", st.detector.update(step, st.monitor.ema, st.monitor.initial)),
                      ("reward", st.reward_detector.update(step, st.reward_monitor.ema, st.reward_monitor.best)))
            for kind, onset in onsets:
                if onset is not None:
                    action = on_collapse(st, run, cfg, step, onset, events_log, bar, kind)
                    if action != "warn":
                        break
            if action is not None:
                if action == "stop":
                    checkpoint()
                    break
                if action == "rollback":
                    evals_log.close(), samples_log.close()
                    metrics_log.rewind(st.step)
                    evals_log, samples_log = open_logs()
                    bar.update(st.step, row, last_eval)
                    continue
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps:
                checkpoint()
    except RunFailed:
        events_log.close()
        raise
    finally:
        pool.close()
        bar.stop()
        metrics_log.close(), evals_log.close(), samples_log.close()
    save_model(lambda policy: run.save_final(policy, extra={"trained_by": "rlvr train", "steps": st.step,
                                                             "config": to_dict(cfg)}))
    if not world.main:
        return {}
    summary = summarize(run, cfg)
    if st.stopped:
        summary["stopped"] = st.stopped
        summary["line"] = f"stopped early ({st.stopped}) | " + summary["line"]
    events_log.write({"event": "done", "step": st.step, "message": summary["line"]})
    events_log.close()
    return summary


# What train_step reports as a share of the whole step: with W ranks, the ranks' values add up
# (each is normalised by the step's global token or sequence count).
SUMMED_UPDATE_METRICS = ("loss/policy", "loss/entropy", "loss/kl", "clip/frac", "clip/cov_tokens", "clip/kl_cov_tokens")


def run_step(st: RunState, cfg: TrainConfig, task, pool, reference, memory: StepMemory, events_log) -> dict:
    """One optimizer step: collect -> select -> advantages -> update -> the step's metrics row.

    With W ranks each rank samples, scores and trains on its shard; the samples' metrics are
    computed over every rank's samples (gathered), the loss terms summed, times and memory taken
    at their maximum, so the row describes the whole step and is the same on every rank."""
    world, step = st.world, st.step
    for group in st.optimizer.param_groups:
        group["lr"] = cfg.lr * min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
    memory_before = memory.start(step)
    started = time.perf_counter()
    st.policy.module.eval()
    with distributed.decoding(st.policy, world):
        generated = st.sampler.collect(st.policy, task, pool, st.sampling_seed(step, 0))  # this rank's samples
    st.policy.module.train()
    # Entropy, lengths and rewards describe the policy: every generated sample counts, every rank's.
    samples = gather_samples(world, generated.samples(st.policy.stop_ids), generated.round_groups)  # N rows
    check_reward_failures(samples.failures, samples.rows, cfg, step, events_log,
                          samples.failure_ranks if world.parallel else None)
    selected = select_for_training(generated, cfg)  # --group-filter, --downsample: this rank's N' ≤ N rows
    batch = generated.batch if selected.rows is None else select_rows(generated.batch, selected.rows)
    advantages = group_advantages(advantage_function(cfg), selected.rewards, selected.group_sizes)  # (N',)
    step_selection = select_for_training(samples, cfg) if world.parallel else selected  # the whole step's

    entropy = masked_mean(samples.entropy, samples.completion_mask)
    st.controller.update(entropy)  # the coefficient of this step's loss reacts to its own entropy
    loss_generator = torch.Generator().manual_seed(st.sampling_seed(step, 2))
    trained_rows = sum(step_selection.group_sizes)
    totals = None  # one process: train_step normalises by its own batch
    if world.parallel:
        trained_mask = samples.completion_mask if step_selection.rows is None else \
            samples.completion_mask[step_selection.rows]
        totals = (max(1, int(trained_mask.sum())), trained_rows)  # the loss normaliser of the whole step
        if trained_rows and not batch.num_rows:  # none of this rank's groups kept: it still joins the all-reduce
            batch, advantages = idle_batch(generated.batch), advantages.new_zeros(1)
    if trained_rows:
        try:
            result = train_step(st.policy, st.optimizer, batch, advantages, cfg, reference,
                                entropy_coef=st.entropy_coef, generator=loss_generator, scorer=st.scorer,
                                totals=totals)
        except RuntimeError as err:
            if world.parallel and distributed.is_comm_error(err):
                raise world.lost("the gradient all-reduce", err) from None
            raise
    else:  # --group-filter found no group with signal within its budget: nothing to learn from
        result = no_update()
    local = {"perf/step_seconds": time.perf_counter() - started, "perf/rollout_seconds": generated.sampling_seconds,
             "perf/peak_memory_mib": memory.peak(), "sampling/extra_seconds": generated.metrics["sampling/extra_seconds"]}
    if memory_before is not None:  # a probe step (StepMemory)
        local["perf/memory_before_step_mib"] = memory_before
    update, skipped, local = reduce_update(world, step, result, local, trained_rows)
    st.bad_steps = st.bad_steps + 1 if skipped else 0
    if skipped:
        events_log.write({"event": "nan_skip", "step": step, "cause": skipped, "in_a_row": st.bad_steps,
                          "message": f"non-finite {skipped}; the update was not applied"})
    p10, p50, p90 = masked_quantiles(samples.entropy, samples.completion_mask)
    lengths = samples.completion_mask.sum(dim=1)  # (N,)
    penalty = 0.0 if not cfg.overlong_buffer else float(
        overlong_penalty(lengths, cfg.max_new_tokens, cfg.overlong_buffer, cfg.overlong_penalty).mean())
    generated_tokens = int(lengths.sum())
    return {
        "step": step,
        "reward/mean": samples.reward_mean(),
        "reward/std": float(samples.task_rewards.std(unbiased=False)),
        "reward/zero_signal_frac": samples.zero_signal_frac(),
        "reward/errors": len(samples.failures),
        "reward/timeouts": sum(f.kind == TIMEOUT for f in samples.failures),
        **st.reward_monitor.update(samples.reward_mean()),
        "entropy/mean": entropy,
        **st.monitor.update(entropy),
        "entropy/p10": p10, "entropy/p50": p50, "entropy/p90": p90,
        "diversity/answers": answer_diversity(samples.answers, samples.group_sizes),
        **update,
        "control/entropy_coef": st.entropy_coef,
        "control/rollbacks": st.rollbacks,
        "optim/lr": st.optimizer.param_groups[0]["lr"],
        "optim/skipped": int(skipped is not None),
        "completion/mean_length": float(lengths.float().mean()),
        "completion/truncated_frac": float(samples.truncated.float().mean()),
        "perf/rollout_tokens_per_s": generated_tokens / max(local["perf/rollout_seconds"], 1e-9),
        **generated.metrics, **step_selection.metrics, **local,
        "reward/overlong_penalty": penalty,
    }


def idle_batch(batch):
    """One row of `batch` with no token to train on: a rank none of whose groups were kept runs
    it so that it still takes part in the gradient all-reduce (its loss and gradient are 0)."""
    row = select_rows(batch, torch.zeros(1, dtype=torch.long))
    return dataclasses.replace(row, completion_mask=torch.zeros_like(row.completion_mask))


def reduce_update(world: World, step: int, result: StepResult, local: dict, trained_rows: int) -> tuple:
    """The update's metrics, skip decision and timings of the whole step -> (metrics, skipped,
    timings). One process: unchanged. W ranks: loss terms summed (each rank's is its share of the
    global normaliser), times and memory at their maximum; grad/norm is the same on every rank
    (the gradients were all-reduced before it was taken)."""
    if not world.parallel:
        return result.metrics, result.skipped, local
    every = world.gather((result.metrics, result.skipped, local), "reducing the step's metrics")
    skipped = {s for _, s, _ in every}
    if None in skipped and len(skipped) > 1:
        ranks = ", ".join(f"rank {r}: {'applied' if s is None else 'skipped (non-finite ' + s + ')'}"
                          for r, (_, s, _) in enumerate(every))
        raise RunFailed(f"step {step}: the ranks disagree on applying the update ({ranks}), so their weights now "
                        "differ; re-run the same command to resume from the last checkpoint", every_rank=True)
    metrics = dict(every[0][0])
    for key in metrics:
        if key in SUMMED_UPDATE_METRICS:
            metrics[key] = sum(m.get(key, 0.0) for m, _, _ in every)
        elif key.startswith("perf/"):
            metrics[key] = max(m.get(key, 0.0) for m, _, _ in every)
    # What the loss trained on, of the tokens selected: < 1 only with --top-entropy-tokens, refused with W > 1.
    metrics["tokens/trained_frac"] = 1.0 if trained_rows else 0.0
    timings = {key: max(t[key] for _, _, t in every if key in t) for key in {k for _, _, t in every for k in t}}
    return metrics, "/".join(sorted(skipped)) if None not in skipped else None, timings


def check_reward_failures(failures: list[RewardFailure], calls: int, cfg: TrainConfig, step: int, events_log,
                          ranks: list[int] | None = None) -> None:
    """One `reward_error` event per failure kind of the step (count, first item id, its message);
    stops the run when the step's failed share of its `calls` exceeds --max-reward-error-frac.
    With data parallelism `failures` and `calls` are every rank's (the decision is the same on
    every rank, and the same as one process's) and `ranks` says which rank made each failed call."""
    counts = Counter(f.kind for f in failures)
    first_of_kind: dict = {}
    for failure in failures:
        first_of_kind.setdefault(failure.kind, failure)
    for kind, failure in first_of_kind.items():
        events_log.write({"event": "reward_error", "step": step, "kind": kind, "count": counts[kind],
                          "item": failure.item_id, "message": failure.detail})
    if len(failures) > cfg.max_reward_error_frac * calls:
        kinds = ", ".join(f"{count} {kind}" for kind, count in counts.items())
        if ranks:
            per_rank = Counter(ranks)
            kinds += "; " + ", ".join(f"rank {rank}: {per_rank[rank]} failed" for rank in sorted(per_rank))
        stop_failed(events_log, step, f"--max-reward-error-frac: {len(failures)} of {calls} verifier calls "
                    f"failed at step {step} ({kinds}), more than {cfg.max_reward_error_frac:g} of them; see the "
                    "reward_error events in events.jsonl, fix the verifier (or raise --reward-timeout or "
                    "--max-reward-error-frac) and re-run the same command to resume")


def stop_failed(events_log, step: int, message: str) -> None:
    """Ends a run that cannot go on: a `stop` event, then RunFailed (exit 1); no checkpoint is written."""
    events_log.write({"event": "stop", "step": step, "message": message})
    raise RunFailed(message, every_rank=True)  # every rank reaches the same decision from the same values


def on_collapse(st: RunState, run: RunDir, cfg: TrainConfig, step: int, onset: int, events_log, bar,
                kind: str = "entropy") -> str:
    """Acts on a detected entropy (or, kind="reward", training-reward) collapse per --on-collapse;
    returns the action taken. Events: `collapse` for entropy, `reward_collapse` for reward."""
    if kind == "entropy":
        measured = {"onset": onset, "entropy_ema": st.monitor.ema, "entropy_initial": st.monitor.initial,
                    "collapse_ratio": cfg.collapse_ratio, "patience": cfg.collapse_patience}
        message = (f"entropy collapse: EMA {st.monitor.ema:.4f} nats < {cfg.collapse_ratio} x step-0 "
                   f"{st.monitor.initial:.4f} since step {onset} ({cfg.collapse_patience} steps)")
    else:
        measured = {"onset": onset, "reward_ema": st.reward_monitor.ema, "reward_ema_best": st.reward_monitor.best,
                    "collapse_ratio": cfg.reward_collapse_ratio, "patience": cfg.reward_collapse_patience}
        message = (f"reward collapse: training-reward EMA {st.reward_monitor.ema:.4f} < {cfg.reward_collapse_ratio} x "
                   f"its best {st.reward_monitor.best:.4f} since step {onset} ({cfg.reward_collapse_patience} steps)")
    events_log.write({"event": "collapse" if kind == "entropy" else "reward_collapse", "step": step,
                      "message": message, **measured})
    action = cfg.on_collapse
    if action == "rollback" and st.rollbacks >= cfg.max_rollbacks:
        action = "stop"
        message += f"; --max-rollbacks {cfg.max_rollbacks} reached"
    if action == "warn":
        bar.warn(f"warning: {message} (step {step}); --on-collapse stop|rollback acts on it")
        return action
    if action == "stop":
        st.stopped = f"{kind} collapse at step {onset}"
        events_log.write({"event": "stop", "step": step, "message": message + "; run stopped", **measured})
        bar.warn(f"stopping: {message}")
        return action
    target, _ = shared_checkpoint(st.world, lambda: (load_latest(run.checkpoints, before=onset), None))
    st.rollbacks += 1
    if target is None:
        st.reset_to_start()
    else:
        st.load_state_dict(target, keep_counters=True)
    events_log.write({"event": "rollback", "step": step, "to_step": st.step, "rollbacks": st.rollbacks,
                      "entropy_coef": st.entropy_coef, **measured,
                      "message": f"{message}; rolled back to step {st.step}, entropy coefficient now "
                                 f"{st.entropy_coef:g} (rollback {st.rollbacks} of at most {cfg.max_rollbacks})"})
    bar.warn(f"rollback to step {st.step}: {message}")
    return action


def summarize(run: RunDir, cfg: TrainConfig, already_done: bool = False) -> dict:
    """Reads metrics.jsonl back: first/last-10-step reward and entropy, step time, last eval."""
    rows = [json.loads(line) for line in run.metrics_file.read_text().splitlines() if line.strip()]
    steps = [r for r in rows if r.get("step", 0) >= 1 and "reward/mean" in r]
    window = min(10, len(steps))
    mean = lambda key, part: sum(r[key] for r in part) / len(part)  # noqa: E731
    first, last = steps[:window], steps[-window:]
    seconds = sorted(r["perf/step_seconds"] for r in steps)
    summary = {
        "steps": len(steps), "out": str(run.root),
        "reward_first10": mean("reward/mean", first), "reward_last10": mean("reward/mean", last),
        "entropy_first10": mean("entropy/mean", first), "entropy_last10": mean("entropy/mean", last),
        "entropy_retention_final": steps[-1]["entropy/retention"],
        "step_seconds_median": seconds[len(seconds) // 2],
        "peak_memory_mib": max(r["perf/peak_memory_mib"] for r in steps),
        "samples_generated": steps[-1].get("sampling/generated_total"),  # None for runs before it was logged
    }
    evals = [r for r in rows if f"eval/{HEADLINE}" in r]
    line = (f"{'already complete: ' if already_done else ''}{len(steps)} steps, K={cfg.k}, "
            f"{summary['step_seconds_median']:.3f} s/step (median) | reward {summary['reward_first10']:.3f} -> "
            f"{summary['reward_last10']:.3f} (mean of first/last {window} steps) | entropy "
            f"{summary['entropy_first10']:.3f} -> {summary['entropy_last10']:.3f} nats")
    if evals:
        e = evals[-1]
        summary["eval"] = {k: v for k, v in e.items() if k.startswith("eval/")}
        line += (f" | {HEADLINE} {e[f'eval/{HEADLINE}']:.3f} [{e[f'eval/{HEADLINE}_ci_low']:.3f}, "
                 f"{e[f'eval/{HEADLINE}_ci_high']:.3f}] at step {e['step']}, n={e['eval/n_problems']}")
        if f"eval/{HEADLINE}_gain" in e:
            line += (f", gain {e[f'eval/{HEADLINE}_gain']:+.1f} pts [{e[f'eval/{HEADLINE}_gain_ci_low']:+.1f}, "
                     f"{e[f'eval/{HEADLINE}_gain_ci_high']:+.1f}]")
    if (run.best / "best.json").is_file():
        summary["best"] = json.loads((run.best / "best.json").read_text())
        line += f" | best {summary['best']['metric']} {summary['best']['value']:.3f} at step {summary['best']['step']} (best/)"
    summary["line"] = line + f" | {run.root}"
    return summary


class _Progress:
    """A rich progress bar: step, reward, entropy, last hm@4, ETA. Silent when disabled; `mute`
    (ranks other than 0) silences its warnings too."""

    def __init__(self, cfg: TrainConfig, enabled: bool, console=None, mute: bool = False) -> None:
        self.enabled = enabled and not mute
        self.mute = mute
        self.total = cfg.steps
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn(f"[bold]K={cfg.k}[/]"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeRemainingColumn(),
            console=console or Console(stderr=True), transient=False,
        )

    def start(self, completed: int) -> None:
        if self.enabled:
            self.progress.start()
            self.task = self.progress.add_task("train", total=self.total, completed=completed, stats="")

    def update(self, step: int, row: dict, last_eval: dict) -> None:
        if not self.enabled:
            return
        stats = f"reward {row['reward/mean']:.3f}  entropy {row['entropy/mean']:.3f}"
        if f"eval/{HEADLINE}" in last_eval:
            stats += f"  {HEADLINE} {last_eval[f'eval/{HEADLINE}']:.3f}"
        self.progress.update(self.task, completed=step, stats=stats)

    def stop(self) -> None:
        if self.enabled:
            self.progress.stop()

    def warn(self, message: str) -> None:
        """A visible warning, above the bar when there is one."""
        if self.mute:
            return
        if self.enabled:
            self.progress.console.print(f"[bold yellow]{message}[/]")
        else:
            print(message, file=sys.stderr)
