"""EnvSpec (what --env names, loaded once per run) and EpisodeEnv (one episode's environment),
with the adapter for TRL's `environment_factory` contract; OpenEnv's are in rlvr/envs/openenv.py.

The TRL contract, as `GRPOTrainer(environment_factory=...)` takes it: a class built with no
arguments, one instance per episode; `reset(**item)` returns text to append to the question, or
None; every public method (no leading underscore) is a tool, described by its type hints and
Google-style docstring (rlvr/envs/schema.py); an optional `get_reward()` returns the episode's
reward. rlvr also reads, where present: a `done` attribute (True ends the episode), `examples`
(example conversations put before the question, as a class attribute list: TRL ignores it
because it is not a method), and `close()`, called when the episode ends. Those names, `reset` and
`get_reward` are never tools.

Every call into the environment is contained (rlvr/envs/base.py, call_contained): an exception or
a hang past `timeout_s` becomes an error observation for the model, or an EnvFailure where the
episode cannot go on (reset, get_reward).
"""
from __future__ import annotations

import functools
import inspect
import math
import numbers
from typing import Any

from rlvr.envs.base import (
    EnvFailure,
    EnvTurn,
    Outcome,
    ToolSpec,
    call_contained,
    describe_exception,
    result_text,
)
from rlvr.envs.formats import check_format, parse_calls, render_call, result_messages, system_message
from rlvr.envs.schema import check_arguments, tool_spec

# Names a TRL-contract class may define that are never tools.
RESERVED = ("reset", "get_reward", "close", "examples", "done")


class EnvSpec:
    """What --env names, loaded once per run: its tools, its example conversations, and a fresh
    EpisodeEnv for each episode (`new`)."""

    def __init__(self, name: str, env_class: type, tools: list[ToolSpec], examples: list[dict],
                 example_count: int, has_reward: bool) -> None:
        self.name = name  # as the user wrote it
        self.env_class = env_class
        self._tools = list(tools)
        self.tool_map = {tool.name: tool for tool in tools}
        self.examples = examples  # normalised example conversations (normalize_examples)
        self.example_count = example_count  # how many go before each question (--env-examples, at most all)
        self.has_reward = has_reward
        self.instructions = "auto"  # --env-system: the opening system message (INSTRUCTIONS)

    def tools(self) -> list[ToolSpec]:
        """The tools the model may call; [] for an environment that takes text actions."""
        return list(self._tools)

    def new(self, fmt: str, timeout_s: float) -> "EpisodeEnv":
        """A fresh environment for one episode, calls in format `fmt`, each held to `timeout_s` seconds."""
        return ToolEpisode(self, fmt, timeout_s)

    def prompt_messages(self, question: str, first_text: str | None, fmt: str) -> list[dict]:
        """The chat messages that open an episode: a system message (format "python": the tools and
        how to call them; "hermes": a short one, the tools going to the chat template through
        tools=), then `example_count` example conversations as earlier turns, then the question
        with `first_text` (reset()'s text) appended. An example whose question is the question
        asked is skipped, so an example never shows the problem being asked (there is then one
        example fewer, unless the environment has a spare)."""
        check_format(fmt)
        messages = []
        asked = question.strip()
        shown = [example for example in self.examples if example["question"].strip() != asked][: self.example_count]
        if self._tools and self.with_system_message(fmt, len(shown)):
            messages.append(system_message(fmt, self._tools, self._first_example_call()))
        for example in shown:
            messages += self.example_messages(example, fmt)
        if first_text:
            question = question + ("" if first_text[:1].isspace() else "\n\n") + first_text
        messages.append({"role": "user", "content": question})
        return messages

    def with_system_message(self, fmt: str, examples_shown: int) -> bool:
        """--env-system: "tools" always opens with the system message that lists the tools and the
        call format, "none" never; "auto" does unless the "python" fallback format's calls are
        shown by example conversations. Measured on SmolLM2-135M-Instruct (docs/episodes.md):
        with one example, that message cut its calls from 11/64 to 2/64 episodes on mul22, and
        from 5/64 to 1/64 on mul; without examples it is the only description of the tools."""
        if self.instructions == "auto":
            return fmt != "python" or examples_shown == 0
        return self.instructions == "tools"

    def example_messages(self, example: dict, fmt: str) -> list[dict]:
        """One example conversation as chat turns in the message shape of `fmt`: the question, then
        per call the assistant's call and the environment's result, then the final answer."""
        messages = [{"role": "user", "content": example["question"]}]
        for call in example["calls"]:
            tool = self.tool_map[call["tool"]]
            messages.append({"role": "assistant", "content": render_call(fmt, tool, call["arguments"])})
            messages += result_messages(fmt, [(tool.name, call["result"])])
        messages.append({"role": "assistant", "content": example["answer"]})
        return messages

    def _first_example_call(self) -> str | None:
        for example in self.examples:
            for call in example.get("calls", []):
                return render_call("python", self.tool_map[call["tool"]], call["arguments"])
        return None


