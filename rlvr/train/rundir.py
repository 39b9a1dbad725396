"""A run directory (INTERFACE.md): its files, the decision to resume or start over, the JSONL
writers that append to it, and the summary read back from it when a run ends."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
from functools import lru_cache
from pathlib import Path

from rlvr import __version__
from rlvr.config import ConfigError, TrainConfig, to_dict
from rlvr.eval.runner import HEADLINE
from rlvr.train.checkpoint import replace_dir, write_text_atomic
from rlvr.train.trackers import Trackers


class RunDir:
    """The files of a run directory (INTERFACE.md) and the decision to resume or start over."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.root = Path(cfg.out)
        self.config_file = self.root / "config.json"
        self.metrics_file = self.root / "metrics.jsonl"
        self.events_file = self.root / "events.jsonl"
        self.evals_file = self.root / "evals.jsonl"  # every evaluation in full, per-problem counts included
        self.samples_file = self.root / "samples.jsonl"  # a few completions of every evaluation, for people
        self.passk_file = self.root / "passk.jsonl"  # --passk-eval-samples: the wide evaluations (step 0, the end)
        self.passk_base_file = self.root / "passk_base.json"  # written by rlvr compare: a shared step-0 wide evaluation
        self.best = self.root / "best"  # --keep-best: the model of the best evaluation, and best.json
        self.checkpoints = self.root / "checkpoints"
        self.final = self.root / "final"

    def check_compatible(self, cfg: TrainConfig) -> None:
        """Refuses (exit 2) an --out that holds a run of another config, unless --force."""
        if not self.config_file.is_file() or cfg.force:
            return
        old = json.loads(self.config_file.read_text()).get("config", {})
        new, defaults = to_dict(cfg), to_dict(type(cfg)())
        # A setting added since that run was made is taken at its default, which is what it ran with.
        old = {name: old.get(name, defaults[name]) for name in new}
        diffs = [f"{name}: {old[name]!r} -> {new[name]!r}" for name in new
                 if name not in cfg.RESUMABLE_CHANGES and old[name] != new[name]]
        if diffs:
            raise ConfigError("out", f"{cfg.out} holds a run with a different config ({'; '.join(diffs)}); "
                                     "use another --out, or --force to start over there")

    def start_fresh(self) -> None:
        for path in (self.metrics_file, self.events_file, self.evals_file, self.samples_file, self.passk_file,
                     self.root / "eval.json"):
            path.unlink(missing_ok=True)
        for path in (self.checkpoints, self.final, self.best):
            shutil.rmtree(path, ignore_errors=True)

    def write_config(self, cfg: TrainConfig, world_size: int = 1) -> None:
        """`world_size`: the processes of this (part of the) run; the results do not depend on it.
        `rlvr_commit`: the git commit of the rlvr checkout that ran it (null outside one)."""
        self.root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.config_file, json.dumps({"rlvr_version": __version__, "rlvr_commit": source_commit(),
                                                        "world_size": world_size, "config": to_dict(cfg)},
                                                       indent=2) + "\n")

    def save_final(self, policy, extra: dict) -> None:
        """final/ appears complete or not at all: a re-run treats an existing final/ as done."""
        tmp = self.root / f".tmp-final-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        policy.save(tmp, extra=extra)
        replace_dir(tmp, self.final)

    def save_best(self, policy, best: dict, extra: dict) -> None:
        """best/ holds the model of the best evaluation and best.json; replaced atomically."""
        tmp = self.root / f".tmp-best-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        policy.save(tmp, extra=extra)
        (tmp / "best.json").write_text(json.dumps({k: v for k, v in best.items() if k != "per_problem"}) + "\n")
        replace_dir(tmp, self.best)

    def truncate_metrics(self, last_step: int) -> None:
        """Drops metric and evaluation rows after the checkpoint being resumed (or rolled back
        to): the resumed run re-creates them."""
        for path in (self.metrics_file, self.evals_file, self.samples_file, self.passk_file):
            if not path.is_file():
                continue
            kept = []
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line torn by the kill
                    continue
                if row.get("step", math.inf) <= last_step:
                    kept.append(line)
            write_text_atomic(path, "".join(line + "\n" for line in kept))


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSONL file ([] when it is missing); a line torn by a kill is skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def read_json(path: Path) -> dict | None:
    """A JSON file's object, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


@lru_cache(maxsize=1)
def source_commit() -> str | None:
    """The commit of the git checkout rlvr is imported from (with "+dirty" when it has uncommitted
    changes), or None for an installed copy or without git."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


