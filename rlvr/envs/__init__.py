"""Environments for episodes: multi-turn, tool-using rollouts (docs/episodes.md).

`--env` names a built-in environment (`calc`, `guess`; see `list_envs()`) or `module:Class`, a
class imported from the working directory or PYTHONPATH (like `--reward module:function`). The
class follows one of three contracts, told apart by its base classes:

* TRL's `environment_factory` (rlvr/envs/episode.py): `reset(**item)`, public methods as tools,
  optional `get_reward()`; the built-ins are such classes;
* OpenEnv's `MCPEnvironment` (tools on a FastMCP server) or plain `Environment` (text actions)
  (rlvr/envs/openenv_adapter.py; `pip install -e ".[openenv]"`).

`load_env` checks the class once per run and returns an EnvSpec: its tools (ToolSpec), the
messages that open an episode, and a fresh EpisodeEnv per episode, whose every call is contained
(rlvr/envs/base.py). How the model writes calls is a tool-call format (rlvr/envs/formats.py).

This package imports no torch and nothing of rlvr but config and registry.
"""
from __future__ import annotations

import importlib
import inspect
import sys

from rlvr.config import ConfigError
from rlvr.envs import calc, guess  # noqa: F401  (register the built-in environments)
from rlvr.envs.base import ENVS, INSTRUCTIONS, TOOL_FORMATS, EnvFailure, EnvTurn, ToolSpec
from rlvr.envs.episode import EnvSpec, EpisodeEnv, class_tools, normalize_examples, read_examples
from rlvr.envs.openenv_adapter import load_openenv, openenv_kind

__all__ = ["ENVS", "INSTRUCTIONS", "TOOL_FORMATS", "EnvFailure", "EnvSpec", "EnvTurn", "EpisodeEnv", "ToolSpec", "list_envs",
           "load_env"]


def list_envs() -> list[tuple[str, str]]:
    """(name, one-line description) of each built-in environment, in name order."""
    return [(name, ENVS.get(name).description) for name in ENVS.names()]


def load_env(spec: str, examples: int = 1, instructions: str = "auto") -> EnvSpec:
    """The environment `spec` names (a built-in or module:Class), checked, with up to `examples`
    example conversations before each question (--env-examples). A class with fewer gets all it
    has: the TRL contract has no examples, and a TRL class must work unchanged; the returned
    spec's `example_count` says how many are used, so the caller can warn when it is fewer.
    `instructions` (--env-system): whether the opening system message lists the tools and the call
    format (INSTRUCTIONS). ConfigError("env", ...) naming what is wrong and the fix."""
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 0:
        raise ConfigError("env_examples", f"must be a whole number >= 0, got {examples!r}")
    if instructions not in INSTRUCTIONS:
        raise ConfigError("env_system", f"must be one of {', '.join(INSTRUCTIONS)}, got {instructions!r}")
    env_class = _import_class(spec)
    try:
        if openenv_kind(env_class) is not None:
            loaded = load_openenv(spec, env_class, examples)
        else:
            loaded = _load_tool_class(spec, env_class, examples)
    except ValueError as err:
        raise ConfigError("env", f"{spec}: {err}") from None
    loaded.example_count = min(examples, len(loaded.examples))
    loaded.instructions = instructions
    return loaded


def _import_class(spec: str) -> type:
    if spec in ENVS:
        return ENVS.get(spec)
    module_name, colon, class_name = spec.partition(":")
    if not colon or not module_name or not class_name:
        raise ConfigError("env", f"unknown environment {spec!r}; built-in: {', '.join(ENVS.names())}, or "
                                 "module:Class for your own class (importable from the working directory or "
                                 "PYTHONPATH)")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # the working directory, as `python -m` would have it
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # any import failure is the user's --env setting
        raise ConfigError("env", f"cannot import module {module_name!r} ({type(err).__name__}: {err}); it must be "
                                 "importable from the working directory or PYTHONPATH") from None
    env_class = getattr(module, class_name, None)
    if env_class is None:
        raise ConfigError("env", f"module {module_name!r} has no {class_name!r}; name the environment class as "
                                 "module:Class")
    if not inspect.isclass(env_class):
        raise ConfigError("env", f"{spec} is a {type(env_class).__name__}, not a class; name the environment class "
                                 "itself (rlvr builds one instance per episode with no arguments)")
    return env_class


def _load_tool_class(spec: str, env_class: type, example_count: int) -> EnvSpec:
    """A TRL-contract class: reset, public methods as tools, optional get_reward."""
    if not callable(getattr(env_class, "reset", None)):
        raise ValueError("the class has no reset() method; TRL's environment_factory contract needs "
                         "reset(**item), returning text to append to the question or None")
    tools = class_tools(env_class)
    if not tools:
        raise ValueError("the class has no public methods to offer as tools and is not an OpenEnv Environment; "
                         "give it at least one method with typed arguments and a docstring")
    examples = normalize_examples(read_examples(env_class), {tool.name: tool for tool in tools})
    has_reward = callable(getattr(env_class, "get_reward", None))
    return EnvSpec(spec, env_class, tools, examples, example_count, has_reward)
