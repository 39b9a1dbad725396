"""`--task hf:PATH`: data sets on disk in every format datasets reads, their columns and splits,
and the refusals (exit 2) that name the problem (docs/data.md)."""
import json

import pytest

from rlvr.cli import main

datasets = pytest.importorskip("datasets")

ROWS = [{"question": f"What is {i} + {i + 1}?", "solution": str(2 * i + 1), "source": "gen"} for i in range(60)]
TRAIN = ["--k", "2", "--prompts-per-step", "2", "--max-new-tokens", "4", "--threads", "1", "--reward-workers", "0",
         "--quiet"]


def write(tmp_path, kind: str, rows=ROWS):
    """A data set of `rows` in one of the formats; -> its path."""
    data = datasets.Dataset.from_list(rows)
    path = tmp_path / kind
    if kind == "disk":
        data.save_to_disk(str(path))
    elif kind == "dict":
        datasets.DatasetDict({"train": data, "test": datasets.Dataset.from_list(rows[:8])}).save_to_disk(str(path))
    elif kind == "folder":
        path.mkdir()
        data.to_parquet(str(path / "train.parquet"))
        datasets.Dataset.from_list(rows[:8]).to_parquet(str(path / "test.parquet"))
    else:
        path = tmp_path / f"data.{kind}"
        {"parquet": data.to_parquet, "jsonl": data.to_json, "csv": lambda p: data.to_csv(p, index=False),
         "json": lambda p: path.write_text(json.dumps(rows))}[kind](str(path))
    return path


@pytest.mark.parametrize("kind", ["disk", "dict", "parquet", "jsonl", "json", "csv", "folder"])
def test_every_format_loads_with_its_columns_and_splits(tmp_path, kind):
    from rlvr.tasks import get_task

    path = write(tmp_path, kind)
    named = kind in ("dict", "folder")
    task = get_task(f"hf:{path}", seed=1, options={"prompt_key": "question", "answer_key": "solution",
                                                   "eval_split": "test" if named else ""})
    train, heldout = task.splits["train"], task.splits["heldout"]
    assert len(train) + (0 if named else len(heldout)) == 60
    if named:
        assert {item["prompt"] for item in heldout} == {row["question"] for row in ROWS[:8]}
    else:  # carved by a hash of the prompt: disjoint, ~10%
        assert not {i["prompt"] for i in train} & {i["prompt"] for i in heldout} and 1 <= len(heldout) <= 15
    item = task.item("train", 0)
    row = next(r for r in ROWS if r["question"] == item["prompt"])
    assert item["answer"] == row["solution"] and item["source"] == "gen"  # other columns stay in the item
    assert task.score(f"the sum is {row['solution']}", item) == 1.0
    assert task.score("the sum is -1", item) == 0.0


def test_train_runs_on_a_save_to_disk_directory_and_a_parquet_file(tmp_path):
    for kind in ("disk", "parquet"):
        out = tmp_path / f"run-{kind}"
        assert main(["train", "--task", f"hf:{write(tmp_path, kind)}", "--prompt-key", "question",
                     "--answer-key", "solution", "--steps", "2", "--out", str(out), *TRAIN]) == 0
        assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_messages_column_is_the_conversation(tmp_path):
    from rlvr.tasks import get_task

    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Add {i} and 3."}],
             "answer": str(i + 3)} for i in range(40)]
    task = get_task(f"hf:{write(tmp_path, 'disk', rows)}")
    item = task.item("train", 0)
    assert item["conversation"][0] == {"role": "system", "content": "Be brief."}
    assert item["question"].startswith("Add ") and item["prompt"].startswith("system: Be brief.\nuser: Add ")
    pytest.importorskip("transformers")
    from rlvr.backends.hf import HFPrompts

    prompts = HFPrompts.__new__(HFPrompts)
    prompts.system_prompt = "ignored: the conversation has its own"
    assert prompts.messages(item) == item["conversation"]


@pytest.mark.parametrize("rows, args, flag, needle", [
    (ROWS, ["--prompt-key", "problem", "--answer-key", "solution"], "--prompt-key", "its columns: question, solution"),
    (ROWS, ["--prompt-key", "question", "--answer-key", "answer"], "--answer-key", "its columns: question, solution"),
    (ROWS, ["--prompt-key", "question", "--answer-key", "solution", "--split", "dev"], "--split", "its splits: train"),
    ([{"question": i, "solution": "1"} for i in range(40)], ["--prompt-key", "question", "--answer-key", "solution"],
     "--task", "must be a non-empty string"),
    ([{"question": "q", "solution": [1, 2]}] * 40, ["--prompt-key", "question", "--answer-key", "solution"],
     "--task", "must be a string or a number"),
    (ROWS[:3], ["--prompt-key", "question", "--answer-key", "solution"], "--task", "no heldout problems"),
    ([{"question": f"{i} " + "x" * 5000, "solution": "1"} for i in range(40)], ["--prompt-key", "question", "--answer-key", "solution"],
     "--max-new-tokens", "exceeds the model's context"),
])
def test_bad_data_sets_exit_2_naming_the_problem(tmp_path, capsys, rows, args, flag, needle):
    path = write(tmp_path, "disk", rows)
    assert main(["train", "--task", f"hf:{path}", *args, "--steps", "1", "--out", str(tmp_path / "run"), *TRAIN]) == 2
    err = capsys.readouterr().err
    assert flag in err and needle in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def test_an_empty_data_set_and_a_missing_path_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    for task in (f"hf:{empty}", f"hf:{tmp_path / 'nothing-here'}"):
        assert main(["train", "--task", task, "--steps", "1", "--out", str(tmp_path / "run"), *TRAIN]) == 2
        err = capsys.readouterr().err
        assert "--task" in err and "Traceback" not in err, err


def test_data_set_options_on_other_tasks_are_refused(tmp_path, capsys):
    assert main(["train", "--task", "arith", "--answer-key", "solution", "--out", str(tmp_path / "run")]) == 2
    assert "--answer-key" in capsys.readouterr().err
