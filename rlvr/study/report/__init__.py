"""`rlvr report DIR...`: a K comparison's report, built from run directories alone.

Reads each run's config.json, metrics.jsonl, evals.jsonl, events.jsonl, samples.jsonl and
best/best.json (and arm.json, which `rlvr compare` writes to name the arm), groups the runs into
arms (same arm name, one run per seed), and writes into the output directory:

  summary.json   the numbers of INTERFACE.md ("A comparison directory"), deterministic, so a
                 rebuilt report equals the original;
  report.md      tables per arm, each arm's effective settings, verdicts with their evidence,
                 and sample completions at the first and last evaluation;
  report.html    the same, self-contained (plots embedded as base64), every text escaped;
  plots/*.png    entropy beside eval hm@4 (the overview), then entropy, reward, eval hm@4
                 (with CIs), zero-signal fraction, answer diversity vs step, and step time /
                 peak memory per arm.

The modules: runs (reading, arms, the numbers per arm), verdicts (the claims' rules), plots,
render (markdown, escaping, HTML). Statistics. Across seeds a number is the mean of the per-seed
values. The CI of an evaluation metric or gain is `seed_bootstrap_ci`: seeds and, within each
seed, problems are resampled, so the interval holds training noise as well as evaluation noise.
Gains are paired per problem against the same run's step-0 evaluation (TERMS.md).
"""
from __future__ import annotations

import json
from pathlib import Path

from rlvr.study.report.plots import make_plots
from rlvr.study.report.render import escape_text, machine_line, markdown, to_html
from rlvr.study.report.runs import (METRIC, Arm, ReportError, Run, arm_difference, arm_noise, arm_numbers, cost_ratio,
                                    find_runs, group_arms, has_entropy_control, match_mode, passk_difference, ratio,
                                    read_run, reward_difference, run_log, variant_flags)
from rlvr.study.report.verdicts import is_plain, reach_finding, verdicts

__all__ = ["METRIC", "Arm", "ReportError", "Run", "build_report", "build_summary", "machine_line", "read_run",
           "to_html", "verdicts"]


def _rounded(x):
    if isinstance(x, float):
        return round(x, 6)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x


def _versus(arm: Arm, base: Arm, n: dict) -> dict:
    """The arm minus `base`, paired by seed: training reward over the last 20 steps (paired by step
    too), hm@4 at the last evaluation and pass@k at the end (points, paired by problem)."""
    return {"reward_last20": reward_difference(arm, base), "hm@4_last": arm_difference(arm, base),
            "passk_last": {str(k): passk_difference(arm, base, k) for k in sorted(n.get("passk_vs_base") or {})}}


def build_summary(arms: list[Arm], numbers: dict[str, dict | None]) -> dict:
    """summary.json (INTERFACE.md). `arms` lists the arms with completed steps first; an arm with
    none (numbers None) is listed with null values and left out of the verdicts."""
    usable = [a for a in arms if numbers[a.name] is not None]
    first = numbers[usable[0].name]
    k16 = next((a for a in usable if is_plain(a, 16)), None)
    entries = []
    for arm in arms:
        n = numbers[arm.name] or {}
        paired = arm in usable and arm is not usable[0]
        settings = {k: v for k, v in arm.config.items() if k not in ("out", "seed", "quiet", "force", "threads")}
        entries.append({
            "name": arm.name, "k": arm.config["k"], "variant": variant_flags(arm, arms[0]),
            "hm@4_gain_at_100": n.get("gain_at_100") or {"value": None, "ci": None},
            "entropy_retention_at_100": n.get("retention_at_100"), "entropy_retention_final": n.get("retention_final"),
            "entropy_retention_last_step": n.get("retention_last_step"),  # the last step alone (final: last 20 steps' mean)
            "collapse_step": n.get("collapse_step"), "step_seconds_median": n.get("step_seconds_median"),
            "peak_memory_mib": n.get("peak_memory_mib"),
            "step_time_ratio": ratio(n.get("step_seconds_median"), first["step_seconds_median"]),
            "memory_ratio": ratio(n.get("peak_memory_mib"), first["peak_memory_mib"]),
            "reward_collapse_step": n.get("reward_collapse_step"),
            "best_step": n.get("best_steps"),  # per seed (null where a run kept no best)
            "best_value": n.get("best_value"),  # mean over seeds; null unless every seed kept one
            # 95% CIs of the cost ratios against the first arm, paired by seed (rlvr/study/report/runs.py cost_ratio)
            "step_time_ratio_ci": cost_ratio(usable[0], arm, "step_seconds") if paired else None,
            "step_memory_ratio_ci": cost_ratio(usable[0], arm, "step_memory") if paired else None,
            "hm@4_change_100_to_last": n.get("late_change"),  # points, paired per problem
            # --passk-eval-samples: pass@k of the base model (step 0) and at the end, and end minus base in points
            "passk": {where: {str(k): v for k, v in (n.get(key) or {}).items()}
                      for where, key in (("base", "passk_base"), ("last", "passk_last"), ("last_minus_base", "passk_vs_base"))},
            "seeds": n.get("seeds"),
            # a K=16 arm with an entropy control against plain K=16, paired by seed (claim (e); null otherwise)
            "vs_plain_k16": _versus(arm, k16, n) if (arm in usable and k16 is not None and arm is not k16
                                                     and arm.config["k"] == 16 and has_entropy_control(arm.config))
            else None,
            # the gradient's noise over every measured step (null for runs older than the measurement)
            "grad_noise": arm_noise(arm) if arm in usable else None,
            "settings": settings,  # the arm's full train settings (out and seed aside)
        })
    seeds = max(len(a.runs) for a in usable)
    config = usable[0].config
    return _rounded({"model": config["model"], "task": config["task"], "match": match_mode(usable),
                     "steps": max(a.config["steps"] for a in usable), "seeds": seeds,
                     "arms": entries, "verdicts": verdicts(usable, numbers),
                     # pass@k at the largest k against the base model, beyond the five claims (null without it)
                     "reach": reach_finding(usable, numbers),
                     "runs": run_log(arms)})  # which run ran when, on which commit, its wall time


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
        md += "\nArms with no completed step: " + escape_text(", ".join(a.name for a in arms if not a.usable)) + "\n"
    (root / "report.md").write_text(md)
    (root / "report.html").write_text(to_html(md, root / "plots"))
    return summary
