"""Tests of the built-in `guess` task (rlvr/tasks/guess.py); its environment is tested in
tests/test_envs.py."""
from __future__ import annotations

import json
import math

import pytest

from rlvr.tasks import SPLITS, get_task, split_of
from rlvr.tasks.guess import GuessConfig, GuessTask, bisection_guesses

QUESTION = "I am thinking of a number between 1 and 100. Find it: call guess(number) and I will say higher or lower."


def test_items_are_deterministic_follow_the_conventions_and_seeds_change_the_stream():
    first, again, other = get_task("guess", seed=3), get_task("guess", seed=3), get_task("guess", seed=4)
    for split in SPLITS:
        items = [first.item(split, index) for index in range(50)]
        assert items == [again.item(split, index) for index in range(50)]
        assert [item["answer"] for item in items] != [other.item(split, index)["answer"] for index in range(50)]
        json.dumps(items)
        for index, item in enumerate(items):
            secret = int(item["answer"])
            assert 1 <= secret <= 100
            assert item["id"] == f"guess/{split}/{index}" and item["key"] == f"guess:{secret}"
            assert item["prompt"] == item["question"] == QUESTION
            assert (item["low"], item["high"]) == (1, 100)
            assert item["level"] == bisection_guesses(secret, 1, 100)


def test_train_and_heldout_secrets_never_overlap():
    train = {get_task("guess", seed=0).item("train", index)["key"] for index in range(500)}
    heldout = {get_task("guess", seed=1).item("heldout", index)["key"] for index in range(100)}
    assert train.isdisjoint(heldout)
    assert all(split_of(key) == "heldout" for key in heldout)
    assert len(train | heldout) == 100  # every secret shows up in one split or the other


def test_score_reads_the_final_stated_number():
    task = get_task("guess")
    item = task.item("train", 0)
    secret = item["answer"]
    assert task.score(secret, item) == 1.0
    assert task.score(f"After guessing 50 and 25, the number is {secret}.", item) == 1.0
    assert task.score(f"The number is {secret}, not 7.", item) == 0.0  # the last number counts
    assert task.score(str(int(secret) + 1), item) == 0.0
    assert task.score("I give up", item) == 0.0


def test_bisection_needs_at_most_seven_guesses_in_1_to_100():
    counts = [bisection_guesses(secret, 1, 100) for secret in range(1, 101)]
    assert counts[49] == 1 and max(counts) == 7 == math.ceil(math.log2(100))


def test_config_validates_and_changes_the_range_and_answer_formats_add_their_instruction():
    with pytest.raises(ValueError, match="guess.high"):
        GuessTask(GuessConfig(low=5, high=5))
    item = GuessTask(GuessConfig(low=1, high=1000), seed=2).item("train", 0)
    assert "between 1 and 1000" in item["question"] and item["high"] == 1000
    boxed = get_task("guess", answer_format="boxed").item("train", 0)
    assert boxed["question"] == QUESTION + " Put your final answer inside \\boxed{}."
