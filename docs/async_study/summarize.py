"""The async study's numbers, by the rule docs/async.md pre-registered, from the light files
under docs/async_study/runs/ -> docs/async_study/summary.json, plots/, and the tables printed.

    python docs/async_study/summarize.py
"""
from __future__ import annotations

import gzip
import json
import math
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARMS = ("k8", "naive", "decoupled", "tis")
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365}  # two-sided 95% t quantiles


def metrics_file(run: Path) -> Path:
    return run / "metrics.jsonl.gz" if (run / "metrics.jsonl.gz").is_file() else run / "metrics.jsonl"


def rows(run: Path) -> list[dict]:
    path = metrics_file(run)
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if line.strip()]


def mean_over(rs: list[dict], key: str, first: int, last: int) -> float | None:
    values = [r[key] for r in rs if first <= r["step"] <= last and key in r]
    return statistics.fmean(values) if values else None


def per_run(run: Path, steps: int) -> dict:
    rs = rows(run)
    final = [r for r in rs if r["step"] == steps and "eval/hm@4" in r]
    kinds = {e["event"] for e in events(run)}
    return {
        "final_hm4": final[0]["eval/hm@4"] if final else None,
        "late_reward": mean_over(rs, "reward/mean", steps - 49, steps),
        "late_entropy": mean_over(rs, "entropy/mean", steps - 49, steps),
        "mismatch_kl": mean_over(rs, "mismatch/kl", 5, steps),
        "clip_frac": mean_over(rs, "clip/frac", 5, steps),
        "corrected_frac": mean_over(rs, "mismatch/corrected_frac", 5, steps),
        "collapsed": bool(kinds & {"collapse", "reward_collapse"}),
        "skipped": sum(r.get("optim/skipped", 0) for r in rs),
        "steps": max(r["step"] for r in rs),
    }


def interval(differences: list[float]) -> dict:
    n = len(differences)
    mean = statistics.fmean(differences)
    half = T975[n - 1] * statistics.stdev(differences) / math.sqrt(n) if n > 1 else math.inf
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def paired(runs: dict, a: str, b: str, metric: str) -> dict | None:
    seeds = sorted(set(runs.get(a, {})) & set(runs.get(b, {})))
    diffs = [runs[a][s][metric] - runs[b][s][metric] for s in seeds
             if runs[a][s][metric] is not None and runs[b][s][metric] is not None]
    return interval(diffs) if len(diffs) >= 2 else None


def verdict(runs: dict) -> dict:
    """The pre-registered rule of docs/async.md."""
    out = {}
    hurt_by = []
    for metric in ("final_hm4", "late_reward"):
        ci = paired(runs, "naive", "k8", metric)
        out[f"naive-k8 {metric}"] = ci
        if ci and ci["high"] < 0:
            hurt_by.append(metric)
    unstable = lambda arm: sum(r["collapsed"] or r["skipped"] > 0 for r in runs.get(arm, {}).values())
    if unstable("naive") >= 2 and unstable("k8") == 0:
        hurt_by.append("instability")
    out["naive_hurt"] = bool(hurt_by)
    out["naive_hurt_by"] = hurt_by
    for arm in ("decoupled", "tis"):
        fixed = False
        for metric in [m for m in hurt_by if m != "instability"]:
            over_naive, vs_sync = paired(runs, arm, "naive", metric), paired(runs, arm, "k8", metric)
            if over_naive and vs_sync and over_naive["low"] > 0 and vs_sync["low"] <= 0 <= vs_sync["high"]:
                fixed = True
        if "instability" in hurt_by and unstable(arm) == 0:
            fixed = True
        out[f"{arm}_fixed"] = fixed if hurt_by else None
        for metric in ("final_hm4", "late_reward"):
            out[f"{arm}-k8 {metric}"] = paired(runs, arm, "k8", metric)
            out[f"{arm}-naive {metric}"] = paired(runs, arm, "naive", metric)
    return out


def summarize_setting(root: Path) -> dict:
    runs: dict = {}
    steps = None
    for arm in ARMS:
        for run in sorted((root / arm).glob("seed*")):
            if not metrics_file(run).is_file():
                continue
            config = json.loads((run / "config.json").read_text())["config"]
            steps = config["steps"]
            runs.setdefault(arm, {})[run.name] = per_run(run, steps)
    arms = {}
    for arm, seeds in runs.items():
        arms[arm] = {"seeds": len(seeds)}
        for metric in ("final_hm4", "late_reward", "late_entropy", "mismatch_kl", "clip_frac", "corrected_frac"):
            values = [v[metric] for v in seeds.values() if v[metric] is not None]
            arms[arm][metric] = statistics.fmean(values) if values else None
            arms[arm][metric + "_per_seed"] = values
        arms[arm]["collapsed_seeds"] = sum(v["collapsed"] for v in seeds.values())
        arms[arm]["skipped_steps"] = sum(v["skipped"] for v in seeds.values())
    return {"steps": steps, "arms": arms, "verdict": verdict(runs), "runs": runs}


def plot(root: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for arm in ARMS:
        runs = [rows(r) for r in sorted((root / arm).glob("seed*")) if metrics_file(r).is_file()]
        if not runs:
            continue
        for ax, key, window in ((axes[0], "reward/mean", 10), (axes[1], "entropy/mean", 10), (axes[2], "eval/hm@4", 1)):
            series = [{r["step"]: r[key] for r in rs if key in r and r["step"] > (0 if window > 1 else -1)} for rs in runs]
            steps = sorted(set.intersection(*(set(s) for s in series)))
            mean = [statistics.fmean(s[t] for s in series) for t in steps]
            if window > 1:  # a trailing moving average, for the training curves
                mean = [statistics.fmean(mean[max(0, i - window + 1): i + 1]) for i in range(len(mean))]
            ax.plot(steps, mean, label=arm)
    for ax, title in zip(axes, ("training reward (10-step mean)", "entropy [nats] (10-step mean)", "held-out HM@4")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend()
    fig.suptitle(f"async study, {name}: mean over seeds")
    fig.tight_layout()
    (HERE / "plots").mkdir(exist_ok=True)
    fig.savefig(HERE / "plots" / f"{name}.png", dpi=90)
    plt.close(fig)


def fmt(ci: dict | None) -> str:
    return "n/a" if ci is None else f"{ci['mean']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]"


def main() -> None:
    summary = {}
    for root in sorted((HERE / "runs").glob("*")):
        if not root.is_dir():
            continue
        result = summarize_setting(root)
        if not result["arms"]:  # a setting not run yet
            continue
        summary[root.name] = result
        plot(root, root.name)
        print(f"## {root.name} ({result['steps']} steps)")
        print("| arm | seeds | final HM@4 | reward, last 50 | entropy, last 50 | mismatch/kl | clip/frac | corrected | "
              "collapsed seeds | skipped steps |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for arm, a in result["arms"].items():
            cells = [f"{a[m]:.4g}" if a[m] is not None else "-" for m in
                     ("final_hm4", "late_reward", "late_entropy", "mismatch_kl", "clip_frac", "corrected_frac")]
            print(f"| {arm} | {a['seeds']} | " + " | ".join(cells) + f" | {a['collapsed_seeds']} | {a['skipped_steps']} |")
        v = result["verdict"]
        print()
        for key in [k for k in v if " " in k]:
            print(f"- {key}: {fmt(v[key])}")
        print(f"- naive hurt: {v['naive_hurt']} {v['naive_hurt_by']}; decoupled fixed: {v['decoupled_fixed']}; "
              f"tis fixed: {v['tis_fixed']}")
        print()
    (HERE / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
