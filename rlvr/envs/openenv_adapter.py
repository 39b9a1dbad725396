"""OpenEnv environments (`pip install -e ".[openenv]"`), run in this process like a TRL class.

Two kinds, told apart by their base class:

* an `MCPEnvironment` subclass declares tools (on a FastMCP server). Its tools are listed once
  at load (`step(ListToolsAction())`) and become ToolSpecs; each call the model makes becomes
  `step(CallToolAction(tool_name, arguments))`, and the CallToolObservation's text, or its error,
  is the result. A turn without a call ends the episode, as with a TRL class.
* a plain `Environment` subclass takes text actions: every model turn is one action, built from
  the text by the Action class its `step` is annotated with. An Action with one required string
  field (besides `metadata`) gets the whole turn, stripped, in that field; any other Action is
  read from the turn as one JSON object of its fields. The observation comes back as a user
  message: its one string field when it has exactly one field of its own, else its fields as
  JSON (its metadata as JSON when it has no field of its own).

Both: `reset(**item)` gets the item's fields as keywords (and `episode_id` = the item's id when
it takes one); the reset observation's own fields, if any, are the text appended to the
question. `done` is the last observation's. OpenEnv observations carry rewards, so has_reward is
True and the episode's reward is the sum of its step observations' rewards (the reset
observation's is not counted); None when no observation carried one.

Detection never imports OpenEnv: a class can only subclass OpenEnv's bases once its module has
imported them, so the bases are looked up in sys.modules.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import json
import sys
import typing
from typing import Any

from rlvr.envs.base import EnvTurn, ToolSpec, call_contained, clip, describe_exception, result_text
from rlvr.envs.episode import EnvSpec, EpisodeEnv, normalize_examples, read_examples
from rlvr.envs.formats import parse_calls, result_messages

INTERFACES = "openenv.core.env_server.interfaces"
MCP_ENVIRONMENT = "openenv.core.env_server.mcp_environment"
MCP_TYPES = "openenv.core.env_server.mcp_types"
TYPES = "openenv.core.env_server.types"
BASE_FIELDS = {"done", "reward", "metadata"}  # every Observation's; the rest are the observation's own
LOAD_TIMEOUT_S = 60.0  # building an MCP environment and listing its tools, once, at load


def openenv_kind(env_class: type) -> str | None:
    """"mcp" for an MCPEnvironment subclass, "text" for another Environment subclass, else None."""
    mcp = sys.modules.get(MCP_ENVIRONMENT)
    if mcp is not None and issubclass(env_class, mcp.MCPEnvironment):
        return "mcp"
    interfaces = sys.modules.get(INTERFACES)
    if interfaces is not None and issubclass(env_class, interfaces.Environment):
        return "text"
    return None


def load_openenv(name: str, env_class: type, example_count: int) -> EnvSpec:
    """The EnvSpec of an OpenEnv class; ValueError saying what is wrong with it."""
    if openenv_kind(env_class) == "mcp":
        tools = list_mcp_tools(env_class)
        examples = normalize_examples(read_examples(env_class), {tool.name: tool for tool in tools})
        return MCPEnvSpec(name, env_class, tools, examples, example_count, True)
    action_class = action_class_of(env_class)
    spec = TextEnvSpec(name, env_class, [], normalize_text_examples(read_examples(env_class)), example_count, True)
    spec.action_class = action_class
    return spec


def list_mcp_tools(env_class: type) -> list[ToolSpec]:
    """Builds one instance, asks it for its tools (ListToolsAction) and closes it."""
    list_tools = importlib.import_module(MCP_TYPES).ListToolsAction
    built = call_contained(env_class, LOAD_TIMEOUT_S)
    if not built.ok:
        raise ValueError(f"building {env_class.__name__}() to list its tools "
                         f"{'took over ' + str(LOAD_TIMEOUT_S) + ' s' if built.timed_out else 'raised ' + built.error}")
    instance = built.value
    try:
        listed = call_contained(functools.partial(instance.step, list_tools()), LOAD_TIMEOUT_S)
        tools = getattr(listed.value, "tools", None)
        error = (listed.value.metadata or {}).get("error") if listed.ok and tools is not None else None
        if not listed.ok or tools is None or error:
            why = error or listed.error or ("timed out" if listed.timed_out else "returned no tool list")
            raise ValueError(f"{env_class.__name__}.step(ListToolsAction()) failed: {why}")
        if not tools:
            raise ValueError(f"{env_class.__name__} lists no tools; declare them on its FastMCP server")
        return [ToolSpec(tool.name, tool.description or "", tool.input_schema or {"type": "object", "properties": {}})
                for tool in tools]
    finally:
        close = getattr(instance, "close", None)
        if callable(close):
            call_contained(close, LOAD_TIMEOUT_S)


def action_class_of(env_class: type) -> type:
    """The Action subclass a plain Environment's step takes: step's `action` annotation, or the
    first argument of a generic base `Environment[MyAction, MyObservation, MyState]`."""
    action_base = sys.modules[TYPES].Action
    try:
        candidate = typing.get_type_hints(env_class.step).get("action")
    except Exception:  # noqa: BLE001 (an annotation that does not resolve: try the generic base)
        candidate = None
    if not _is_action(candidate, action_base):
        for klass in env_class.__mro__:
            for base in getattr(klass, "__orig_bases__", ()):
                arguments = typing.get_args(base)
                if arguments and _is_action(arguments[0], action_base):
                    candidate = arguments[0]
                    break
            if _is_action(candidate, action_base):
                break
    if not _is_action(candidate, action_base):
        raise ValueError(f"cannot tell which Action class {env_class.__name__}.step takes; annotate its action "
                         "argument with your Action subclass: def step(self, action: MyAction, timeout_s=None, **kw)")
    return candidate


def _is_action(candidate: Any, action_base: type) -> bool:
    return isinstance(candidate, type) and issubclass(candidate, action_base) and candidate is not action_base


def normalize_text_examples(raw: Any) -> list[dict]:
    """Example conversations of a text-action environment, checked: a list of
    {"question": str, "actions": [{"action": str, "observation": str}, ...], "answer": str (optional)}."""
    if not isinstance(raw, (list, tuple)):
        raise ValueError(f"`examples` must be a list of example conversations, got a {type(raw).__name__}")
    examples = []
    for index, example in enumerate(raw):
        actions = example.get("actions") if isinstance(example, dict) else None
        if not isinstance(example, dict) or not isinstance(example.get("question"), str) \
                or not isinstance(actions, (list, tuple)) or not isinstance(example.get("answer", ""), str) \
                or not all(isinstance(a, dict) and isinstance(a.get("action"), str)
                           and isinstance(a.get("observation"), str) for a in actions):
            raise ValueError(f"example {index} must be a dict with a \"question\" (str), \"actions\" (a list of "
                             "{\"action\": str, \"observation\": str}) and optionally an \"answer\" (str)")
        examples.append({"question": example["question"], "calls": [], "answer": example.get("answer", ""),
                         "actions": [{"action": a["action"], "observation": a["observation"]} for a in actions]})
    return examples


class _OpenEnvEpisode(EpisodeEnv):
    """What both kinds share: reset to an Observation, done and rewards read from observations."""

    def __init__(self, spec: EnvSpec, fmt: str, timeout_s: float) -> None:
        super().__init__(spec, fmt, timeout_s)
        self._rewards: list[float] = []

    def reset(self, item: dict) -> str | None:
        """A fresh instance, then reset(**item) -> the observation's own text, or None."""
        self._instance, self._closed = self._construct(), False
        self._rewards = []
        if "id" in item and "episode_id" not in item and _takes(self._instance.reset, "episode_id"):
            item = {**item, "episode_id": str(item["id"])}
        observation = self._reset_outcome(self._instance.reset, item)
        if not self._is_observation(observation):
            raise self._broken(f"reset() returned a {type(observation).__name__}, expected an OpenEnv Observation")
        self._done = bool(observation.done)
        own = _own_fields(observation)
        return observation_text(observation) if own else None

    def reward(self) -> float | None:
        """The sum of the step observations' rewards; None when none carried one; EnvFailure when
        the sum is not a finite number."""
        if not self._rewards:
            return None
        return self._reward_value(sum(self._rewards), "the observations' rewards (summed)")

    def _observe(self, observation) -> None:
        self._done = bool(observation.done)
        if observation.reward is not None:
            reward = observation.reward
            self._rewards.append(float(reward) if isinstance(reward, bool) else reward)

    def _step(self, action) -> tuple[Any, str | None]:
        """instance.step(action), contained -> (observation, None) or (None, the error observation)."""
        # OpenEnv's step takes its own timeout too (MCP tool calls honour it)
        outcome = self._call(self._instance.step, action, timeout_s=self.timeout_s)
        if outcome.timed_out:
            self._fail(f"step() did not return within --env-timeout {self.timeout_s:g} s")
            return None, f"Error: the environment did not answer within {self.timeout_s:g} seconds."
        if outcome.error is not None:
            return None, f"Error: the action failed: {outcome.error}"
        if not self._is_observation(outcome.value):
            self._fail(f"step() returned a {type(outcome.value).__name__}, not an Observation")
            return None, "Error: the environment returned no observation."
        self._observe(outcome.value)
        return outcome.value, None

    @staticmethod
    def _is_observation(value: Any) -> bool:
        return isinstance(value, sys.modules[TYPES].Observation)


