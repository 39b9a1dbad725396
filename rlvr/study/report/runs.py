"""Run directories read back, grouped into arms, and the numbers the report shows per arm.

A run directory is what `rlvr train` writes: config.json, metrics.jsonl, evals.jsonl,
events.jsonl, and, when the run has them, samples.jsonl (a few completions per evaluation),
passk.jsonl (--passk-eval-samples), best/best.json (--keep-best) and arm.json (written by
`rlvr compare` to name the arm). Files that an older run lacks read as empty, and the numbers
built on them as None ("n/a" in the report). These light files are all a report needs: a run
whose weights are gone (a study committed without them) reads as it did, finished when its
events say so.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from rlvr.algo.stats import per_problem_values, seed_bootstrap_ci
from rlvr.train.rundir import read_jsonl

METRIC = "hm@4"
MIDPOINT = 100  # the seed's claims are about the first 100 steps
# Entropy retention at a step, as the verdicts read it: the mean of `entropy/retention` (step
# entropy over the first step's, TERMS.md) over the RETENTION_WINDOW steps up to it. One step's
# entropy swings widely late in a run (coef seed 12 of the long SmolLM2 study: 0.17-0.40 over its
# last six steps), too widely to judge against the 0.5 bar; the denominator stays the first step,
# the only one sampled from the starting policy.
RETENTION_WINDOW = 20
# The machine check of the cost ratios (`Run.probe_seconds`): a step-0 evaluation shorter than
# PROBE_MIN_SECONDS is too short to time with events' one-second stamps, and two runs of a seed
# whose step-0 evaluations took more than MACHINE_TOLERANCE times as long as each other ran on
# machines of different speed (on the long SmolLM2 study: up to 1.16x between a run and its
# seed's K=8 in one session, 1.6x between seed 11's controls and its K=8, sessions apart).
PROBE_MIN_SECONDS = 20.0
MACHINE_TOLERANCE = 1.2
CONTROL_FIELDS = ("entropy_coef", "entropy_target", "clip_cov", "kl_cov", "top_entropy_tokens")


class ReportError(ValueError):
    """Bad input to `rlvr report` (no runs found, unreadable run); the message says which."""


@dataclass
class Run:
    """One run directory, read back."""

    path: Path
    arm: str
    seed: int
    config: dict
    meta: dict  # arm.json: variant flags, match, lr scaling, order (absent for plain runs)
    rows: list  # training steps (step ≥ 1), in order
    evals: dict  # step -> evaluation (per-problem counts included)
    events: list
    status: str  # finished | stopped | incomplete | failed
    best: dict | None = None  # best/best.json: {"step", "metric", "value", "ci", "split"}; None without --keep-best
    samples: list = field(default_factory=list)  # samples.jsonl rows: completions of a few held-out problems
    passk: dict = field(default_factory=dict)  # step -> passk.jsonl row (--passk-eval-samples: step 0 and the end)
    commit: str | None = None  # config.json's rlvr_commit: the code the run's last part ran on

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        points = [(r["step"], r[key]) for r in self.rows if key in r and r[key] is not None]
        steps, values = zip(*points) if points else ((), ())
        return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)

    def value_at(self, key: str, step: int) -> float | None:
        for r in self.rows:
            if r["step"] == step:
                return r.get(key)
        return None

    def retention(self, upto: int | None = None) -> float | None:
        """Mean entropy retention over the RETENTION_WINDOW steps ending at step `upto` (the last
        step when None); None when the run has not reached `upto`."""
        if upto is not None and not any(r["step"] == upto for r in self.rows):
            return None
        rows = [r for r in self.rows if upto is None or r["step"] <= upto][-RETENTION_WINDOW:]
        values = [r["entropy/retention"] for r in rows if r.get("entropy/retention") is not None]
        return float(np.mean(values)) if values else None

    @property
    def collapse_onset(self) -> int | None:
        onsets = [e["onset"] for e in self.events if e.get("event") == "collapse"]
        return min(onsets) if onsets else None

    @property
    def reward_detector_on(self) -> bool:
        """The reward-collapse detector watched this run (off with ratio 0, absent in runs older than it)."""
        return bool(self.config.get("reward_collapse_ratio"))

    @property
    def reward_collapse_onset(self) -> int | None:
        onsets = [e["onset"] for e in self.events if e.get("event") == "reward_collapse"]
        return min(onsets) if onsets else None

    @property
    def probe_seconds(self) -> float | None:
        """The machine's speed when the run began: the wall time of its step-0 evaluation, from
        the `model` event that starts its part to the step-0 `eval` event. Every run of a seed does that same
        work (the base model on the same held-out problems and sampling seed), so on one machine
        it takes the same time. None without time stamps, without a step-0 evaluation, or when
        it is shorter than PROBE_MIN_SECONDS. It times the part that evaluated step 0 (a part killed
        before then did no steps): a run resumed on another machine is not checked past it."""
        start = None
        for event in self.events:
            if event.get("event") == "model":  # each part starts with one
                start = _event_time(event)
            elif event.get("event") == "eval" and event.get("step") == 0 and start is not None:
                end = _event_time(event)
                seconds = (end - start).total_seconds() if end is not None else None
                return seconds if seconds is not None and seconds >= PROBE_MIN_SECONDS else None
        return None


@dataclass
class Arm:
    name: str
    runs: list = field(default_factory=list)

    @property
    def config(self) -> dict:
        return self.runs[0].config

    @property
    def meta(self) -> dict:
        return self.runs[0].meta

    @property
    def usable(self) -> list:
        return [r for r in self.runs if r.rows]


def read_run(path: Path) -> Run:
    config_file = path / "config.json"
    try:
        written = json.loads(config_file.read_text())
        config = written["config"]
    except (OSError, json.JSONDecodeError, KeyError) as err:
        raise ReportError(f"{path} is not a run directory: cannot read config.json ({err})") from None
    meta = json.loads((path / "arm.json").read_text()) if (path / "arm.json").is_file() else {}
    name = meta.get("arm") or (path.parent.name if re.fullmatch(r"seed\d+", path.name) else path.name)
    rows = [r for r in read_jsonl(path / "metrics.jsonl") if r.get("step", 0) >= 1 and "reward/mean" in r]
    evals = {e["step"]: e for e in read_jsonl(path / "evals.jsonl")}
    events = read_jsonl(path / "events.jsonl")
    try:
        best = json.loads((path / "best" / "best.json").read_text())
    except (OSError, json.JSONDecodeError):  # no --keep-best, or a run older than it
        best = None
    if meta.get("failed"):
        status = "failed"
    elif (path / "final").is_dir() or any(e.get("event") == "done" for e in events):  # final/ may not be kept
        status = "stopped" if any(e.get("event") == "stop" for e in events) else "finished"
    else:
        status = "incomplete"
    return Run(path, name, int(config["seed"]), config, meta, rows, evals, events, status, best,
               read_jsonl(path / "samples.jsonl"), {r["step"]: r for r in read_jsonl(path / "passk.jsonl")},
               written.get("rlvr_commit"))


def _event_time(event: dict) -> datetime | None:
    try:
        return datetime.strptime(event["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except (KeyError, TypeError, ValueError):  # runs older than the stamp
        return None


def _stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M UTC")


def run_log(arms: list[Arm]) -> list[dict]:
    """Which run ran when, on which commit, for how long, from events.jsonl's time stamps.

    A run resumed after a kill ran in parts: each part begins with a `model` event (written at
    every start). A part's time runs from its start to its last event (`done` for the last part;
    for a killed part, the last evaluation or other event before the kill: the steps after it were
    redone by the next part), and the run's wall time is the sum of its parts."""
    log = []
    for arm in arms:
        for run in arm.runs:
            parts: list[list[datetime]] = []
            for event in run.events:
                t = _event_time(event)
                if t is None:
                    continue
                if event.get("event") == "model" or not parts:
                    parts.append([t, t])
                parts[-1][1] = t
            log.append({"arm": arm.name, "seed": run.seed, "status": run.status, "commit": run.commit,
                        "last_step": run.rows[-1]["step"] if run.rows else 0, "parts": len(parts),
                        "started": _stamp(parts[0][0]) if parts else None,
                        "ended": _stamp(parts[-1][1]) if parts else None,
                        "wall_seconds": sum((end - start).total_seconds() for start, end in parts) if parts else None,
                        "probe_seconds": run.probe_seconds})  # the machine check (Run.probe_seconds)
    return log


