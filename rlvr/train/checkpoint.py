"""Atomic checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is written into a temporary directory, fsynced, then renamed into place, so a
kill at any moment leaves either the previous checkpoints or the new one, never a half-written
directory under its final name. Loading walks from the newest checkpoint back and skips any
that cannot be read.
"""
from __future__ import annotations

import os
import random
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch

PREFIX = "step_"
# Test hook: seconds to pause between writing a checkpoint and renaming it into place, so a test
# can kill a run in the middle of a checkpoint write (tests/test_kill_resume.py). Unset: no pause.
SLOW_CHECKPOINT_ENV = "RLVR_TEST_SLOW_CHECKPOINT"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(root: Path, step: int, state: dict, keep: int) -> Path:
    """Writes root/step_NNNNNN/state.pt atomically and prunes all but the newest `keep`.

    A write that fails (a full disk) removes its partial file before the error propagates, and
    the partial directories of writes that were killed are removed before the next write: one
    process writes a run's checkpoints, so every `.tmp-` directory here is a dead one (a model
    with its optimizer state leaves over a GB each, which is how a full disk stays full)."""
    root.mkdir(parents=True, exist_ok=True)
    for dead in root.glob(f".tmp-{PREFIX}*"):
        shutil.rmtree(dead, ignore_errors=True)
    final = root / f"{PREFIX}{step:06d}"
    tmp = root / f".tmp-{PREFIX}{step:06d}-{os.getpid()}"
    tmp.mkdir()
    try:
        with open(tmp / "state.pt", "wb") as fh:
            torch.save({"step": step, **state}, fh)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.environ.get(SLOW_CHECKPOINT_ENV):
        time.sleep(float(os.environ[SLOW_CHECKPOINT_ENV]))
    replace_dir(tmp, final)  # a re-written step after a resume replaces the old one
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_text_atomic(path: Path, text: str) -> None:
    """Replaces `path` by `text` in one rename, so a kill leaves the old or the new file, never half."""
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def replace_dir(tmp: Path, final: Path) -> None:
    """Moves the complete directory `tmp` to `final`, replacing what was there."""
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(final.parent)


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint directories, oldest first (temporary ones are never listed)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def load_latest(root: Path, before: int | None = None) -> dict | None:
    """The newest readable checkpoint's state (strictly before step `before`, where a rollback
    goes, when given), or None. Unreadable ones are skipped with a warning."""
    for path in reversed(list_checkpoints(root)):
        if before is not None and int(path.name[len(PREFIX):]) >= before:
            continue
        try:
            return torch.load(path / "state.pt", map_location="cpu", weights_only=False)
        except Exception as err:  # a torn or corrupt file: fall back to the one before
            warnings.warn(f"skipping unreadable checkpoint {path}: {err}")
    return None


def clean_temporaries(root: Path) -> None:
    """Removes half-written files and directories (`.tmp-*`) left in `root` by a killed run."""
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".tmp-"):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
