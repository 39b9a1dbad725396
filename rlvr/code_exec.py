"""Moved: the code_exec verifier is rlvr.rewards.code (rlvr/rewards/code/execute.py). This module
keeps the documented `rlvr.code_exec.score` working for one release (0.2 removes it); import
`rlvr.rewards.code.score` instead."""
from __future__ import annotations

from rlvr.rewards.code.execute import Limits, Result, extract_program, run_sandboxed, score

__all__ = ["Limits", "Result", "extract_program", "run_sandboxed", "score"]