def find_runs(dirs: list[str]) -> list[Run]:
    """Run directories under each DIR (a compare directory, an arm directory or a run)."""
    runs: list[Run] = []
    for d in dirs:
        root = Path(d)
        if not root.is_dir():
            raise ReportError(f"{d} is not a directory")
        # A run directory holds config.json and metrics.jsonl; model directories inside it
        # (final/, best/, exports) hold a config.json of their own and no metrics.
        found = [root] if (root / "config.json").is_file() else sorted(p.parent for p in root.glob("**/config.json")
                                                                        if (p.parent / "metrics.jsonl").is_file())
        if not found:
            raise ReportError(f"no run directories (holding config.json) under {d}")
        runs.extend(read_run(p) for p in found)
    return runs


def group_arms(runs: list[Run]) -> list[Arm]:
    arms: dict[str, Arm] = {}
    for run in runs:
        arms.setdefault(run.arm, Arm(run.arm)).runs.append(run)
    ordered = sorted(arms.values(), key=lambda a: (a.meta.get("order", math.inf), list(arms).index(a.name)))
    for arm in ordered:
        arm.runs.sort(key=lambda r: r.seed)
    return ordered


# ----------------------------------------------------------------------------------------
# numbers
# ----------------------------------------------------------------------------------------

def _eval_values(run: Run, step: int) -> np.ndarray | None:
    e = run.evals.get(step)
    return None if e is None else per_problem_values(e["per_problem"], METRIC)


