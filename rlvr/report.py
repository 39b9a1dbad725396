"""`rlvr report DIR...`: a K comparison's report, built from run directories alone.

Reads each run's config.json, metrics.jsonl, evals.jsonl and events.jsonl (and arm.json, which
`rlvr compare` writes to name the arm), groups the runs into arms (same arm name, one run per
seed), and writes into the output directory:

  summary.json   the numbers of INTERFACE.md ("A comparison directory"), deterministic, so a
                 rebuilt report equals the original;
  report.md      tables per arm, each arm's effective settings, verdicts with their evidence;
  report.html    the same, self-contained (plots embedded as base64), every text escaped;
  plots/*.png    entropy, reward, eval hm@4 (with CIs), zero-signal fraction, answer
                 diversity vs step, and step time / peak memory per arm.

Statistics. Across seeds a number is the mean of the per-seed values. The CI of an evaluation
metric or gain is `seed_bootstrap_ci`: seeds and, within each seed, problems are resampled, so
the interval holds training noise as well as evaluation noise. Gains are paired per problem
against the same run's step-0 evaluation (TERMS.md).
"""
from __future__ import annotations

import base64
import html
import json
import math
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rlvr.evaluation import per_problem_values, seed_bootstrap_ci

METRIC = "hm@4"
MIDPOINT = 100  # the seed's claims are about the first 100 steps
CONTROL_FIELDS = ("entropy_coef", "entropy_target", "clip_cov", "kl_cov", "top_entropy_tokens")
SETTINGS = ("k", "prompts_per_step", "lr", "loss_agg", "updates_per_step", "temperature", "advantage",
            "entropy_coef", "entropy_target", "clip_low", "clip_high", "clip_cov", "kl_cov", "top_entropy_tokens",
            "beta", "max_new_tokens", "steps", "task", "model")
ROLLING = 10  # steps in the rolling mean of noisy per-step curves


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

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        points = [(r["step"], r[key]) for r in self.rows if key in r and r[key] is not None]
        steps, values = zip(*points) if points else ((), ())
        return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)

    def value_at(self, key: str, step: int) -> float | None:
        for r in self.rows:
            if r["step"] == step:
                return r.get(key)
        return None

    @property
    def collapse_onset(self) -> int | None:
        onsets = [e["onset"] for e in self.events if e.get("event") == "collapse"]
        return min(onsets) if onsets else None


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


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a kill
            continue
    return rows


def read_run(path: Path) -> Run:
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text())["config"]
    except (OSError, json.JSONDecodeError, KeyError) as err:
        raise ReportError(f"{path} is not a run directory: cannot read config.json ({err})") from None
    meta = json.loads((path / "arm.json").read_text()) if (path / "arm.json").is_file() else {}
    name = meta.get("arm") or (path.parent.name if re.fullmatch(r"seed\d+", path.name) else path.name)
    rows = [r for r in _read_jsonl(path / "metrics.jsonl") if r.get("step", 0) >= 1 and "reward/mean" in r]
    evals = {e["step"]: e for e in _read_jsonl(path / "evals.jsonl")}
    events = _read_jsonl(path / "events.jsonl")
    if meta.get("failed"):
        status = "failed"
    elif (path / "final").is_dir():
        status = "stopped" if any(e.get("event") == "stop" for e in events) else "finished"
    else:
        status = "incomplete"
    return Run(path, name, int(config["seed"]), config, meta, rows, evals, events, status)


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


