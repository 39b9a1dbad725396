"""What every environment shares: the registry of built-ins, a tool's description, one
environment turn, the failure type, and the contained call that every call into an environment
goes through.

Containment follows the reward pool's discipline (rlvr/rewards/pool.py): an environment is user
code, and one that raises or hangs must cost one episode's turn, not the run. Environment calls
hold per-episode state in this process, so they run in a thread rather than a worker process:
each call gets its own daemon thread and `timeout_s` seconds. Python cannot kill a thread, so a
call that runs past its timeout is abandoned, not stopped: it keeps running in the background
(daemon threads never hold up the exit), and the episode goes on without its result. A thread
pool would not do: a hung call would hold a pool thread, and the pool joins its threads at exit.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import math
import numbers
import threading
from dataclasses import dataclass
from typing import Any, Callable

from rlvr.registry import Registry

# How the model writes a tool call, and how results come back (rlvr/envs/formats.py).
TOOL_FORMATS = ("hermes", "python")
# --env-system: the system message opening an episode (EnvSpec.with_system_message)
INSTRUCTIONS = ("auto", "tools", "none")

# A tool result longer than this is cut, with a note saying how much was cut: one runaway tool
# must not fill the episode's token budget with a single observation.
MAX_OBSERVATION_CHARS = 8000

# How much of an exception's message an error observation or failure message quotes.
MAX_ERROR_CHARS = 500

# Built-in environments by name: TRL-contract classes, exactly like a user's (rlvr/envs/calc.py,
# rlvr/envs/guess.py). Each has a one-line `description` for `rlvr tasks`.
ENVS: Registry[type] = Registry("environment")


class EnvFailure(RuntimeError):
    """The environment itself broke (not the model): its reset raised, hung or returned garbage,
    or its reward was not a finite number. The message names the environment and the fix."""


@dataclass(frozen=True)
class ToolSpec:
    """One tool the model may call."""

    name: str
    description: str
    parameters: dict  # JSON schema: {"type": "object", "properties": {...}, "required": [...]}

    def as_openai(self) -> dict:
        """The tool as Hugging Face chat templates take it (`apply_chat_template(tools=...)`)."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


@dataclass
class EnvTurn:
    """The environment's answer to one model turn."""

    messages: list[dict]  # chat messages to append: {"role": "tool"|"user", "content": str} (+ "name" for tools)
    tool_calls: int  # calls parsed from the model's turn, well-formed or not
    tool_errors: int  # of which ended in an error observation
    done: bool  # the environment ended the episode with this turn


@dataclass
class Outcome:
    """One contained call: its value, or why there is none."""

    value: Any = None
    error: str | None = None  # "ExceptionType: message" when the call raised
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and not self.timed_out


def call_contained(function: Callable[[], Any], timeout_s: float) -> Outcome:
    """Call `function()` in a daemon thread and wait at most `timeout_s` seconds (math.inf: no
    limit); bind arguments with functools.partial, so a tool's own argument names never clash with
    these. A coroutine it returns (an async tool or get_reward) is run to its end in the same
    thread. Never raises: exceptions, SystemExit included, come back as `error`."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            value = function()
            if inspect.iscoroutine(value):
                value = asyncio.run(value)
            box["value"] = value
        except BaseException as err:  # noqa: BLE001 (user code: a SystemExit must not end the thread silently)
            box["error"] = describe_exception(err)

    thread = threading.Thread(target=run, name="rlvr-env-call", daemon=True)
    thread.start()
    thread.join(None if math.isinf(timeout_s) else timeout_s)
    if thread.is_alive():
        return Outcome(timed_out=True)
    return Outcome(box.get("value"), box.get("error"))


def describe_exception(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + " ..."


def clip(text: str) -> str:
    """`text`, cut at MAX_OBSERVATION_CHARS with a note of what was cut."""
    if len(text) <= MAX_OBSERVATION_CHARS:
        return text
    return text[:MAX_OBSERVATION_CHARS] + f"\n[... {len(text) - MAX_OBSERVATION_CHARS} more characters cut]"


def result_text(value: Any) -> tuple[str | None, str | None]:
    """A tool's return value as the text the model reads -> (text, None), or (None, why not).

    A string as it is; a number or bool as str() writes it; anything else as JSON when it
    serialises (lists, dicts, None -> "null"); an object that does not is refused."""
    if isinstance(value, str):
        return clip(value), None
    if isinstance(value, numbers.Number):  # bool, int, float, and numpy's scalars
        return str(value), None
    try:
        return clip(json.dumps(value, ensure_ascii=False)), None
    except (TypeError, ValueError):
        return None, (f"returned a {type(value).__name__}, which is not text, a number or JSON-serialisable "
                      "data; a tool must return a string (or a number, list or dict)")