class EpisodeEnv:
    """One episode's environment. `failures` counts the calls that were the environment's fault
    and did not raise (a call past the timeout, a return value that breaks the contract), for the
    run's failure threshold; `failure_notes` says what each was. An EnvFailure is not counted
    here: the caller counts what it catches."""

    def __init__(self, spec: EnvSpec, fmt: str, timeout_s: float) -> None:
        check_format(fmt)
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 seconds (math.inf: no limit), got {timeout_s!r}")
        self.spec = spec
        self.fmt = fmt
        self.timeout_s = float(timeout_s)
        self.failures = 0
        self.failure_notes: list[str] = []
        self._done = False
        self._closed = False
        self._instance: Any = None

    @property
    def done(self) -> bool:
        """The environment said the episode is over."""
        return self._done

    def reset(self, item: dict) -> str | None:
        raise NotImplementedError

    def step(self, turn_text: str) -> EnvTurn | None:
        raise NotImplementedError

    def reward(self) -> float | None:
        raise NotImplementedError

    def close(self) -> None:
        """Ends the episode: the instance's close(), if it has one, contained. Idempotent; reward()
        still answers afterwards, step() does not."""
        if self._closed or self._instance is None:
            self._closed = True
            return
        self._closed = True
        close = getattr(self._instance, "close", None)
        if callable(close):
            outcome = self._call(close)
            if not outcome.ok:
                self._fail(f"close() {self._what_went_wrong(outcome)}")

    # --- shared by the adapters ---

    def _call(self, function, /, *args, **kwargs) -> Outcome:
        return call_contained(functools.partial(function, *args, **kwargs), self.timeout_s)

    def _require_open(self) -> None:
        if self._instance is None or self._closed:
            raise RuntimeError("step() before reset() or after close()")

    def _fail(self, note: str) -> None:
        self.failures += 1
        self.failure_notes.append(note)

    def _broken(self, what: str) -> EnvFailure:
        return EnvFailure(f"environment {self.spec.name}: {what}")

    def _what_went_wrong(self, outcome: Outcome) -> str:
        if outcome.timed_out:
            return f"did not return within --env-timeout {self.timeout_s:g} s"
        return f"raised {outcome.error}"

    def _construct(self) -> Any:
        """A fresh instance of the environment class (its __init__ takes no arguments)."""
        outcome = self._call(self.spec.env_class)
        if not outcome.ok:
            fix = ("raise --env-timeout or make it faster" if outcome.timed_out else
                   "the class is built with no arguments, once per episode")
            raise self._broken(f"building {self.spec.env_class.__name__}() {self._what_went_wrong(outcome)}; {fix}")
        return outcome.value

    def _reset_outcome(self, reset, item: dict) -> Any:
        """reset(**item) contained; EnvFailure when it raised or hung."""
        outcome = self._call(reset, **reset_arguments(reset, item))
        if outcome.timed_out:
            raise self._broken(f"reset() {self._what_went_wrong(outcome)}; make it faster or raise --env-timeout")
        if outcome.error is not None:
            raise self._broken(f"reset() raised {outcome.error} on item {item.get('id', '?')!r}; fix its reset(), "
                               f"which is called with the item's fields as keywords: {', '.join(sorted(item))}")
        return outcome.value

    def _reward_value(self, value: Any, what: str) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise self._broken(f"{what} returned {value!r:.100} ({type(value).__name__}), expected a finite number; "
                               "fix the environment's reward")
        return float(value)


