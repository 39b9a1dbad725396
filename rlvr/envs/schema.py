"""Tools as JSON schemas: a Python method -> ToolSpec, and a call's arguments checked against one.

A tool is a method with a type hint on every argument and a Google-style docstring, as TRL's
`environment_factory` and transformers' `get_json_schema` want it: the docstring's text before
its first section is the tool's description, and each `name: text` line of its `Args:` section
describes that argument. Supported hints: str, int, float, bool, list[...], dict[...],
Literal[...], Optional[...] / `X | None`, unions of those, and Any.
"""
from __future__ import annotations

import inspect
import re
import types
import typing
from typing import Any, Callable, Literal, Union

from rlvr.envs.base import ToolSpec

_SIMPLE = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null",
           list: "array", tuple: "array", dict: "object"}
_SECTION = re.compile(r"^(Args|Arguments|Parameters|Returns?|Yields?|Raises|Examples?|Notes?|Attributes|"
                      r"See Also|Warnings?|Todo):\s*$", re.IGNORECASE)
_ARG_LINE = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
# How a JSON type is spelled in the Python-style signature shown to the model (format "python").
PYTHON_TYPE_NAMES = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "array": "list",
                     "object": "dict", "null": "None"}


def tool_spec(function: Callable, name: str) -> ToolSpec:
    """The ToolSpec of the (bound or plain) method `function`, called `name`.

    ValueError, naming the tool and the argument, for an argument without a type hint, a hint
    this module cannot write as JSON schema, or *args / **kwargs."""
    try:
        hints = typing.get_type_hints(function)
    except Exception as err:  # a hint naming something its module does not define
        raise ValueError(f"tool {name}: its type hints cannot be read ({type(err).__name__}: {err})") from None
    description, arg_docs = parse_docstring(inspect.getdoc(function) or "")
    properties: dict[str, dict] = {}
    required: list[str] = []
    for parameter in inspect.signature(function).parameters.values():
        if parameter.name in ("self", "cls"):
            continue
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise ValueError(f"tool {name}: *{parameter.name} / **{parameter.name} cannot be described to a model; "
                             "give the tool named, typed arguments")
        if parameter.name not in hints:
            raise ValueError(f"tool {name}: argument {parameter.name!r} has no type hint; write one "
                             f"(e.g. `{parameter.name}: str`), the model is told the argument's type")
        try:
            schema = json_schema(hints[parameter.name])
        except ValueError as err:
            raise ValueError(f"tool {name}: argument {parameter.name!r}: {err}") from None
        if parameter.name in arg_docs:
            schema["description"] = arg_docs[parameter.name]
        properties[parameter.name] = schema
        if parameter.default is parameter.empty:
            required.append(parameter.name)
    return ToolSpec(name, description, {"type": "object", "properties": properties, "required": required})


def json_schema(hint: Any) -> dict:
    """The JSON schema of one type hint; ValueError for a hint it has no spelling for."""
    if hint is Any:
        return {}
    if hint in _SIMPLE:
        return {"type": _SIMPLE[hint]}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        kinds = {_SIMPLE.get(type(value)) for value in args}
        schema: dict = {"enum": list(args)}
        if len(kinds) == 1 and None not in kinds:
            schema["type"] = kinds.pop()
        return schema
    if origin in (Union, types.UnionType):
        members = [json_schema(arg) for arg in args if arg is not type(None)]
        nullable = len(members) < len(args)
        if len(members) == 1:
            schema = members[0]
        elif all(set(member) == {"type"} for member in members):
            schema = {"type": [member["type"] for member in members]}
        else:
            schema = {"anyOf": members}
        return {**schema, "nullable": True} if nullable else schema
    if origin in (list, tuple, set, frozenset):
        items = [arg for arg in args if arg is not Ellipsis]
        return {"type": "array", "items": json_schema(items[0])} if len(set(items)) == 1 else {"type": "array"}
    if origin is dict:
        if len(args) == 2:
            return {"type": "object", "additionalProperties": json_schema(args[1])}
        return {"type": "object"}
    raise ValueError(f"the type {hint!r} has no JSON schema here; use str, int, float, bool, list[...], dict[...], "
                     "Literal[...] or Optional[...] of them")


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """A Google-style docstring -> (the text before its first section, {argument: its text})."""
    lines = inspect.cleandoc(doc).splitlines() if doc else []
    description: list[str] = []
    arguments: dict[str, str] = {}
    section = None
    entry_indent = None
    current = None
    for line in lines:
        stripped = line.strip()
        if _SECTION.match(stripped):
            section, entry_indent, current = stripped.rstrip(":").lower(), None, None
            continue
        if section is None:
            description.append(stripped)
        elif section in ("args", "arguments", "parameters") and stripped:
            indent = len(line) - len(line.lstrip())
            if entry_indent is None:
                entry_indent = indent
            match = _ARG_LINE.match(stripped)
            if indent <= entry_indent and match:
                current = match[1]
                arguments[current] = match[2].strip()
            elif current is not None:  # a continuation line of the current argument
                arguments[current] = f"{arguments[current]} {stripped}".strip()
    text = " ".join(" ".join(description).split())
    return text, arguments


