"""The code_exec sandbox: a correct program passes; every escape attempt is a failed answer."""
import os
import socket
import time

import pytest

from rlvr.code_exec import Limits, extract_program, run_sandboxed, score

FAST = Limits(cpu_seconds=1, wall_seconds=3.0)
ADD_TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"


def test_a_correct_program_passes_and_a_wrong_one_fails():
    assert score("Here:\n```python\ndef add(a, b):\n    return a + b\n```", {"answer": ADD_TESTS}) == 1.0
    assert score("```python\ndef add(a, b):\n    return a - b\n```", {"answer": ADD_TESTS}) == 0.0
    assert score("not python at all", {"answer": ADD_TESTS}) == 0.0


def test_extract_program_takes_the_last_python_block():
    text = "```\nfirst\n```\n```python\nsecond\n```\n```text\nthird\n```"
    assert extract_program(text) == "second\n"
    assert extract_program("```\nonly\n```") == "only\n"
    assert extract_program("x = 1") == "x = 1"


@pytest.mark.parametrize("name, program", [
    ("infinite loop", "while True:\n    pass\n"),
    ("sleeps forever", "import time\ntime.sleep(1e9)\n"),
    ("fork bomb", "import os\nwhile True:\n    os.fork()\n"),
    ("subprocess", "import subprocess\nsubprocess.run(['true'])\n"),
    ("10 GB allocation", "x = bytearray(10 * 2**30)\n"),
    ("early exit 0", "import sys\nsys.exit(0)\n"),
    ("os._exit 0", "import os\nos._exit(0)\n"),
    ("ctypes", "import ctypes\nctypes.CDLL(None).fork()\n"),
    ("huge output", "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n"),
])
def test_escape_attempts_fail_quickly(name, program):
    started = time.monotonic()
    result = run_sandboxed(program + "\ndef add(a, b):\n    return a + b\n", ADD_TESTS, FAST)
    assert not result.passed, (name, result)
    assert time.monotonic() - started < FAST.wall_seconds + 1.5, name
    assert len(result.output) <= FAST.file_bytes


def test_writing_outside_the_sandbox_fails(tmp_path):
    target = tmp_path / "escaped.txt"
    attempts = [f"open({str(target)!r}, 'w').write('x')",
                f"import os\nos.close(os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT))",
                f"import os\nos.symlink({str(target)!r}, 'link')\nopen('link', 'w').write('x')",
                f"import os\nos.mkdir({str(tmp_path / 'newdir')!r})",
                f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')"]
    for program in attempts:
        result = run_sandboxed(program + "\nok = True\n", "assert ok\n", FAST)
        assert not result.passed and "sandbox" in result.output, (program, result.output)
    assert list(tmp_path.iterdir()) == []
    inside = run_sandboxed("open('mine.txt', 'w').write('x')\nimport os, tempfile\n"
                           "ok = os.path.exists('mine.txt') and os.environ['HOME'] == os.getcwd()\n",
                           "assert ok\n", FAST)
    assert inside.passed, inside.output  # its own directory is writable


def test_opening_a_socket_fails():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    try:
        for program in (f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n",
                        f"import _socket\n_socket.socket().connect(('127.0.0.1', {port}))\n"):
            result = run_sandboxed(program, "pass\n", FAST)
            assert not result.passed, result.output
        with pytest.raises(socket.timeout):
            server.accept()  # nothing ever connected
    finally:
        server.close()


def test_the_parent_environment_is_not_visible(monkeypatch):
    monkeypatch.setenv("RLVR_TEST_SECRET", "hunter2")
    reads = ["import os\nleak = os.environ.get('RLVR_TEST_SECRET')\nassert leak is None, leak\n",
             "import os\nleak = open(f'/proc/{os.getppid()}/environ', 'rb').read()\n",
             "leak = open('/proc/self/environ', 'rb').read()\n"]
    results = [run_sandboxed(program, "assert 'hunter2' not in str(leak)\n", FAST) for program in reads]
    assert results[0].passed, results[0].output  # the variable is simply absent
    assert not results[1].passed and not results[2].passed  # /proc is refused
    assert all("hunter2" not in r.output for r in results)


def test_code_exec_reward_in_a_training_run(model_dir, tmp_path):
    """The contract end to end: a jsonl task whose answers are tests; the tiny model's bytes never pass."""
    import json

    from rlvr.cli import main

    lines = [{"prompt": f"f{i}=", "answer": f"assert f{i}() == {i}"} for i in range(40)]
    data = tmp_path / "code.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "run"
    assert main(["train", "--model", model_dir, "--task", f"jsonl:{data}", "--reward", "code_exec",
                 "--steps", "1", "--k", "2", "--prompts-per-step", "2", "--max-new-tokens", "4",
                 "--out", str(out), "--quiet"]) == 0
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["reward/mean"] == 0.0 and row["reward/errors"] == 0  # failed answers, not verifier errors


def test_the_program_sees_no_network_interface_but_loopback():
    import shutil
    import subprocess

    if not shutil.which("unshare") or subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode:
        pytest.skip("this kernel or user may not create network namespaces; the audit hook alone refuses sockets")
    program = "import socket\nnames = [name for _, name in socket.if_nameindex()]\n"
    result = run_sandboxed(program, "assert names == ['lo'], names\n", FAST)
    assert result.passed, result.output
