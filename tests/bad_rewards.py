"""Reward functions that misbehave on purpose, chosen by the item's id (for the reward-pool tests)."""
import math
import os
import time


def misbehave(completion: str, item: dict) -> float:
    """By the item's stream index mod 5: sleeps forever, raises, returns NaN, kills its worker, or scores.

    Every completion of an item fails the same way, so the expected counts follow from the items."""
    kind = misbehaviour(item)
    if kind == 0:
        time.sleep(1e9)
    if kind == 1:
        raise RuntimeError("verifier bug")
    if kind == 2:
        return math.nan
    if kind == 3:
        os._exit(3)
    return 1.0 if completion.strip() else 0.5


def misbehaviour(item: dict) -> int:
    return int(item["id"].rsplit("/", 1)[-1]) % 5  # built-in task ids end in the stream index


def always_raises(completion: str, item: dict) -> float:
    raise ValueError("broken verifier")


def by_text(completion: str, item: dict):
    """Each failure mode keyed on the completion itself (for RewardPool unit tests)."""
    if completion == "sleep":
        time.sleep(1e9)
    if completion == "raise":
        raise RuntimeError("boom")
    if completion == "nan":
        return math.nan
    if completion == "string":
        return "1.0"
    if completion == "big":
        return 2.0
    if completion == "exit":
        os._exit(7)
    if completion == "print":
        print("noise on stdout", flush=True)
    return 0.25


def raises_on_rank_1(completion: str, item: dict) -> float:
    """Scores like a plain verifier on every rank but rank 1 of a distributed run, where it raises
    (the reward workers inherit the rank's environment)."""
    if os.environ.get("RANK") == "1":
        raise RuntimeError("verifier broken on this rank")
    return 1.0 if completion.strip() else 0.0


def exits_on_rank_1(completion: str, item: dict) -> float:
    """With --reward-workers 0 (the verifier runs in the training process): kills rank 1 outright,
    the way a crash or an OOM kill would."""
    if os.environ.get("RANK") == "1":
        os._exit(7)
    return 1.0 if completion.strip() else 0.0


def hangs_on_rank_1(completion: str, item: dict) -> float:
    """With --reward-workers 0 (no per-call timeout): rank 1 never returns, the way a deadlock would."""
    if os.environ.get("RANK") == "1":
        time.sleep(1e9)
    return 1.0 if completion.strip() else 0.0