def signature_text(tool: ToolSpec) -> str:
    """The tool as a Python-style signature: `calculate(expression: str)`; optional arguments
    carry `= ...`."""
    properties = tool.parameters.get("properties", {})
    required = set(tool.parameters.get("required", []))
    parts = []
    for name, schema in properties.items():
        parts.append(f"{name}: {type_text(schema)}" + ("" if name in required else " = ..."))
    return f"{tool.name}({', '.join(parts)})"


def type_text(schema: dict) -> str:
    if "enum" in schema:
        return " | ".join(repr(value) for value in schema["enum"])
    kinds = schema.get("type")
    if isinstance(kinds, list):
        text = " | ".join(PYTHON_TYPE_NAMES.get(kind, kind) for kind in kinds)
    elif kinds is None and "anyOf" in schema:
        text = " | ".join(type_text(member) for member in schema["anyOf"])
    elif kinds == "array" and isinstance(schema.get("items"), dict) and schema["items"].get("type"):
        text = f"list[{type_text(schema['items'])}]"
    else:
        text = PYTHON_TYPE_NAMES.get(kinds, "Any") if isinstance(kinds, str) or kinds is None else str(kinds)
    return f"{text} | None" if schema.get("nullable") else text


def check_arguments(tool: ToolSpec, arguments: dict) -> tuple[dict, str | None]:
    """`arguments` checked against the tool's schema -> (the arguments to call with, None), or
    (_, what is wrong, in words for the model). An integral float for an integer argument becomes
    an int and a tuple a list; nothing else is converted."""
    properties = tool.parameters.get("properties", {})
    unknown = [name for name in arguments if name not in properties]
    if unknown and not tool.parameters.get("additionalProperties"):  # an unknown name is a typo, not an extra
        known = ", ".join(properties) or "none"
        return arguments, f"{tool.name}() has no argument {unknown[0]!r}; its arguments are: {known}"
    missing = [name for name in tool.parameters.get("required", []) if name not in arguments]
    if missing:
        return arguments, f"{tool.name}() is missing the argument {missing[0]!r}"
    checked = {}
    for name, value in arguments.items():
        checked[name], error = check_value(properties.get(name, {}), value)
        if error:
            return arguments, f"argument {name!r} of {tool.name}() {error}"
    return checked, None


def check_value(schema: dict, value: Any) -> tuple[Any, str | None]:
    """One value against one schema -> (the value, maybe converted, None) or (value, what is wrong)."""
    if value is None and schema.get("nullable"):
        return None, None
    if "enum" in schema:
        ok = any(value == option and type(value) is type(option) for option in schema["enum"])
        return value, None if ok else f"must be one of {schema['enum']!r}, got {_shown(value)}"
    if "anyOf" in schema:
        for member in schema["anyOf"]:
            converted, error = check_value(member, value)
            if error is None:
                return converted, None
        return value, f"must be {type_text(schema)}, got {_shown(value)}"
    kinds = schema.get("type")
    if kinds is None:
        return value, None
    for kind in kinds if isinstance(kinds, list) else [kinds]:
        converted, ok = _as_kind(kind, value)
        if ok:
            if kind == "array" and isinstance(schema.get("items"), dict):
                for index, element in enumerate(converted):
                    converted[index], error = check_value(schema["items"], element)
                    if error:
                        return value, f"item {index} {error}"
            return converted, None
    wanted = _WANTED.get(kinds) if isinstance(kinds, str) else None
    return value, f"must be {wanted or type_text(schema)}, got {_shown(value)}"


_WANTED = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
           "array": "a list", "object": "an object (a dict)", "null": "null"}


def _as_kind(kind: str, value: Any) -> tuple[Any, bool]:
    if kind == "string":
        return value, isinstance(value, str)
    if kind == "integer":
        if isinstance(value, float) and value.is_integer():
            return int(value), True
        return value, isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return value, isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "boolean":
        return value, isinstance(value, bool)
    if kind == "array":
        return (list(value), True) if isinstance(value, (list, tuple)) else (value, False)
    if kind == "object":
        return value, isinstance(value, dict)
    if kind == "null":
        return value, value is None
    return value, True  # a type this check does not know: the tool judges


def _shown(value: Any) -> str:
    kind = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{text[:60] + '...' if len(text) > 60 else text} ({kind})"
