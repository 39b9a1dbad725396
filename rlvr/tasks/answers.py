"""Answer formats: how a model is told to state its final answer, and how that answer is read.

A format pairs a one-sentence instruction for a chat model with `extract(completion)`, which
returns the raw answer text (or None when the completion states no answer in that form). Tasks
keep their own comparison: they read the extracted text the way their answers are spelled (an
integer, a number, a line) and score it. "auto" names each task's `default_answer_format`.

This module is torch-free: reward worker processes import it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Protocol

from rlvr.registry import Registry, UnknownNameError


# The name that stands for the task's own default format.
AUTO = "auto"


@dataclass(frozen=True)
class AnswerFormat:
    """One way of stating a final answer."""

    name: str  # the registry name, e.g. "boxed"
    instruction: str  # one sentence telling a chat model how to state its final answer
    extract: Callable[[str], str | None]  # completion -> raw answer text, or None if it has none


ANSWER_FORMATS: Registry[AnswerFormat] = Registry("answer format")


def _register(answer_format: AnswerFormat) -> AnswerFormat:
    return ANSWER_FORMATS.register(answer_format.name)(answer_format)


# The lookbehind keeps the "-" of "12-40" from being read as a minus sign of 40. It is the same
# as rlvr.tasks.arithmetic's integer pattern, so the last integer inside the last number is the
# last integer of the whole text: arithmetic scores do not depend on which of the two reads it.
_NUMBER = re.compile(r"(?<!\d)-?\d+(?:\.\d+)?")
_BOX_OPENING = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)


def last_number(text: str) -> str | None:
    """The last number written in `text` ("-28", "3.5"), as written, or None if there is none."""
    matches = _NUMBER.findall(text)
    return matches[-1].strip() if matches else None


def last_boxed(text: str) -> str | None:
    r"""The content of the last \boxed{...} or \fbox{...}, stripped, nested braces balanced.

    None when there is no box, when the last box is never closed, or when it is empty.
    """
    openings = list(_BOX_OPENING.finditer(text))
    if not openings:
        return None
    start = openings[-1].end()
    depth = 1
    for position in range(start, len(text)):
        if text[position] == "{":
            depth += 1
        elif text[position] == "}":
            depth -= 1
            if depth == 0:
                return text[start:position].strip() or None
    return None


def tagged_answer(text: str) -> str | None:
    """The content of the last <answer></answer> pair, stripped ("" if empty); None if no pair."""
    tagged = _ANSWER_TAG.findall(text)
    return tagged[-1].strip() if tagged else None


def last_line(text: str) -> str | None:
    """The last non-empty line of `text`, stripped, or None if every line is blank."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None


def whole_reply(text: str) -> str | None:
    """The whole completion, stripped, or None if it is blank."""
    return text.strip() or None


_register(AnswerFormat("last-number", "Answer with just the number.", last_number))
_register(AnswerFormat("boxed", "Put your final answer inside \\boxed{}.", last_boxed))
_register(
    AnswerFormat(
        "answer-tag",
        "Give your final answer inside <answer></answer> tags.",
        lambda text: tagged_answer(text) or None,
    )
)
_register(AnswerFormat("last-line", "Write your final answer alone on the last line.", last_line))
# The jsonl task's default: it reads the last number or the last line of the whole reply,
# depending on each problem's answer, which no single extraction can do.
_register(AnswerFormat("whole", "Reply with only your final answer.", whole_reply))


class HasDefaultFormat(Protocol):
    """What resolve_answer_format needs of a task (rlvr.tasks.base.Task has it)."""
    default_answer_format: str


def resolve_answer_format(name: str, task: HasDefaultFormat) -> AnswerFormat:
    """The format called `name`; "auto" means `task.default_answer_format`."""
    if name == AUTO:
        name = task.default_answer_format
    try:
        return ANSWER_FORMATS.get(name)
    except UnknownNameError as error:
        raise UnknownNameError(f"{error}; or {AUTO} (the task's default)") from None
