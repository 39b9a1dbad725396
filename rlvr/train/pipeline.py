"""Rollouts off the critical path (--max-staleness N ≥ 1; docs/async.md).

The schedule. The weights after step s are policy version s. Step t trains on rollouts sampled
by version max(0, t − 1 − N): at the start of step t (weights at version t − 1) the rollouts of
step t + N are generated, and those of step t, generated N steps earlier, are trained on. Step 1
generates steps 1 … N + 1 with the start weights (the warm-up: staleness 0, 1, …, N), and from
step N + 1 on every step trains on rollouts exactly N versions old. Admission control is the
schedule itself: the rollouts of step t + N are started only once version t − 1 exists, so
nothing is sampled that would be more than N versions old when trained, and nothing sampled is
ever dropped (dropping stale rollouts biases training toward short, easy problems).

Two modes run the same schedule:
  deterministic  each batch is generated in the training thread, at the start of the step that
                 admits it. Nothing overlaps; tests, resumption and the study run here.
  concurrent     a generator thread samples on its own copy of the weights while the trainer
                 trains (the copy is loaded from a snapshot taken when the batch was admitted).
                 Every batch is sampled by the same weights, seeds and stream positions as in
                 the deterministic mode, so the staleness is the same, step by step.

What is kept. The batches generated ahead (this rank's) are RunState.pending, saved in every
checkpoint with the sampler's stream position after them, so a run killed at any moment resumes
bit-identical; a rollback restores them with the weights. Each batch records the version that
sampled it (Generated.policy_version), and its sampler's log-probs μ as `engine_logprobs`: the
loss (rlvr.train.step) clips against the policy at the train step and weights each token by its
ratio to μ (--stale-loss decoupled), or clips against μ (naive).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import queue
import threading
import time

import torch

from rlvr import distributed
from rlvr.config import ConfigError, RunFailed, TrainConfig
from rlvr.rollout.engines import EngineSettings, open_engine
from rlvr.rollout.strategies import Generated
from rlvr.types import RolloutBatch

# Test hook: "fail:S" or "hang:S" makes the generator raise, or block, while it samples step S's
# rollouts (tests/test_async.py).
GENERATOR_FAULT_ENV = "RLVR_TEST_GENERATOR_FAULT"


def behaviour_batch(batch: RolloutBatch) -> RolloutBatch:
    """The batch with its sampler's log-probs μ kept as `engine_logprobs` (an external engine's
    are there already): the trainer's view replaces `logprobs` when it is trained on."""
    if batch.engine_logprobs is not None:
        return batch
    return dataclasses.replace(batch, engine_logprobs=batch.logprobs.clone())


def batch_to(batch: RolloutBatch, device: torch.device) -> RolloutBatch:
    """Every tensor of the batch on `device` (a checkpoint's pending batches load on the CPU)."""
    moved = {f.name: getattr(batch, f.name).to(device) for f in dataclasses.fields(batch)
             if isinstance(getattr(batch, f.name), torch.Tensor)}
    return dataclasses.replace(batch, **moved)


def on_cpu(pending: dict[int, Generated]) -> dict[int, Generated]:
    """A copy of the pending batches with their tensors on the CPU, for a checkpoint."""
    return {step: dataclasses.replace(g, batch=batch_to(g.batch, torch.device("cpu")), task_rewards=g.task_rewards.cpu(),
                                      rewards=g.rewards.cpu()) for step, g in pending.items()}


def inject_fault(step: int) -> None:
    """The test hook GENERATOR_FAULT_ENV: fail or hang while sampling step `step`'s rollouts."""
    fault = os.environ.get(GENERATOR_FAULT_ENV, "")
    kind, _, at = fault.partition(":")
    if fault and at.isdigit() and int(at) == step:
        if kind == "hang":
            threading.Event().wait()
        raise RuntimeError(f"injected generator failure at step {step} ({GENERATOR_FAULT_ENV})")


@dataclasses.dataclass
class Job:
    step: int  # the step whose rollouts to sample
    version: int  # the policy version of `weights`
    weights: list[torch.Tensor]  # a snapshot of every parameter and buffer, in module order
    seed: int  # the step's stream seed


