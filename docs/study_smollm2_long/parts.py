"""Run the long study in parts: keep each finished run's light files here, and put them back.

    python docs/study_smollm2_long/parts.py save    [RUNS]   # RUNS (default runs/study_smollm2_long) -> runs/ here
    python docs/study_smollm2_long/parts.py restore [RUNS]   # runs/ here -> RUNS, before `rlvr compare` goes on
    python docs/study_smollm2_long/parts.py save RUNS DEST    # the pilot: RUNS -> DEST

`save` copies, for every run that ended (a `done` event in its events.jsonl), its light files:
never checkpoints/ or final/ (weights). `restore` copies them back, so `rlvr compare --preset
smollm2-long` skips those runs (a run that ended counts as finished by its `done` event) and runs
the rest. A run that did not end is neither saved nor overwritten.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEPT = HERE / "runs"
LIGHT = ("config.json", "metrics.jsonl", "events.jsonl", "evals.jsonl", "samples.jsonl", "passk.jsonl",
         "arm.json", "train.toml", "eval.json")


def ended(run: Path) -> bool:
    events = run / "events.jsonl"
    if not events.is_file():
        return False
    for line in events.read_text().splitlines():
        try:
            if json.loads(line).get("event") == "done":
                return True
        except json.JSONDecodeError:
            continue
    return False


def copy_runs(src: Path, dst: Path) -> list[str]:
    copied = []
    for config in sorted(src.glob("*/seed*/config.json")):
        run = config.parent
        if not ended(run):
            continue
        target = dst / run.relative_to(src)
        if ended(target) and (target / "metrics.jsonl").read_bytes() == (run / "metrics.jsonl").read_bytes():
            continue
        target.mkdir(parents=True, exist_ok=True)
        for name in LIGHT:
            if (run / name).is_file():
                shutil.copy2(run / name, target / name)
        copied.append(str(run.relative_to(src)))
    return copied


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("save", "restore"):
        print(__doc__, file=sys.stderr)
        return 2
    runs = Path(argv[1]) if len(argv) > 1 else Path("runs/study_smollm2_long")
    kept = Path(argv[2]) if len(argv) > 2 else KEPT
    src, dst = (runs, kept) if argv[0] == "save" else (kept, runs)
    if not src.is_dir():
        print(f"parts.py: {src} is not a directory", file=sys.stderr)
        return 2
    copied = copy_runs(src, dst)
    print(f"{argv[0]}: {len(copied)} run(s) {src} -> {dst}" + "".join(f"\n  {c}" for c in copied))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
