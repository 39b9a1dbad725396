"""What --max-staleness's concurrent mode buys on this machine, and what it would buy with
generation on its own hardware (docs/async.md, "What the overlap buys").

    python benchmarks/async_overlap.py [--workload tiny|smollm2] [--steps 30] [--repeats 3] [--json FILE]

Runs three arms, interleaved repeat by repeat so that a change in the machine's load hits them
alike: sync (--max-staleness 0), deterministic (--max-staleness 2) and concurrent
(--max-staleness 2 --async-mode concurrent), each an `rlvr train` subprocess with no
evaluation. Per arm it prints the median step time over the steps after the warm-up (steps
N+2 …), the median sampling time G (perf/rollout_seconds) and update time T (forward +
backward + optimizer), and the ratios concurrent/deterministic and deterministic/sync, plus the
step time a perfect overlap would give, max(G, T), against the synchronous G + T.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKLOADS = {
    "tiny": ["--k", "8", "--prompts-per-step", "8"],
    "smollm2": ["--model", "smollm2", "--task", "mul", "--k", "8", "--prompts-per-step", "4", "--max-new-tokens", "64",
                "--temperature", "0.7", "--lr", "2e-6"],
}
ARMS = {"sync": [], "deterministic": ["--max-staleness", "2"],
        "concurrent": ["--max-staleness", "2", "--async-mode", "concurrent"]}


def run_arm(workload: list[str], arm: list[str], steps: int, out: Path) -> dict:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rlvr", "train", *workload, *arm, "--steps", str(steps), "--eval-every", "0",
                    "--passk-eval-samples", "0", "--checkpoint-every", "0", "--quiet", "--force", "--out", str(out)],
                   check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    late = [r for r in rows if r["step"] >= 4]  # after the warm-up of --max-staleness 2 (steps 1-3)
    update = [r.get("perf/forward_seconds", 0) + r.get("perf/backward_seconds", 0) + r.get("perf/optimizer_seconds", 0)
              for r in late]
    return {"step": statistics.median(r["perf/step_seconds"] for r in late),
            "rollout": statistics.median(r["perf/rollout_seconds"] for r in late),
            "update": statistics.median(update), "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="tiny")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for arm, flags in ARMS.items():
                results[arm].append(run_arm(WORKLOADS[args.workload], flags, args.steps, Path(tmp) / f"{arm}{repeat}"))
                print(f"repeat {repeat} {arm}: {results[arm][-1]}", flush=True)
    median = {arm: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for arm, rs in results.items()}
    g, t = median["sync"]["rollout"], median["sync"]["update"]
    summary = {
        "workload": args.workload, "steps": args.steps, "repeats": args.repeats, "median": median,
        "concurrent_over_deterministic_step": median["concurrent"]["step"] / median["deterministic"]["step"],
        "deterministic_over_sync_step": median["deterministic"]["step"] / median["sync"]["step"],
        "concurrent_over_sync_wall": median["concurrent"]["wall"] / median["sync"]["wall"],
        "sync_G_plus_T": g + t, "perfect_overlap_max_G_T": max(g, t), "perfect_overlap_speedup": (g + t) / max(g, t),
    }
    for arm, m in median.items():
        print(f"{arm:>13}: step {m['step']:.3f} s (sampling {m['rollout']:.3f}, update {m['update']:.3f}), "
              f"run {m['wall']:.1f} s")
    print(f"concurrent / deterministic step time: {summary['concurrent_over_deterministic_step']:.2f}x; "
          f"deterministic / sync: {summary['deterministic_over_sync_step']:.2f}x; "
          f"concurrent / sync run time: {summary['concurrent_over_sync_wall']:.2f}x")
    print(f"perfect overlap on separate hardware: max(G, T) = {max(g, t):.3f} s against G + T = {g + t:.3f} s, "
          f"{summary['perfect_overlap_speedup']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