def metric_at(arm: Arm, step: int | str) -> dict | None:
    """hm@4 at `step` ('last' = each run's last evaluation): mean over seeds and its CI."""
    per_seed = []
    for run in arm.usable:
        s = max(run.evals) if step == "last" and run.evals else step
        values = _eval_values(run, s)
        if values is None:
            return None
        per_seed.append(values)
    if not per_seed:
        return None
    return {"value": float(np.mean([v.mean() for v in per_seed])), "ci": list(seed_bootstrap_ci(per_seed))}


def gain_at(arm: Arm, step: int | str) -> dict | None:
    """hm@4 gain from step 0 in points, paired per problem within each run."""
    per_seed = []
    for run in arm.usable:
        s = max(run.evals) if step == "last" and run.evals else step
        before, after = _eval_values(run, 0), _eval_values(run, s)
        if before is None or after is None or s == 0:
            return None
        per_seed.append(100.0 * (after - before))
    if not per_seed:
        return None
    return {"value": float(np.mean([v.mean() for v in per_seed])), "ci": list(seed_bootstrap_ci(per_seed))}


def arm_difference(a: Arm, b: Arm) -> dict | None:
    """hm@4 of arm a minus arm b at each run's last evaluation, in points, paired by seed and
    problem (runs of one seed evaluate the same problems). None when they cannot be paired."""
    by_seed = {r.seed: r for r in b.usable}
    per_seed = []
    for run in a.usable:
        other = by_seed.get(run.seed)
        if other is None or not run.evals or not other.evals:
            return None
        ea, eb = run.evals[max(run.evals)], other.evals[max(other.evals)]
        if [p["id"] for p in ea["per_problem"]] != [p["id"] for p in eb["per_problem"]]:
            return None
        per_seed.append(100.0 * (per_problem_values(ea["per_problem"], METRIC) - per_problem_values(eb["per_problem"], METRIC)))
    if not per_seed:
        return None
    return {"value": float(np.mean([v.mean() for v in per_seed])), "ci": list(seed_bootstrap_ci(per_seed))}


def _last_passk(run: Run) -> dict | None:
    """The run's wide evaluation at its end (the largest step past 0), or None."""
    steps = [s for s in run.passk if s > 0]
    return run.passk[max(steps)] if steps else None


def passk_ks(arms: list[Arm]) -> list[int]:
    """The k of pass@k that every run's wide evaluations report (ascending; [] without them)."""
    return _run_ks([r for a in arms for r in a.usable])


def passk_at(arm: Arm, k: int, where: str) -> dict | None:
    """pass@k at step 0 ('base') or at each run's end ('last'): mean over seeds, CI over seeds and problems."""
    per_seed = []
    for run in arm.usable:
        row = run.passk.get(0) if where == "base" else _last_passk(run)
        if row is None:
            return None
        per_seed.append(per_problem_values(row["per_problem"], f"pass@{k}"))
    if not per_seed:
        return None
    return {"value": float(np.mean([v.mean() for v in per_seed])), "ci": list(seed_bootstrap_ci(per_seed))}


def _paired(per_seed: list) -> dict | None:
    if not per_seed:
        return None
    return {"value": float(np.mean([v.mean() for v in per_seed])), "ci": list(seed_bootstrap_ci(per_seed))}


