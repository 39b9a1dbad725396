"""The code_exec verifier: correct programs pass; wrong ones, reward hacks and escape attempts fail.

The judge (rlvr/rewards/code/judge.py) holds the tests and the sandbox (rlvr/rewards/code/sandbox_boot.py) runs the
program; the hacks below are the ones docs/reliability.md lists, each with the reward it gets.
"""
import json
import os
import socket
import subprocess
import sys
from collections import Counter, OrderedDict, namedtuple
from pathlib import Path

import pytest

from rlvr.rewards.code import wire as code_wire
from rlvr.rewards.code.execute import BOOT, Limits, extract_program, run_sandboxed, score

FAST = Limits(cpu_seconds=1, wall_seconds=3.0)
ADD_TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"
ADD = "\ndef add(a, b):\n    return a + b\n"
WRONG_ADD = "\ndef add(a, b):\n    return a - b\n"


def add_score(program: str) -> float:
    return score(f"```python\n{program}\n```", {"answer": ADD_TESTS})


def test_a_correct_program_passes_and_a_wrong_one_fails():
    assert score("Here:\n```python\ndef add(a, b):\n    return a + b\n```", {"answer": ADD_TESTS}) == 1.0
    assert score("```python\ndef add(a, b):\n    return a - b\n```", {"answer": ADD_TESTS}) == 0.0
    assert score("not python at all", {"answer": ADD_TESTS}) == 0.0


def test_extract_program_takes_the_last_python_block():
    text = "```\nfirst\n```\n```python\nsecond\n```\n```text\nthird\n```"
    assert extract_program(text) == "second\n"
    assert extract_program("```\nonly\n```") == "only\n"
    assert extract_program("x = 1") == "x = 1"


# Each would let a wrong `add` pass, or pass without running the tests, if the verdict could be
# reached from the program's process; each scores 0. Most define the wrong add, so that only the
# hack itself could make them pass.
REWARD_HACKS = {
    "issue 18: the secret exit code from the caller's frame":
        "import sys\nf = sys._getframe(1)\nf.f_locals['exit_now'](f.f_locals['passed_code'])\n",
    "issue 18: an object whose __eq__ is always True":
        "class Anything:\n    def __eq__(self, other):\n        return True\n"
        "def add(a, b):\n    return Anything()\n",
    "an int subclass whose __eq__ is always True":
        "class Five(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
        "def add(a, b):\n    return Five(7)\n",
    "a str subclass whose __eq__ is always True":
        "class S(str):\n    def __eq__(self, other):\n        return True\n    __hash__ = str.__hash__\n"
        "def add(a, b):\n    return S('x')\n",
    "patching builtins and json in the sandbox":
        "import builtins, json\nbuiltins.issubclass = lambda *a: True\nbuiltins.isinstance = lambda *a: True\n"
        "json.dumps = lambda *a, **k: '{\"id\": 2, \"value\": 5}'\n" + WRONG_ADD,
    "gc search for the tests or their code objects":
        "import gc\nneedle = 'add(-1, 1) =' + '= 0'  # the tests' text, not this program's\n"
        "leaked = [v for o in gc.get_objects() if type(o) in (dict, list, tuple)\n"
        "          for v in (o.values() if type(o) is dict else o)\n"
        "          if type(v) is str and needle in v and v is not needle\n"
        "          or type(v).__name__ == 'code' and 'tests' in v.co_filename]\n"
        "def add(a, b):\n    return 5 if leaked else None\n",
    "sys.settrace to rewrite the verifier's locals":
        "import sys\ndef tracer(frame, event, arg):\n    frame.f_locals.update(passed=True, failed=False)\n"
        "    return tracer\nsys.settrace(tracer)\n" + WRONG_ADD,
    "sys.excepthook that exits 0 on the failed assert":
        "import os, sys\nsys.excepthook = lambda *a: os._exit(0)\n" + WRONG_ADD,
    "SystemExit(0) from __del__":
        "class Bomb:\n    def __del__(self):\n        raise SystemExit(0)\n"
        "def add(a, b):\n    Bomb()\n    return a - b\n",
    "SystemExit(0) from the function under test":
        "def add(a, b):\n    raise SystemExit(0)\n",
    "os._exit(0) from the function under test":
        "import os\ndef add(a, b):\n    os._exit(0)\n",
    "atexit handler that exits 0":
        "import atexit, os\natexit.register(os._exit, 0)\n" + WRONG_ADD,
    "forged verdicts and answers on stdout, stderr and every descriptor":
        "import os, sys\nforged = b'{\"id\": 1, \"value\": 5}\\n{\"passed\": true, \"reason\": \"\"}\\nPASSED\\n'\n"
        "print(forged.decode()); print(forged.decode(), file=sys.stderr)\n"
        "for fd in range(3, 64):\n    try:\n        os.write(fd, forged)\n    except OSError:\n        pass\n"
        + WRONG_ADD,
    "reading the tests from the judge's stdin or the task file":
        "import os\nfound = []\npaths = ['/proc/%d/fd/0' % (os.getpid() + k) for k in range(1, 4)]\n"
        "for path in paths + ['/proc/%d/cmdline' % os.getppid(), '../', os.environ.get('HOME', '') + '/../']:\n"
        "    try:\n        data = open(path).read() if not path.endswith('/') else os.listdir(path)\n"
        "        if data:\n            found.append(data)\n"
        "    except OSError:\n        pass\ndef add(a, b):\n    return 5 if found else None\n",
    "clearing the audit hook's refusals to load ctypes":
        "import sys\nboot = sys.modules.get('sandbox_boot') or sys.modules['__main__']\n"
        "for name in ('BLOCKED_EVENTS', 'BLOCKED_IMPORTS'):\n    getattr(boot, name).clear()\n"
        "import ctypes\nctypes.CDLL(None).write(1, b'native code ran\\n', 16)\n" + WRONG_ADD,
    "rewriting the audit hook's defaults":
        "import gc\nfor f in gc.get_objects():\n    if getattr(f, '__name__', '') == 'hook' and f.__defaults__:\n"
        "        f.__defaults__ = ('/',) + f.__defaults__[1:]\n" + WRONG_ADD,
    "an answer too large for the channel":
        "def add(a, b):\n    return 'x' * (9 << 20)\n",
}