def _mean_or_none(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def arm_numbers(arm: Arm) -> dict:
    """Everything the table and the verdicts need about one arm."""
    runs = arm.usable
    last_rows = [r.rows[-1] for r in runs]
    seconds = [row["perf/step_seconds"] for r in runs for row in r.rows]
    onsets = [r.collapse_onset for r in runs]
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
        "retention_at_100": _mean_or_none([r.value_at("entropy/retention", MIDPOINT) for r in runs]),
        "retention_final": _mean_or_none([row.get("entropy/retention") for row in last_rows]),
        "retention_final_per_seed": [row.get("entropy/retention") for row in last_rows],
        "reward_last20": _mean_or_none(list(reward_last20.values())),
        "reward_last20_by_seed": reward_last20,
        "collapse_onsets": onsets,
        "collapse_step": min([o for o in onsets if o is not None], default=None),
        "step_seconds_median": float(np.median(seconds)) if seconds else None,
        "peak_memory_mib": max((row["perf/peak_memory_mib"] for r in runs for row in r.rows), default=None),
        "memory_before_step_mib": _mean_or_none([_median_or_none([x["perf/memory_before_step_mib"] for x in r.rows
                                                                  if "perf/memory_before_step_mib" in x]) for r in runs]),
        # the memory a step itself needs: peak minus memory in use before, on the probe steps that measure it
        "step_memory_mib": _mean_or_none([_median_or_none([x["perf/peak_memory_mib"] - x["perf/memory_before_step_mib"]
                                                           for x in r.rows if "perf/memory_before_step_mib" in x])
                                          for r in runs]),
        # what sampling strategies really spend: generated vs trained samples per step (nominal B·K before
        # the sampling/* keys existed)
        "generated_per_step": _mean_or_none([float(np.mean([x.get("sampling/generated", r.config["prompts_per_step"] *
                                                                r.config["k"]) for x in r.rows])) for r in runs]),
        "zero_signal_mean": _mean_or_none([float(np.mean([x["reward/zero_signal_frac"] for x in r.rows])) for r in runs]),
        "train_seconds": _mean_or_none([float(sum(x["perf/step_seconds"] for x in r.rows)) for r in runs]),
        "trained_per_step": _mean_or_none([float(np.mean([x.get("sampling/trained", r.config["prompts_per_step"] *
                                                              r.config["k"]) for x in r.rows])) for r in runs]),
    }


def _median_or_none(values: list) -> float | None:
    return float(np.median(values)) if values else None


def _added_memory(n: dict) -> float | None:
    """Peak memory of a step minus the memory in use before it: what the step itself needs."""
    return n["step_memory_mib"]


def _ratio(value: float | None, reference: float | None) -> float | None:
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


# ----------------------------------------------------------------------------------------
# verdicts
# ----------------------------------------------------------------------------------------

def _is_plain(arm: Arm, k: int) -> bool:
    return arm.config["k"] == k and not arm.meta.get("variant") and not has_entropy_control(arm.config)


def has_entropy_control(config: dict) -> bool:
    return any(config.get(f) for f in CONTROL_FIELDS) or config.get("clip_high", 0) > config.get("clip_low", 0)


def _fmt_ci(x: dict | None, scale: str = "pts") -> str:
    """'+15.1 pts [+11.3, +19.3]' for a gain in points, '0.612 [0.559, 0.666]' for a fraction."""
    if x is None:
        return "n/a"
    value, (low, high) = x["value"], x["ci"]
    if scale == "pts":
        return f"{value:+.1f} pts [{low:+.1f}, {high:+.1f}]"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def _onsets(n: dict) -> str:
    return "[" + ", ".join("none" if o is None else str(o) for o in n["collapse_onsets"]) + "]"


def _stable(n: dict, ratio: float) -> tuple[bool, bool]:
    """(steady, collapsed): steady = the collapse detector (TERMS.md) fired in no seed and the
    seeds keep on average ≥ 0.5 of their step-0 entropy at the end; collapsed = the detector
    fired in at least half the seeds or the mean retention ended below the collapse ratio."""
    seeds = len(n["collapse_onsets"]) or 1
    fired = sum(o is not None for o in n["collapse_onsets"])
    steady = fired == 0 and n["retention_final"] is not None and n["retention_final"] >= 0.5
    collapsed = fired * 2 >= seeds and fired > 0 or (n["retention_final"] is not None and n["retention_final"] < ratio)
    return steady, collapsed


