"""Where a run's metrics go besides metrics.jsonl: experiment trackers chosen with `--log`.

metrics.jsonl is always written (by the trainer) and is the record everything else is rebuilt
from. `--log jsonl,tensorboard,wandb,mlflow` adds trackers; each receives the same rows with the
same keys and steps. A tracker is a small object registered by name in TRACKERS:
`log(row)`, `rewind(step)` (a resume or rollback drops the rows after `step`: the tracker must
not show them twice), `close()`. Each tracker's package is an optional extra; `check_loggers`
refuses a missing one before any work.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

from rlvr.registry import Registry

ALWAYS = "jsonl"  # written by the trainer itself; accepted in --log for clarity


class Tracker(Protocol):
    def log(self, row: dict) -> None:
        """One metrics row (its "step" key is the step)."""

    def rewind(self, step: int) -> None:
        """Forget rows after `step`: the run resumes (or rolls back) from there."""

    def close(self) -> None: ...


# name -> factory(run_dir: Path, config: dict, start_step: int) -> Tracker
TRACKERS: Registry[Callable[[Path, dict, int], Tracker]] = Registry("logger")
# name -> (importable module that must exist, the pip extra that brings it)
REQUIREMENTS: dict[str, tuple[str, str]] = {}


def parse(log: str) -> list[str]:
    """The tracker names in a --log value (jsonl, always on, is not one of them)."""
    return [name for name in (s.strip() for s in log.split(",")) if name and name != ALWAYS]


def check_loggers(log: str) -> None:
    """ValueError naming the problem and the fix: an unknown name, or a tracker whose package is
    not installed."""
    import importlib.util

    for name in parse(log):
        if name not in TRACKERS:
            known = ", ".join([ALWAYS, *TRACKERS.names()])
            raise ValueError(f"unknown logger {name!r}; available: {known}")
        module, extra = REQUIREMENTS.get(name, (None, None))
        if module and importlib.util.find_spec(module) is None:
            raise ValueError(f"--log {name} needs the {module} package; install it with pip install -e \".[{extra}]\"")


class Trackers:
    """The trackers of one run, called like one."""

    def __init__(self, log: str, run_dir: Path, config: dict, start_step: int) -> None:
        self.trackers = [TRACKERS.get(name)(Path(run_dir), config, start_step) for name in parse(log)]

    def log(self, row: dict) -> None:
        for tracker in self.trackers:
            tracker.log(row)

    def rewind(self, step: int) -> None:
        for tracker in self.trackers:
            tracker.rewind(step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