@pytest.mark.parametrize("name", list(REWARD_HACKS))
def test_reward_hacks_score_zero(name):
    assert add_score(REWARD_HACKS[name]) == 0.0, name


def test_a_program_cannot_redefine_the_builtins_the_tests_use():
    program = "def unique(xs):\n    return None\ndef sorted(xs):\n    return [1, 3]\nlen = lambda xs: 1\n"
    item = {"answer": "assert sorted(unique([3, 1, 3])) == [1, 3]\nassert len(unique([1])) == 1\n"}
    assert score(f"```python\n{program}```", item) == 0.0
    right = "def unique(xs):\n    return list(set(xs))\ndef sorted(xs):\n    return []\n"
    assert score(f"```python\n{right}```", item) == 1.0


def test_a_correct_add_still_passes_beside_a_refused_read():
    """Issue 18's third row: the read is refused (nothing leaks) and the correct add passes."""
    program = ("try:\n    print(open('/etc/hostname').read())\nexcept PermissionError as error:\n"
               "    print('refused:', error)\n" + ADD)
    result = run_sandboxed(program, ADD_TESTS, FAST)
    assert result.passed, result
    assert "refused:" in result.output
    if os.path.exists("/etc/hostname") and Path("/etc/hostname").read_text().strip():
        assert Path("/etc/hostname").read_text().strip() not in result.output
    unguarded = run_sandboxed("print(open('/etc/hostname').read())\n" + ADD, ADD_TESTS, FAST)
    assert not unguarded.passed and "reading '/etc/hostname'" in unguarded.reason


def test_a_sleeping_call_times_out():
    result = run_sandboxed("import time\ndef add(a, b):\n    time.sleep(60)\n", ADD_TESTS, FAST)
    assert not result.passed and "wall-clock" in result.reason and result.error is None