class MCPEnvSpec(EnvSpec):
    def new(self, fmt: str, timeout_s: float) -> EpisodeEnv:
        return MCPEpisode(self, fmt, timeout_s)


class MCPEpisode(_OpenEnvEpisode):
    """An MCPEnvironment's episode: each parsed call is a CallToolAction."""

    def step(self, turn_text: str) -> EnvTurn | None:
        self._require_open()
        calls = parse_calls(turn_text, self.fmt, self.spec.tool_map)
        if not calls:
            return None
        call_tool = importlib.import_module(MCP_TYPES).CallToolAction
        results, errors = [], 0
        for call in calls:
            if call.error is not None:
                text, failed = f"Error: {call.error}", True
            else:
                observation, text = self._step(call_tool(tool_name=call.name, arguments=call.arguments))
                failed = observation is None
                if observation is not None:
                    text, failed = self._call_text(call.name, observation)
            results.append((call.name, text))
            errors += failed
        return EnvTurn(result_messages(self.fmt, results), len(calls), errors, self._done)

    def _call_text(self, name: str, observation) -> tuple[str, bool]:
        """A CallToolObservation -> (the text the model reads, whether it is an error observation)."""
        error = getattr(observation, "error", None)
        if error is not None:
            if str(getattr(getattr(error, "error_type", None), "value", "")) == "timeout":
                self._fail(f"{name}() timed out inside the MCP environment")
            return f"Error: {name}() failed: {getattr(error, 'message', error)}", True
        result = getattr(observation, "result", None)
        content = getattr(result, "content", None)
        if isinstance(content, list):  # an MCP CallToolResult: its text parts
            text = clip("\n".join(getattr(part, "text", None) or f"[{getattr(part, 'type', 'content')}]"
                                  for part in content))
            if getattr(result, "is_error", False):
                return f"Error: {name}() failed: {text}", True
            return text, False
        text, why = result_text(result)
        if why is not None:
            self._fail(f"{name}() {why}")
            return f"Error: {name}() {why}.", True
        return text, False


