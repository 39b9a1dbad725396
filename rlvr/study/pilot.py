"""The pre-registered pilot rule of the long SmolLM2 study (docs/study_smollm2_long/README.md).

The rule was written into the doc before any pilot run; this module applies it, unchanged, to the
pilot's light files, so the choice of controls is a computation anyone can rerun:

    python -m rlvr.study.pilot docs/study_smollm2_long/pilot

For each arm (a directory ``<arm>/seed<N>/`` holding ``metrics.jsonl`` and ``config.json``):

* *retention* = mean ``entropy/mean`` of the last 10 steps (91-100) ÷ that of steps 1-5;
* *reward* = mean ``reward/mean`` of the last 20 steps (81-100).

A control passes when retention ≥ 0.5 and reward ≥ the plain arm's − 0.05. The study takes the
passing controls with the highest retention, at most two; fewer than two passing leaves places
for the highest-retention controls among those at no reward cost; when no control costs no
reward, the study takes the single control with the highest retention. An arm with an entropy
target reports its tracking: mean |entropy − target| over steps 51-100 and its coefficient path;
a coefficient at its cap for the last 20 steps means the target was not held.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rlvr.train.rundir import read_json, read_jsonl

RETENTION_BAR = 0.5
REWARD_SLACK = 0.05
MAX_CHOSEN = 2


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _window(rows: list[dict], key: str, first: int, last: int) -> list[float]:
    return [float(r[key]) for r in rows if first <= r["step"] <= last and key in r]


def arm_figures(run_dir: Path, steps: int) -> dict:
    """One pilot arm's figures under the rule; refuses a run that has not reached ``steps``."""
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "step" in r]
    by_step = {r["step"]: r for r in rows}  # a resumed run may repeat a step: the last one counts
    rows = [by_step[s] for s in sorted(by_step)]
    if not rows or rows[-1]["step"] < steps:
        reached = rows[-1]["step"] if rows else 0
        raise ValueError(f"{run_dir}: the pilot rule needs {steps} steps and the run reached "
                         f"{reached}; finish it (rerun the same `rlvr compare`, it resumes)")
    config = (read_json(run_dir / "config.json") or {}).get("config", {})
    early = _window(rows, "entropy/mean", 1, 5)
    late = _window(rows, "entropy/mean", steps - 9, steps)
    reward = _window(rows, "reward/mean", steps - 19, steps)
    out = {"run": str(run_dir), "retention": _mean(late) / _mean(early),
           "entropy_first5": _mean(early), "entropy_last10": _mean(late),
           "reward_last20": _mean(reward), "config": config}
    cov = _window(rows, "clip/cov_tokens", 1, steps)
    if config.get("clip_cov") and cov:
        out["clip_cov_tokens_per_step"] = _mean(cov)
    target = config.get("entropy_target") or 0.0  # 0 (the default) means no target
    if target > 0:
        half = _window(rows, "entropy/mean", steps // 2 + 1, steps)
        coef = {r["step"]: r.get("control/entropy_coef", 0.0) for r in rows}
        cap = float(config.get("entropy_coef_max", float("inf")))
        tail = [coef[s] for s in range(steps - 19, steps + 1) if s in coef]
        out["tracking"] = {
            "target": float(target),
            "mean_abs_error_second_half": _mean([abs(h - float(target)) for h in half]),
            "coef_path": {str(s): coef[s] for s in (1, 10, 25, 50, 75, steps) if s in coef},
            "coef_max_reached": max(coef.values()),
            "coef_cap": cap,
            "at_cap_last20": bool(tail) and all(c >= cap - 1e-12 for c in tail),
        }
    return out


def select(figures: dict[str, dict], plain: str) -> dict:
    """The rule's choice among ``figures`` (arm name -> arm_figures), ``plain`` the reference."""
    if plain not in figures:
        raise ValueError(f"the pilot has no arm {plain!r} (arms: {', '.join(sorted(figures))}); "
                         f"name the plain K=16 arm with --plain")
    floor = figures[plain]["reward_last20"] - REWARD_SLACK
    controls = {n: f for n, f in figures.items() if n != plain}
    by_retention = sorted(controls, key=lambda n: -controls[n]["retention"])
    no_cost = [n for n in by_retention if controls[n]["reward_last20"] >= floor]
    passing = [n for n in no_cost if controls[n]["retention"] >= RETENTION_BAR]
    chosen = passing[:MAX_CHOSEN]
    why = {n: "passes (retention ≥ 0.5, reward within 0.05 of plain)" for n in chosen}
    for n in no_cost:
        if len(chosen) >= MAX_CHOSEN:
            break
        if n not in chosen:
            chosen.append(n)
            why[n] = "fills a place: highest retention at no reward cost, below the 0.5 bar"
    if not chosen and by_retention:
        chosen = [by_retention[0]]
        why[by_retention[0]] = "no control costs no reward: the single highest retention"
    return {"plain": plain, "reward_floor": floor, "passing": passing, "chosen": chosen,
            "why": why, "arms": figures}


def read_pilot(pilot_dir: Path, steps: int) -> dict[str, dict]:
    """arm name -> figures, one seed per arm (the pilot ran one)."""
    figures = {}
    for arm in sorted(p for p in pilot_dir.iterdir() if p.is_dir()):
        seeds = sorted(arm.glob("seed*/metrics.jsonl"))
        if len(seeds) != 1:
            raise ValueError(f"{arm}: the pilot rule reads one seed per arm, found {len(seeds)}")
        figures[arm.name] = arm_figures(seeds[0].parent, steps)
    if not figures:
        raise ValueError(f"{pilot_dir}: no arm directories (<arm>/seed<N>/metrics.jsonl)")
    return figures


def markdown(result: dict) -> str:
    lines = ["| arm | retention | entropy 1-5 → 91-100 | reward 81-100 | passes | chosen |",
             "|---|---|---|---|---|---|"]
    for name, f in sorted(result["arms"].items(), key=lambda kv: -kv[1]["retention"]):
        passes = "—" if name == result["plain"] else ("yes" if name in result["passing"] else "no")
        lines.append(f"| {name} | {f['retention']:.2f} | {f['entropy_first5']:.3f} → "
                     f"{f['entropy_last10']:.3f} | {f['reward_last20']:.3f} | {passes} | "
                     f"{'yes' if name in result['chosen'] else ''} |")
    lines.append(f"\nReward floor (plain − 0.05): {result['reward_floor']:.3f}. "
                 f"Chosen: {', '.join(result['chosen']) or 'none'}.")
    for name, f in result["arms"].items():
        if "tracking" in f:
            t = f["tracking"]
            path = ", ".join(f"step {s}: {c:.3f}" for s, c in t["coef_path"].items())
            lines.append(f"\n{name}: mean |entropy − {t['target']}| over steps 51-100 = "
                         f"{t['mean_abs_error_second_half']:.3f}; coefficient {path} "
                         f"(max {t['coef_max_reached']:.3f}, cap {t['coef_cap']}); "
                         + ("at its cap for the last 20 steps: the target was not held."
                            if t["at_cap_last20"] else "below its cap in the last 20 steps."))
        if "clip_cov_tokens_per_step" in f:
            lines.append(f"\n{name}: Clip-Cov cut {f['clip_cov_tokens_per_step']:.1f} tokens "
                         f"per step on average.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlvr.study.pilot",
                                     description="Apply the long study's pre-registered pilot rule.")
    parser.add_argument("pilot_dir", type=Path)
    parser.add_argument("--plain", default="k16", help="the plain K=16 arm (default k16)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--write", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    try:
        result = select(read_pilot(args.pilot_dir, args.steps), args.plain)
    except (ValueError, OSError) as e:
        print(f"rlvr pilot: {e}", file=sys.stderr)
        return 2
    if args.write:
        args.write.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
