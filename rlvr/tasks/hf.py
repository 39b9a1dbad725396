"""The `hf:<path>` task: a data set on disk, read with the `datasets` library.

`<path>` is a directory written by `datasets`' `save_to_disk` (a Dataset or a DatasetDict), a
parquet, JSON/JSON-lines or CSV file, or a folder of such files (its splits named by the files,
as `datasets` infers them: train.parquet, test.parquet, ...). Nothing is downloaded.

Columns: `--prompt-key` (default `prompt`) holds the problem and `--answer-key` (default `answer`)
its reference answer. A `messages` column of chat turns ([{"role", "content"}, ...]) is used as
the conversation when the prompt column is absent: chat models get those turns through their
chat template, and the raw prompt is the turns' text. Every other column is kept in the item,
where a `--reward module:function` can read it.

Splits: `--split` (default `train`) is the split trained on. `--eval-split` names the split the
held-out evaluations use (e.g. `test`); left empty, the held-out problems are carved from
`--split` by a hash of the prompt (~10%, as for every rlvr task), so no problem is in both.
Answers are compared as the jsonl task compares them: numerically when the reference is a
number, else the last line, case-insensitively.
"""
from __future__ import annotations

from pathlib import Path

from rlvr.config import ConfigError
from rlvr.tasks.base import SPLITS, split_of
from rlvr.tasks.code_items import CODE_KEYS, code_question, is_code_item
from rlvr.tasks.jsonl import JsonlTask

DATA_INSTALL = 'pip install -e ".[data]"'
FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}
DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")  # what save_to_disk writes


def import_datasets():
    try:
        import datasets
    except ImportError:
        raise ValueError(f"hf: tasks read data sets with the `datasets` library; install it with {DATA_INSTALL}") \
            from None
    datasets.disable_progress_bars()
    return datasets


def load_splits(path: Path) -> dict:
    """`path` -> {split name: datasets.Dataset}."""
    datasets = import_datasets()
    if not path.exists():
        raise ValueError(f"hf: data set {str(path)!r} does not exist; give a save_to_disk directory, or a parquet, "
                         "JSON, JSONL or CSV file, or a folder of them")
    try:
        if path.is_dir() and any((path / marker).is_file() for marker in DISK_MARKERS):
            loaded = datasets.load_from_disk(str(path))
        elif path.is_file():
            builder = FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise ValueError(f"hf: cannot read {path.name!r}: expected a {', '.join(FILE_BUILDERS)} file")
            loaded = datasets.load_dataset(builder, data_files={"train": str(path)})
        else:
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in FILE_BUILDERS)
            builders = {FILE_BUILDERS[p.suffix.lower()] for p in files}
            if len(builders) != 1:
                found = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
                raise ValueError(f"hf: folder {str(path)!r} must hold files of one kind ({', '.join(FILE_BUILDERS)}) "
                                 f"or be a save_to_disk directory; it holds {found}")
            loaded = datasets.load_dataset(builders.pop(), data_dir=str(path))
    except ValueError:
        raise
    except Exception as err:  # a corrupt file, a schema the builder cannot read
        raise ValueError(f"hf: cannot read {str(path)!r}: {type(err).__name__}: {err}") from None
    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    return dict(loaded)


def conversation_text(messages: list[dict]) -> str:
    """The raw prompt of a conversation, for models without a chat template."""
    return "\n".join(f"{turn['role']}: {turn['content']}" for turn in messages)


def to_item(row: dict, index: int, prompt_key: str, answer_key: str, source: str) -> dict:
    """One row -> an rlvr item; ValueError naming the row and the column when a value has the
    wrong type."""
    item = {key: value for key, value in row.items()}
    if prompt_key in row:
        prompt = row[prompt_key]
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"hf: {source} row {index}: {prompt_key!r} must be a non-empty string, got {prompt!r:.80}")
        item["question"] = row.get("question") if isinstance(row.get("question"), str) else \
            code_question(prompt) if is_code_item(row) else prompt
    else:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise ValueError(f"hf: {source} row {index}: 'messages' must be a list of {{\"role\", \"content\"}} "
                             f"turns, got {messages!r:.80}")
        prompt = conversation_text(messages)
        item["question"] = messages[-1]["content"]
        item["conversation"] = [{"role": m["role"], "content": m["content"]} for m in messages]
    answer = row[answer_key] if answer_key in row else row.get("canonical_solution") or ""  # a code item: its tests judge
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise ValueError(f"hf: {source} row {index}: {answer_key!r} must be a string or a number, got {answer!r:.80}")
    item.update(prompt=prompt, answer=str(answer), id=str(row.get("id", f"{source}/{index}")), key=prompt)
    level = row.get("level", 0)
    item["level"] = level if isinstance(level, int) and not isinstance(level, bool) else 0
    return item


class HFDatasetTask(JsonlTask):
    """Problems from a data set on disk, named `hf:<path>` (verified like the jsonl task)."""

    def __init__(self, path: str | Path, seed: int = 0, answer_format: str = "auto", prompt_key: str = "prompt",
                 answer_key: str = "answer", split: str = "train", eval_split: str = "",
                 code_program: str = "completion") -> None:
        self.use_answer_format(answer_format)
        self.code_program = code_program
        self.path = Path(path)
        self.name = f"hf:{path}"
        self.description = f"problems from the data set {path}"
        self.seed = seed
        loaded = load_splits(self.path)
        for name in (split, eval_split):
            if name and name not in loaded:
                raise ConfigError("split" if name == split else "eval_split",
                                  f"{self.path} has no split {name!r}; its splits: {', '.join(loaded)}")
        columns = loaded[split].column_names
        if prompt_key not in columns and not (prompt_key == "prompt" and "messages" in columns):
            raise ConfigError("prompt_key", f"{self.path} (split {split!r}) has no column {prompt_key!r}; its "
                                            f"columns: {', '.join(columns)}")
        if answer_key not in columns and not (CODE_KEYS <= set(columns) and answer_key == "answer"):  # tests judge
            raise ConfigError("answer_key", f"{self.path} (split {split!r}) has no column {answer_key!r}; its "
                                            f"columns: {', '.join(columns)}")
        source = f"{self.path.stem}/{split}"
        rows = [to_item(row, i, prompt_key, answer_key, source) for i, row in enumerate(loaded[split])]
        if eval_split:
            eval_columns = loaded[eval_split].column_names
            missing = [key for key in (prompt_key, answer_key) if key not in eval_columns
                       and not (key == "prompt" and "messages" in eval_columns)
                       and not (key == answer_key == "answer" and CODE_KEYS <= set(eval_columns))]
            if missing:
                raise ConfigError("eval_split", f"split {eval_split!r} of {self.path} has no column {missing[0]!r}; "
                                                f"its columns: {', '.join(loaded[eval_split].column_names)}")
            source = f"{self.path.stem}/{eval_split}"
            heldout = [to_item(row, i, prompt_key, answer_key, source) for i, row in enumerate(loaded[eval_split])]
            self.splits = {"train": rows, "heldout": heldout}
        else:
            self.splits = {name: [] for name in SPLITS}
            for row in rows:
                self.splits[split_of(row["key"])].append(row)
        carve = "" if eval_split else (" (held-out problems are ~10% of it, carved by a hash of the prompt: "
                                       "give at least ~30 problems, or --eval-split NAME)")
        self.settle_splits(seed, lambda name: f"hf: {self.path}: split "
                                              f"{(eval_split if name == 'heldout' and eval_split else split)!r} "
                                              f"gives no {name} problems{carve}")

