"""The episodes study's summary from its committed light files (docs/episodes_study/runs/):
summary.json, the table printed for docs/episodes.md, and plots/call_rate_reward.png.

    .venv/bin/python docs/episodes_study/summarize.py

Per task and seed: the tool-call rate and the training reward, means of the first and the last 10
steps (each step holds 16 episodes), and held-out HM@4 (48 problems, 8 samples, T = 0.7) with the
tool at step 0 and at the end (the run's own evaluations) and without it for the base model and
the trained one (rlvr eval). Differences are pooled over seeds with 95% bootstrap intervals over
the steps (call rate, reward), as the runs are too few for an interval over seeds.
"""
from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs"
WINDOW = 10


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def bootstrap_difference(first: list[float], last: list[float], draws: int = 2000, seed: int = 0) -> list[float]:
    """95% interval of mean(last) − mean(first), resampling each list (steps) with replacement."""
    rng = random.Random(seed)
    diffs = sorted(statistics.fmean(rng.choices(last, k=len(last))) - statistics.fmean(rng.choices(first, k=len(first)))
                   for _ in range(draws))
    return [diffs[int(0.025 * draws)], diffs[int(0.975 * draws) - 1]]


def hm4(record: dict) -> dict:
    metric = record["metrics"]["hm@4"]
    return {"value": metric["value"], "ci": metric["ci"], "n": metric.get("n", record.get("n_problems"))}


def summarize_task(task_dir: Path) -> dict:
    task: dict = {"task": task_dir.name, "seeds": {}}
    base = task_dir / "base_without_tool.json"
    if base.is_file():
        task["base_without_tool_hm@4"] = hm4(json.loads(base.read_text()))
    firsts: dict[str, list[float]] = {"episode/call_rate": [], "reward/mean": []}
    lasts: dict[str, list[float]] = {"episode/call_rate": [], "reward/mean": []}
    for seed_dir in sorted(task_dir.glob("seed*")):
        metrics = [r for r in rows(seed_dir / "metrics.jsonl") if "reward/mean" in r]
        evals = rows(seed_dir / "evals.jsonl") if (seed_dir / "evals.jsonl").is_file() else []
        seed: dict = {"steps": len(metrics)}
        for key in firsts:
            first = [r[key] for r in metrics[:WINDOW]]
            last = [r[key] for r in metrics[-WINDOW:]]
            firsts[key] += first
            lasts[key] += last
            seed[key] = {"first": statistics.fmean(first), "last": statistics.fmean(last)}
        if evals:
            seed["with_tool_hm@4"] = {str(e["step"]): hm4(e) for e in evals}
        without = seed_dir / "final_without_tool.json"
        if without.is_file():
            seed["final_without_tool_hm@4"] = hm4(json.loads(without.read_text()))
        seed["turns_last"] = statistics.fmean(r["episode/turns"] for r in metrics[-WINDOW:])
        seed["tool_errors_last"] = statistics.fmean(r["episode/tool_errors"] for r in metrics[-WINDOW:])
        task["seeds"][seed_dir.name] = seed
    for key in firsts:
        if firsts[key]:
            task[key] = {"first": statistics.fmean(firsts[key]), "last": statistics.fmean(lasts[key]),
                         "change": statistics.fmean(lasts[key]) - statistics.fmean(firsts[key]),
                         "change_ci": bootstrap_difference(firsts[key], lasts[key])}
    return task


def plot(tasks: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for task in tasks:
        for seed in task["seeds"]:
            metrics = [r for r in rows(RUNS / task["task"] / seed / "metrics.jsonl") if "reward/mean" in r]
            steps = [r["step"] for r in metrics]
            for ax, key in zip(axes, ("episode/call_rate", "reward/mean")):
                ax.plot(steps, [r[key] for r in metrics], label=f"{task['task']} {seed}", linewidth=1)
    for ax, title in zip(axes, ("tool-call rate (share of episodes)", "training reward")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    (HERE / "plots").mkdir(exist_ok=True)
    fig.savefig(HERE / "plots" / "call_rate_reward.png", dpi=110)


def main() -> None:
    tasks = [summarize_task(d) for d in sorted(RUNS.iterdir()) if d.is_dir()]
    (HERE / "summary.json").write_text(json.dumps({"tasks": tasks}, indent=1) + "\n")
    for task in tasks:
        print(f"## {task['task']}")
        for key in ("episode/call_rate", "reward/mean"):
            if key in task:
                t = task[key]
                print(f"{key}: first {WINDOW} steps {t['first']:.3f} -> last {WINDOW} {t['last']:.3f}, change "
                      f"{t['change']:+.3f} [{t['change_ci'][0]:+.3f}, {t['change_ci'][1]:+.3f}]")
        if "base_without_tool_hm@4" in task:
            print(f"base model without the tool: HM@4 {task['base_without_tool_hm@4']['value']:.3f}")
        for name, seed in task["seeds"].items():
            with_tool = seed.get("with_tool_hm@4", {})
            text = ", ".join(f"step {s}: {v['value']:.3f} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]" for s, v in with_tool.items())
            without = seed.get("final_without_tool_hm@4")
            print(f"  {name}: with the tool {text}; trained, without the tool: "
                  f"{'n/a' if without is None else format(without['value'], '.3f')}")
    if tasks:
        plot(tasks)


if __name__ == "__main__":
    main()
