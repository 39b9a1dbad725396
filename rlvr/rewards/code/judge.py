"""The judge of `--reward code_exec`: runs an item's tests against a program it never executes.

It runs in the process that calls rlvr.rewards.code.score (a reward worker, or the trainer with
`--reward-workers 0`), never in the program's: the program runs in the sandboxed process
(rlvr/rewards/code/sandbox_boot.py), and the two talk through two pipes, one JSON line per message. Nothing the
program prints or sends becomes a verdict except through this module's comparisons.

Two kinds of tests:
- Python test code (a string, e.g. "assert add(2, 3) == 5"), compiled and run here. Each name the
  program defined is bound to a proxy: calling it sends the arguments to the sandbox as plain data
  and returns the answer decoded as plain data (rlvr/rewards/code/wire.py), so the comparisons in the tests
  run on built-in objects made here. A name that is also a built-in (`sorted`, `len`) keeps its
  built-in meaning in the tests. An instance of one of the program's classes stays in the
  sandbox and is seen here as a ProgramObject: equal only to itself, its attributes, methods,
  truth value, length, items and iteration read through the channel as plain data. An exception of
  a built-in type raised by the program is raised here as the same built-in type (tests may expect
  one); any other as ProgramError.
- stdin/stdout pairs (a list of {"stdin": str, "stdout": str}): the whole program runs once per
  pair with that stdin; its stdout must equal the expected one line by line, after dropping
  trailing whitespace on every line and trailing empty lines ("\\r\\n" counts as "\\n").

A timeout, the sandbox ending, a value that is not plain data, a SystemExit from a call, or
anything that is not an answer fails the whole answer (Failed), even if the tests catch it.
"""
from __future__ import annotations

import builtins
import json
import os
import select
import time

from rlvr.rewards.code import wire as code_wire

REASON_CHARS = 500  # of a failure reason quoted from the sandbox


class Failed(BaseException):
    """The answer failed in a way the tests must not be able to catch (Channel.failure remembers it)."""


class BrokenTests(BaseException):
    """The tests cannot run as written, whatever the program: not the program's failure."""


class ProgramError(Exception):
    """The program raised an exception of a type that is not built in (the tests may catch it)."""


