"""What a run does when something goes wrong: too many failed verifier calls, an entropy or
training-reward collapse (--on-collapse warn|stop|rollback), and a stop that ends the run."""
from __future__ import annotations

from collections import Counter

from rlvr.config import RunFailed, TrainConfig
from rlvr.rewards.pool import RewardFailure
from rlvr.train.checkpoint import load_latest
from rlvr.train.rundir import RunDir
from rlvr.train.state import RunState, shared_checkpoint


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


def check_env_failures(records: list[dict], cfg: TrainConfig, step: int, events_log) -> None:
    """--env: an `env_error` event for a step whose environments failed on their side (a reset,
    get_reward or close that raised or hung, a tool past --env-timeout), with the count and the
    first message; stops the run when more than --max-reward-error-frac of the step's episodes
    (`records`: every rank's) had such a failure."""
    failed = [r for r in records if r["env_failures"]]
    if not failed:
        return
    notes = [note for r in failed for note in r.get("failure_notes", [])]
    events_log.write({"event": "env_error", "step": step, "episodes": len(failed),
                      "failures": sum(r["env_failures"] for r in failed),
                      "message": notes[0] if notes else "an environment call failed"})
    if len(failed) > cfg.max_reward_error_frac * len(records):
        stop_failed(events_log, step, f"--max-reward-error-frac: the environment failed in {len(failed)} of "
                    f"{len(records)} episodes at step {step} (first: {notes[0] if notes else 'unknown'}); see the "
                    "env_error events in events.jsonl, fix the environment (or raise --env-timeout or "
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
