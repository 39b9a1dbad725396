"""docs/metrics.md is the one list of logged keys: every key a run writes must be documented there."""
import json
import re
from pathlib import Path

from rlvr.cli import main

DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"


def documented(key: str, names: set[str]) -> bool:
    """Exact, or by the doc's patterns: `_ci_low`/`_ci_high` suffixes, `@k` for the k values,
    `reward/<name>/...` for each weighted verifier, and short sibling names in one cell
    (`entropy/p10`, `p50`, `p90`)."""
    base = re.sub(r"_ci_(low|high)$", "", key)
    candidates = {key, base, re.sub(r"@\d+", "@k", base), key.rsplit("/", 1)[-1],
                  re.sub(r"^reward/[^/]+/", "reward/<name>/", key)}
    return bool(candidates & names)


def test_every_key_a_run_writes_is_in_docs_metrics_md(tmp_path):
    names = set(re.findall(r"`([^`\s]+)`", DOC.read_text()))
    keys: set[str] = set()
    runs = {"eval": ["--eval-every", "2", "--eval-problems", "4", "--eval-samples", "8"],
            "adaptive": ["--adaptive-k"], "filter": ["--group-filter", "--overlong-buffer", "2"],
            "weighted": ["--reward", "task:0.8,format:0.2"], "episodes": ["--env", "calc", "--task", "mul"],
            "async": ["--max-staleness", "1", "--async-mode", "concurrent"]}
    for name, extra in runs.items():
        out = tmp_path / name
        assert main(["train", "--steps", "2", "--k", "4", "--prompts-per-step", "2", "--out", str(out), "--quiet",
                     "--threads", "1", *extra]) == 0
        for line in (out / "metrics.jsonl").read_text().splitlines():
            keys.update(json.loads(line))
    missing = sorted(key for key in keys if not documented(key, names))
    assert not missing, f"keys written by rlvr train but not in docs/metrics.md: {missing}"