class Channel:
    """Requests to the sandbox and its answers, one JSON line each, within one deadline."""

    def __init__(self, request_fd: int, reply_fd: int, deadline: float, message_bytes: int) -> None:
        self.request_fd, self.reply_fd = request_fd, reply_fd
        self.deadline, self.message_bytes = deadline, message_bytes
        os.set_blocking(request_fd, False)
        self.buffer = bytearray()
        self.searched = 0  # bytes of buffer known to hold no newline
        self.last_id = 0
        self.failure: str | None = None
        self.broken: str | None = None
        self.objects: dict[int, ProgramObject] = {}

    def fail(self, reason: str) -> Failed:
        if self.failure is None:
            self.failure = reason
        return Failed(reason)

    def refuse(self, reason: str) -> BrokenTests:
        if self.broken is None:
            self.broken = reason
        return BrokenTests(reason)

    def _remaining(self) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise self.fail("no answer within the wall-clock limit")
        return remaining

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if not select.select([], [self.request_fd], [], self._remaining())[1]:
                raise self.fail("the program's process stopped reading within the wall-clock limit")
            try:
                view = view[os.write(self.request_fd, view):]
            except BlockingIOError:
                continue
            except OSError:  # EPIPE: it has ended
                raise self.fail("the program's process ended (an exit, a crash or a limit)") from None

    def receive(self, expected_id: int) -> dict:
        while (newline := self.buffer.find(b"\n", self.searched)) < 0:
            self.searched = len(self.buffer)
            if len(self.buffer) > self.message_bytes:
                raise self.fail(f"an answer longer than {self.message_bytes} bytes")
            if not select.select([self.reply_fd], [], [], self._remaining())[0]:
                raise self.fail("no answer within the wall-clock limit")
            chunk = os.read(self.reply_fd, 1 << 20)
            if not chunk:
                raise self.fail("the program's process ended (an exit, a crash or a limit)")
            self.buffer += chunk
        line = bytes(self.buffer[:newline])
        del self.buffer[:newline + 1]
        self.searched = 0
        try:
            reply = json.loads(line)
        except (ValueError, RecursionError):
            raise self.fail("the program's process sent something that is not an answer") from None
        if type(reply) is not dict or reply.get("id") != expected_id:
            raise self.fail("the program's process sent something that is not an answer")
        return reply

    def ask(self, request: dict) -> dict:
        if self.failure is not None:  # once failed, every later call fails too
            raise Failed(self.failure)
        self.last_id += 1
        self._send(code_wire.dumps({**request, "id": self.last_id}))
        return self.receive(self.last_id)

    def program_object(self, handle: int) -> "ProgramObject":
        if handle not in self.objects:
            self.objects[handle] = ProgramObject(self, handle)
        return self.objects[handle]

    def handle_of(self, value) -> int | None:
        if type(value) is ProgramObject or type(value) is Remote and value._attribute is None:
            return value._handle
        return None

    def plain(self, wire):
        """A value from the sandbox as built-in objects (and ProgramObjects)."""
        try:
            return code_wire.decode(wire, self.program_object)
        except (ValueError, TypeError, RecursionError):
            raise self.fail("the program's process sent a value that is not plain data") from None

    def answer(self, reply: dict):
        """The value of an answer, or the program's exception raised here."""
        if "value" in reply:
            return self.plain(reply["value"])
        raised = reply.get("raised")
        if type(raised) is list and len(raised) == 2 and all(type(part) is str for part in raised):
            raise program_exception(*raised)
        raise self.fail(str(reply.get("failed", "the program's process sent something that is not an answer"))
                        [:REASON_CHARS])

    def call(self, handle: int, attribute: str | None, args: tuple, kwargs: dict):
        try:
            wire_args = [code_wire.encode(arg, self.handle_of) for arg in args]
            wire_kwargs = [[key, code_wire.encode(arg, self.handle_of)] for key, arg in kwargs.items()]
        except Exception as error:  # noqa: BLE001 (NotPlainData, or an iterator of the tests' own that raised)
            raise self.refuse(f"the tests pass something the program cannot receive ({error}); arguments "
                              "must be plain data or objects the program returned") from None
        reply = self.ask({"op": "call", "handle": handle, "attr": attribute, "args": wire_args,
                          "kwargs": wire_kwargs})
        if "value" in reply and "after" in reply:
            self.copy_back(args, kwargs, reply["after"])
        return self.answer(reply)

    def copy_back(self, args: tuple, kwargs: dict, wire) -> None:
        """In-place changes the program made to list, dict and set arguments, made to the tests' own objects."""
        after = self.plain(wire)
        if type(after) is not list:
            raise self.fail("the program's process sent something that is not an answer")
        for pair in after:
            key, value = pair if type(pair) is list and len(pair) == 2 else (None, None)
            original = args[key] if type(key) is int and 0 <= key < len(args) else kwargs.get(key) \
                if type(key) is str else None
            if type(original) is list and type(value) is list:
                original[:] = value
            elif type(original) in (dict, set) and type(value) is type(original):
                original.clear()
                original.update(value)


def program_exception(name: str, message: str) -> Exception:
    kind = getattr(builtins, name, None)
    if isinstance(kind, type) and issubclass(kind, Exception):
        try:
            return kind(message)
        except Exception:  # noqa: BLE001 (a built-in exception with other constructor arguments)
            pass
    return ProgramError(f"{name}: {message}")


class Remote:
    """A function or class of the program, or a method of one of its objects; calls cross the channel."""

    __slots__ = ("_channel", "_handle", "_attribute", "_name")

    def __init__(self, channel: Channel, handle: int, attribute: str | None, name: str) -> None:
        self._channel, self._handle, self._attribute, self._name = channel, handle, attribute, name

    def __call__(self, *args, **kwargs):
        return self._channel.call(self._handle, self._attribute, args, kwargs)

    def __repr__(self) -> str:
        return f"<program callable {self._name}>"


