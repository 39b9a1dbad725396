"""The Task contract, the train/held-out split every task shares, and the task registry.

A task turns (split, index) into an item -- a JSON-serialisable dict with at least `id`,
`prompt` (raw text for completion models), `question` (the user message for chat models, ending
with the answer format's instruction), `answer` and `level` -- and scores completions against it
with a verifier in [0, 1]. How the final answer is read is an answer format (rlvr.tasks.answers).

The split of a problem is decided by a SHA-256 hash of its canonical key (for example "37+58"),
never by the seed or the index, so every run's held-out problems are disjoint from every run's
training problems. The seed only decides which problems the stream shows and in what order.
"""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from random import Random
from typing import Callable, TypeVar

from rlvr.tasks.answers import AUTO, AnswerFormat, resolve_answer_format
from rlvr.tasks.answers import last_line  # noqa: F401  (re-exported: it lived here before rlvr.tasks.answers)
from rlvr.registry import Registry

SPLITS = ("train", "heldout")

# Fixed, not a setting: a run with a different fraction would move problems from train to
# held-out and break the guarantee that no run's held-out set was ever trained on.
HELDOUT_FRACTION = 0.1

# Rejection sampling needs ~1/HELDOUT_FRACTION draws per held-out item; this bound only trips
# for problem spaces so small that (almost) none of their keys land in the wanted split.
MAX_DRAW_ATTEMPTS = 10_000

P = TypeVar("P")


def split_of(key: str) -> str:
    """The split ("train" or "heldout") that the problem with canonical `key` belongs to."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    return "heldout" if bucket < HELDOUT_FRACTION else "train"


def check_split(split: str) -> None:
    """Raise ValueError unless `split` is one of SPLITS."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of: {', '.join(SPLITS)}")


def draw_in_split(
    seed: int,
    split: str,
    index: int,
    draw: Callable[[Random], P],
    key: Callable[[P], str],
    what: str,
) -> P:
    """The first problem drawn for (seed, split, index) whose key hashes into `split`.

    Each attempt has its own string-seeded Random, so an item never depends on the items
    before it and the result is the same in any process. `what` names the task in errors.
    """
    check_split(split)
    if index < 0:
        raise ValueError(f"item index must be >= 0, got {index}")
    for attempt in range(MAX_DRAW_ATTEMPTS):
        problem = draw(Random(f"{seed}:{split}:{index}:{attempt}"))
        if split_of(key(problem)) == split:
            return problem
    raise RuntimeError(
        f"{what}: no problem in split {split!r} after {MAX_DRAW_ATTEMPTS} draws; "
        "the problem space is too small for a train/held-out split -- widen the task's config"
    )


class Task(ABC):
    """A source of problems with a verifier.

    Subclasses set `name`, `description` and `default_answer_format`, and call
    `use_answer_format(name)` in their constructor.
    """

    name: str = ""
    description: str = ""  # one line, shown by `rlvr tasks`
    default_answer_format: str  # the rlvr.tasks.answers format that "auto" means for this task
    answer_format: AnswerFormat  # set by use_answer_format
    answer_format_is_default: bool  # True when chosen as "auto"; a task may read looser then

    def use_answer_format(self, name: str) -> None:
        """Read answers in the format called `name`, or in this task's default for "auto"."""
        self.answer_format = resolve_answer_format(name, self)
        self.answer_format_is_default = name == AUTO

    @abstractmethod
    def item(self, split: str, index: int) -> dict:
        """The index-th problem of `split` ("train" or "heldout"); deterministic per seed."""

    @abstractmethod
    def extract_answer(self, completion: str) -> str | None:
        """The final answer written in `completion`, or None if it has none."""

    @abstractmethod
    def score(self, completion: str, item: dict) -> float:
        """The verifier: reward in [0, 1] for `completion` as an answer to `item`."""


# Built-in task classes by name; each is called as cls(seed=..., answer_format=...) and builds
# its default config.
TASKS: Registry[Callable[..., Task]] = Registry("task")