class RolloutSource:
    """Where a step's rollouts come from with --max-staleness N ≥ 1 (the module's docstring). The
    loop calls `take(step)` at the start of every step, `settle()` before anything that reads the
    sampler or the reward pool from the training thread (a checkpoint, an evaluation, a
    rollback), and `close()` at the end."""

    def __init__(self, st, cfg: TrainConfig, task, pool, engine) -> None:
        self.st, self.cfg, self.task, self.pool, self.engine = st, cfg, task, pool, engine
        self.generator: Generator | None = None

    def take(self, step: int) -> tuple[Generated, dict]:
        """Admits what the weights of version step − 1 may sample (the rollouts of steps up to
        step + N not yet sampled), and returns the rollouts of `step` with the step's async/...
        metrics. Raises RunFailed when the generator failed or did not deliver in time."""
        st, cfg = self.st, self.cfg
        started = time.perf_counter()
        last = max(step, min(step + cfg.max_staleness, cfg.steps))
        admitted = [s for s in range(step, last + 1) if s not in st.pending and not self.submitted(s)]
        if cfg.async_mode == "concurrent":
            gen = self.start_generator()
            if admitted:
                snapshot = [t.detach().clone() for t in model_tensors(st.policy)]
                if st.policy.device.type == "cuda":  # the copies are complete before another stream reads them
                    torch.cuda.current_stream().synchronize()
                gen.submit(admitted, step - 1, snapshot, [st.sampling_seed(s, 0) for s in admitted])
            if step not in st.pending:  # (settle() may have collected it already)
                st.pending.update(gen.wait_for(step, cfg.generator_timeout))
        else:
            for s in admitted:
                try:
                    st.pending[s] = self.generate(st.policy, self.engine, s, step - 1, st.sampling_seed(s, 0))
                except (RunFailed, ConfigError, KeyboardInterrupt):
                    raise
                except Exception as err:  # a crash of the sampler or the engine: exit 1, checkpoints intact
                    raise RunFailed(f"the rollout generator failed while sampling step {s}'s rollouts: {err!r}; "
                                    "the newest checkpoint is intact: re-run the same command to resume") from err
        waited = time.perf_counter() - started
        generated = st.pending.pop(step)
        generated.batch = batch_to(generated.batch, st.policy.device)
        generated.task_rewards = generated.task_rewards.to(generated.batch.group_ids.device)
        generated.rewards = generated.rewards.to(generated.batch.group_ids.device)
        staleness = (step - 1) - generated.policy_version
        gen_wait, refused = (0.0, 0) if self.generator is None else self.generator.take_idle()
        return generated, {"async/staleness_mean": float(staleness), "async/staleness_max": staleness,
                           "async/policy_version": generated.policy_version, "perf/async_wait_seconds": waited,
                           "perf/generator_wait_seconds": gen_wait, "perf/admission_refused": refused,
                           "async/ahead": sum(s in st.pending or self.submitted(s) for s in range(step + 1, last + 1))}

    def submitted(self, step: int) -> bool:
        return self.generator is not None and self.generator.has(step)

    def generate(self, policy, engine, step: int, version: int, seed: int) -> Generated:
        """One step's rollouts, sampled now by `policy` (version `version`) with the step's seed;
        the sampler's log-probs kept as the behaviour policy's."""
        inject_fault(step)
        policy.module.eval()
        with distributed.decoding(policy, self.st.world):
            generated = self.st.sampler.collect(policy, self.task, self.pool, seed, engine, trainer_view=False)
        policy.module.train()
        generated.batch = behaviour_batch(generated.batch)
        generated.policy_version = version
        return generated

    def start_generator(self) -> "Generator":
        if self.generator is None:
            sampler_policy = copy.deepcopy(self.st.policy)
            sampler_policy.module.requires_grad_(False)
            engine = open_engine(EngineSettings.of(self.cfg), self.cfg.model, sampler_policy,
                                 max_new_tokens=self.cfg.max_new_tokens, rows=self.cfg.prompts_per_step * self.cfg.k)
            self.generator = Generator(self, sampler_policy, engine)
        return self.generator

    def settle(self) -> None:
        """Waits until the generator holds no batch in flight and moves what it made into
        RunState.pending: then the sampler, the pending batches and the reward pool are the
        training thread's again."""
        if self.generator is not None:
            self.st.pending.update(self.generator.wait_idle(self.cfg.generator_timeout))

    def close(self) -> None:
        if self.generator is not None:
            self.generator.stop()
            self.generator = None


