"""Reward names -> verifier functions, and one verifier call with its failures caught.

`--reward` is a registered name (`task`: the task's own score; `code_exec`: runs the completion
as a program against the item's tests, see rlvr/rewards/code/execute.py; `math_verify`: the completion's math
answer against the item's with math-verify, see rlvr/rewards/math_answers.py) or `module:function` with the
signature `f(completion: str, item: dict) -> float`, imported from the working directory or
PYTHONPATH. This module is free of torch so that reward worker processes start fast.
"""
from __future__ import annotations

import importlib
import math
import sys
from typing import Callable

from rlvr.registry import Registry

Verifier = Callable[[str, dict], float]

# Each entry builds the verifier from the task (None when the verifier needs no task).
REWARDS: Registry[Callable] = Registry("reward")

# Failure kinds of one call; "timeout" and "crash" exist only with worker processes.
EXCEPTION, BAD_VALUE, TIMEOUT, CRASH = "exception", "bad_value", "timeout", "crash"


@REWARDS.register("task")
def _task_score(task) -> Verifier:
    """The task's own verifier: its score, or code_exec for a task of code problems (humaneval,
    a file of HumanEval-form items), whose `verifier` says so."""
    if getattr(task, "verifier", "task") == "code_exec":
        return _code_exec(task)
    return task.score


@REWARDS.register("code_exec")
def _code_exec(task) -> Verifier:
    from rlvr.rewards.code.execute import score

    return score


@REWARDS.register("math_verify")
def _math_verify(task) -> Verifier:
    from rlvr.rewards.math_answers import import_math_verify, score

    import_math_verify()  # ValueError with the install line, before any work
    return score


@REWARDS.register("format")
def _format(task) -> Verifier:
    """1 when the completion states a final answer in the task's answer format (right or wrong),
    else 0: a format reward, meant as a small weighted part of a mix (--reward task:0.8,format:0.2)."""
    return lambda completion, item: float(task.extract_answer(completion) is not None)


@REWARDS.register("env")
def _env_reward(task) -> Verifier:
    """An episode's reward from its environment (--env; get_reward(), or an OpenEnv environment's
    observation rewards), which the rollout recorded in the row's item; mixed with the task's as
    --reward task:0.5,env:0.5."""
    def score(completion: str, item: dict) -> float:
        if item.get("env_reward") is None:
            raise ValueError("no environment reward for this episode (its environment failed, or it is not an "
                             "episode: the env verifier needs --env)")
        return float(item["env_reward"])

    return score


NEEDS_TASK = {"task", "format"}  # verifiers built from the task (in each worker, from its name and seed)


def needs_task(spec: str) -> bool:
    return spec in NEEDS_TASK


def parse_reward(spec: str) -> list[tuple[str, float]] | None:
    """`--reward`: one verifier (-> None), or weighted components `name:w,name:w` (-> [(name, w)]).

    A component is a registered name or module:function, followed by `:weight` (a number; 1 when
    left out). `module:function` alone is one verifier, not a weight. ValueError for a weight that
    is not a finite number ≥ 0, for all weights 0, and for a component named twice."""
    parts = [part.strip() for part in spec.split(",")]
    components, weighted = [], False
    for part in parts:
        head, sep, tail = part.rpartition(":")
        try:
            weight = float(tail) if sep else None
        except ValueError:  # module:function
            weight = None
        name = head if weight is not None else part
        if not name:
            raise ValueError(f"empty verifier name in {spec!r}; write name:weight, e.g. task:0.8,format:0.2")
        if weight is not None and not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"the weight of {name!r} must be a finite number ≥ 0, got {tail!r}")
        weighted = weighted or weight is not None
        components.append((name, 1.0 if weight is None else weight))
    if len(parts) == 1 and not weighted:
        return None  # one verifier, no weight given
    names = [name for name, _ in components]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice:
        raise ValueError(f"{twice!r} is named twice in {spec!r}; give each verifier once, with its weight")
    if not any(weight > 0 for _, weight in components):
        raise ValueError(f"every weight in {spec!r} is 0; at least one verifier must count")
    return components


def load_verifier(spec: str, task=None) -> Verifier:
    """A registered name -> its verifier; 'module:function' -> that function, imported.

    Raises ValueError with the known names, or with why the import failed."""
    if spec in REWARDS:
        return REWARDS.get(spec)(task)
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise ValueError(f"unknown reward {spec!r}; known: {', '.join(REWARDS.names())}, or module:function")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # the working directory, as `python -m` would have it
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # any import failure is the user's --reward setting
        raise ValueError(f"cannot import module {module_name!r} ({type(err).__name__}: {err}); it must be "
                         "importable from the working directory or PYTHONPATH") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(f"module {module_name!r} has no function {function_name!r}")
    return function


def call_verifier(verifier: Verifier, completion: str, item: dict) -> tuple[float | None, str | None, str]:
    """One call: (reward, None, "") or (None, failure kind, detail). Never raises an Exception."""
    try:
        value = verifier(completion, item)
    except Exception as err:
        return None, EXCEPTION, f"{type(err).__name__}: {err}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 1:
        return None, BAD_VALUE, f"returned {value!r:.200}, expected a float in [0, 1]"
    return float(value), None, ""