def passk_vs_base(arm: Arm, k: int) -> dict | None:
    """pass@k at the end minus the base model's (each run's step 0), in points, paired per problem."""
    per_seed = []
    for run in arm.usable:
        base, last = run.passk.get(0), _last_passk(run)
        if base is None or last is None or [p["id"] for p in base["per_problem"]] != [p["id"] for p in last["per_problem"]]:
            return None
        per_seed.append(100.0 * (per_problem_values(last["per_problem"], f"pass@{k}")
                                 - per_problem_values(base["per_problem"], f"pass@{k}")))
    return _paired(per_seed)


def common_seeds(a: Arm, b: Arm) -> list[tuple]:
    """(a's run, b's run) of each seed both arms ran usably, in a's order: what paired
    comparisons pair."""
    by_seed = {r.seed: r for r in b.usable}
    return [(run, by_seed[run.seed]) for run in a.usable if run.seed in by_seed]


def reward_difference(a: Arm, b: Arm, last: int = 20) -> dict | None:
    """Training reward (reward/mean) of arm a minus arm b over the last `last` steps, paired by
    seed and step (the arms of a seed draw the same prompts at each step), with the 95% CI of
    `seed_bootstrap_ci` (seeds, then steps). None without common seeds and steps."""
    per_seed = []
    for run, other in common_seeds(a, b):
        ra = {x["step"]: x["reward/mean"] for x in run.rows}
        rb = {x["step"]: x["reward/mean"] for x in other.rows}
        steps = sorted(set(ra) & set(rb))[-last:]
        if steps:
            per_seed.append(np.asarray([ra[s] - rb[s] for s in steps], dtype=float))
    if not per_seed:
        return None
    return {"value": float(np.mean([v.mean() for v in per_seed])), "ci": list(seed_bootstrap_ci(per_seed)),
            "seeds": len(per_seed)}


def passk_difference(a: Arm, b: Arm, k: int) -> dict | None:
    """pass@k at the end of arm a minus arm b, in points, paired by seed and problem."""
    by_seed = {r.seed: r for r in b.usable}
    per_seed = []
    for run in a.usable:
        other = by_seed.get(run.seed)
        ra, rb = _last_passk(run), _last_passk(other) if other else None
        if ra is None or rb is None or [p["id"] for p in ra["per_problem"]] != [p["id"] for p in rb["per_problem"]]:
            return None
        per_seed.append(100.0 * (per_problem_values(ra["per_problem"], f"pass@{k}")
                                 - per_problem_values(rb["per_problem"], f"pass@{k}")))
    return _paired(per_seed)


def late_change(arm: Arm) -> dict | None:
    """hm@4 at each run's last evaluation minus at step 100, in points, paired per problem: does
    held-out accuracy fall after the claims' horizon? None unless every run evaluated both, later than 100."""
    per_seed = []
    for run in arm.usable:
        last = max(run.evals, default=0)
        before, after = _eval_values(run, MIDPOINT), _eval_values(run, last)
        if before is None or after is None or last <= MIDPOINT:
            return None
        per_seed.append(100.0 * (after - before))
    return _paired(per_seed)


COST_RESAMPLES = 2000


def machine_ratio(a: Run, b: Run) -> float | None:
    """How much longer run b's step-0 evaluation took than run a's (`Run.probe_seconds`): 1 on
    one machine; None when either is not timed."""
    pa, pb = a.probe_seconds, b.probe_seconds
    return None if pa is None or pb is None else pb / pa


