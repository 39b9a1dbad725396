"""The state of a run that a checkpoint restores (RunState), the seeds of its random streams,
and the reading of a checkpoint that every rank shares."""
from __future__ import annotations

import dataclasses

import torch

from rlvr import distributed
from rlvr.algo.correction import DriftDetector
from rlvr.algo.entropy import (AdaptiveEntropyCoefficient, CollapseDetector, EntropyCoefficient, EntropyMonitor,
                               RewardMonitor)
from rlvr.algo.noise import GradientNoiseMonitor
from rlvr.backends import ModelSettings, load_policy
from rlvr.config import RunFailed, TrainConfig
from rlvr.distributed import SINGLE, World
from rlvr.rollout.forward import Scorer
from rlvr.rollout.strategies import Sampler
from rlvr.train.checkpoint import rng_state, set_rng_state
from rlvr.train.pipeline import on_cpu
from rlvr.types import Truncation


def stream_seed(seed: int, step: int, stream: int = 0) -> int:
    """Independent, reproducible seeds per (run seed, step, stream): 0 sampling, 1 evaluation."""
    return (seed * 1_000_003 + step * 7_919 + stream * 104_729) % (2**63 - 1)


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
        self.scorer = distributed.wrap_scorer(Scorer(self.policy, cfg.temperature, truncation=Truncation.of(cfg)), world)
        self.monitor = EntropyMonitor(half_life=10)
        self.controller = make_entropy_controller(cfg)
        self.detector = CollapseDetector(cfg.collapse_ratio, cfg.collapse_patience)
        self.reward_monitor = RewardMonitor(half_life=10)
        self.reward_detector = CollapseDetector(cfg.reward_collapse_ratio, cfg.reward_collapse_patience)
        self.drift = DriftDetector(cfg.drift_threshold, cfg.drift_patience)  # --engine vllm: mismatch/kl's EMA
        self.noise_monitor = GradientNoiseMonitor(half_life=10)  # grad/noise_scale_ema (--grad-noise)
        self.best: dict | None = None  # the best evaluation so far: step, value, per-problem values (--keep-best)
        self.evals_without_gain = 0  # evaluations since the last significant gain over the best (--early-stop)
        self.sampler = Sampler(cfg, world)  # prompt stream position, --adaptive-k's estimator
        self.baseline_eval: list[dict] | None = None  # step-0 per-problem results, for paired gains
        self.step = 0
        self.rollbacks = 0  # run-level: survives rollbacks, restored on resume
        self.bad_steps = 0  # consecutive steps skipped for a non-finite loss or gradient
        self.stopped: str | None = None  # why the run ended early, if it did
        # --max-staleness: this rank's rollouts generated ahead, by the step that trains on them (rlvr.train.pipeline)
        self.pending: dict = {}

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
                "evals_without_gain": self.evals_without_gain, "drift": self.drift.state_dict(),
                "grad_noise": self.noise_monitor.state_dict(), **self.pending_state()}

    def pending_state(self) -> dict:
        """--max-staleness: every rank's pending rollouts, in rank order (each rank resumes with its
        own); nothing for a synchronous run."""
        if not self.cfg.max_staleness:
            return {}
        mine = on_cpu(self.pending)
        every = self.world.gather(mine, "saving the pending rollouts") if self.world.parallel else [mine]
        return {"pending_rollouts": every}

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
        if "drift" in state:  # absent from checkpoints written before --engine
            self.drift.load_state_dict(state["drift"])
        if "grad_noise" in state:  # absent from checkpoints written before the gradient-noise measurement
            self.noise_monitor.load_state_dict(state["grad_noise"])
        if not keep_counters:
            self.rollbacks, self.stopped = state["rollbacks"], state["stopped"]
        self.pending = self.pending_of(state)

    def pending_of(self, state: dict) -> dict:
        """This rank's pending rollouts in a checkpoint (--max-staleness); RunFailed when they were
        sampled by another number of ranks, whose shards this rank cannot take over."""
        every = state.get("pending_rollouts")
        if not self.cfg.max_staleness or every is None:
            return {}
        if len(every) != self.world.size and any(every):
            raise RunFailed(f"this checkpoint (step {state['step']}) holds rollouts sampled ahead by {len(every)} "
                            f"process(es), each for its own shard of the prompts, and this run has "
                            f"{self.world.size}: resume it with --nproc {len(every)}")
        return dict(every[self.world.rank]) if len(every) == self.world.size else {}

    def reset_to_start(self) -> None:
        """Back to the starting model (a rollback with no checkpoint before the onset)."""
        kept = self.rollbacks, self.baseline_eval, self.best, self.evals_without_gain
        self.__init__(self.cfg, self.device, self.world)
        self.rollbacks, self.baseline_eval, self.best, self.evals_without_gain = kept

    def save_model(self, save) -> None:
        """`save(policy)` on rank 0. With --fsdp the weights are first gathered (collective) into
        an unsharded CPU copy of the model, so final/ and best/ hold the same files as 1 process."""
        if self.world.fsdp:
            full = distributed.full_model_state(self.policy)
            if self.world.main:
                copy = load_policy(self.cfg.model, dataclasses.replace(ModelSettings.of(self.cfg), device="cpu"))
                copy.load_trainable_state_dict(full)
                save(copy)
        elif self.world.main:
            save(self.policy)


def shared_checkpoint(world: World, read) -> tuple:
    """`read()` -> (checkpoint state or None, anything else), run on rank 0 only, with its result
    on every rank. With --fsdp the state's weights and optimizer state stay on rank 0
    (RunState.load_state_dict broadcasts them shard by shard); everything else is sent along."""
    reader = _RankZeroRead(read, world.fsdp)
    state, extra = world.agree(reader, "reading the checkpoint")
    return (reader.state if world.main else state), extra


class _RankZeroRead:
    """Rank 0's side of shared_checkpoint: keeps the full state it read, returns what is sent."""

    def __init__(self, read, fsdp: bool) -> None:
        self.read, self.fsdp, self.state = read, fsdp, None

    def __call__(self) -> tuple:
        self.state, extra = self.read()
        sent = self.state
        if sent is not None and self.fsdp:
            sent = {k: v for k, v in sent.items() if k not in ("model", "optimizer")}
        return sent, extra
