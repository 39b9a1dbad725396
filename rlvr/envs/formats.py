"""Tool-call formats: how the model writes a call, how its results come back, and what it is told.

`hermes` — the format of Qwen2.5/Qwen3 and the Hermes models' chat templates: a call is
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` anywhere in the turn (several allowed);
each result goes back as a message of role "tool". The tools reach the model through the chat
template (`tools=`, ToolSpec.as_openai()), so the system message only says when to stop.

`python` — the fallback for chat templates with no tool-call format (SmolLM2's): a call is a line
that holds nothing but `name(arg, key=value)` for one of the environment's tools, with Python
literal arguments, read with `ast` (literals only, never evaluated). A bare expression given for
a string argument is taken as its text, so `calculate(12*34)` means `calculate("12*34")`. A line
calling a name that is not a tool is ordinary text: a final answer like `sqrt(2)` must not be
taken for a call. Results go back in one user message, a line "Result: ..." (or "Error: ...")
per call. The system message lists each tool's signature and docstring and shows a call.
"""
from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from typing import Any

from rlvr.envs.base import TOOL_FORMATS, ToolSpec
from rlvr.envs.schema import check_arguments, signature_text, type_text

_HERMES_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
_CALL_START = re.compile(r"([A-Za-z_]\w*)\s*\(")

HERMES_SYSTEM = ("You can call the tools you are given. When you know the final answer, reply with it and "
                 "no tool call.")


@dataclass
class ParsedCall:
    """One call read from the model's turn: ready to run, or why it cannot be."""

    name: str | None  # the tool named, or None when not even the name could be read
    arguments: dict = field(default_factory=dict)  # checked against the tool's schema
    error: str | None = None  # what is wrong, in words for the model


def check_format(fmt: str) -> None:
    if fmt not in TOOL_FORMATS:
        raise ValueError(f"unknown tool-call format {fmt!r}; known: {', '.join(TOOL_FORMATS)}")


def parse_calls(text: str, fmt: str, tools: dict[str, ToolSpec]) -> list[ParsedCall]:
    """Every call the turn `text` makes, in order ([] when it makes none: the model answered)."""
    check_format(fmt)
    calls = _hermes_calls(text, tools) if fmt == "hermes" else _python_calls(text, tools)
    for call in calls:
        if call.error is None:
            call.arguments, call.error = check_arguments(tools[call.name], call.arguments)
        if call.error is not None:
            call.error = f"{call.error}. {call_hint(fmt, tools.get(call.name or ''), tools)}"
    return calls


def _hermes_calls(text: str, tools: dict[str, ToolSpec]) -> list[ParsedCall]:
    calls = []
    for match in _HERMES_CALL.finditer(text):
        body = match[1].strip()
        try:
            payload = json.loads(body)
        except json.JSONDecodeError as err:
            calls.append(ParsedCall(None, error=f"the tool call is not valid JSON ({err.msg} at character {err.pos})"))
            continue
        except (RecursionError, MemoryError):  # "[[[[..." thousands deep: degenerate samples happen
            calls.append(ParsedCall(None, error="the tool call is nested too deeply to read"))
            continue
        if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
            calls.append(ParsedCall(None, error='the tool call must be a JSON object with a "name" and "arguments"'))
            continue
        name, arguments = payload["name"], payload.get("arguments", payload.get("parameters"))
        if arguments is None:  # a call of a tool without arguments may leave them out
            arguments = {}
        if isinstance(arguments, str):  # some models write the arguments as a JSON string
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError:
                pass
        if name not in tools:
            calls.append(ParsedCall(name, error=f"there is no tool {name!r}; the tools are: {', '.join(tools)}"))
        elif not isinstance(arguments, dict):
            calls.append(ParsedCall(name, error=f'"arguments" must be a JSON object, got {json.dumps(arguments)[:60]}'))
        else:
            calls.append(ParsedCall(name, arguments))
    return calls


def _python_calls(text: str, tools: dict[str, ToolSpec]) -> list[ParsedCall]:
    calls = []
    for line in text.splitlines():
        source = line.strip().strip("`").strip().rstrip(";.").strip()
        start = _CALL_START.match(source)
        if start is None or start[1] not in tools or not source.endswith(")"):
            continue
        calls.append(_python_call(source, tools[start[1]]))
    return calls