CORRECT_PROGRAMS = {
    "prints while it works": ("def add(a, b):\n    print('adding', a, b)\n    return a + b\nprint('loaded')\n",
                              ADD_TESTS),
    "recursion, deep": ("import sys\nsys.setrecursionlimit(10000)\n"
                        "def depth(n):\n    return 0 if n == 0 else 1 + depth(n - 1)\n",
                        "assert depth(3000) == 3000\n"),
    "memoised recursion": ("from functools import lru_cache\n@lru_cache(None)\n"
                           "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
                           "assert fib(90) == 2880067194370816120\nassert fib(300) % 1000 == 600\n"),
    "a class used internally": ("class Stack:\n    def __init__(self):\n        self.items = []\n"
                                "    def push(self, x):\n        self.items.append(x)\n"
                                "def reverse(xs):\n    s = Stack()\n    for x in xs:\n        s.push(x)\n"
                                "    return s.items[::-1]\n",
                                "assert reverse([1, 2, 3]) == [3, 2, 1]\nassert reverse([]) == []\n"),
    "tuples, sets, int keys, big ints, floats": (
        "def stats(xs):\n    return (min(xs), max(xs)), {len(xs): set(xs)}, 2 ** 100, sum(xs) / len(xs)\n",
        "assert stats([1, 2, 2]) == ((1, 2), {3: {1, 2}}, 2 ** 100, 5 / 3)\n"
        "assert isinstance(stats([1])[0], tuple)\n"),
    "Counter, defaultdict and namedtuple results": (
        "from collections import Counter, defaultdict, namedtuple\nPoint = namedtuple('Point', 'x y')\n"
        "def count(s):\n    return Counter(s)\ndef groups(xs):\n    d = defaultdict(list)\n"
        "    for x in xs:\n        d[x % 2].append(x)\n    return d\ndef origin():\n    return Point(0, 0)\n",
        "assert count('aab') == {'a': 2, 'b': 1}\nassert groups([1, 2, 3]) == {1: [1, 3], 0: [2]}\n"
        "assert origin() == (0, 0)\n"),
    "in-place changes to its arguments": ("def fill(xs, d, seen=None):\n    xs.sort()\n    d['n'] = len(xs)\n"
                                          "    seen.add(1)\n",
                                          "xs, d, seen = [3, 1, 2], {}, set()\nassert fill(xs, d, seen=seen) is None\n"
                                          "assert xs == [1, 2, 3] and d == {'n': 3} and seen == {1}\n"),
    "a generator": ("def squares(n):\n    for i in range(n):\n        yield i * i\n",
                    "assert list(squares(4)) == [0, 1, 4, 9]\ng = squares(2)\nassert next(g) == 0\n"),
    "an expected exception": ("def root(x):\n    if x < 0:\n        raise ValueError('negative')\n"
                              "    return x ** 0.5\n",
                              "try:\n    root(-1)\nexcept ValueError as e:\n    assert 'negative' in str(e)\n"
                              "else:\n    raise AssertionError('no error')\nassert root(4) == 2.0\n"),
    "a LeetCode-style Solution class": (
        "class Solution:\n    def twoSum(self, nums, target):\n        seen = {}\n"
        "        for i, x in enumerate(nums):\n            if target - x in seen:\n"
        "                return [seen[target - x], i]\n            seen[x] = i\n",
        "assert Solution().twoSum([2, 7, 11, 15], 9) == [0, 1]\n"),
    "objects of the program, passed back and walked": (
        "class Node:\n    def __init__(self, val, next=None):\n        self.val, self.next = val, next\n"
        "def reverse(head):\n    prev = None\n    while head:\n        head.next, prev, head = prev, head, head.next\n"
        "    return prev\n",
        "head = Node(1, Node(2, Node(3)))\nnode, seen = reverse(head), []\nwhile node:\n"
        "    seen.append(node.val)\n    node = node.next\nassert seen == [3, 2, 1]\n"),
    "module-level values and the stdlib": (
        "import json, heapq, bisect, itertools, re, math, random, fractions, decimal, hashlib, zlib\n"
        "LIMIT = 10\nPRIMES = [p for p in range(2, 30) if all(p % d for d in range(2, p))]\n"
        "def digest(s):\n    return hashlib.sha256(s.encode()).hexdigest()[:8]\n",
        "assert LIMIT == 10 and PRIMES[:3] == [2, 3, 5]\nassert digest('a') == 'ca978112'\n"),
    "its own files in its own directory": (
        "import os, tempfile\nopen('notes.txt', 'w').write('x')\nfd, name = tempfile.mkstemp()\nos.close(fd)\n"
        "ok = open('notes.txt').read() == 'x' and os.path.dirname(name) == os.getcwd()\n",
        "assert ok\n"),
}


