"""`--reward code_exec`: the completion is a Python program; the item's tests decide its reward.

The contract, for a `jsonl:<path>` task: each line's `answer` is Python test code run after the
program in the same namespace, for example
    {"prompt": "Write add(a, b) returning a + b.", "answer": "assert add(2, 3) == 5\\nassert add(-1, 1) == 0"}
The program is the last ```python fenced block of the completion (or its last ``` block), else
the whole completion. Reward 1.0 when program and tests run to their end within the limits, else
0.0: a failed test, an exception, an early exit, a timeout or a limit hit are all a failed answer,
never a verifier error. `sys.exit(0)` or `os._exit(0)` in the program does not count as passing.

Each call runs `python -I -B rlvr/sandbox_boot.py` in a fresh temporary directory (its working
directory, HOME and TMPDIR), with stdin closed, stdout and stderr to a file capped by the file-size
limit, only PATH/HOME/TMPDIR/LANG in the environment, in its own session whose whole process
group is killed at the wall-clock limit. The kernel enforces CPU time, address space, file size,
open files and (for a non-root user) the process count; a network namespace removes the network
where the kernel allows one. The rest is a Python audit hook in the child (rlvr/sandbox_boot.py).
What that does and does not guarantee is in docs/reliability.md.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

BOOT = Path(__file__).with_name("sandbox_boot.py")
_FENCED = re.compile(r"```([A-Za-z0-9_+-]*)[ \t]*\n(.*?)```", re.DOTALL)


@dataclass(frozen=True)
class Limits:
    cpu_seconds: int = 2  # CPU time of the program (RLIMIT_CPU)
    wall_seconds: float = 5.0  # then the process group is killed (catches sleeping and blocked programs)
    memory_mib: int = 512  # address space (RLIMIT_AS)
    file_bytes: int = 1 << 20  # largest file written, the captured output included (RLIMIT_FSIZE)
    processes: int = 16  # more processes than the user has now (RLIMIT_NPROC; not enforced for root)


@dataclass
class Result:
    passed: bool
    exit_code: int | None  # None: killed at the wall-clock limit
    output: str  # stdout and stderr, at most Limits.file_bytes


def extract_program(completion: str) -> str:
    """The last ```python block, else the last ``` block, else the whole completion."""
    blocks = _FENCED.findall(completion)
    python = [code for lang, code in blocks if lang.lower() in ("python", "py", "python3")]
    if python or blocks:
        return (python or [code for _, code in blocks])[-1]
    return completion


def run_sandboxed(program: str, tests: str, limits: Limits = Limits()) -> Result:
    """Runs `program` then `tests` in the sandbox; passed only if both ran to their end."""
    passed_code = 3 + secrets.randbelow(120)  # an exit code the program cannot know
    with tempfile.TemporaryDirectory(prefix="rlvr-sandbox-") as sandbox, \
            tempfile.TemporaryFile(prefix="rlvr-sandbox-output-") as output:
        Path(sandbox, "program.py").write_text(program, encoding="utf-8")
        Path(sandbox, "tests.py").write_text(tests, encoding="utf-8")
        code_read, code_write = os.pipe()
        os.write(code_write, str(passed_code).encode())
        os.close(code_write)
        settings = {**asdict(limits), "code_fd": code_read}
        env = {"PATH": os.defpath, "HOME": sandbox, "TMPDIR": sandbox, "LANG": "C.UTF-8"}
        try:
            process = subprocess.Popen([sys.executable, "-I", "-B", str(BOOT), json.dumps(settings)], cwd=sandbox,
                                       env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                       pass_fds=(code_read,), start_new_session=True)
        finally:
            os.close(code_read)
        try:
            exit_code = process.wait(timeout=limits.wall_seconds)
        except subprocess.TimeoutExpired:
            exit_code = None
        try:
            os.killpg(process.pid, signal.SIGKILL)  # whatever it left behind, too
        except ProcessLookupError:
            pass
        process.wait()
        output.seek(0)
        text = output.read(limits.file_bytes).decode("utf-8", errors="replace")
    return Result(passed=exit_code == passed_code, exit_code=exit_code, output=text)


def score(completion: str, item: dict) -> float:
    """The code_exec verifier: 1.0 if the completion's program passes the item's tests (its `answer`)."""
    return 1.0 if run_sandboxed(extract_program(completion), str(item["answer"])).passed else 0.0