def model_tensors(policy) -> list[torch.Tensor]:
    """Every parameter and buffer of the policy's module, in module order."""
    return [*policy.module.parameters(), *policy.module.buffers()]


class Generator:
    """--async-mode concurrent: one daemon thread that takes admitted jobs in order, loads each
    job's weight snapshot into its own copy of the model and samples the job's step. Results and
    a failure are handed to the training thread under a lock."""

    def __init__(self, source: RolloutSource, policy, engine) -> None:
        self.source, self.policy, self.engine = source, policy, engine
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.lock = threading.Condition()
        self.done: dict[int, Generated] = {}
        self.in_flight: set[int] = set()
        self.error: BaseException | None = None
        self.idle_seconds = 0.0  # waiting for an admitted job, since the last take
        self.refused = 0  # rollouts held back: a request for more work while nothing was admitted
        self.thread = threading.Thread(target=self.run, name="rlvr-generator", daemon=True)

    def has(self, step: int) -> bool:
        with self.lock:
            return step in self.in_flight or step in self.done

    def submit(self, steps: list[int], version: int, weights: list[torch.Tensor], seeds: list[int]) -> None:
        with self.lock:
            self.in_flight.update(steps)
        for step, seed in zip(steps, seeds):
            self.jobs.put(Job(step, version, weights, seed))
        if not self.thread.is_alive() and self.thread.ident is None:  # its first jobs: start it
            self.thread.start()

    def run(self) -> None:
        cfg = self.source.cfg
        rollouts = cfg.prompts_per_step * cfg.k
        # On CUDA the generator queues its kernels on a stream of its own, so they can overlap the trainer's
        stream = torch.cuda.Stream() if self.policy.device.type == "cuda" else None
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            self.serve(rollouts, stream)

    def serve(self, rollouts: int, stream) -> None:
        while True:
            started = time.perf_counter()
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                with self.lock:
                    self.refused += rollouts  # the next step's rollouts would be too stale: not started
                job = self.jobs.get()
            with self.lock:
                self.idle_seconds += time.perf_counter() - started
            if job is None:
                return
            try:
                with torch.no_grad():
                    for mine, theirs in zip(model_tensors(self.policy), job.weights):
                        mine.copy_(theirs)
                generated = self.source.generate(self.policy, self.engine, job.step, job.version, job.seed)
                if stream is not None:  # its tensors are complete before the trainer reads them
                    stream.synchronize()
            except BaseException as err:  # handed to the training thread, which stops the run
                with self.lock:
                    self.error = err
                    self.lock.notify_all()
                return
            with self.lock:
                self.done[job.step] = generated
                self.in_flight.discard(job.step)
                self.lock.notify_all()

    def take_idle(self) -> tuple[float, int]:
        with self.lock:
            seconds, refused = self.idle_seconds, self.refused
            self.idle_seconds, self.refused = 0.0, 0
        return seconds, refused

    def _wait(self, ready, timeout: float, what: str) -> dict[int, Generated]:
        deadline = time.monotonic() + timeout
        with self.lock:
            while not ready():
                if self.error is not None:
                    raise RunFailed(f"the rollout generator failed while {what}: {self.error!r}; the newest checkpoint "
                                    "is intact: re-run the same command to resume") from self.error
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RunFailed(f"the rollout generator did not finish {what} within --generator-timeout "
                                    f"{timeout:g} s (it hangs, or is slower than that); the newest checkpoint is "
                                    "intact: re-run the same command to resume, with a larger --generator-timeout "
                                    "if it was only slow")
                self.lock.wait(min(left, 1.0))
            done, self.done = self.done, {}
        return done

    def wait_for(self, step: int, timeout: float) -> dict[int, Generated]:
        """Blocks until step `step`'s rollouts are sampled -> every batch finished so far."""
        return self._wait(lambda: step in self.done, timeout, f"sampling step {step}'s rollouts")

    def wait_idle(self, timeout: float) -> dict[int, Generated]:
        """Blocks until no admitted job is left -> every batch finished so far."""
        return self._wait(lambda: not self.in_flight, timeout, "sampling the admitted rollouts")

    def stop(self) -> None:
        """Ends the thread once its current job is done (a hung one is abandoned: it is a daemon)."""
        if self.thread.ident is not None:
            self.jobs.put(None)
            self.thread.join(timeout=1.0)