@pytest.mark.parametrize("name", list(CORRECT_PROGRAMS))
def test_correct_programs_pass(name):
    program, tests = CORRECT_PROGRAMS[name]
    result = run_sandboxed(program, tests, FAST)
    assert result.passed, (name, result)


STDIO_SUM = [{"stdin": "2 3\n", "stdout": "5\n"}, {"stdin": "10 -4", "stdout": "6"}]


@pytest.mark.parametrize("program", [
    "a, b = map(int, input().split())\nprint(a + b)\n",
    "import sys\na, b = map(int, sys.stdin.read().split())\nprint(a + b)\n",
    "a, b = map(int, open(0).read().split())\nprint(a + b, '  ')\nprint()\nimport sys\nsys.exit(0)\n",
    "import sys\ndata = sys.stdin.buffer.read().split()\nsys.stdout.write(f'{int(data[0]) + int(data[1])}\\r\\n')\n",
    "import os\ndef main():\n    a, b = map(int, os.read(0, 100).split())\n    os.write(1, b'%d\\n' % (a + b))\n"
    "if __name__ == '__main__':\n    main()\n",
])
def test_stdin_stdout_programs_pass(program):
    result = run_sandboxed(program, STDIO_SUM, FAST)
    assert result.passed, result


@pytest.mark.parametrize("program, reason", [
    ("a, b = map(int, input().split())\nprint(a - b)\n", "wrong output"),
    ("a, b = map(int, input().split())\nprint(' ' + str(a + b))\n", "wrong output"),  # leading blanks count
    ("a, b = map(int, input().split())\nprint(a + b)\nprint('extra')\n", "wrong output"),
    ("import sys\nprint(5)\nsys.exit(3)\n", "SystemExit"),
    ("raise ValueError('no')\n", "ValueError"),
    ("print('5\\n6')\nimport os\nos._exit(0)\n", "ended"),
])
def test_stdin_stdout_failures(program, reason):
    result = run_sandboxed(program, STDIO_SUM, FAST)
    assert not result.passed and reason in result.reason, result


def test_stdin_stdout_large_input_and_many_tests():
    numbers = " ".join(str(i) for i in range(200_000))  # ~1.3 MB: more than a pipe or the file-size limit holds
    tests = [{"stdin": numbers, "stdout": str(sum(range(200_000)))}] + STDIO_SUM[:1] * 20
    program = "import sys\nprint(sum(map(int, sys.stdin.read().split())))\n"
    result = run_sandboxed(program, tests, Limits())
    assert result.passed, result


def test_stdin_stdout_items_through_score():
    item = {"answer": "", "tests": STDIO_SUM}
    assert score("```python\nprint(sum(map(int, input().split())))\n```", item) == 1.0
    assert score("```python\nprint(0)\n```", item) == 0.0


@pytest.mark.parametrize("item", [
    {"answer": "assert add(2, 3) == 5\nassert ("},  # does not compile
    {"answer": "assert add(lambda: 1, 2) == 3"},  # a function cannot cross to the program
    {"answer": "", "tests": []},
    {"answer": "", "tests": [{"stdin": "1"}]},
])
def test_tests_that_cannot_run_are_a_verifier_error(item):
    with pytest.raises(ValueError):
        score("```python\ndef add(a, b):\n    return a + b\n```", item)


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
def test_escape_attempts_fail(name, program):
    """Each attempt fails as the program's own failure (a limit or a refusal), never the sandbox's."""
    result = run_sandboxed(program + ADD, ADD_TESTS, FAST)
    assert not result.passed and result.reason and result.error is None, (name, result)
    assert len(result.output) <= FAST.file_bytes