class TextEnvSpec(EnvSpec):
    action_class: type

    def new(self, fmt: str, timeout_s: float) -> EpisodeEnv:
        return TextEpisode(self, fmt, timeout_s)

    def example_messages(self, example: dict, fmt: str) -> list[dict]:
        """The question, then per action the assistant's action and the observation (a user
        message), then the answer when the example has one."""
        messages = [{"role": "user", "content": example["question"]}]
        for step in example["actions"]:
            messages += [{"role": "assistant", "content": step["action"]},
                         {"role": "user", "content": step["observation"]}]
        if example["answer"]:
            messages.append({"role": "assistant", "content": example["answer"]})
        return messages


class TextEpisode(_OpenEnvEpisode):
    """A plain Environment's episode: every model turn is one action (counted as one call; an
    action that cannot be built from the text, or that the environment raises on, is an error)."""

    def step(self, turn_text: str) -> EnvTurn:
        self._require_open()
        action, error = build_action(self.spec.action_class, turn_text)
        if error is not None:
            return EnvTurn([{"role": "user", "content": f"Error: {error}"}], 1, 1, self._done)
        observation, text = self._step(action)
        if observation is not None:
            text = observation_text(observation)
        return EnvTurn([{"role": "user", "content": text}], 1, int(observation is None), self._done)


def build_action(action_class: type, text: str) -> tuple[Any, str | None]:
    """The model's turn as an action of `action_class` -> (action, None) or (None, what is wrong)."""
    fields = {name: info for name, info in action_class.model_fields.items() if name != "metadata"}
    field = text_field(fields)
    try:
        if field is not None:
            return action_class(**{field: text.strip()}), None
        body = text.strip().removeprefix("```json").removeprefix("```").removesuffix("```").strip()
        payload = json.loads(body)
        if not isinstance(payload, dict):
            raise ValueError("not a JSON object")
        return action_class(**payload), None
    except Exception as err:  # noqa: BLE001 (JSON errors and pydantic's ValidationError alike)
        shape = ", ".join(f'"{name}"' for name in fields) or "no fields"
        return None, (f"the action could not be read ({_short_error(err)}); write it as one JSON object with "
                      f"the fields {shape}")


def text_field(fields: dict) -> str | None:
    """The field a whole text turn goes into: the one required field, if it is a string; or the
    only field, if it is a string."""
    required = [name for name, info in fields.items() if info.is_required()]
    candidates = required if required else list(fields)
    if len(candidates) == 1 and fields[candidates[0]].annotation is str:
        return candidates[0]
    return None


def observation_text(observation) -> str:
    """An observation as the text the model reads (see the module docstring)."""
    own = _own_fields(observation)
    if len(own) == 1 and isinstance(next(iter(own.values())), str):
        return clip(next(iter(own.values())))
    if own:
        return clip(json.dumps(own, ensure_ascii=False, default=str))
    if observation.metadata:
        return clip(json.dumps(observation.metadata, ensure_ascii=False, default=str))
    return ""


def _own_fields(observation) -> dict:
    return {name: getattr(observation, name) for name in type(observation).model_fields if name not in BASE_FIELDS}


def _takes(function, name: str) -> bool:
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def _short_error(err: Exception) -> str:
    errors = getattr(err, "errors", None)
    if callable(errors):
        try:
            return "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in errors()[:3])
        except Exception:  # noqa: BLE001
            pass
    return describe_exception(err)