def cost_ratio(a: Arm, b: Arm, key: str = "step_seconds") -> dict | None:
    """Arm b's per-step cost over arm a's, with a 95% CI: the ratio of the means over seeds of
    each run's median, paired by seed (the runs of a seed ran one after the other, so a slow
    hour of the machine hits both) and resampled at two levels, seeds and then each run's
    steps. `key`: step_seconds (perf/step_seconds) or step_memory (peak minus the memory in use
    before the step, on the steps that measure it). None without common seeds.

    Step time is a machine's as much as the arms': a seed whose two runs ran on machines of
    different speed (their step-0 evaluations, the same work, took more than MACHINE_TOLERANCE
    times as long as each other: `machine_ratio`; untimed runs are assumed one machine) is left out of the step-time ratio and named
    in `cross_machine_seeds`; `machine_ratio` is the range of b's over a's step-0 evaluation
    time on the seeds kept (None where untimed). With every seed left out, value and ci are None."""
    def values(run: Run) -> np.ndarray:
        if key == "step_seconds":
            return np.asarray([x["perf/step_seconds"] for x in run.rows], dtype=float)
        return np.asarray([x["perf/peak_memory_mib"] - x["perf/memory_before_step_mib"] for x in run.rows
                           if "perf/memory_before_step_mib" in x], dtype=float)

    common = common_seeds(a, b)
    if not common:
        return None
    speed = {ra.seed: machine_ratio(ra, rb) for ra, rb in common} if key == "step_seconds" else {}
    crossed = [seed for seed, m in speed.items() if m is not None and not 1 / MACHINE_TOLERANCE <= m <= MACHINE_TOLERANCE]
    timed = [m for seed, m in speed.items() if m is not None and seed not in crossed]
    checks = {"cross_machine_seeds": crossed, "machine_ratio": [float(min(timed)), float(max(timed))] if timed else None}
    pairs = [(values(ra), values(rb)) for ra, rb in common if ra.seed not in crossed]
    pairs = [(x, y) for x, y in pairs if x.size and y.size]
    if not pairs:
        return {"value": None, "ci": None, "seeds": 0, **checks} if crossed else None
    value = float(np.mean([np.median(y) for _, y in pairs]) / np.mean([np.median(x) for x, _ in pairs]))
    rng = np.random.default_rng(0)
    ratios = np.empty(COST_RESAMPLES)
    for i in range(COST_RESAMPLES):
        drawn = rng.integers(len(pairs), size=len(pairs))
        num = den = 0.0
        for j in drawn:
            x, y = pairs[j]
            den += np.median(x[rng.integers(x.size, size=x.size)])
            num += np.median(y[rng.integers(y.size, size=y.size)])
        ratios[i] = num / den
    low, high = np.percentile(ratios, [2.5, 97.5])
    return {"value": value, "ci": [float(low), float(high)], "seeds": len(pairs), **checks}


