"""Verifier calls per second of `--reward code_exec` through the reward worker pool.

    python benchmarks/code_exec_throughput.py [--calls 64] [--rounds 3] [--workers 2]
        [--verifier code_exec] [--path DIR]
    python benchmarks/code_exec_throughput.py --round-trips 1000

Scores `--calls` completions per round (half a correct `add`, half a wrong one, against the
two-assert tests of docs/reliability.md) with `RewardPool(workers=--workers)`, the way a training
step does, after one warm-up round; prints the calls per second of each round and their median.
Also prints the CPU time per call of the workers and the processes they started, which other
load on the machine disturbs less than calls/s. `--verifier module:function` with `--path DIR`
measures another implementation, e.g. a copy of an older rlvr/rewards/code/execute.py saved as
DIR/baseline_code_exec.py next to its sandbox_boot.py. Run it on an otherwise idle machine: every
call starts an interpreter, so the result is CPU-bound.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

ADD_TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"
CORRECT = "```python\ndef add(a, b):\n    return a + b\n```"
WRONG = "```python\ndef add(a, b):\n    return a - b\n```"
ADD_PROGRAM = "def add(a, b):\n    return a + b\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=64, help="verifier calls per round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up round)")
    parser.add_argument("--workers", type=int, default=2, help="reward worker processes (--reward-workers)")
    parser.add_argument("--verifier", default="code_exec", help="a reward name or module:function")
    parser.add_argument("--path", default=None, help="a directory to import --verifier from")
    parser.add_argument("--round-trips", type=int, default=0,
                        help="instead: time one test that calls the program N times, against one that calls it once")
    args = parser.parse_args()
    if args.round_trips:
        return round_trips(args.round_trips)
    if args.path:
        sys.path.insert(0, args.path)
    from rlvr.rewards.pool import RewardPool

    texts = [CORRECT if i % 2 == 0 else WRONG for i in range(args.calls)]
    items = [{"id": str(i), "prompt": "add", "answer": ADD_TESTS} for i in range(args.calls)]
    rates = []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with RewardPool(args.verifier, "", 0, workers=args.workers, timeout=60.0) as pool:
        for round_number in range(args.rounds + 1):
            started = time.perf_counter()
            outcomes = pool.score(texts, items)
            seconds = time.perf_counter() - started
            values = [o.value for o in outcomes]
            expected = [1.0 if i % 2 == 0 else 0.0 for i in range(args.calls)]
            if values != expected:
                raise SystemExit(f"wrong rewards: {[(o.value, o.kind, o.detail) for o in outcomes][:4]}")
            if round_number:  # round 0 warms up
                rates.append(args.calls / seconds)
                print(f"round {round_number}: {args.calls} calls in {seconds:.2f} s = {rates[-1]:.1f} calls/s")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers have exited: their sandboxes count too
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    calls = args.calls * (args.rounds + 1)
    print(f"{args.verifier} with {args.workers} workers: median {statistics.median(rates):.1f} calls/s "
          f"over {args.rounds} rounds of {args.calls} calls; {1000 * cpu / calls:.1f} ms CPU per call "
          f"(user+sys of workers and what they started, warm-up included)")


def round_trips(count: int) -> None:
    """The cost of one call from the judge's tests into the sandbox (median of 5 pairs)."""
    from rlvr.rewards.code.execute import run_sandboxed

    def seconds(calls: int) -> float:
        started = time.perf_counter()
        result = run_sandboxed(ADD_PROGRAM, f"for i in range({calls}):\n    assert add(i, 1) == i + 1\n")
        assert result.passed, result
        return time.perf_counter() - started

    extra = statistics.median(seconds(count) - seconds(1) for _ in range(5))
    print(f"{1e3 * extra / (count - 1):.3f} ms per call from the tests into the sandbox "
          f"(a test with {count} calls against one with 1, median of 5)")


if __name__ == "__main__":
    main()