def test_writing_outside_the_sandbox_fails(tmp_path):
    target = tmp_path / "escaped.txt"
    attempts = [f"open({str(target)!r}, 'w').write('x')",
                f"import os\nos.close(os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT))",
                f"import os\nos.symlink({str(target)!r}, 'link')\nopen('link', 'w').write('x')",
                f"import os\nos.mkdir({str(tmp_path / 'newdir')!r})",
                f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')",
                "import os\nfd = os.open('.', os.O_RDONLY)\nos.open('../escaped.txt', os.O_WRONLY | os.O_CREAT, "
                "dir_fd=fd)"]
    for program in attempts:
        result = run_sandboxed(program + "\nok = True\n", "assert ok\n", FAST)
        assert not result.passed and "sandbox" in result.output, (program, result)
    assert list(tmp_path.iterdir()) == []


# Each program tries one way to read outside its directory; `refused` must end up True.
READ_ATTEMPTS = {
    "open": "open({secret!r}).read()",
    "os.open": "import os\nos.read(os.open({secret!r}, os.O_RDONLY), 100)",
    "io.open_code": "import io\nio.open_code({secret!r}).read()",
    "a relative path": "import os\nopen(os.path.relpath({secret!r})).read()",
    "a symlink made inside": "import os\nos.symlink({secret!r}, 'link')\nopen('link').read()",
    "a str subclass path": "class P(str):\n    def startswith(self, *a):\n        return True\n"
                           "open(P({secret!r})).read()",
    "a patched os.path.realpath": "import os, os.path, posixpath\nos.path.realpath = posixpath.realpath = "
                                  "lambda p, **k: os.getcwd() + '/x'\nopen({secret!r}).read()",
    "listing the directory": "import os\nos.listdir(os.path.dirname({secret!r}))",
    "changing directory": "import os\nos.chdir(os.path.dirname({secret!r}))\nopen(os.path.basename({secret!r}))",
    "a dir_fd": "import os\nfd = os.open('/', os.O_RDONLY)\nos.open({secret!r}[1:], os.O_RDONLY, dir_fd=fd)",
    "importing it as a module": "import sys, os\nsys.path.insert(0, os.path.dirname({secret!r}))\n"
                                "__import__(os.path.basename({secret!r})[:-3])",
    "/proc/self/environ": "open('/proc/self/environ').read()",
    "the parent's /proc/pid/environ": "import os\nopen(f'/proc/{{os.getppid()}}/environ').read()",
    "site-packages": "import sys\nsys.path.append({site!r})\nimport pytest",
    "a device node made inside (as root)": "import os, stat\nos.mknod('disk', stat.S_IFBLK | 0o600, os.makedev(8, 0))\n"
                                           "open('disk', 'rb').read(512)",
}


@pytest.mark.parametrize("name", list(READ_ATTEMPTS))
def test_reading_outside_the_sandbox_is_refused(name, tmp_path):
    secret = tmp_path / "secret_module.py"
    secret.write_text("SECRET = 'hunter2'\n")
    site = str(Path(pytest.__file__).resolve().parent.parent)
    attempt = READ_ATTEMPTS[name].format(secret=str(secret), site=site)
    program = "refused = False\ntry:\n" + "".join(f"    {line}\n" for line in attempt.splitlines()) + \
              "except (PermissionError, ImportError, AttributeError):\n    refused = True\n"
    result = run_sandboxed(program, "assert refused\n", FAST)
    assert result.passed, (name, result)
    assert "hunter2" not in result.output


