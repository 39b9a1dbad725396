"""rlvr pretrain's data: equivalent answer spellings, and the settings it refuses."""
import collections

import pytest

from rlvr.config import ConfigError
from rlvr.train.pretrain import SPELLINGS, PretrainConfig, spell_answer
from rlvr.tasks import get_task


@pytest.mark.parametrize("task_name", ["arith", "add2", "mul"])
def test_every_spelling_is_scored_correct_and_no_wrong_answer_is(task_name):
    task = get_task(task_name, seed=0)
    for index in range(200):
        item = task.item("train", index)
        for spell in SPELLINGS:
            assert task.score(spell(item["answer"]), item) == 1.0, (item, spell(item["answer"]))
        wrong = str(int(item["answer"]) + 1)
        assert all(task.score(spell(wrong), item) == 0.0 for spell in SPELLINGS)


def test_spellings_are_drawn_evenly_and_reproducibly():
    counts = collections.Counter(spell_answer("95", i, 4) for i in range(4000))
    assert set(counts) == {"95", "095", " 95", "95."}
    assert all(900 <= c <= 1100 for c in counts.values()), counts
    assert [spell_answer("95", i, 4) for i in range(50)] == [spell_answer("95", i, 4) for i in range(50)]
    assert {spell_answer("95", i, 1) for i in range(100)} == {"95"}
    assert {spell_answer("-7", i, 2) for i in range(100)} == {"-7", "-07"}


@pytest.mark.parametrize("value", [0, 5])
def test_answer_spellings_out_of_range_is_refused(tmp_path, value):
    with pytest.raises(ConfigError, match="--answer-spellings: must be in 1..4"):
        PretrainConfig(out=str(tmp_path / "m"), answer_spellings=value).validate()
