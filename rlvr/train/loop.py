"""The RLVR training loop: one run of group-sampled clipped policy gradient.

Run it:  rlvr train --k 8 --steps 100 --out runs/k8      (or rlvr.train.train(TrainConfig(...)))
         rlvr train --nproc 4 ...  or  torchrun --nproc-per-node 4 -m rlvr train ...
         (data parallel: each rank takes a shard of the step's prompts; the same run as one
         process, see rlvr/distributed.py and docs/distributed.md)

`train()` checks the config, sets up (run directory, model, resume), then loops: a step
(rlvr/train/step.py), an evaluation every --eval-every steps (rlvr/train/evaluator.py), the
collapse detectors (rlvr/train/guards.py) and a checkpoint; and finishes with final/ and the
summary. One step, data flowing one way:
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

import os
from functools import partial

import torch

from rlvr import distributed
from rlvr.config import ConfigError, RunFailed, TrainConfig, to_dict
from rlvr.distributed import World
from rlvr.rewards.pool import RewardPool, WeightedPool, WorkerStartError, open_pool
from rlvr.rollout.engines import EngineSettings, describe_engine, open_engine
from rlvr.tasks import get_task
from rlvr.train.checkpoint import clean_temporaries, load_latest, save_checkpoint
from rlvr.train.evaluator import InTrainingEval
from rlvr.train.guards import on_collapse, stop_failed
from rlvr.train.memory import StepMemory
from rlvr.train.pipeline import RolloutSource
from rlvr.train.preflight import check_train_config, eval_verifier, resolved_task_options
from rlvr.train.progress import Progress
from rlvr.train.rundir import RunDir, RunLogs, summarize
from rlvr.train.state import RunState, shared_checkpoint
from rlvr.train.step import fuses_view, run_step

CHECK_ENGINE_WEIGHTS_ENV = "RLVR_TEST_ENGINE_WEIGHTS"  # test hook: compare the engines' weights after every update


def train(cfg: TrainConfig, progress: bool = True, console=None) -> dict:
    """Runs (or resumes) one training run; returns the summary ({} on ranks other than 0).
    Raises ConfigError on bad input, before any work starts.

    Launched by torchrun (or `rlvr train --nproc N`), this process is one of W ranks: it joins
    the process group, trains on its shard of every step and leaves the writing to rank 0."""
    check_train_config(cfg)
    world = distributed.start(cfg.device, cfg.dist_timeout, cfg.fsdp)
    try:
        return Training(cfg, world, progress, console).run()
    finally:
        distributed.stop(world)


def check_run_dir(run: RunDir, cfg: TrainConfig) -> None:
    """Rank 0, before any work: --out must hold no run of another config (or --force empties it)."""
    run.check_compatible(cfg)
    if cfg.force:
        run.start_fresh()


def prepare_run_dir(run: RunDir, cfg: TrainConfig, world_size: int) -> tuple[dict | None, bool]:
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


class Training:
    """One run in this process, set up and resumed by the constructor: the RunState a checkpoint
    restores (`st`) and what lives beside it only while the process runs (the run directory and
    its logs, the task, the reference model, the reward workers, the progress bar)."""

    def __init__(self, cfg: TrainConfig, world: World, progress: bool, console) -> None:
        self.cfg, self.world = cfg, world
        threads = cfg.threads
        if not threads and world.parallel and cfg.device == "cpu":  # the ranks of a machine share its cores
            threads = max(1, (os.cpu_count() or 1) // world.local_size)
        if threads:
            torch.set_num_threads(threads)
        self.run_dir = RunDir(cfg)
        world.agree(partial(check_run_dir, self.run_dir, cfg), "checking the run directory")
        self.task_options = resolved_task_options(cfg)
        self.task = get_task(cfg.task, seed=cfg.seed, answer_format=cfg.answer_format, options=self.task_options)
        self.st = RunState(cfg, torch.device(cfg.device), world)
        self.reference = self.st.policy.reference() if cfg.beta > 0 else None  # the start policy, before any resume
        state, self.final_written = shared_checkpoint(world, partial(prepare_run_dir, self.run_dir, cfg, world.size))
        if state is not None:
            self.st.load_state_dict(state)
        self.logs = RunLogs(self.run_dir, cfg, self.st.step, world.main)
        # What samples the rollouts (--engine); vLLM loads its copy of the weights here, before any step.
        try:
            self.engine = open_engine(EngineSettings.of(cfg), cfg.model, self.st.policy,
                                      max_new_tokens=cfg.max_new_tokens, rows=cfg.prompts_per_step * cfg.k, world=world)
        except ConfigError:
            self.logs.close()
            raise
        self.check_engine_weights = (self.engine.external and os.environ.get(CHECK_ENGINE_WEIGHTS_ENV) == "1"
                                     and self.engine.tp == 1)  # a TP engine holds shards: whole tensors cannot match
        self.log_start()
        self.bar = Progress(cfg, enabled=progress and not cfg.quiet, console=console, mute=not world.main)
        self.pool: RewardPool | WeightedPool | None = None
        self.eval_pool: RewardPool | None = None
        self.source: RolloutSource | None = None  # --max-staleness: the rollouts generated ahead
        self.last_eval: dict = {}

    def log_start(self) -> None:
        """The model, the ranks and a resume, as the run's first events."""
        cfg, world, step = self.cfg, self.world, self.st.step
        model = self.st.policy.describe()
        self.logs.events.write({"event": "model", "step": step, **model,
                                "message": f"{cfg.model}: {model['backend']} backend, {model['parameters']:,} "
                                           f"parameters, {model['trainable_parameters']:,} trained"})
        if self.engine.external:
            facts = describe_engine(self.engine)
            fused = fuses_view(cfg, self.engine)
            where = "" if not world.parallel else (
                f", one engine on each of the {world.size} ranks" if facts["engine_tp"] == 1 else
                f", one engine per {facts['engine_tp']} ranks (tensor parallel)")
            self.logs.events.write({"event": "engine", "step": step, **facts, "trainer_view":
                                    "fused" if fused else "separate", "message": (
                f"vLLM {facts['vllm']} ({facts['engine_dtype']}) samples the rollouts{where}, started in "
                f"{facts['engine_start_seconds']:.1f} s; the trainer's log-probs and entropies from "
                f"{'the update' + chr(39) + 's first forward' if fused else 'a forward before the update'}; "
                f"--is-correction {cfg.is_correction} (cap {cfg.is_cap:g})")})
        if world.parallel:
            self.logs.events.write({
                "event": "distributed", "step": step, "world_size": world.size, "fsdp": world.fsdp,
                "message": f"{world.size} ranks ({'nccl' if cfg.device == 'cuda' else 'gloo'}"
                           f"{', FSDP2' if world.fsdp else ', DDP'}), {cfg.prompts_per_step // world.size} "
                           f"of the {cfg.prompts_per_step} prompts of a step each"})
        if cfg.max_staleness:
            self.logs.events.write({
                "event": "async", "step": step, "max_staleness": cfg.max_staleness, "mode": cfg.async_mode,
                "stale_loss": cfg.stale_loss, "pending": len(self.st.pending), "message": (
                    f"rollouts up to {cfg.max_staleness} version(s) old: step t trains on rollouts sampled by the "
                    f"weights after step t−1−{cfg.max_staleness}, generated "
                    f"{'in a thread while earlier steps train' if cfg.async_mode == 'concurrent' else 'in the training thread (deterministic)'}; "
                    + ("PPO clipped against the policy at the train step, weighted by --is-correction "
                       f"{cfg.is_correction} (cap {cfg.is_cap:g}) of its ratio to the sampler's"
                       if cfg.stale_loss == "decoupled" else "PPO clipped against the sampler's log-probs (naive)")
                    + (f"; {len(self.st.pending)} step(s) of rollouts restored" if self.st.pending else ""))})
        if step:
            self.logs.events.write({"event": "resume", "step": step, "message": f"resumed from checkpoint at step "
                                                                               f"{step} with {world.size} process(es)"})

    def run(self) -> dict:
        """Trains to --steps (or an early stop) and finishes -> the summary ({} on ranks but 0)."""
        st, cfg = self.st, self.cfg
        if (st.step >= cfg.steps or st.stopped) and self.final_written:
            self.logs.close()
            return summarize(self.run_dir, cfg, already_done=True) if self.world.main else {}
        verifier = eval_verifier(cfg)
        self.pool = self.start_reward_pool(cfg.reward)
        try:
            if cfg.eval_every or cfg.passk_eval_samples:  # the evaluations' verifier: the training pool when it is the same one
                self.eval_pool = self.pool if verifier == cfg.reward else self.start_reward_pool(verifier, "eval_reward")
            self.evaluate = InTrainingEval(cfg, self.world, self.run_dir, self.task, self.eval_pool, verifier,
                                           self.engine)
            if cfg.max_staleness:
                self.source = RolloutSource(st, cfg, self.task, self.pool, self.engine)
            if st.step == 0 and cfg.eval_every:
                self.last_eval = self.evaluate(st, 0, self.logs)
                self.logs.metrics.write({"step": 0, **self.last_eval})
            if st.step == 0:
                self.evaluate.passk(st, 0, self.logs)
            self.bar.start(st.step)
            self.loop(StepMemory(cfg.device))
            self.evaluate.passk(st, st.step, self.logs)  # the end (of --steps, or of a stopped run)
        except RunFailed:
            self.logs.events.close()
            raise
        finally:
            if self.source is not None:
                self.source.close()
            self.pool.close()
            if self.eval_pool is not None and self.eval_pool is not self.pool:
                self.eval_pool.close()
            self.engine.close()
            self.bar.stop()
            self.logs.close_rows()
        return self.finish()

    def start_reward_pool(self, reward: str, field_name: str = "reward") -> RewardPool | WeightedPool:
        """The verifier's worker processes on every rank; exit 2 when any rank's cannot load it."""
        cfg, world = self.cfg, self.world
        try:
            pool = open_pool(reward, cfg.task, cfg.seed, cfg.reward_workers, cfg.reward_timeout, cfg.answer_format,
                             self.task_options)
            pool_error = None
        except WorkerStartError as err:
            pool, pool_error = None, str(err)
        errors = [(rank, e) for rank, e in enumerate(world.gather(pool_error, "starting the reward workers")) if e]
        if not errors:
            return pool
        if pool is not None:
            pool.close()
        self.logs.close()
        rank, error = errors[0]
        raise ConfigError(field_name, f"the reward workers{f' of rank {rank}' if world.parallel else ''} could not "
                                      f"load it: {error}")

    def loop(self, memory: StepMemory) -> None:
        """Step, evaluate, log, guard, checkpoint: until --steps, a stop, or an early stop."""
        st, cfg = self.st, self.cfg
        while st.step < cfg.steps:
            st.step += 1
            step = st.step
            row = run_step(st, cfg, self.task, self.pool, self.reference, memory, self.logs.events, self.engine,
                           self.source)
            if self.check_engine_weights:
                self.compare_engine_weights(step)
            if cfg.eval_every and step % cfg.eval_every == 0:
                self.settle()  # the evaluation shares the reward pool (and vLLM) with the generator
                self.last_eval = self.evaluate(st, step, self.logs)
                row.update(self.last_eval)
            self.logs.metrics.write(row)
            self.bar.update(step, row, self.last_eval)
            if cfg.max_bad_steps and st.bad_steps >= cfg.max_bad_steps:
                stop_failed(self.logs.events, step, f"--max-bad-steps: {st.bad_steps} steps in a row (up to step "
                            f"{step}) had a non-finite loss or gradient and were skipped; the newest checkpoint holds "
                            "the last good weights. Lower --lr or --max-grad-norm, or raise --max-bad-steps")
            if self.early_stop(step) or self.detect_drift(step, row):
                self.checkpoint()
                return
            action = self.detect_collapse(step)
            if action == "stop":
                self.checkpoint()
                return
            if action == "rollback":
                self.logs.rewind(st.step)
                self.bar.update(st.step, row, self.last_eval)
                continue
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps:
                self.checkpoint()

    def compare_engine_weights(self, step: int) -> None:
        """Test hook (RLVR_TEST_ENGINE_WEIGHTS=1, --engine vllm): after the step's update, every rank
        reloads the trained weights into its engine, reads them back and compares them, tensor by
        tensor, with its trained weights (VLLMEngine.weight_digests); rank 0 writes every rank's
        digests as an `engine_weights` event."""
        st = self.st
        self.engine.sync(st.policy)
        mine = self.engine.weight_digests(st.policy)
        every = self.world.gather(mine, "comparing the engines' weights")
        equal = all(not d["differ"] and d["engine"] == d["trained"] for d in every)
        self.logs.events.write({"event": "engine_weights", "step": step, "updates": st.policy.updates,
                                "ranks": every, "equal": equal, "message": (
                                    f"engine weights after update {st.policy.updates}: " + ", ".join(
                                        f"rank {r} {d['engine'][:12]} vs trained {d['trained'][:12]}"
                                        for r, d in enumerate(every)))})

    def early_stop(self, step: int) -> bool:
        """--early-stop: that many evaluations in a row without a significant gain over the best."""
        st, cfg = self.st, self.cfg
        if not (cfg.early_stop and st.evals_without_gain >= cfg.early_stop):
            return False
        st.stopped = f"early stop at step {step}"
        self.logs.events.write({"event": "early_stop", "step": step, "best_step": st.best["step"],
                                "best_value": st.best["value"], "message": (
                                    f"--early-stop: {st.evals_without_gain} evaluations without a significant gain "
                                    f"over {cfg.keep_best} {st.best['value']:.3f} at step {st.best['step']}")})
        return True

    def detect_drift(self, step: int, row: dict) -> bool:
        """--engine vllm: the EMA of mismatch/kl above --drift-threshold for --drift-patience steps
        -> the --on-drift action (an event either way); True when the run stops."""
        st, cfg = self.st, self.cfg
        # (the rlvr engine's stale rollouts have mismatch/*, but that is staleness, not engine drift)
        if not self.engine.external or "mismatch/kl" not in row or not st.drift.update(step, row["mismatch/kl"]):
            return False
        detail = (f"engine drift at step {step}: the EMA of mismatch/kl is {st.drift.ema:.3g} nats per token, above "
                  f"--drift-threshold {cfg.drift_threshold:g} for {cfg.drift_patience} steps")
        event = {"event": "drift", "step": step, "kl_ema": st.drift.ema, "action": cfg.on_drift}
        if cfg.on_drift == "resync":
            seconds = self.engine.resync(st.policy)
            st.drift.reset()
            self.logs.events.write({**event, "message": f"{detail}; every weight reloaded into the engine and its "
                                                        f"prefix cache dropped ({seconds:.2f} s)"})
            return False
        if cfg.on_drift == "stop":
            st.stopped = f"engine drift at step {step}"
            self.logs.events.write({**event, "message": f"{detail}; the run stops (--on-drift stop)"})
            return True
        self.logs.events.write({**event, "message": f"{detail} (--on-drift warn: training goes on; resync reloads "
                                                    "the engine's weights, stop ends the run)"})
        return False

    def detect_collapse(self, step: int) -> str | None:
        """Updates the entropy and the training-reward detectors -> the action taken on an onset
        (warn, stop or rollback), or None. A stop or rollback on the first ends the check."""
        st = self.st
        action = None
        onsets = (("entropy", st.detector.update(step, st.monitor.ema, st.monitor.initial)),
                  ("reward", st.reward_detector.update(step, st.reward_monitor.ema, st.reward_monitor.best)))
        for kind, onset in onsets:
            if onset is not None:
                self.settle()  # a rollback restores the sampler and the pending rollouts: none may be in flight
                action = on_collapse(st, self.run_dir, self.cfg, step, onset, self.logs.events, self.bar, kind)
                if action != "warn":
                    break
        return action

    def settle(self) -> None:
        """--async-mode concurrent: wait for the batches in flight (they are kept, not dropped)."""
        if self.source is not None:
            self.source.settle()

    def checkpoint(self) -> None:
        self.settle()  # the pending rollouts and the sampler's position after them, together
        state = self.st.state_dict()  # with --fsdp a collective: every rank gathers, rank 0 keeps the full state
        if self.world.main:
            save_checkpoint(self.run_dir.checkpoints, self.st.step, state, keep=self.cfg.keep_checkpoints)

    def finish(self) -> dict:
        """final/, then the summary and the `done` event (rank 0)."""
        st, cfg = self.st, self.cfg
        st.save_model(partial(self.run_dir.save_final,
                              extra={"trained_by": "rlvr train", "steps": st.step, "config": to_dict(cfg)}))
        if not self.world.main:
            return {}
        summary = summarize(self.run_dir, cfg)
        if st.stopped:
            summary["stopped"] = st.stopped
            summary["line"] = f"stopped early ({st.stopped}) | " + summary["line"]
        self.logs.events.write({"event": "done", "step": st.step, "message": summary["line"]})
        self.logs.events.close()
        return summary
