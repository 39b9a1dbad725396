"""Does `--engine vllm` (bfloat16) learn as `--engine rlvr` does? Reads the light files of the
runs (metrics.jsonl, evals.jsonl) and prints, per arm and for the difference vllm − rlvr:
  * the training reward over the last 20 steps: each step's reward/mean, both seeds pooled
    (40 values), mean and a 95% bootstrap CI over steps;
  * held-out HM@4 at the last evaluation: the mean over seeds of each run's mean over its problems,
    with a 95% two-level bootstrap CI (seeds, then problems: rlvr.algo.stats.seed_bootstrap_ci);
    the difference is paired per problem within a seed (the runs of one seed evaluate the same
    problems; problem ids are positions in a seed's held-out stream, so they are not compared
    across seeds). Give the runs of the two arms in the same seed order;
  * mismatch/kl of the vllm runs (median and max over steps) against the drift threshold;
  * with --vllm-before (vllm runs of the same seeds made before a change, e.g. learning_runs/
    k8-vllm-seed* of the separate trainer view): mismatch/kl's distribution over steps before and
    after (quantiles), the two-sample Kolmogorov-Smirnov distance and its permutation p-value
    (steps are autocorrelated, so the p-value is optimistic: read the quantiles first).

    python docs/checks/engines/learning.py RLVR_RUN... --vllm VLLM_RUN... [--vllm-before RUN...] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from rlvr.algo.stats import seed_bootstrap_ci

RNG = np.random.default_rng(0)


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def last_rewards(runs: list[Path], last: int = 20) -> np.ndarray:
    values = []
    for run in runs:
        steps = [r for r in rows(run) if r.get("step", 0) > 0 and "reward/mean" in r]
        values += [r["reward/mean"] for r in steps[-last:]]
    return np.array(values)


def final_hm4(runs: list[Path]) -> tuple[list[dict], int]:
    """Per run: {problem id: hm@4 (unbiased, from n samples)} at its last evaluation, and that step."""
    per_run = []
    step = None
    for run in runs:
        evals = [json.loads(line) for line in (run / "evals.jsonl").read_text().splitlines() if line.strip()]
        final = evals[-1]
        step = final["step"]
        per_run.append({p["id"]: hm_at_4(p) for p in final["per_problem"]})
    return per_run, step


def hm_at_4(record: dict) -> float:
    """Unbiased pass@4 from c correct of n samples: 1 − C(n−c, 4)/C(n, 4)."""
    from math import comb

    n, c = record["n"], record["correct"]
    return 1.0 - comb(n - c, 4) / comb(n, 4) if n >= 4 else float(c > 0)


def boot(values: np.ndarray, draws: int = 10_000) -> tuple[float, list[float]]:
    idx = RNG.integers(0, len(values), size=(draws, len(values)))
    means = values[idx].mean(axis=1)
    return float(values.mean()), [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rlvr", nargs="+", type=Path)
    parser.add_argument("--vllm", nargs="+", type=Path, required=True)
    parser.add_argument("--vllm-before", nargs="*", type=Path, default=[])
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    report: dict = {}
    rewards = {"rlvr": last_rewards(args.rlvr), "vllm": last_rewards(args.vllm)}
    hm4 = {"rlvr": final_hm4(args.rlvr), "vllm": final_hm4(args.vllm)}
    for arm in ("rlvr", "vllm"):
        per_seed = [np.array(list(run.values())) for run in hm4[arm][0]]
        report[arm] = {"reward_last20": boot(rewards[arm]),
                       "hm@4_final": (float(np.mean([v.mean() for v in per_seed])), list(seed_bootstrap_ci(per_seed))),
                       "hm@4_final_per_seed": [float(v.mean()) for v in per_seed], "final_eval_step": hm4[arm][1]}
    diff = rewards["vllm"].mean() - rewards["rlvr"].mean()
    ia = RNG.integers(0, len(rewards["vllm"]), size=(10_000, len(rewards["vllm"])))
    ib = RNG.integers(0, len(rewards["rlvr"]), size=(10_000, len(rewards["rlvr"])))
    deltas = rewards["vllm"][ia].mean(axis=1) - rewards["rlvr"][ib].mean(axis=1)
    report["reward_last20_diff"] = [float(diff), [float(np.quantile(deltas, 0.025)), float(np.quantile(deltas, 0.975))]]
    paired = []
    for ours, theirs in zip(hm4["rlvr"][0], hm4["vllm"][0]):  # the same seed: the same problems
        assert set(ours) == set(theirs), "pair the runs by seed: the arms' runs must be given in the same seed order"
        paired.append(np.array([theirs[i] - ours[i] for i in sorted(ours)]))
    report["hm@4_final_paired_diff"] = (float(np.mean([v.mean() for v in paired])), list(seed_bootstrap_ci(paired)))

    kls = [r["mismatch/kl"] for run in args.vllm for r in rows(run) if "mismatch/kl" in r]
    report["vllm_mismatch_kl"] = {"median": statistics.median(kls), "max": max(kls), "steps": len(kls)}
    drift = [json.loads(line) for run in args.vllm for line in (run / "events.jsonl").read_text().splitlines()
             if line.strip() and json.loads(line)["event"] == "drift"]
    report["drift_events"] = len(drift)
    if args.vllm_before:
        before = np.array([r["mismatch/kl"] for run in args.vllm_before for r in rows(run) if "mismatch/kl" in r])
        after = np.array(kls)
        qs = (0.1, 0.25, 0.5, 0.75, 0.9)
        distance = ks_distance(before, after)
        pooled = np.concatenate([before, after])
        permuted = [ks_distance(*np.split(RNG.permutation(pooled), [len(before)])) for _ in range(2_000)]
        report["mismatch_kl_before_after"] = {
            "quantiles": list(qs), "before": [float(np.quantile(before, q)) for q in qs],
            "after": [float(np.quantile(after, q)) for q in qs], "steps": [len(before), len(after)],
            "ks_distance": distance, "ks_permutation_p": float(np.mean([d >= distance for d in permuted]))}
    for key, value in report.items():
        print(f"{key}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The largest gap between the two empirical distribution functions."""
    grid = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    fb = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(fa - fb).max())


if __name__ == "__main__":
    main()