class JsonlWriter:
    """Appends one JSON object per line and flushes, so a kill loses at most the current line."""

    def __init__(self, path: Path) -> None:
        self.handle = open(path, "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        self.handle.write(json.dumps(row, allow_nan=True) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


class EventWriter(JsonlWriter):
    """events.jsonl: every event stamped with the UTC time it was written ("time"), so a run's
    wall time, and when each part of a run resumed across sessions ran, can be read back."""

    def write(self, row: dict) -> None:
        super().write({**row, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


class NullWriter:
    """Where ranks other than 0 write their metrics, events and evaluations: nowhere (rank 0
    writes the run directory; every rank computes the same rows)."""

    def write(self, row: dict) -> None:
        pass

    def rewind(self, step: int) -> None:
        pass

    def close(self) -> None:
        pass


class MetricsLog:
    """metrics.jsonl plus the --log trackers (rlvr/train/trackers.py): every row goes to all of them, and
    a rollback rewinds all of them. A resumed run's trackers start after its checkpoint's step."""

    def __init__(self, run: RunDir, cfg: TrainConfig, start_step: int) -> None:
        self.run = run
        self.jsonl = JsonlWriter(run.metrics_file)
        self.trackers = Trackers(cfg.log, run.root, to_dict(cfg), start_step)

    def write(self, row: dict) -> None:
        self.jsonl.write(row)
        self.trackers.log(row)

    def rewind(self, step: int) -> None:
        """Drops the rows after `step` everywhere (with evals.jsonl's)."""
        self.jsonl.close()
        self.run.truncate_metrics(step)
        self.jsonl = JsonlWriter(self.run.metrics_file)
        self.trackers.rewind(step)

    def close(self) -> None:
        self.jsonl.close()
        self.trackers.close()


class RunLogs:
    """The JSONL files a run appends to: metrics.jsonl (with the --log trackers), events.jsonl,
    evals.jsonl and samples.jsonl. Rank 0 writes them; every other rank gets writers that write
    nothing (every rank computes the same rows)."""

    def __init__(self, run: RunDir, cfg: TrainConfig, start_step: int, main: bool) -> None:
        self.run, self.main = run, main
        self.metrics = MetricsLog(run, cfg, start_step) if main else NullWriter()
        self.events = EventWriter(run.events_file) if main else NullWriter()
        self._open_evals()

    def _open_evals(self) -> None:
        self.evals = JsonlWriter(self.run.evals_file) if self.main else NullWriter()
        self.samples = JsonlWriter(self.run.samples_file) if self.main else NullWriter()
        self.passk = JsonlWriter(self.run.passk_file) if self.main else NullWriter()

    def rewind(self, step: int) -> None:
        """A rollback to `step`: the rows after it go from every file but events.jsonl."""
        self.evals.close(), self.samples.close(), self.passk.close()
        self.metrics.rewind(step)
        self._open_evals()

    def close_rows(self) -> None:
        """Closes all but events.jsonl, which stays open for the run's last events."""
        self.metrics.close(), self.evals.close(), self.samples.close(), self.passk.close()

    def close(self) -> None:
        self.close_rows()
        self.events.close()


def summarize(run: RunDir, cfg: TrainConfig, already_done: bool = False) -> dict:
    """Reads metrics.jsonl back: first/last-10-step reward and entropy, step time, last eval."""
    rows = [json.loads(line) for line in run.metrics_file.read_text().splitlines() if line.strip()]
    steps = [r for r in rows if r.get("step", 0) >= 1 and "reward/mean" in r]
    window = min(10, len(steps))
    mean = lambda key, part: sum(r[key] for r in part) / len(part)  # noqa: E731
    first, last = steps[:window], steps[-window:]
    seconds = sorted(r["perf/step_seconds"] for r in steps)
    summary = {
        "steps": len(steps), "out": str(run.root),
        "reward_first10": mean("reward/mean", first), "reward_last10": mean("reward/mean", last),
        "entropy_first10": mean("entropy/mean", first), "entropy_last10": mean("entropy/mean", last),
        "entropy_retention_final": steps[-1]["entropy/retention"],
        "step_seconds_median": seconds[len(seconds) // 2],
        "peak_memory_mib": max(r["perf/peak_memory_mib"] for r in steps),
        "samples_generated": steps[-1].get("sampling/generated_total"),  # None for runs before it was logged
    }
    evals = [r for r in rows if f"eval/{HEADLINE}" in r]
    line = (f"{'already complete: ' if already_done else ''}{len(steps)} steps, K={cfg.k}, "
            f"{summary['step_seconds_median']:.3f} s/step (median) | reward {summary['reward_first10']:.3f} -> "
            f"{summary['reward_last10']:.3f} (mean of first/last {window} steps) | entropy "
            f"{summary['entropy_first10']:.3f} -> {summary['entropy_last10']:.3f} nats")
    if evals:
        e = evals[-1]
        summary["eval"] = {k: v for k, v in e.items() if k.startswith("eval/")}
        line += (f" | {HEADLINE} {e[f'eval/{HEADLINE}']:.3f} [{e[f'eval/{HEADLINE}_ci_low']:.3f}, "
                 f"{e[f'eval/{HEADLINE}_ci_high']:.3f}] at step {e['step']}, n={e['eval/n_problems']}")
        if f"eval/{HEADLINE}_gain" in e:
            line += (f", gain {e[f'eval/{HEADLINE}_gain']:+.1f} pts [{e[f'eval/{HEADLINE}_gain_ci_low']:+.1f}, "
                     f"{e[f'eval/{HEADLINE}_gain_ci_high']:+.1f}]")
    if (run.best / "best.json").is_file():
        summary["best"] = json.loads((run.best / "best.json").read_text())
        line += f" | best {summary['best']['metric']} {summary['best']['value']:.3f} at step {summary['best']['step']} (best/)"
    summary["line"] = line + f" | {run.root}"
    return summary