def test_landlock_alone_refuses_reads_outside(tmp_path):
    """The kernel layer without the audit hook (what a program with native code would face)."""
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    sandbox = tmp_path / "box"
    sandbox.mkdir()
    script = (f"import sys\nsys.path.append({str(BOOT.parent)!r})\nimport ctypes, os, json, sandbox_boot\n"
              f"directories, files = sandbox_boot.readable_paths()\nlibc = ctypes.CDLL(None, use_errno=True)\n"
              f"abi = sandbox_boot.restrict_filesystem(libc, {str(sandbox)!r}, directories, files)\n"
              f"result = {{'abi': abi}}\n"
              f"for name, path in (('secret', {str(secret)!r}), ('stdlib', json.__file__)):\n"
              f"    try:\n        open(path).read()\n        result[name] = 'read'\n"
              f"    except PermissionError:\n        result[name] = 'refused'\n"
              f"open({str(sandbox / 'mine')!r}, 'w').write('x')\nprint(json.dumps(result))\n")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, timeout=30)
    result = json.loads(done.stdout)
    if result["abi"] == 0:
        pytest.skip("this kernel has no Landlock: the audit hook alone refuses reads outside")
    assert result == {"abi": result["abi"], "secret": "refused", "stdlib": "read"}, done.stderr


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
    assert results[0].passed, results[0]  # the variable is simply absent
    assert not results[1].passed and not results[2].passed  # /proc is refused
    assert all("hunter2" not in r.output for r in results)


def test_the_program_sees_no_network_interface_but_loopback():
    import shutil

    if not shutil.which("unshare") or subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode:
        pytest.skip("this kernel or user may not create network namespaces; the audit hook alone refuses sockets")
    program = "import socket\nnames = [name for _, name in socket.if_nameindex()]\n"
    result = run_sandboxed(program, "assert names == ['lo'], names\n", FAST)
    assert result.passed, result


def test_plain_data_round_trips_and_subclasses_lose_their_behaviour():
    Point = namedtuple("Point", "x y")

    class Liar(int):
        def __eq__(self, other):
            return True

        __hash__ = int.__hash__

    values = [None, True, 0, -7, 2 ** 200, 1.5, float("inf"), "é\n", b"\x00\xff", [1, [2]], (1, (2,)),
              {1: "a", (2, 3): None}, {1, 2}, frozenset({3}), 3 + 4j, range(1, 9, 2), Counter("aab"),
              OrderedDict(a=1), Point(1, 2), Liar(4)]
    for value in values:
        wire = json.loads(code_wire.dumps({"v": code_wire.encode(value)}))["v"]
        back = code_wire.decode(wire)
        assert back == value and type(back).__module__ == "builtins", value
    assert type(code_wire.decode(code_wire.encode(Liar(4)))) is int and code_wire.decode(code_wire.encode(Liar(4))) != 5
    assert list(code_wire.decode(code_wire.encode(iter([1, 2])))) == [1, 2]
    for bad in (object(), lambda: 1, [object()], {"a": {1: [object()]}}):
        with pytest.raises(code_wire.NotPlainData):
            code_wire.encode(bad)
    nested = []
    for _ in range(code_wire.MAX_DEPTH + 5):
        nested = [nested]
    with pytest.raises(code_wire.NotPlainData):
        code_wire.encode(nested)
    for bad_wire in ({"$eval": "1"}, {"a": 1, "b": 2}, {"$handle": 1}, {"$dict": [[[1], 2]]}):
        with pytest.raises((ValueError, TypeError)):
            code_wire.decode(bad_wire)


def test_code_exec_reward_in_a_training_run(model_dir, tmp_path):
    """The contract end to end: a jsonl task whose answers are tests; the tiny model's bytes never pass."""
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


def test_a_jsonl_code_task_with_stdin_stdout_tests_needs_no_answer(tmp_path):
    from rlvr.tasks import get_task

    data = tmp_path / "code.jsonl"
    lines = [json.dumps({"prompt": f"echo {i}", "tests": [{"stdin": "hi\n", "stdout": "hi\n"}]}) for i in range(40)]
    data.write_text("\n".join(lines) + "\n")
    item = get_task(f"jsonl:{data}").item("train", 0)
    assert item["answer"] == "" and score("print(input())", item) == 1.0
    assert score("print('no')", item) == 0.0
