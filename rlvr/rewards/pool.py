"""Verifier calls in worker processes: a per-call timeout, and a crash costs one reward.

Why processes: a verifier is user code, or runs model-written code; one that hangs, leaks or
segfaults must cost one reward, not the run. Workers are started once per run and reused every
step (`python -c "from rlvr.rewards.pool import worker_main; ..."`, never fork: the trainer holds torch threads). They import
the verifier as the trainer does: the trainer's sys.path is their PYTHONPATH, the working
directory first. A step's calls are split into one contiguous chunk per worker, sent as one
message; each result comes back as soon as it is done, so the trainer knows when every call
started and holds each to the timeout. A worker whose call runs past the timeout is killed with
its process group and replaced, and the rest of its chunk goes to the replacement; a worker that
dies (os._exit, a segfault) is replaced the same way. Results never depend on the scheduling.

With `workers=0` the verifier runs in the training process: the cheapest path, but there is no
timeout and no crash containment, only exceptions and bad values are caught.

Wire format, both directions: 4-byte big-endian length, then a pickle.
"""
from __future__ import annotations

import ctypes
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field

from rlvr.rewards.verifiers import CRASH, TIMEOUT, call_verifier, load_verifier, needs_task, parse_reward

HEADER = struct.Struct(">I")
STARTUP_SECONDS = 120.0  # a worker must import the verifier within this (a heavy user module may be slow)


# How a worker starts: an import, not `-m rlvr.rewards.pool`, which runpy would run a second time
# beside the copy that the package's __init__ imports.
WORKER_COMMAND = "from rlvr.rewards.pool import worker_main; worker_main()"


class WorkerStartError(RuntimeError):
    """A worker could not load the verifier (the trainer could): the message says why."""


@dataclass
class Outcome:
    """One call's result: value in [0, 1], or kind names the failure and detail says more."""
    value: float | None
    kind: str | None = None
    detail: str = ""


@dataclass
class RewardFailure:
    """A failed call of a step, as the trainer counts and logs it."""
    kind: str  # "exception", "bad_value", "timeout" or "crash"
    item_id: str
    detail: str
    component: str = ""  # with weighted verifiers (--reward a:w,b:w): which one failed


def _frame(message) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(payload)) + payload