def _paired_reward_diffs(n: dict, base: dict) -> str:
    """'difference per seed -0.015, +0.004': the arm's last-20-step reward minus the base arm's, seed by seed."""
    seeds = [s for s in n["reward_last20_by_seed"] if s in base["reward_last20_by_seed"]]
    if not seeds:
        return "no common seeds"
    diffs = [n["reward_last20_by_seed"][s] - base["reward_last20_by_seed"][s] for s in seeds]
    return "difference per seed " + ", ".join(f"{d:+.3f}" for d in diffs)


def verdicts(arms: list[Arm], numbers: dict[str, dict]) -> list[dict]:
    """The seed's claims (a)-(e), each supported / refuted / inconclusive with its numbers."""
    k8 = next((a for a in arms if _is_plain(a, 8)), None)
    k16 = next((a for a in arms if _is_plain(a, 16)), None)
    control = next((a for a in arms if a.config["k"] == 16 and a is not k16 and has_entropy_control(a.config)), None)
    out = []

    def add(claim, verdict, evidence):
        out.append({"claim": claim, "verdict": verdict, "evidence": evidence})

    claim = "(a) K=8 gains at least 10 points of HM@4 within the first 100 steps"
    gain = numbers[k8.name]["gain_at_100"] if k8 else None
    if gain is None:
        add(claim, "inconclusive", "no K=8 arm with evaluations at steps 0 and 100 (needs --steps ≥ 100 and "
                                   "--eval-every dividing 100)")
    else:
        lo, hi = gain["ci"]
        verdict = "supported" if lo >= 10 else "refuted" if hi < 10 else "inconclusive"
        add(claim, verdict, f"K=8 hm@4 gain at step 100: {_fmt_ci(gain)} (95% CI over {len(k8.usable)} seed(s) and "
                            f"the held-out problems); supported needs the whole CI ≥ 10, refuted the whole CI < 10")

    ratio = (k8 or k16 or arms[0]).config.get("collapse_ratio", 0.3)
    claim = "(b) K=8 policy entropy stays steady"
    if k8 is None:
        add(claim, "inconclusive", "no plain K=8 arm in this comparison")
    elif min(numbers[k8.name]["steps_done"]) < MIDPOINT:
        add(claim, "inconclusive", f"the K=8 runs stop before step {MIDPOINT}; steadiness over the claim's horizon "
                                   "cannot be judged")
    else:
        n = numbers[k8.name]
        steady, collapsed = _stable(n, ratio)
        add(claim, "supported" if steady else "refuted" if collapsed else "inconclusive",
            f"K=8 entropy retention at step 100 {_fmt(n['retention_at_100'])}, at the end {_fmt(n['retention_final'])} "
            f"(per seed {[_fmt(r) for r in n['retention_final_per_seed']]}); collapse detector fired in "
            f"{sum(o is not None for o in n['collapse_onsets'])} of {len(n['collapse_onsets'])} seed(s). Steady = no "
            f"collapse in any seed and mean retention ≥ 0.5 of the step-0 entropy; refuted = collapse in ≥ half the seeds or mean "
            f"retention < {ratio}")

    claim = "(c) K=16 policy entropy decays after ~100 steps and training collapses"
    if k16 is None:
        add(claim, "inconclusive", "no plain K=16 arm in this comparison")
    else:
        n = numbers[k16.name]
        steady, collapsed = _stable(n, ratio)
        late = max(n["steps_done"], default=0) > MIDPOINT
        evidence = (f"K=16 entropy retention at step 100 {_fmt(n['retention_at_100'])}, at the end "
                    f"{_fmt(n['retention_final'])} (per seed {[_fmt(r) for r in n['retention_final_per_seed']]}); collapse onsets per seed {_onsets(n)} (detector: EMA below "
                    f"{ratio} × step-0 for {k16.config.get('collapse_patience')} steps)")
        if not late:
            add(claim, "inconclusive", evidence + f"; the runs stop by step {MIDPOINT}, so a later decay cannot be seen")
        else:
            add(claim, "supported" if collapsed else "refuted" if steady else "inconclusive",
                evidence + "; supported = collapse in ≥ half the seeds, refuted = no collapse and mean retention ≥ "
                           "0.5, otherwise inconclusive (entropy fell without a detected collapse)")

    claim = "(d) K=16 costs about twice the memory and compute per step of K=8"
    if k8 is None or k16 is None:
        add(claim, "inconclusive", "needs plain K=8 and K=16 arms")
    else:
        a, b = numbers[k8.name], numbers[k16.name]
        t = _ratio(b["step_seconds_median"], a["step_seconds_median"])
        m = _ratio(b["peak_memory_mib"], a["peak_memory_mib"])
        added = _ratio(_added_memory(b), _added_memory(a))
        same_prompts = k8.config["prompts_per_step"] == k16.config["prompts_per_step"]
        within = lambda r: r is not None and 1.5 <= r <= 2.5  # noqa: E731  "about 2x": within ±25%
        evidence = (f"K=16/K=8 median step time {_fmt(t)}× ({_fmt(b['step_seconds_median'], '.3f')} vs "
                    f"{_fmt(a['step_seconds_median'], '.3f')} s); memory added by a step {_fmt(added)}× "
                    f"({_fmt(_added_memory(b), '.0f')} vs {_fmt(_added_memory(a), '.0f')} MiB) on top of "
                    f"~{_fmt(a['memory_before_step_mib'], '.0f')} MiB in use before any step at every K (runtime, model, "
                    f"optimizer), so total peak {_fmt(m)}×; the verdict uses step time and the memory a step adds, "
                    f"'about 2×' = within 1.5-2.5×")
        if not same_prompts:
            add(claim, "inconclusive", evidence + "; the arms do not sample the same prompts per step (--match samples), "
                                                  "so per-step cost is not the K=16 vs K=8 cost of the claim")
        else:
            add(claim, "supported" if within(t) and within(added) else "refuted", evidence)

    claim = "(e) an entropy control keeps K=16 stable"
    if control is None or k16 is None:
        add(claim, "inconclusive", "needs a plain K=16 arm and a K=16 arm with an entropy control")
    else:
        n, base = numbers[control.name], numbers[k16.name]
        steady, collapsed = _stable(n, ratio)
        _, base_collapsed = _stable(base, ratio)
        diff = arm_difference(control, k16)
        evidence = (f"'{control.name}' ({variant_flags(control, arms[0])}): retention at the end "
                    f"{_fmt(n['retention_final'])} (per seed {[_fmt(r) for r in n['retention_final_per_seed']]}) vs "
                    f"{_fmt(base['retention_final'])} without it; collapse onsets "
                    f"{_onsets(n)} vs {_onsets(base)}; hm@4 at the last evaluation minus plain K=16: "
                    f"{_fmt_ci(diff)}; training reward over the last 20 steps {_fmt(n['reward_last20'], '.3f')} vs "
                    f"{_fmt(base['reward_last20'], '.3f')} ({_paired_reward_diffs(n, base)})")
        if max(n["steps_done"], default=0) <= MIDPOINT:
            add(claim, "inconclusive", evidence + f"; the runs stop by step {MIDPOINT}, before the reported decay")
        elif not steady:
            add(claim, "refuted", evidence + "; the controlled arm did not stay steady (no collapse in any seed and "
                                             "mean retention ≥ 0.5)")
        elif diff is not None and diff["ci"][1] < 0:
            add(claim, "refuted", evidence + "; entropy held, but hm@4 is significantly worse than without the control")
        elif not base_collapsed:
            add(claim, "inconclusive", evidence + "; plain K=16 did not collapse here, so there was nothing to stabilise")
        else:
            add(claim, "supported", evidence + "; steady where plain K=16 collapsed, hm@4 not significantly worse")
    return out


