"""The entropy-control study of docs/entropy.md: K=16 runs with and without each control.

    python benchmarks/entropy_controls.py --out runs/entropy-study [--seeds 0 1] [--steps 200]

Every arm is a normal `rlvr train` run (default model and task) in OUT/<arm>/seed<N>; finished
runs are reused. Prints a markdown table: reward over the last 20 steps, entropy retention at
step 100 and at the end, the collapse onset found by the detector (TERMS.md defaults), and
held-out hm@4 / pass@1 at the end (200 problems × 16 samples), each as the mean over seeds with
the per-seed values.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

ARMS = {
    "none": "",
    "entropy-coef 0.01": "--entropy-coef 0.01",
    "entropy-coef 0.03": "--entropy-coef 0.03",
    "entropy-target 1.2": "--entropy-target 1.2 --entropy-coef-max 0.2 --entropy-coef-step 0.002",
    "clip-cov (paper defaults)": "--clip-cov",
    "clip-cov ratio 0.02": "--clip-cov --clip-cov-ratio 0.02",
    "top-entropy-tokens 0.2": "--top-entropy-tokens 0.2",
    "clip-high 0.28": "--clip-high 0.28",
}


def read(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["step"] >= 1 and "reward/mean" in r]
    last_eval = [r for r in rows if "eval/hm@4" in r][-1]
    onsets = [e["onset"] for e in events if e["event"] == "collapse"]
    return {
        "reward_last20": sum(r["reward/mean"] for r in steps[-20:]) / 20,
        "retention_100": steps[99]["entropy/retention"] if len(steps) >= 100 else float("nan"),
        "retention_last": steps[-1]["entropy/retention"],
        "collapse": onsets[0] if onsets else None,
        "hm4": last_eval["eval/hm@4"],
        "pass1": last_eval["eval/pass@1"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/entropy-study")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--extra", default="", help="flags added to every arm, e.g. '--lr 4e-4'")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), help="subset of the arms to run")
    args = parser.parse_args()
    results: dict[str, list[dict]] = {}
    for arm in args.arms:
        for seed in args.seeds:
            run = Path(args.out) / arm.replace(" ", "_").replace("(", "").replace(")", "") / f"seed{seed}"
            command = [sys.executable, "-m", "rlvr.cli", "train", "--k", str(args.k), "--steps", str(args.steps), "--seed", str(seed),
                       "--eval-every", str(args.steps), "--eval-problems", "200", "--out", str(run), "--quiet",
                       *shlex.split(ARMS[arm]), *shlex.split(args.extra)]
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            results.setdefault(arm, []).append(read(run))
            print(f"done: {arm} seed {seed}", file=sys.stderr)
    print(f"K={args.k}, {args.steps} steps, seeds {args.seeds}, extra flags: {args.extra or '(none)'}\n")
    print("| control | reward, last 20 steps | entropy retention @100 | retention @last | collapse onset | hm@4 @last | pass@1 @last |")
    print("|---|---|---|---|---|---|---|")
    for arm, runs in results.items():
        def cell(key: str, fmt: str = "{:.3f}") -> str:
            values = [r[key] for r in runs]
            return fmt.format(sum(values) / len(values)) + " (" + ", ".join(fmt.format(v) for v in values) + ")"
        onsets = ", ".join("none" if r["collapse"] is None else str(r["collapse"]) for r in runs)
        print(f"| {arm} | {cell('reward_last20')} | {cell('retention_100', '{:.2f}')} | "
              f"{cell('retention_last', '{:.2f}')} | {onsets} | {cell('hm4')} | {cell('pass1')} |")


if __name__ == "__main__":
    main()