def _python_call(source: str, tool: ToolSpec) -> ParsedCall:
    try:
        node = ast.parse(source, mode="eval").body
    except SyntaxError as err:
        return ParsedCall(tool.name, error=f"the call is not valid Python ({err.msg})")
    except (ValueError, RecursionError, MemoryError):  # a null byte; thousands of nested brackets
        return ParsedCall(tool.name, error="the call cannot be read")
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        return ParsedCall(tool.name, error="write the call alone on its line, as name(arguments)")
    names = list(tool.parameters.get("properties", {}))
    if len(node.args) > len(names):
        return ParsedCall(tool.name, error=f"{tool.name}() takes {len(names)} argument(s), got {len(node.args)}")
    arguments: dict[str, Any] = {}
    pairs = [(names[index], arg) for index, arg in enumerate(node.args)]
    pairs += [(keyword.arg, keyword.value) for keyword in node.keywords]
    for name, value_node in pairs:
        if name is None or isinstance(value_node, ast.Starred):
            return ParsedCall(tool.name, error="write the arguments out; * and ** are not allowed")
        if name in arguments:
            return ParsedCall(tool.name, error=f"the argument {name!r} is given twice")
        try:
            arguments[name] = ast.literal_eval(value_node)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            schema = tool.parameters.get("properties", {}).get(name, {})
            if schema.get("type") != "string":
                return ParsedCall(tool.name, error=f"the argument {name!r} must be a literal value (a number, a "
                                                   "quoted string, a list...), not an expression")
            arguments[name] = ast.get_source_segment(source, value_node)  # calculate(12*34) -> "12*34"
    return ParsedCall(tool.name, arguments)


def python_literal(value: Any) -> str:
    """`value` written as a Python literal, strings in double quotes: calculate("12*34")."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(python_literal(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{python_literal(k)}: {python_literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


def render_call(fmt: str, tool: ToolSpec, arguments: dict) -> str:
    """The text of a well-formed call of `tool` in `fmt`, as the model should write it."""
    check_format(fmt)
    if fmt == "hermes":
        payload = json.dumps({"name": tool.name, "arguments": arguments}, ensure_ascii=False)
        return f"<tool_call>\n{payload}\n</tool_call>"
    names = list(tool.parameters.get("properties", {}))
    positional, parts = True, []
    for name in names:  # positional in the signature's order while none is skipped, then by keyword
        if name not in arguments:
            positional = False
            continue
        parts.append(python_literal(arguments[name]) if positional else f"{name}={python_literal(arguments[name])}")
    return f"{tool.name}({', '.join(parts)})"


def placeholder_arguments(tool: ToolSpec) -> dict:
    """Arguments of the right types for showing the shape of a call (never run)."""
    fill = {"string": "...", "integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}
    arguments = {}
    for name in tool.parameters.get("required", []):
        schema = tool.parameters.get("properties", {}).get(name, {})
        kind = schema.get("type") if isinstance(schema.get("type"), str) else ""
        arguments[name] = schema["enum"][0] if "enum" in schema else fill.get(kind, "...")
    return arguments


def call_hint(fmt: str, tool: ToolSpec | None, tools: dict[str, ToolSpec]) -> str:
    """One sentence on how a call is written, for error observations."""
    shown = tool or next(iter(tools.values()), None)
    if shown is None:
        return ""
    if fmt == "hermes":
        return f"Call a tool as {render_call('hermes', shown, placeholder_arguments(shown)).replace(chr(10), '')}"
    return f"Call a tool alone on its line, as {signature_text(shown)}"


def result_messages(fmt: str, results: list[tuple[str | None, str]]) -> list[dict]:
    """The environment's turn: one (tool name, text) per call, the text "Error: ..." for a failed one."""
    if fmt == "hermes":
        return [{"role": "tool", "content": text, **({"name": name} if name else {})} for name, text in results]
    lines = [text if text.startswith("Error: ") else f"Result: {text}" for _, text in results]
    return [{"role": "user", "content": "\n".join(lines)}]


def system_message(fmt: str, tools: list[ToolSpec], example_call: str | None) -> dict:
    """The system message that opens an episode with tools; `example_call` (python) shows a call."""
    check_format(fmt)
    if fmt == "hermes":
        return {"role": "system", "content": HERMES_SYSTEM}
    if example_call is None:
        example_call = render_call("python", tools[0], placeholder_arguments(tools[0]))
    lines = ["You can call tools. To call one, write the call alone on its own line, in Python syntax, like:",
             example_call,
             'The result comes back in the next message as "Result: ...". When you know the final answer, '
             "reply with it and no call.",
             "",
             "Tools:"]
    for tool in tools:
        lines.append(signature_text(tool))
        if tool.description:
            lines.append(f"    {tool.description}")
        for name, schema in tool.parameters.get("properties", {}).items():
            if schema.get("description"):
                lines.append(f"    {name} ({type_text(schema)}): {schema['description']}")
    return {"role": "system", "content": "\n".join(lines)}