# ----------------------------------------------------------------------------------------
# summary.json
# ----------------------------------------------------------------------------------------

def _rounded(x):
    if isinstance(x, float):
        return round(x, 6)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x


def build_summary(arms: list[Arm], numbers: dict[str, dict | None]) -> dict:
    """summary.json (INTERFACE.md). `arms` lists the arms with completed steps first; an arm with
    none (numbers None) is listed with null values and left out of the verdicts."""
    usable = [a for a in arms if numbers[a.name] is not None]
    first = numbers[usable[0].name]
    entries = []
    for arm in arms:
        n = numbers[arm.name] or {}
        entries.append({
            "name": arm.name, "k": arm.config["k"], "variant": variant_flags(arm, arms[0]),
            "hm@4_gain_at_100": n.get("gain_at_100") or {"value": None, "ci": None},
            "entropy_retention_at_100": n.get("retention_at_100"), "entropy_retention_final": n.get("retention_final"),
            "collapse_step": n.get("collapse_step"), "step_seconds_median": n.get("step_seconds_median"),
            "peak_memory_mib": n.get("peak_memory_mib"),
            "step_time_ratio": _ratio(n.get("step_seconds_median"), first["step_seconds_median"]),
            "memory_ratio": _ratio(n.get("peak_memory_mib"), first["peak_memory_mib"]),
        })
    seeds = max(len(a.runs) for a in usable)
    return _rounded({"match": match_mode(usable), "steps": max(a.config["steps"] for a in usable), "seeds": seeds,
                     "arms": entries, "verdicts": verdicts(usable, numbers)})


