"""`--reward math_verify`: a completion's math answer against the item's, with Hugging Face's math-verify.

The completion is read by math-verify's own extraction (LaTeX first: `\\boxed{}` answers, `$…$`
and `\\[…\\]`; then plain expressions; the last answer it finds). The item's `answer` is the bare
expected answer ("1/2", "\\frac{1}{2}", "x=3", "\\sqrt{2}"), so it is parsed inside `\\boxed{}`
unless it already holds a LaTeX delimiter. Score 1.0 when `verify(gold, prediction)` holds, else
0.0. docs/rewards.md lists which forms score equal.

Timeouts. math-verify bounds each parse and each comparison with `signal.alarm` (5 s), which only
works in a process's main thread. Reward worker processes and `--reward-workers 0` call the
verifier in the main thread, so those timeouts stay on; there math-verify treats a timed-out
parse or comparison as "no match" (0.0). Called from any other thread (a user embedding the
verifier), they are switched off and rlvr's `--reward-timeout` (workers only) is the bound.

A gold answer math-verify cannot parse raises ValueError: rlvr counts that call as a reward error
(`reward/errors`, a `reward_error` event naming the answer), since it is the data, not the model,
that is wrong. This module is torch-free: reward worker processes import it.
"""
from __future__ import annotations

import functools
import re
import threading
from decimal import Decimal

MATH_INSTALL = 'pip install -e ".[math]"'
MATH_VERIFY_SECONDS = 5  # math-verify's own default bound on one parse or one comparison
_LATEX_DELIMITERS = ("$", "\\boxed", "\\(", "\\[")
# "1e3" is read by math-verify as 1·e·3 (Euler's number), so numbers in E notation are written out.
_E_NOTATION = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)[eE][-+]?\d+")


def import_math_verify():
    """The math_verify module; ValueError with the install line when it is missing."""
    try:
        import math_verify
    except ImportError as err:
        raise ValueError(f"--reward math_verify needs the math-verify package ({err}); install it with "
                         f"{MATH_INSTALL}") from None
    return math_verify


def _timeout() -> int | None:
    """math-verify's signal-based timeout where it works (the main thread), else none."""
    return MATH_VERIFY_SECONDS if threading.current_thread() is threading.main_thread() else None


def gold_text(answer: str) -> str:
    """The item's answer as math-verify should read it: inside \\boxed{} unless already LaTeX."""
    answer = answer.strip()
    if _E_NOTATION.fullmatch(answer):
        answer = format(Decimal(answer), "f")
    if any(mark in answer for mark in _LATEX_DELIMITERS):
        return answer
    return f"\\boxed{{{answer}}}"


@functools.lru_cache(maxsize=4096)
def _parse_gold(answer: str, timeout: int | None) -> tuple:
    parsed = import_math_verify().parse(gold_text(answer), parsing_timeout=timeout)
    if all(isinstance(value, str) for value in parsed):  # [] or only the raw text: no math in it
        raise ValueError(f"math-verify cannot parse the item's answer {answer!r:.200}; write it as a number, "
                         "a fraction or a LaTeX expression, or use another --reward")
    return tuple(parsed)


def extract(completion: str) -> list:
    """math-verify's reading of a completion: [sympy value, its text], or [] when it finds no answer."""
    return import_math_verify().parse(completion, parsing_timeout=_timeout())


def score(completion: str, item: dict) -> float:
    """1.0 when the completion's answer is mathematically equal to item["answer"], else 0.0."""
    math_verify = import_math_verify()
    timeout = _timeout()
    gold = list(_parse_gold(str(item["answer"]), timeout))
    prediction = math_verify.parse(completion, parsing_timeout=timeout)
    if not prediction:
        return 0.0
    return 1.0 if math_verify.verify(gold, prediction, timeout_seconds=timeout) else 0.0