class ToolEpisode(EpisodeEnv):
    """An episode of a TRL-contract class: the model's calls run its public methods."""

    def reset(self, item: dict) -> str | None:
        """A fresh instance, then `instance.reset(**item)` -> its text, or None. EnvFailure when
        building or resetting raises or hangs, or reset returns anything but a string or None."""
        self._instance, self._closed = self._construct(), False
        text = self._reset_outcome(self._instance.reset, item)
        if text is not None and not isinstance(text, str):
            raise self._broken(f"reset() returned a {type(text).__name__}, expected the text to append to the "
                               "question (a string) or None")
        self._done = self._read_done()
        return text

    def step(self, turn_text: str) -> EnvTurn | None:
        """The model's turn -> the results of its calls, or None when it made none (it answered)."""
        self._require_open()
        calls = parse_calls(turn_text, self.fmt, self.spec.tool_map)
        if not calls:
            return None
        results, errors = [], 0
        for call in calls:
            if call.error is not None:
                text, failed = f"Error: {call.error}", True
            else:
                text, failed = self._run_tool(call.name, call.arguments)
            results.append((call.name, text))
            errors += failed
        self._done = self._read_done()
        return EnvTurn(result_messages(self.fmt, results), len(calls), errors, self._done)

    def _run_tool(self, name: str, arguments: dict) -> tuple[str, bool]:
        """One checked call -> (the text the model reads, whether it is an error observation). A
        tool that raises tells the model its input was bad (TRL's convention); one that hangs or
        returns something that is not text or data is the environment's failure."""
        outcome = self._call(getattr(self._instance, name), **arguments)
        if outcome.timed_out:
            self._fail(f"{name}() did not return within --env-timeout {self.timeout_s:g} s")
            return f"Error: {name}() did not finish within {self.timeout_s:g} seconds.", True
        if outcome.error is not None:
            return f"Error: {name}() failed: {outcome.error}", True
        text, why = result_text(outcome.value)
        if why is not None:
            self._fail(f"{name}() {why}")
            return f"Error: {name}() {why}.", True
        return text, False

    def reward(self) -> float | None:
        """get_reward(), contained; None for a class without one. EnvFailure when it raises, hangs
        or returns anything but a finite number."""
        if not self.spec.has_reward:
            return None
        if self._instance is None:
            raise RuntimeError("reward() before reset()")
        outcome = self._call(self._instance.get_reward)
        if not outcome.ok:
            raise self._broken(f"get_reward() {self._what_went_wrong(outcome)}; fix the environment's reward")
        return self._reward_value(outcome.value, "get_reward()")

    def _read_done(self) -> bool:
        done = getattr(self._instance, "done", False)
        if callable(done):  # a method called done is no flag
            return False
        try:
            return bool(done)
        except Exception:  # noqa: BLE001 (an object whose truth cannot be read says nothing)
            return False


def reset_arguments(reset, item: dict) -> dict:
    """The keywords reset(**item) is called with: the whole item when reset takes **kwargs (TRL's
    way), else only the fields it names, so `def reset(self, answer)` works too."""
    try:
        parameters = inspect.signature(reset).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: give it everything
        return dict(item)
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return dict(item)
    named = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {key: value for key, value in item.items() if key in named}


def class_tools(env_class: type) -> list[ToolSpec]:
    """The tools of a TRL-contract class: its public methods (plain or class methods; not static
    methods or properties, which TRL does not take either), in the order they are defined.
    ValueError naming the method when one cannot be described (rlvr/envs/schema.py)."""
    names: list[str] = []
    for klass in reversed(env_class.__mro__):
        names += [name for name in vars(klass) if name not in names]
    tools = []
    for name in names:
        if name.startswith("_") or name in RESERVED:
            continue
        raw = inspect.getattr_static(env_class, name)
        if isinstance(raw, classmethod):
            tools.append(tool_spec(getattr(env_class, name), name))
        elif inspect.isfunction(raw) or inspect.iscoroutinefunction(raw):
            tools.append(tool_spec(raw, name))
    return tools


def read_examples(env_class: type) -> Any:
    """The class's `examples` (a list, or a class/static method returning one), or []."""
    examples = getattr(env_class, "examples", None)
    if examples is None:
        return []
    if callable(examples):
        try:
            examples = examples()
        except Exception as err:  # noqa: BLE001 (user code)
            raise ValueError(f"examples() raised {describe_exception(err)}; make `examples` a class attribute "
                             "(a list) or a classmethod that returns one") from None
    return examples


def normalize_examples(raw: Any, tools: dict[str, ToolSpec]) -> list[dict]:
    """The example conversations of a tool environment, checked: a list of
    {"question": str, "calls": [{"tool": name, "arguments": {...}, "result": str}, ...], "answer": str}.
    Each call is one assistant turn. ValueError saying which example is wrong and how."""
    if not isinstance(raw, (list, tuple)):
        raise ValueError(f"`examples` must be a list of example conversations, got a {type(raw).__name__}")
    examples = []
    for index, example in enumerate(raw):
        where = f"example {index}"
        if not isinstance(example, dict) or not isinstance(example.get("question"), str) \
                or not isinstance(example.get("answer"), str) or not isinstance(example.get("calls"), (list, tuple)):
            raise ValueError(f"{where} must be a dict with a \"question\" (str), \"calls\" (a list) and an "
                             "\"answer\" (str)")
        calls = []
        for number, call in enumerate(example["calls"]):
            if not isinstance(call, dict) or set(call) - {"tool", "arguments", "result"} or "tool" not in call:
                raise ValueError(f"{where}, call {number}: write it as {{\"tool\": name, \"arguments\": {{...}}, "
                                 "\"result\": text}")
            if call["tool"] not in tools:
                raise ValueError(f"{where}, call {number}: there is no tool {call['tool']!r}; the tools are: "
                                 f"{', '.join(tools) or 'none'}")
            arguments, error = check_arguments(tools[call["tool"]], dict(call.get("arguments", {})))
            text, why = result_text(call.get("result", ""))
            if error or why:
                raise ValueError(f"{where}, call {number}: {error or 'the result ' + why}")
            calls.append({"tool": call["tool"], "arguments": arguments, "result": text})
        examples.append({"question": example["question"], "calls": calls, "answer": example["answer"]})
    return examples
