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
import warnings
from pathlib import Path

import numpy as np
import torch

PREFIX = "step_"


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
    """Writes root/step_NNNNNN/state.pt atomically and prunes all but the newest `keep`."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:06d}"
    tmp = root / f".tmp-{PREFIX}{step:06d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    with open(tmp / "state.pt", "wb") as fh:
        torch.save({"step": step, **state}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    _fsync_dir(tmp)
    if final.exists():  # a re-written step after a resume: replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


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
    """Removes half-written checkpoint directories left by a killed run."""
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".tmp-"):
                shutil.rmtree(p, ignore_errors=True)
