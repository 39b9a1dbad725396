"""The channel between the code_exec judge and the sandboxed program: plain data, one JSON line each.

The sandbox imports this file as a top-level module (it runs under `python -I -S`, where the rlvr
package is not importable), so it uses the standard library only; the judge imports it as
rlvr.rewards.code.wire.

A value crosses as data, never as an object: None, bool, int, float, str, and list, tuple, dict,
set, frozenset, bytes, complex and range built from those. An instance of a subclass of one of
these types crosses as the base type's data, read with the base type's own C methods, so an
overridden `__eq__`, `__iter__` or `items()` plays no part and the receiver gets an exact
built-in. A generator or built-in iterator crosses as an iterator over the items it yields. Anything
else is refused (NotPlainData) unless the sender passes `handle`, which may turn it into an opaque
handle number (the sandbox does so for instances of the program's own classes).

On the wire every JSON object is a tag with one key (`{"$tuple": [...]}`), so a plain JSON value
from the program can never be mistaken for one of them. Decoding builds built-in objects only.
"""
from __future__ import annotations

import json
import math
import types

MAX_DEPTH = 100  # deeper nesting is refused (and would exhaust the judge's recursion limit)
_BIG = 1 << 53  # ints beyond this cross as hex: JSON readers lose precision, and decimal text is capped

# Iterators whose items come from a plain iteration; they cross as "$iter" and are consumed.
ITERATORS = (types.GeneratorType, map, filter, zip, enumerate, reversed, type(iter([])), type(iter(())),
             type(iter(range(0))), type(iter("")), type(iter({})), type(iter(set())), type({}.keys().__iter__()),
             type({}.values().__iter__()), type({}.items().__iter__()))


class NotPlainData(TypeError):
    """A value that has no plain-data form."""


def encode(value, handle=None, iterators: bool = True, budget: list | None = None, depth: int = 0):
    """`value` as JSON-ready data. `handle(value)` -> an int or None is asked about anything else,
    at the top level only. `budget` ([count]) limits the number of items walked."""
    if depth > MAX_DEPTH:
        raise NotPlainData(f"nested deeper than {MAX_DEPTH} levels")
    if budget is not None:
        budget[0] -= 1
        if budget[0] < 0:
            raise NotPlainData("more items than the budget")
    inner = depth + 1
    kind = type(value)
    if value is None or kind is bool:
        return value
    # issubclass of the true type: isinstance would believe a faked __class__.
    if issubclass(kind, int):  # bool is handled above; int subclasses cross as their int value
        number = int.__index__(value)
        return number if -_BIG < number < _BIG else {"$int": hex(number)}
    if issubclass(kind, float):
        number = float.__float__(value)
        return number if math.isfinite(number) else {"$float": repr(number)}
    if issubclass(kind, str):
        return str.__str__(value)
    if issubclass(kind, list):
        return [encode(item, None, iterators, budget, inner) for item in list.__iter__(value)]
    if issubclass(kind, tuple):
        return {"$tuple": [encode(item, None, iterators, budget, inner) for item in tuple.__iter__(value)]}
    if issubclass(kind, dict):
        return {"$dict": [[encode(key, None, iterators, budget, inner), encode(item, None, iterators, budget, inner)]
                          for key, item in dict.items(value)]}
    if issubclass(kind, (set, frozenset)):
        tag = "$frozenset" if issubclass(kind, frozenset) else "$set"
        items = frozenset.__iter__(value) if tag == "$frozenset" else set.__iter__(value)
        return {tag: [encode(item, None, iterators, budget, inner) for item in items]}
    if issubclass(kind, bytes):
        return {"$bytes": bytes.hex(value)}
    if issubclass(kind, complex):
        number = complex.__complex__(value)
        return {"$complex": [encode(number.real), encode(number.imag)]}
    if kind is range:
        return {"$range": [value.start, value.stop, value.step]}
    if iterators and kind in ITERATORS:
        return {"$iter": [encode(item, None, iterators, budget, inner) for item in value]}
    number = handle(value) if handle is not None else None
    if number is not None:
        return {"$handle": number}
    raise NotPlainData(f"a {kind.__name__!s:.100} is not plain data")


def decode(wire, handle=None, depth: int = 0):
    """Built-in objects from encode's output; `handle(number)` makes "$handle" values (else refused).
    Raises ValueError or TypeError on anything encode cannot produce."""
    if depth > MAX_DEPTH + 1:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    kind = type(wire)
    if wire is None or kind in (bool, int, float, str):
        return wire
    inner = depth + 1
    if kind is list:
        return [decode(item, handle, inner) for item in wire]
    if kind is not dict or len(wire) != 1:
        raise ValueError("not a value of the wire format")
    ((tag, body),) = wire.items()
    if tag == "$int" and type(body) is str:
        return int(body, 16)
    if tag == "$float" and body in ("nan", "inf", "-inf"):
        return float(body)
    if tag == "$bytes" and type(body) is str:
        return bytes.fromhex(body)
    if tag == "$handle" and type(body) is int and handle is not None:
        return handle(body)
    if type(body) is not list:
        raise ValueError(f"bad body for {tag!r:.40}")
    if tag == "$range" and len(body) == 3 and all(type(n) is int for n in body):
        return range(*body)
    items = [decode(item, handle, inner) for item in body]
    if tag == "$complex" and len(items) == 2 and all(type(n) is float for n in items):
        return complex(*items)
    if tag == "$tuple":
        return tuple(items)
    if tag == "$set":
        return set(items)
    if tag == "$frozenset":
        return frozenset(items)
    if tag == "$iter":
        return iter(items)
    if tag == "$dict" and all(type(pair) is list and len(pair) == 2 for pair in items):
        return {key: item for key, item in items}
    raise ValueError(f"unknown tag {tag!r:.40}")


def dumps(message: dict) -> bytes:
    """One message as one line (JSON never writes a raw newline inside a value)."""
    return (json.dumps(message, allow_nan=False, separators=(",", ":")) + "\n").encode()