def mean_or_none(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def arm_numbers(arm: Arm) -> dict:
    """Everything the table and the verdicts need about one arm."""
    runs = arm.usable
    last_rows = [r.rows[-1] for r in runs]
    seconds = [row["perf/step_seconds"] for r in runs for row in r.rows]
    onsets = [r.collapse_onset for r in runs]
    reward_onsets = [r.reward_collapse_onset for r in runs]
    best = [r.best for r in runs]
    reward_last20 = {r.seed: float(np.mean([x["reward/mean"] for x in r.rows[-20:]])) for r in runs}
    return {
        "seeds": [r.seed for r in arm.runs],
        "status": {r.seed: r.status for r in arm.runs},
        "steps_done": [len(r.rows) for r in runs],
        "metric_at_0": metric_at(arm, 0),
        "metric_at_100": metric_at(arm, MIDPOINT),
        "metric_last": metric_at(arm, "last"),
        "gain_at_100": gain_at(arm, MIDPOINT),
        "gain_last": gain_at(arm, "last"),
        # retention over the RETENTION_WINDOW steps up to step 100 / the end; the last step's alone beside it
        "retention_at_100": mean_or_none([r.retention(MIDPOINT) for r in runs]),
        "retention_final": mean_or_none([r.retention() for r in runs]),
        "retention_final_per_seed": [r.retention() for r in runs],
        "retention_last_step": mean_or_none([row.get("entropy/retention") for row in last_rows]),
        "retention_last_step_per_seed": [row.get("entropy/retention") for row in last_rows],
        "reward_last20": mean_or_none(list(reward_last20.values())),
        "reward_last20_by_seed": reward_last20,
        "collapse_onsets": onsets,
        "collapse_step": min([o for o in onsets if o is not None], default=None),
        # reward collapse (a second detector, on the training-reward EMA against its best): per seed
        "reward_collapse_onsets": reward_onsets,
        "reward_detector_on": [r.reward_detector_on for r in runs],
        "reward_collapse_step": min([o for o in reward_onsets if o is not None], default=None),
        # --keep-best: each seed's best evaluation (best/best.json), None where a run has none
        "best_steps": [b["step"] if b else None for b in best],
        "best_values": [b["value"] if b else None for b in best],
        "best_value": float(np.mean([b["value"] for b in best])) if best and all(best) else None,
        "best_metrics": sorted({(b["metric"], b.get("split", "heldout")) for b in best if b}),
        "step_seconds_median": float(np.median(seconds)) if seconds else None,
        "peak_memory_mib": max((row["perf/peak_memory_mib"] for r in runs for row in r.rows), default=None),
        "memory_before_step_mib": mean_or_none([_median_or_none([x["perf/memory_before_step_mib"] for x in r.rows
                                                                  if "perf/memory_before_step_mib" in x]) for r in runs]),
        # the memory a step itself needs: peak minus memory in use before, on the probe steps that measure it
        "step_memory_mib": mean_or_none([_median_or_none([x["perf/peak_memory_mib"] - x["perf/memory_before_step_mib"]
                                                           for x in r.rows if "perf/memory_before_step_mib" in x])
                                          for r in runs]),
        # what sampling strategies really spend: generated vs trained samples per step (nominal B·K before
        # the sampling/* keys existed)
        "generated_per_step": mean_or_none([float(np.mean([x.get("sampling/generated", r.config["prompts_per_step"] *
                                                                r.config["k"]) for x in r.rows])) for r in runs]),
        "zero_signal_mean": mean_or_none([float(np.mean([x["reward/zero_signal_frac"] for x in r.rows])) for r in runs]),
        "train_seconds": mean_or_none([float(sum(x["perf/step_seconds"] for x in r.rows)) for r in runs]),
        "late_change": late_change(arm),  # hm@4 at the end minus at step 100, points, paired
        "passk_base": {k: passk_at(arm, k, "base") for k in _run_ks(runs)},
        "passk_last": {k: passk_at(arm, k, "last") for k in _run_ks(runs)},
        "passk_vs_base": {k: passk_vs_base(arm, k) for k in _run_ks(runs)},
        "trained_per_step": mean_or_none([float(np.mean([x.get("sampling/trained", r.config["prompts_per_step"] *
                                                              r.config["k"]) for x in r.rows])) for r in runs]),
    }


def _run_ks(runs: list[Run]) -> list[int]:
    sets = [set(row["ks"]) for r in runs for row in r.passk.values()]
    return sorted(set.intersection(*sets)) if sets else []


def _median_or_none(values: list) -> float | None:
    return float(np.median(values)) if values else None


def ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return value / reference


def variant_flags(arm: Arm, first: Arm) -> str:
    """What the arm changes: compare's variant flags, else its config's differences from the first arm."""
    if "variant" in arm.meta:
        return arm.meta["variant"]
    diffs = [f"--{k.replace('_', '-')} {v}" for k, v in arm.config.items()
             if k not in ("out", "seed", "force", "quiet", "threads") and first.config.get(k) != v]
    return " ".join(diffs)


def match_mode(arms: list[Arm]) -> str:
    recorded = {a.meta.get("match") for a in arms if a.meta.get("match")}
    if len(recorded) == 1:
        return recorded.pop()
    prompts = {a.config["prompts_per_step"] for a in arms}
    samples = {a.config["prompts_per_step"] * a.config["k"] for a in arms}
    return "prompts" if len(prompts) == 1 or len(samples) > 1 else "samples"



def entropy_controls(config: dict) -> list[str]:
    """The entropy controls a run's config turns on, as `field=value` (clip-higher and
    W-REINFORCE's --positive-weight, whose neutral values are not 0, included)."""
    controls = [f"{f}={config[f]}" for f in CONTROL_FIELDS if config.get(f)]
    if config.get("positive_weight", 1.0) != 1.0:
        controls.append(f"positive_weight={config['positive_weight']}")
    if config.get("clip_high", 0) > config.get("clip_low", 0):
        controls.append(f"clip-high {config['clip_high']}")
    return controls


def has_entropy_control(config: dict) -> bool:
    return bool(entropy_controls(config))


# ----------------------------------------------------------------------------------------
# number formats shared by the tables and the verdicts' evidence
# ----------------------------------------------------------------------------------------

def fmt_ci(x: dict | None, scale: str = "pts") -> str:
    """'+15.1 pts [+11.3, +19.3]' for a gain in points, '-0.012 [-0.040, +0.015]' for a difference of
    fractions (scale="diff"), '0.612 [0.559, 0.666]' for a fraction."""
    if x is None:
        return "n/a"
    value, (low, high) = x["value"], x["ci"]
    if scale == "pts":
        return f"{value:+.1f} pts [{low:+.1f}, {high:+.1f}]"
    if scale == "diff":
        return f"{value:+.3f} [{low:+.3f}, {high:+.3f}]"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def fmt_onsets(onsets: list, detector_on: list | None = None) -> str:
    """'138, none, off': a collapse onset per seed; 'none' = the detector watched and never fired,
    'off' = no detector watched that seed (turned off, or a run older than the detector)."""
    on = detector_on or [True] * len(onsets)
    return ", ".join("off" if not d else "none" if o is None else str(o) for o, d in zip(onsets, on)) or "n/a"


# ----------------------------------------------------------------------------------------
# gradient noise (claim (f)) and the spread across seeds (claim (g))
# ----------------------------------------------------------------------------------------

NOISE_COLUMNS = ("grad/signal", "grad/noise", "grad/noise_intra")  # per step: |G|², tr Σ, tr Σ_intra
SPREAD_RESAMPLES = 2000


def noise_by_step(run: Run) -> dict[int, tuple[float, float, float]]:
    """step -> (|G|², tr Σ, tr Σ_intra) of the steps that measured the gradient's noise."""
    return {r["step"]: tuple(float(r[key]) for key in NOISE_COLUMNS) for r in run.rows
            if all(r.get(key) is not None for key in NOISE_COLUMNS)}


def measures_noise(arm: Arm) -> bool:
    """Some run of the arm logged the gradient noise (runs older than the metric did not)."""
    return any(noise_by_step(run) for run in arm.usable)


def arm_noise(arm: Arm) -> dict | None:
    """The arm's gradient noise over all its measured steps: sums, not means of per-step ratios
    (a step's |G|² estimate can be near 0 or negative). None when no step measured it."""
    steps = [v for run in arm.usable for v in noise_by_step(run).values()]
    if not steps:
        return None
    signal, noise, intra = (float(sum(v[i] for v in steps)) for i in range(3))
    k, prompts = _shape(arm)
    scale = noise / signal if signal > 0 and noise > 0 else None
    return {"steps": len(steps), "signal": signal / len(steps), "noise": noise / len(steps),
            "intra": intra / len(steps), "noise_scale": scale,
            "noise_scale_per_completion": None if scale is None else scale * k,
            "intra_share": intra / k / noise if noise > 0 else None,
            "snr": prompts * signal / noise if noise > 0 else None, "group_size": k, "prompts_per_step": prompts}


def paired_noise(a: Arm, b: Arm, keep) -> list[np.ndarray]:
    """Per common seed, the steps both runs measured and `keep(seed, step)` admits: rows of
    (a's |G|², tr Σ, tr Σ_intra, b's |G|², tr Σ, tr Σ_intra), paired by step."""
    out = []
    for run, other in common_seeds(a, b):
        na, nb = noise_by_step(run), noise_by_step(other)
        steps = [s for s in sorted(set(na) & set(nb)) if keep(run.seed, s)]
        if steps:
            out.append(np.asarray([na[s] + nb[s] for s in steps], dtype=float))
    return out


def _ratio_or_inf(num: float, den: float) -> float:
    """num/den for ratios of positive quantities: +inf where only the denominator is ≤ 0, nan
    where both are (no comparison), ≤ 0 where only the numerator is."""
    if den > 0:
        return num / den
    return math.inf if num > 0 else math.nan


def _shape(arm: Arm) -> tuple[int, int]:
    """(trained group size K, prompts per step B) of an arm."""
    return arm.config.get("downsample") or arm.config["k"], arm.config["prompts_per_step"]


def noise_ratios(sums: np.ndarray, shape_a: tuple[int, int], shape_b: tuple[int, int]) -> dict[str, float]:
    """From summed columns (a's |G|², tr Σ, tr Σ_intra, b's ...) and each arm's (K, B): b over a
    in gradient SNR at the arms' own prompts per step (B·|G|²/tr Σ), in SNR at equal completions
    per step (|G|²/(K·tr Σ)), and in per-prompt noise tr Σ."""
    sa, na, _, sb, nb, _ = sums
    (ka, pa), (kb, pb) = shape_a, shape_b
    snr_a = pa * sa / na if na > 0 else math.nan
    snr_b = pb * sb / nb if nb > 0 else math.nan
    per_completion_a = sa / (ka * na) if na > 0 else math.nan
    per_completion_b = sb / (kb * nb) if nb > 0 else math.nan
    return {"snr": _ratio_or_inf(snr_b, snr_a), "snr_per_completion": _ratio_or_inf(per_completion_b, per_completion_a),
            "noise": nb / na if na > 0 else math.nan}


def noise_comparison(a: Arm, b: Arm, keep) -> dict | None:
    """Arm b against arm a on the gradient noise of the steps `keep` admits, paired by seed and
    step: each ratio of `noise_ratios` with the 95% CI of a two-level bootstrap (seeds with
    replacement, then each drawn seed's steps), the arms' intra-prompt shares, and the counts.
    None without a common measured step."""
    per_seed = paired_noise(a, b, keep)
    if not per_seed:
        return None
    shape_a, shape_b = _shape(a), _shape(b)
    total = np.concatenate(per_seed).sum(axis=0)
    point = noise_ratios(total, shape_a, shape_b)
    rng = np.random.default_rng(0)
    draws = {key: np.empty(SPREAD_RESAMPLES) for key in point}
    for i in range(SPREAD_RESAMPLES):
        drawn = [per_seed[j] for j in rng.integers(len(per_seed), size=len(per_seed))]
        sums = sum(x[rng.integers(len(x), size=len(x))].sum(axis=0) for x in drawn)
        for key, value in noise_ratios(sums, shape_a, shape_b).items():
            draws[key][i] = value
    (ka, _), (kb, _) = shape_a, shape_b
    out = {"seeds": len(per_seed), "steps": int(sum(len(x) for x in per_seed)),
           "intra_share": [float(total[2] / ka / total[1]) if total[1] > 0 else None,
                           float(total[5] / kb / total[4]) if total[4] > 0 else None]}
    for key, value in point.items():
        out[key] = {"value": None if math.isnan(value) else float(value), "ci": _percentile_ci(draws[key])}
    return out


def _percentile_ci(draws) -> list[float] | None:
    """The 2.5 and 97.5 percentiles of bootstrap draws, nan draws (no comparison) left out; with
    infinite draws the nearest draw, not an interpolation, so an end is inf rather than nan."""
    draws = np.asarray(draws, dtype=float)
    draws = draws[~np.isnan(draws)]
    if not draws.size:
        return None
    method = "nearest" if np.isinf(draws).any() else "linear"
    return [float(v) for v in np.percentile(draws, [2.5, 97.5], method=method)]


def outcome_by_seed(arm: Arm, outcome: str) -> dict[int, float]:
    """Per seed, an end-of-run outcome: 'hm@4' at the run's last evaluation (mean over its
    held-out problems) or 'reward' (reward/mean over the last 20 steps)."""
    out = {}
    for run in arm.usable:
        if outcome == "reward":
            out[run.seed] = float(np.mean([x["reward/mean"] for x in run.rows[-20:]]))
        elif run.evals:
            out[run.seed] = float(per_problem_values(run.evals[max(run.evals)]["per_problem"], METRIC).mean())
    return out


def spread_ratio(a: Arm, b: Arm, outcome: str) -> dict | None:
    """The SD across seeds of an outcome in each arm (n − 1 denominator, the seeds common to
    both) and SD(b)/SD(a) with a 95% bootstrap CI over seeds (drawn with replacement, paired; a
    draw with fewer than 2 distinct seeds has no SD and is drawn again). None with < 2 common seeds."""
    va, vb = outcome_by_seed(a, outcome), outcome_by_seed(b, outcome)
    seeds = sorted(set(va) & set(vb))
    if len(seeds) < 2:
        return None
    xa, xb = np.asarray([va[s] for s in seeds]), np.asarray([vb[s] for s in seeds])

    def ratio_of(ia: np.ndarray) -> float:
        sa, sb = float(np.std(xa[ia], ddof=1)), float(np.std(xb[ia], ddof=1))
        return sb / sa if sa > 0 else (math.inf if sb > 0 else 1.0)

    rng = np.random.default_rng(0)
    draws = []
    while len(draws) < SPREAD_RESAMPLES:
        drawn = rng.integers(len(seeds), size=len(seeds))
        if len(set(drawn.tolist())) >= 2:
            draws.append(ratio_of(drawn))
    everything = np.arange(len(seeds))
    return {"seeds": seeds, "sd": [float(np.std(xa, ddof=1)), float(np.std(xb, ddof=1))],
            "values": [xa.tolist(), xb.tolist()], "value": ratio_of(everything),
            "ci": _percentile_ci(draws)}


def collapsed_share(arm: Arm) -> tuple[int, int]:
    """(seeds whose entropy or reward detector fired, seeds)."""
    runs = arm.usable
    return sum(r.collapse_onset is not None or r.reward_collapse_onset is not None for r in runs), len(runs)
