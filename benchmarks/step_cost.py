"""Per-step cost of K: step time and peak memory of K=8 vs K=16 (or any Ks), side by side.

    python benchmarks/step_cost.py [--k 8 16] [--steps 40] [--repeats 2]

Each (K, repeat) is a fresh `rlvr train` process on the defaults (so peak RSS is per arm), run
interleaved K=8, K=16, K=8, K=16, … so machine noise hits every K alike. Prints the median step
time (steps after the first 5, which include warm-up), the peak resident memory of a step, and
the step's own working memory (that peak minus the memory in use before the step: runtime,
model and optimizer, which every K pays), with ratios against the first K. Do not run anything else on the machine meanwhile.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--extra", default="", help="flags added to every run")
    args = parser.parse_args()
    times: dict[int, list[float]] = {k: [] for k in args.k}
    memory: dict[int, list[float]] = {k: [] for k in args.k}
    working: dict[int, list[float]] = {k: [] for k in args.k}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for k in args.k:
                out = Path(tmp) / f"k{k}-r{repeat}"
                subprocess.run([sys.executable, "-m", "rlvr.cli", "train", "--k", str(k), "--steps", str(args.steps),
                                "--out", str(out), "--quiet", "--checkpoint-every", "0", *args.extra.split()],
                               check=True, stdout=subprocess.DEVNULL)
                rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
                times[k] += [r["perf/step_seconds"] for r in rows if r["step"] > 5 and "perf/memory_before_step_mib" not in r]
                memory[k].append(max(r["perf/peak_memory_mib"] for r in rows if r["step"] > 0))
                working[k] += [r["perf/peak_memory_mib"] - r["perf/memory_before_step_mib"] for r in rows
                               if "perf/memory_before_step_mib" in r]  # the probe steps (trainer.StepMemory)
    base = args.k[0]
    base_time, base_mem = statistics.median(times[base]), statistics.median(memory[base])
    base_work = statistics.median(working[base])
    print(f"{'K':>4} {'s/step (median)':>16} {'ratio':>6} {'peak MiB':>9} {'ratio':>6} {'step MiB':>9} {'ratio':>6}"
          f"   ({args.steps} steps x {args.repeats} runs per K)")
    for k in args.k:
        t, m, w = statistics.median(times[k]), statistics.median(memory[k]), statistics.median(working[k])
        print(f"{k:>4} {t:>16.4f} {t / base_time:>6.2f} {m:>9.0f} {m / base_mem:>6.2f} {w:>9.1f} {w / base_work:>6.2f}")


if __name__ == "__main__":
    main()
