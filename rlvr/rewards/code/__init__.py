"""The code_exec verifier: a completion's program runs in a sandbox process (sandbox_boot.py),
a judge in the caller's process runs the item's tests against it (judge.py), and the two talk
through pipes in plain data only (wire.py). `score` is the verifier (rlvr/rewards/code/execute.py).
"""
from __future__ import annotations

from rlvr.rewards.code.execute import Limits, Result, extract_program, run_sandboxed, score

__all__ = ["Limits", "Result", "extract_program", "run_sandboxed", "score"]