@dataclass
class _Worker:
    process: subprocess.Popen
    buffer: bytes = b""
    calls: list = field(default_factory=list)  # (index, text, item) sent and not yet answered, in order
    call_started: float = 0.0

    @property
    def fd(self) -> int:
        return self.process.stdout.fileno()

    def send(self, message) -> None:
        try:
            self.process.stdin.write(_frame(message))
            self.process.stdin.flush()
        except BrokenPipeError:  # it died between steps: the EOF on its results counts as a crash
            pass

    def read_frames(self) -> list | None:
        """Messages now complete in the pipe; None when the worker has died (EOF)."""
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            return None
        self.buffer += chunk
        messages = []
        while len(self.buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(self.buffer)
            if len(self.buffer) < HEADER.size + size:
                break
            messages.append(pickle.loads(self.buffer[HEADER.size:HEADER.size + size]))
            self.buffer = self.buffer[HEADER.size + size:]
        return messages

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # the worker leads its own process group
        except ProcessLookupError:
            pass
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            try:
                pipe.close()
            except OSError:  # a broken pipe to a dead worker
                pass


class RewardPool:
    """Scores (completion, item) pairs with the verifier named `reward`; use as a context manager."""

    def __init__(self, reward: str, task_name: str, seed: int, workers: int, timeout: float,
                 answer_format: str = "auto", task_options: dict | None = None) -> None:
        self.spec = {"reward": reward, "task": task_name, "seed": seed, "answer_format": answer_format,
                     "task_options": task_options or {}, "parent": os.getpid()}
        self.timeout = timeout
        self.verifier = _build_verifier(self.spec) if workers == 0 else None
        started = [self._spawn() for _ in range(workers)]
        self.workers = [self._wait_ready(w) for w in started]

    @classmethod
    def in_process(cls, verifier) -> "RewardPool":
        """A pool that calls the function `verifier` in this process, like --reward-workers 0
        (failures caught, no timeout): for callers that hold a function rather than a name."""
        pool = cls.__new__(cls)
        pool.spec, pool.timeout, pool.verifier, pool.workers = {}, float("inf"), verifier, []
        return pool

    def __enter__(self) -> "RewardPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for worker in self.workers:
            worker.process.stdin.close()  # EOF: the worker's loop ends
        for worker in self.workers:
            try:
                worker.process.wait(timeout=2)
            except subprocess.TimeoutExpired:  # still inside a verifier call
                pass
            worker.kill()
        self.workers = []

    def score(self, texts: list[str], items: list[dict]) -> list[Outcome]:
        """One Outcome per text; texts[i] is scored against items[i]."""
        if self.verifier is not None:
            return [Outcome(*call_verifier(self.verifier, t, item)) for t, item in zip(texts, items)]
        calls = [(i, t, item) for i, (t, item) in enumerate(zip(texts, items))]
        outcomes: list[Outcome | None] = [None] * len(calls)
        size = -(-len(calls) // len(self.workers))
        for n, worker in enumerate(self.workers):
            self._assign(worker, calls[n * size:(n + 1) * size])
        while any(w.calls for w in self.workers):
            busy = [w for w in self.workers if w.calls]
            wait = min(w.call_started + self.timeout for w in busy) - time.monotonic()
            readable, _, _ = select.select([w.fd for w in busy], [], [], max(0.0, wait))
            for w in busy:
                if w.fd in readable:
                    messages = w.read_frames()
                    if messages is None:
                        outcomes[w.calls[0][0]] = Outcome(None, CRASH, f"the worker died (exit code "
                                                                         f"{w.process.poll()}) during this call")
                        self._replace(w)
                        continue
                    for index, value, kind, detail in messages:
                        outcomes[index] = Outcome(value, kind, detail)
                        w.calls.pop(0)
                        w.call_started = time.monotonic()
                elif time.monotonic() - w.call_started > self.timeout:
                    outcomes[w.calls[0][0]] = Outcome(None, TIMEOUT, f"no result within --reward-timeout "
                                                                       f"{self.timeout:g} s; the worker was killed")
                    self._replace(w)
        return outcomes

    def _assign(self, worker: _Worker, calls: list) -> None:
        worker.calls = list(calls)
        worker.call_started = time.monotonic()
        if calls:
            worker.send(calls)

    def _replace(self, worker: _Worker) -> None:
        """Kills `worker`, starts a fresh one in its slot and gives it the unanswered calls after the failed one."""
        rest = worker.calls[1:]
        worker.kill()
        fresh = self._wait_ready(self._spawn())
        self.workers[self.workers.index(worker)] = fresh
        self._assign(fresh, rest)
        worker.calls = []

    def _spawn(self) -> _Worker:
        path = [os.path.abspath(p or os.curdir) for p in sys.path]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
        process = subprocess.Popen([sys.executable, "-c", WORKER_COMMAND], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, env=env, start_new_session=True)
        worker = _Worker(process)
        worker.send(self.spec)
        return worker

    def _wait_ready(self, worker: _Worker) -> _Worker:
        deadline = time.monotonic() + STARTUP_SECONDS
        messages: list = []
        while not messages:
            readable, _, _ = select.select([worker.fd], [], [], max(0.0, deadline - time.monotonic()))
            messages = worker.read_frames() if readable else None
            if messages is None:
                worker.kill()
                raise WorkerStartError(f"a reward worker did not start within {STARTUP_SECONDS:g} s or died "
                                       f"while loading {self.spec['reward']!r}")
        status, detail = messages[0]
        if status != "ready":
            worker.kill()
            raise WorkerStartError(detail)
        return worker


class WeightedPool:
    """Several verifiers with weights (--reward a:w,b:w; TRL's reward_weights): each runs in its
    own RewardPool, so each has its own workers, its own --reward-timeout per call and its own
    failure counts, and a completion's reward is Σ weight · that verifier's reward (a failed call
    counts --reward-error-value for its verifier)."""

    def __init__(self, components: list[tuple[str, float]], task_name: str, seed: int, workers: int,
                 timeout: float, answer_format: str = "auto", task_options: dict | None = None) -> None:
        self.components: list[tuple[str, float, RewardPool]] = []
        try:
            for name, weight in components:
                self.components.append((name, weight, RewardPool(name, task_name, seed, workers, timeout,
                                                                 answer_format, task_options)))
        except WorkerStartError as err:
            self.close()
            raise WorkerStartError(f"{name}: {err}") from None

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.components]

    def __enter__(self) -> "WeightedPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for _, _, pool in self.components:
            pool.close()


def open_pool(reward: str, task_name: str, seed: int, workers: int, timeout: float, answer_format: str = "auto",
              task_options: dict | None = None) -> RewardPool | WeightedPool:
    """The pool for `--reward`: a RewardPool for one verifier, a WeightedPool for a weighted mix."""
    components = parse_reward(reward)
    if components is None:
        return RewardPool(reward, task_name, seed, workers, timeout, answer_format, task_options)
    return WeightedPool(components, task_name, seed, workers, timeout, answer_format, task_options)


def _build_verifier(spec: dict):
    task = None
    if needs_task(spec["reward"]):
        from rlvr.tasks import get_task

        task = get_task(spec["task"], seed=spec["seed"], answer_format=spec.get("answer_format", "auto"),
                        options=spec.get("task_options"))
    return load_verifier(spec["reward"], task)


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel kills this worker when the trainer dies, even by SIGKILL mid-call."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the worker still ends at EOF on its stdin
        pass
    if os.getppid() != parent:  # the trainer died before the line above
        os._exit(1)


def _read_message(stream):
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (size,) = HEADER.unpack(header)
    return pickle.loads(stream.read(size))


def worker_main() -> None:
    """The worker's loop: load the verifier, then answer each chunk of calls one result at a time."""
    requests = sys.stdin.buffer
    results = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a verifier's print() must not corrupt the results
    spec = _read_message(requests)
    _die_with_parent(spec["parent"])
    try:
        verifier = _build_verifier(spec)
    except Exception as err:  # reported to the trainer, which stops with this message
        results.write(_frame(("error", f"{type(err).__name__}: {err}")))
        return
    results.write(_frame(("ready", "")))
    while (calls := _read_message(requests)) is not None:
        for index, text, item in calls:
            results.write(_frame((index, *call_verifier(verifier, text, item))))