# ----------------------------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------------------------

def _rolling(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or values.size < 2:
        return values
    kernel = np.ones(min(window, values.size))
    return np.convolve(values, kernel, "same") / np.convolve(np.ones_like(values), kernel, "same")


def _across_seeds(arm: Arm, key: str, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Steps, mean, min and max across seeds of a per-step series (each seed smoothed first)."""
    curves = [r.series(key) for r in arm.usable]
    curves = [(s, _rolling(v, window)) for s, v in curves if s.size]
    if not curves:
        return None
    length = min(s.size for s, _ in curves)
    stack = np.stack([v[:length] for _, v in curves])
    return curves[0][0][:length], stack.mean(axis=0), stack.min(axis=0), stack.max(axis=0)


def make_plots(arms: list[Arm], numbers: dict[str, dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    seeds = max(len(a.usable) for a in arms)
    band = f"line: mean of {seeds} seeds; band: min-max across seeds" if seeds > 1 else "one seed"
    paths = []

    def save(fig, name):
        path = out / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    curves = [("entropy/mean", "entropy.png", "policy entropy [nats/token]", 1, "Policy entropy (exact, at the sampling temperature)"),
              ("reward/mean", "reward.png", "mean reward [0-1]", ROLLING, f"Training reward ({ROLLING}-step rolling mean)"),
              ("reward/zero_signal_frac", "zero_signal.png", "groups with no signal [fraction]", ROLLING,
               f"Zero-signal groups: all K rewards equal ({ROLLING}-step rolling mean)"),
              ("diversity/answers", "diversity.png", "distinct answers per group / K", ROLLING,
               f"Answer diversity ({ROLLING}-step rolling mean)")]
    for key, name, ylabel, window, title in curves:
        fig, ax = plt.subplots(figsize=(7, 4))
        for i, arm in enumerate(arms):
            data = _across_seeds(arm, key, window)
            if data is None:
                continue
            steps, mean, lo, hi = data
            ax.plot(steps, mean, color=colors[i % len(colors)], label=arm.name, lw=1.5)
            if len(arm.usable) > 1:
                ax.fill_between(steps, lo, hi, color=colors[i % len(colors)], alpha=0.18, lw=0)
        if key == "entropy/mean":
            onsets = {o for a in arms for o in numbers[a.name]["collapse_onsets"] if o is not None}
            for i, o in enumerate(sorted(onsets)):
                ax.axvline(o, color="0.4", ls=":", lw=1, label="collapse onset (a seed)" if i == 0 else None)
        ax.set(xlabel="training step", ylabel=ylabel, title=f"{title}\n{band}")
        ax.grid(alpha=0.3)
        ax.legend()
        save(fig, name)

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, arm in enumerate(arms):
        steps = sorted(set.intersection(*[set(r.evals) for r in arm.usable])) if arm.usable else []
        points = [(s, metric_at(arm, s)) for s in steps]
        points = [(s, m) for s, m in points if m is not None]
        if not points:
            continue
        xs = np.array([s for s, _ in points], dtype=float)
        ys = np.array([m["value"] for _, m in points])
        err = np.array([[m["value"] - m["ci"][0], m["ci"][1] - m["value"]] for _, m in points]).T
        ax.errorbar(xs + (i - (len(arms) - 1) / 2) * 0.6, ys, yerr=err, color=colors[i % len(colors)], label=arm.name,
                    marker="o", ms=3, capsize=2, lw=1.5)
    ax.set(xlabel="training step", ylabel=f"held-out {METRIC} [fraction solved]",
           title=f"Held-out {METRIC} (error bars: 95% CI over seeds and problems)")
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, "eval_hm4.png")

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.5))
    names = [a.name for a in arms]
    secs = np.array([numbers[a]["step_seconds_median"] or 0.0 for a in names])
    peak = np.array([numbers[a]["peak_memory_mib"] or 0.0 for a in names])
    base = np.array([peak[i] - (numbers[a]["step_memory_mib"] or 0.0) for i, a in enumerate(names)])
    bar_colors = [colors[i % len(colors)] for i in range(len(names))]
    ax1.bar(names, secs, color=bar_colors)
    ax1.set(ylabel="median step time [s]", title="Step time (rollouts + rewards + update)")
    ax2.bar(names, base, color="0.75", label="in use before the step (runtime, model, optimizer)")
    ax2.bar(names, peak - base, bottom=base, color=bar_colors, label="added during the step")
    ax2.set(ylabel="peak resident memory [MiB]", title="Peak memory of a training step")
    ax2.legend(fontsize=7, loc="lower right")
    for x in range(len(names)):
        ax1.annotate(f"{secs[x] / secs[0]:.2f}×" if secs[0] else "", (x, secs[x]), ha="center", va="bottom", fontsize=8)
        added = (peak[x] - base[x]) / (peak[0] - base[0]) if peak[0] > base[0] else float("nan")
        ax2.annotate(f"{peak[x] / peak[0]:.2f}× total\n{added:.2f}× added" if peak[0] else "", (x, peak[x]),
                     ha="center", va="bottom", fontsize=7)
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=20)
        ax.grid(alpha=0.3, axis="y")
        ax.margins(y=0.15)
    save(fig, "cost.png")
    return paths


# ----------------------------------------------------------------------------------------
# report.md / report.html
# ----------------------------------------------------------------------------------------

def machine_line() -> str:
    import os

    import torch

    cpu = platform.processor() or platform.machine()
    return (f"{platform.system()} {platform.machine()} ({cpu}), {os.cpu_count()} CPU cores visible, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def train_command(arm: Arm) -> str:
    """The `rlvr train` flags that reproduce one run of the arm (seed and out left to the user)."""
    from rlvr.config import TrainConfig, to_dict

    defaults = to_dict(TrainConfig())
    parts = []
    for key, value in arm.config.items():
        if key in ("out", "seed", "quiet", "force", "threads") or defaults.get(key) == value:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{key.replace('_', '-')}")
        else:
            parts.append(f"{flag} {value}")
    return "rlvr train " + " ".join(parts)


def markdown(arms: list[Arm], numbers: dict[str, dict], summary: dict, plots: list[Path], context: dict) -> str:
    first = numbers[arms[0].name]
    lines = [f"# rlvr K comparison: {', '.join(a.name for a in arms)}", ""]
    if context.get("command"):
        lines += [f"Command: `{context['command']}`", ""]
    jobs = context.get("jobs", 1)
    lines += [f"Machine: {context.get('machine') or machine_line()}"
              + (f". Runs went {jobs} at a time, so step times include their contention for the cores." if jobs > 1 else ""),
              "",
              f"Task `{arms[0].config['task']}`, model `{arms[0].config['model']}`, {summary['steps']} steps, "
              f"{summary['seeds']} seed(s) per arm, matched by **{summary['match']}** "
              f"({'every arm samples the same prompts per step' if summary['match'] == 'prompts' else 'every arm generates the same number of samples per step'}). "
              f"Numbers across seeds are means; CIs are 95% over seeds and held-out problems; gains are paired against "
              f"each run's own step 0, in points of {METRIC}.", ""]
    problems = {r.evals[min(r.evals)]["n_problems"] for a in arms for r in a.usable if r.evals}
    if problems:
        lines += [f"Held-out problems per evaluation: {', '.join(map(str, sorted(problems)))}.", ""]
    bad = [f"{a.name} seed {r.seed}: {r.status}" for a in arms for r in a.runs if r.status not in ("finished", "stopped")]
    if bad:
        lines += ["**Runs that did not finish:** " + "; ".join(bad) + " (their rows cover the steps they reached).", ""]
    if context.get("unreadable"):
        lines += ["**Runs that failed before writing anything:** " + "; ".join(context["unreadable"]), ""]

    lines += ["## Verdicts on the claims", "", "| claim | verdict | evidence |", "|---|---|---|"]
    for v in summary["verdicts"]:
        lines.append(f"| {v['claim']} | **{v['verdict']}** | {v['evidence']} |")
    lines += ["", f"## Results per arm", "",
              f"| arm | K | {METRIC} @0 | {METRIC} @100 | {METRIC} @last | gain @100 [pts] | gain @last [pts] | "
              "entropy retention @100 | retention @last | collapse onset (per seed) | reward, last 20 steps | "
              "zero-signal groups (mean) | s/step (median) | × first | training s per run | peak MiB | × first |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm in arms:
        n = numbers[arm.name]
        onsets = ", ".join("none" if o is None else str(o) for o in n["collapse_onsets"]) or "n/a"
        lines.append(
            f"| {arm.name} | {arm.config['k']} | {_fmt_ci(n['metric_at_0'], 'frac')} | {_fmt_ci(n['metric_at_100'], 'frac')} | "
            f"{_fmt_ci(n['metric_last'], 'frac')} | {_fmt_ci(n['gain_at_100'])} | {_fmt_ci(n['gain_last'])} | "
            f"{_fmt(n['retention_at_100'])} | {_fmt(n['retention_final'])} | {onsets} | {_fmt(n['reward_last20'], '.3f')} | "
            f"{_fmt(n['zero_signal_mean'])} | {_fmt(n['step_seconds_median'], '.3f')} | {_fmt(_ratio(n['step_seconds_median'], first['step_seconds_median']))} | "
            f"{_fmt(n['train_seconds'], '.1f')} | {_fmt(n['peak_memory_mib'], '.0f')} | {_fmt(_ratio(n['peak_memory_mib'], first['peak_memory_mib']))} |")
    lines += ["", "Peak memory is the process's resident memory during a training step (evaluation excluded), "
                  f"including ~{_fmt(first['memory_before_step_mib'], '.0f')} MiB (first arm) already in use before the "
                  "step: runtime, model and optimizer.", ""]

    lines += ["## Effective settings per arm", "",
              "The confounders that published K comparisons disagree through, as each arm ran them.", "",
              "| arm | variant | K | prompts/step | samples/step generated / trained (measured mean) | lr | lr scaling | loss agg | updates/step | temperature | advantage | entropy control |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm in arms:
        c = arm.config
        control = ", ".join(f"{f}={c[f]}" for f in CONTROL_FIELDS if c.get(f)) or "none"
        if c.get("clip_high", 0) > c.get("clip_low", 0):
            control += f", clip-high {c['clip_high']}"
        lines.append(f"| {arm.name} | `{variant_flags(arm, arms[0]) or '-'}` | {c['k']} | {c['prompts_per_step']} | "
                     f"{_fmt(numbers[arm.name]['generated_per_step'], '.0f')} / {_fmt(numbers[arm.name]['trained_per_step'], '.0f')} | {c['lr']:g} | {arm.meta.get('lr_scaling', 'none')} | "
                     f"{c['loss_agg']} | {c['updates_per_step']} | {c['temperature']} | {c['advantage']} | {control} |")
    lines += ["", "Each arm's runs are reproduced by (add `--seed N --out DIR`):", ""]
    lines += [f"- {arm.name}: `{train_command(arm)}`" for arm in arms]
    lines += ["", "## Plots", ""]
    lines += [f"![{p.stem}](plots/{p.name})" for p in plots]
    lines += ["", f"Summary for scripts: `summary.json`. Runs: {', '.join(sorted({str(r.path) for a in arms for r in a.runs}))}.", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    """Markdown inline code and bold to HTML, after escaping everything."""
    text = html.escape(text)
    text = re.sub(r"`([^`]*)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)


def to_html(md: str, plot_dir: Path) -> str:
    """A self-contained page from our own markdown subset (headings, tables, lists, images):
    every piece of text is escaped; images are embedded as base64 PNG."""
    body, table = [], []

    def flush_table():
        if table:
            head, *rows = table
            body.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>" +
                        "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>")
            table.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            if not all(set(c) <= {"-"} for c in cells):
                table.append(cells)
            continue
        flush_table()
        image = re.fullmatch(r"!\[([^\]]*)\]\(plots/([^)]+)\)", line)
        if image:
            data = base64.b64encode((plot_dir / image.group(2)).read_bytes()).decode()
            body.append(f'<figure><img alt="{html.escape(image.group(1))}" src="data:image/png;base64,{data}"></figure>')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.startswith("- "):
            body.append(f"<ul><li>{_inline(line[2:])}</li></ul>")
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    flush_table()
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 6px;"
             "vertical-align:top}th{background:#f3f3f3}code{background:#f5f5f5;padding:0 3px}img{max-width:100%}"
             "figure{display:inline-block;margin:0.5em;width:48%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>rlvr report</title><style>{style}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")


def build_report(dirs: list[str], out: str, context: dict | None = None) -> dict:
    """Reads the runs under `dirs`, writes summary.json, report.md, report.html and plots/ into
    `out`; returns the summary."""
    context = context or {}
    arms = group_arms(find_runs(dirs))
    if not any(a.usable for a in arms):
        raise ReportError(f"none of the runs under {', '.join(dirs)} has completed a training step")
    arms = [a for a in arms if a.usable] + [a for a in arms if not a.usable]
    numbers = {a.name: arm_numbers(a) if a.usable else None for a in arms}
    usable = [a for a in arms if a.usable]
    summary = build_summary(arms, numbers)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    plots = make_plots(usable, numbers, root / "plots")
    (root / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    md = markdown(usable, numbers, summary, plots, context)
    if len(usable) < len(arms):
        md += "\nArms with no completed step: " + ", ".join(a.name for a in arms if not a.usable) + "\n"
    (root / "report.md").write_text(md)
    (root / "report.html").write_text(to_html(md, root / "plots"))
    return summary
