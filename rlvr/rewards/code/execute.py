"""`--reward code_exec`: the completion is a Python program; the item's tests decide its reward.

The contract, for a `jsonl:<path>` task, one of two kinds of tests per line:
- `answer` is Python test code, run after the program as if in the same namespace, for example
      {"prompt": "Write add(a, b) returning a + b.", "answer": "assert add(2, 3) == 5\\nassert add(-1, 1) == 0"}
- `tests` is a list of stdin/stdout pairs (the format of competitive-programming data sets); the
  loader still wants an `answer`, which is then not used:
      {"prompt": "Read two integers, print their sum.", "answer": "", "tests": [{"stdin": "2 3\\n", "stdout": "5\\n"}]}
The program is the last ```python fenced block of the completion (or its last ``` block), else
the whole completion. Reward 1.0 when every test passes within the limits, else 0.0: a failed test,
an exception, an early exit, a timeout, a limit hit or a value that is not plain data are all a
failed answer, never a verifier error. Tests that cannot run whatever the program (they do not
compile, or pass a function to the program) are a verifier error: score() raises ValueError.

Each call starts one process, the sandbox (rlvr/rewards/code/sandbox_boot.py), and judges it from this one:
- the sandbox runs the program, in a fresh temporary directory (its working directory, HOME and
  TMPDIR), with stdin from /dev/null, stdout and stderr to a file capped by the file-size limit,
  only PATH/HOME/TMPDIR/LANG in the environment, in its own session whose whole process group is
  killed at the end; kernel limits, a network namespace, Landlock and an audit hook confine it;
- the judge (rlvr/rewards/code/judge.py), here, holds the tests, calls the program's functions through two
  pipes with plain data only (rlvr/rewards/code/wire.py) and compares.
The tests never enter the sandbox, so nothing the program does there can make a wrong answer pass.
What each layer guarantees is in docs/reliability.md.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import py_compile
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rlvr.rewards.code.judge import Channel, judge
from rlvr.tasks.code_items import extract_program, humaneval_program, humaneval_tests, is_code_item

BOOT = Path(__file__).with_name("sandbox_boot.py")
WIRE = Path(__file__).with_name("wire.py")
# How the sandbox starts: importing the module (not running it as a script) loads its bytecode from
# __pycache__ instead of compiling it on every call. `-I -S -B`: no environment, no user or
# site-packages directories, no bytecode written.
# The directory goes last on sys.path: rlvr/types.py must not shadow the standard library's types.
LAUNCH = "import sys; sys.path.append({directory!r}); import {module}; sys.path.pop(); {module}.main()"


@dataclass(frozen=True)
class Limits:
    cpu_seconds: int = 2  # CPU time of the program, all tests together (RLIMIT_CPU)
    wall_seconds: float = 5.0  # for the whole call; then the answer fails and the process group is killed
    memory_mib: int = 512  # address space of the program (RLIMIT_AS)
    file_bytes: int = 1 << 20  # largest file written, the captured output and each run's stdout included (RLIMIT_FSIZE)
    processes: int = 16  # more processes than the user has now (RLIMIT_NPROC; not enforced for root)
    message_bytes: int = 8 << 20  # largest answer of the program to the judge (one JSON line)


@dataclass
class Result:
    passed: bool
    reason: str  # why it failed ("" when it passed)
    output: str  # the program's stderr (and its stdout, with Python tests), at most Limits.file_bytes
    error: str | None = None  # the tests or the sandbox could not run at all: not the program's failure
    sandbox: dict = field(default_factory=dict)  # landlock_abi (0: none) and network_namespace, as set up


def check_stdio_tests(tests) -> list[dict]:
    """The item's `tests`, checked: a non-empty list of {"stdin": str, "stdout": str}."""
    if not isinstance(tests, list) or not tests:
        raise ValueError(f'"tests" must be a non-empty list of {{"stdin": ..., "stdout": ...}}, got {tests!r:.100}')
    for number, test in enumerate(tests, start=1):
        if not isinstance(test, dict) or not isinstance(test.get("stdout"), str) \
                or not isinstance(test.get("stdin", ""), str):
            raise ValueError(f'"tests" entry {number} must be {{"stdin": str, "stdout": str}}, got {test!r:.100}')
    return [{"stdin": test.get("stdin", ""), "stdout": test["stdout"]} for test in tests]


@functools.cache
def _write_bytecode() -> None:
    """Compiles the two modules the sandbox imports, once per process (it runs with -B)."""
    for path in (BOOT, WIRE):
        try:
            py_compile.compile(str(path), cfile=importlib.util.cache_from_source(str(path)), doraise=True)
        except (OSError, py_compile.PyCompileError):  # a read-only install: each call compiles them itself
            pass


def _command(module: Path, settings: dict) -> list[str]:
    launch = LAUNCH.format(directory=str(module.parent), module=module.stem)
    return [sys.executable, "-I", "-S", "-B", "-c", launch, json.dumps(settings)]


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)  # whatever it left behind, too
    except ProcessLookupError:
        pass
    process.wait()


def run_sandboxed(program: str, tests: str | list[dict], limits: Limits = Limits()) -> Result:
    """Judges `program` against `tests`: Python test code (str) or stdin/stdout pairs (list)."""
    if not isinstance(tests, str):
        tests = check_stdio_tests(tests)
    _write_bytecode()
    with tempfile.TemporaryDirectory(prefix="rlvr-sandbox-") as sandbox, \
            tempfile.TemporaryFile(prefix="rlvr-sandbox-output-") as output:
        Path(sandbox, "program.py").write_text(program, encoding="utf-8", errors="replace")
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        settings = {**asdict(limits), "request_fd": request_read, "reply_fd": reply_write, "parent": os.getpid()}
        env = {"PATH": os.defpath, "HOME": sandbox, "TMPDIR": sandbox, "LANG": "C.UTF-8"}
        process = None
        try:
            try:
                process = subprocess.Popen(_command(BOOT, settings), cwd=sandbox, env=env, stdin=subprocess.DEVNULL,
                                           stdout=output, stderr=subprocess.STDOUT,
                                           pass_fds=(request_read, reply_write), start_new_session=True)
            finally:
                os.close(request_read)
                os.close(reply_write)
            channel = Channel(request_write, reply_read, time.monotonic() + limits.wall_seconds,
                              limits.message_bytes)
            verdict = judge(channel, tests)
        finally:
            os.close(request_write)
            os.close(reply_read)
            if process is not None:
                _kill_group(process)
        output.seek(0)
        text = output.read(limits.file_bytes).decode("utf-8", errors="replace")
    return Result(verdict["passed"], verdict["reason"], text, verdict["error"], verdict["sandbox"] or {})


def score(completion: str, item: dict) -> float:
    """The code_exec verifier: 1.0 if the completion's program passes the item's tests, else 0.0;
    raises ValueError when the tests themselves cannot run. The tests: a HumanEval-form item's
    `test` and `check(<entry_point>)`, on the program its `code_program` names
    (rlvr/tasks/code_items.py); else `tests` (stdin/stdout pairs) if present, else `answer`, on
    the completion's program."""
    if is_code_item(item):
        program, tests = humaneval_program(completion, item), humaneval_tests(item)
    else:
        program, tests = extract_program(completion), item["tests"] if "tests" in item else str(item["answer"])
    result = run_sandboxed(program, tests)
    if result.error is not None:
        raise ValueError(f"code_exec could not judge item {item.get('id', '?')}: {result.error}")
    return 1.0 if result.passed else 0.0
