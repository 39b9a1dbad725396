"""Training: the RL loop and everything a run directory holds.

`train(cfg)` (rlvr/train/loop.py) runs or resumes one run. Beside it: the step (step.py), the
state a checkpoint restores (state.py), in-training evaluation (evaluator.py), the collapse and
failure guards (guards.py), the run directory and its writers (rundir.py), memory measurement
(memory.py), the progress bar (progress.py), checkpoints (checkpoint.py), trackers
(trackers.py), the pre-run checks (preflight.py), `rlvr export` (export.py) and the tiny model's
supervised pretraining, `rlvr pretrain` (pretrain.py).
"""
from __future__ import annotations

from rlvr.train.loop import train

__all__ = ["train"]