class ProgramObject:
    """An object of the program, which stays in the sandbox. Equal only to itself (its own __eq__
    never runs here); attributes, methods, truth value, length, items and iteration come through the
    channel, as plain data."""

    __slots__ = ("_channel", "_handle")

    def __init__(self, channel: Channel, handle: int) -> None:
        self._channel, self._handle = channel, handle

    def _ask(self, operation: str, **fields):
        return self._channel.answer(self._channel.ask({"op": operation, "handle": self._handle, **fields}))

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        reply = self._channel.ask({"op": "getattr", "handle": self._handle, "name": name})
        if reply.get("callable") is True:
            return Remote(self._channel, self._handle, name, name)
        return self._channel.answer(reply)

    def _checked(self, operation: str, kind: type, **fields):
        value = self._ask(operation, **fields)
        if type(value) is not kind:
            raise self._channel.fail(f"{operation} of an object of the program gave a {type(value).__name__}")
        return value

    def __bool__(self) -> bool:
        return self._checked("bool", bool)

    def __len__(self) -> int:
        return self._checked("len", int)

    def __iter__(self):
        return iter(self._checked("list", list))

    def __getitem__(self, key):
        try:
            wire_key = code_wire.encode(key, self._channel.handle_of)
        except Exception as error:  # noqa: BLE001
            raise self._channel.refuse(f"the tests index an object of the program with {error}") from None
        return self._ask("getitem", key=wire_key)

    def __repr__(self) -> str:
        return f"<program object #{self._handle}>"


def failure_line(error: BaseException) -> str:
    """`tests.py line N: Type: message` for an exception that escaped the tests."""
    line, trace = None, error.__traceback__
    while trace is not None:
        if trace.tb_frame.f_code.co_filename == "tests.py":
            line = trace.tb_lineno
        trace = trace.tb_next
    where = f"tests.py line {line}: " if line else ""
    return f"{where}{type(error).__name__}: {error}"[:REASON_CHARS]


def run_python_tests(channel: Channel, tests: str) -> str | None:
    """None when every test ran to its end; else why not."""
    try:
        code = compile(tests, "tests.py", "exec")
    except (SyntaxError, ValueError) as error:
        raise channel.refuse(f"the tests do not compile: {error}") from None
    loaded = channel.ask({"op": "load"})
    if "names" not in loaded:
        return f"the program did not run to its end: {str(loaded.get('error', loaded.get('failed')))[:REASON_CHARS]}"
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    if type(loaded["names"]) is not dict:
        raise channel.fail("the program's process sent something that is not an answer")
    for name, entry in loaded["names"].items():
        if hasattr(builtins, name):  # a program's own `sorted` or `len` must not answer for the tests' calls
            continue
        if type(entry) is list and len(entry) == 2 and entry[0] == "callable" and type(entry[1]) is int:
            namespace[name] = Remote(channel, entry[1], None, name)
        elif type(entry) is list and len(entry) == 2 and entry[0] == "value":
            namespace[name] = channel.plain(entry[1])
    try:
        exec(code, namespace)
    except (Failed, BrokenTests):
        pass  # recorded in the channel
    except BaseException as error:  # noqa: BLE001 (AssertionError, or anything the tests did not expect)
        return channel.failure or failure_line(error)
    return channel.failure  # a failure the tests caught still fails the answer


def output_lines(text: str) -> list[str]:
    """The comparison rule for stdout: lines without trailing whitespace, without trailing empty lines."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def run_stdio_tests(channel: Channel, tests: list) -> str | None:
    for number, test in enumerate(tests, start=1):
        reply = channel.ask({"op": "run", "stdin": test["stdin"]})
        output = reply.get("stdout")
        if type(output) is not str:
            raise channel.fail("the program's process sent something that is not an answer")
        if reply.get("error") is not None:
            return f"stdin test {number}: the program failed: {str(reply['error'])[:REASON_CHARS]}"
        got, expected = output_lines(output), output_lines(test["stdout"])
        if got != expected:
            line = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
            return f"stdin test {number}: wrong output (first difference on line {line + 1})"
    return None


def judge(channel: Channel, tests) -> dict:
    verdict: dict = {"passed": False, "reason": "", "error": None, "sandbox": None}
    try:  # nothing of the program has run before this first message
        first = channel.receive(0)
    except Failed as failure:
        first = {"setup_error": str(failure)}
    if "ready" not in first:
        verdict["error"] = f"the sandbox could not be set up: {str(first.get('setup_error'))[:REASON_CHARS]}"
        return verdict
    verdict["sandbox"] = first["ready"]
    try:
        reason = run_python_tests(channel, tests) if isinstance(tests, str) else run_stdio_tests(channel, tests)
    except (Failed, BrokenTests):
        reason = channel.failure
    if channel.broken is not None:
        verdict["error"] = channel.broken
    verdict["passed"] = reason is None and channel.broken is None
    verdict["reason"] = reason or ""
    return verdict
