"""Are two sets of run directories the same runs? For refactors that must not change behaviour.

    python benchmarks/identical_runs.py BEFORE AFTER RUN [RUN ...]

For each RUN (a path under both BEFORE and AFTER): metrics.jsonl, evals.jsonl and samples.jsonl
row by row, less the timings (perf/* and every *_seconds key, which no two runs share), the
final/ weights tensor by tensor (bit for bit), and the sequence of events. Prints one line per
file and ends with ALL IDENTICAL or SOME DIFFER (exit 1). Make BEFORE with the old tree on
PYTHONPATH (e.g. a `git worktree` of the old commit) and AFTER with the new, same commands.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def rows(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("perf/") and not k.endswith("_seconds")}
            for line in path.read_text().splitlines()]


def main() -> int:
    before, after, runs = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    same_everywhere = True
    for run in runs:
        a, b = before / run, after / run
        for name in ("metrics.jsonl", "evals.jsonl", "samples.jsonl"):
            if not (a / name).is_file():
                continue
            same = rows(a / name) == rows(b / name)
            same_everywhere &= same
            print(run, name, "identical" if same else "DIFFERENT", len(rows(a / name)), "rows")
        for weights in sorted((a / "final").glob("*.safetensors")):
            x, y = load_file(str(weights)), load_file(str(b / "final" / weights.name))
            same = x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
            same_everywhere &= same
            print(run, f"final/{weights.name}", "bit-identical" if same else "DIFFERENT", len(x), "tensors")
        events = [[json.loads(line)["event"] for line in (d / "events.jsonl").read_text().splitlines()] for d in (a, b)]
        same_everywhere &= events[0] == events[1]
        print(run, "events", "same sequence" if events[0] == events[1] else "DIFFERENT")
    print("ALL IDENTICAL" if same_everywhere else "SOME DIFFER")
    return 0 if same_everywhere else 1


if __name__ == "__main__":
    sys.exit(main())
