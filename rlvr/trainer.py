"""Moved: the training loop is rlvr.train (rlvr/train/loop.py). This module keeps the documented
`rlvr.trainer.train` working for one release (0.2 removes it); import `rlvr.train.train` instead."""
from __future__ import annotations

from rlvr.train.loop import train

__all__ = ["train"]
