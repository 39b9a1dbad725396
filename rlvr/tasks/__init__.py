"""Tasks: problems with verifiers, looked up by name.

A name is a built-in task (`add2`, `arith`, `mul`; see `list_tasks()`), `rg:<dataset>` for a
reasoning-gym dataset, or `jsonl:<path>` for a file of the user's own problems. `answer_format`
names how the final answer is stated and read (rlvr.tasks.answers); "auto" is each task's default.
"""
from __future__ import annotations

from rlvr.config import ConfigError
from rlvr.registry import UnknownNameError
from rlvr.tasks.answers import ANSWER_FORMATS, AUTO
from rlvr.tasks import arithmetic  # noqa: F401  (registers the built-in tasks)
from rlvr.tasks.base import HELDOUT_FRACTION, SPLITS, TASKS, Task, split_of
from rlvr.tasks.jsonl import JsonlTask
from rlvr.tasks.reasoning_gym import ReasoningGymTask, list_reasoning_gym

DEFAULT_TASK = "arith"

RG_PREFIX = "rg:"
JSONL_PREFIX = "jsonl:"

__all__ = [
    "DEFAULT_TASK",
    "HELDOUT_FRACTION",
    "SPLITS",
    "TASKS",
    "JsonlTask",
    "ReasoningGymTask",
    "Task",
    "get_task",
    "list_reasoning_gym",
    "list_tasks",
    "split_of",
]


def get_task(name: str, seed: int = 0, answer_format: str = AUTO) -> Task:
    """The task called `name`, streaming problems chosen by `seed`, reading `answer_format`."""
    if name.startswith(RG_PREFIX):
        return ReasoningGymTask(name[len(RG_PREFIX) :], seed=seed, answer_format=answer_format)
    if name.startswith(JSONL_PREFIX):
        path = name[len(JSONL_PREFIX) :]
        if not path:
            raise ValueError("task 'jsonl:' names no file; write jsonl:<path to a .jsonl file>")
        return JsonlTask(path, seed=seed, answer_format=answer_format)
    try:
        factory = TASKS.get(name)
    except UnknownNameError as error:
        raise UnknownNameError(
            f"{error}; or rg:<reasoning-gym dataset>, or jsonl:<path> (`rlvr tasks` lists them)"
        ) from None
    return factory(seed=seed, answer_format=answer_format)


def list_tasks() -> list[tuple[str, str]]:
    """(name, description) of each built-in task, in name order."""
    return [(name, TASKS.get(name).description) for name in TASKS.names()]


def check_task(name: str, seed: int, answer_format: str = AUTO, field_name: str = "task") -> list[dict]:
    """The task and its answer format must exist and build -> a sample of its items (32 of each
    split) for the checks that need them. ConfigError otherwise."""
    if answer_format != AUTO and answer_format not in ANSWER_FORMATS:
        raise ConfigError("answer_format", f"unknown {answer_format!r}; known: auto, {', '.join(ANSWER_FORMATS.names())}")
    try:
        task = get_task(name, seed=seed, answer_format=answer_format)
        return [task.item(split, i) for split in ("train", "heldout") for i in range(32)]
    except Exception as err:  # any failure to build the task is the user's task setting
        raise ConfigError(field_name, str(err)) from None
