"""The `jsonl:<path>` task: a user's own problems, one JSON object per line.

Each line holds "prompt" and "answer" (optional "id", "level", and "question": the user message
for chat models, which defaults to the prompt; any other fields are kept in the item, where a
custom `--reward module:function` can read them). A problem's split follows the hash of its
prompt; the seed shuffles the order each split is shown in, and `item(split, i)` wraps around
when i passes the split's size.

Verification reads the answer text in the task's answer format (rlvr.tasks.answers), then compares:
an answer that is a number numerically with the last number of that text; any other answer with
its last non-empty line, stripped and case-insensitively. The default format ("auto") is
`whole`, the whole reply, so by default the last number or last line of the completion is read.
A format can't depend on the problem's answer, which is why the default is not `last-number` or
`last-line`. The item's `question` gains the format's instruction only when a format other than
"auto" is chosen: the file's own wording says how to answer otherwise.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from random import Random

from rlvr.tasks.answers import last_line
from rlvr.tasks.base import SPLITS, Task, check_split, split_of
from rlvr.tasks.code_items import code_question, is_code_item

EXPECTED = (
    'one JSON object per line like {"prompt": "2+2=", "answer": "4"} '
    '(optional "id", "level", "question")'
)

_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
# The lookbehind keeps the "-" of "12-40" from being read as a minus sign of 40.
_NUMBER_IN_TEXT = re.compile(r"(?<![\d.])-?(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")


def parse_number(text: str) -> float | None:
    """The number `text` spells (surrounding blanks allowed), or None if it is not one."""
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def format_number(value: float) -> str:
    """One spelling per number, so "95", "95.0" and "095" count as the same answer."""
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def last_number(text: str) -> str | None:
    """The last number written in `text`, in format_number's spelling, or None."""
    for match in reversed(_NUMBER_IN_TEXT.findall(text)):
        value = parse_number(match)
        if value is not None:
            return format_number(value)
    return None


def _bad_line(path: Path, line_number: int, problem: str) -> ValueError:
    return ValueError(f"{path}:{line_number}: {problem}; expected {EXPECTED}")


def load_problems(path: Path) -> list[dict]:
    """The file's problems as items (without split), checked line by line."""
    if not path.is_file():
        raise ValueError(f"jsonl task file {path} does not exist; expected a file with {EXPECTED}")
    problems: list[dict] = []
    seen_ids: dict[str, int] = {}
    with path.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise _bad_line(path, line_number, f"not valid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise _bad_line(path, line_number, f"a JSON {type(record).__name__}, not an object")
            prompt = record.get("prompt")
            if not isinstance(prompt, str) or not prompt:
                raise _bad_line(path, line_number, '"prompt" is missing or not a non-empty string')
            # A code task's stdin/stdout "tests", or HumanEval's "test" and "entry_point", are its answer
            # (--reward code_exec); "answer" may then be absent.
            answer = record.get("answer", "" if isinstance(record.get("tests"), list) else
                                record.get("canonical_solution", "") if is_code_item(record) else None)
            if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
                raise _bad_line(path, line_number, '"answer" is missing or not a string or number')
            question = record.get("question", code_question(prompt) if is_code_item(record) else prompt)
            if not isinstance(question, str) or not question:
                raise _bad_line(path, line_number, '"question" is not a non-empty string')
            level = record.get("level", 0)
            if isinstance(level, bool) or not isinstance(level, int):
                raise _bad_line(path, line_number, f'"level" must be an integer, got {level!r}')
            problem_id = str(record.get("id", f"{path.stem}/{line_number}"))
            if problem_id in seen_ids:
                raise _bad_line(
                    path, line_number, f"id {problem_id!r} repeats line {seen_ids[problem_id]}"
                )
            seen_ids[problem_id] = line_number
            problems.append(
                {
                    **record,
                    "id": problem_id,
                    "prompt": prompt,
                    "answer": str(answer),
                    "level": level,
                    "key": prompt,
                }
            )
    return problems


class JsonlTask(Task):
    """Problems read from a .jsonl file, named `jsonl:<path>`."""

    default_answer_format = "whole"
    verifier = "task"  # what --reward task means: "code_exec" when every problem is in HumanEval form
    code_program = "completion"  # --code-program of the HumanEval-form items (rlvr/tasks/code_items.py)

    def __init__(self, path: str | Path, seed: int = 0, answer_format: str = "auto",
                 code_program: str = "completion") -> None:
        self.use_answer_format(answer_format)
        self.code_program = code_program
        self.path = Path(path)
        self.name = f"jsonl:{path}"
        self.description = f"problems from {path}"
        self.seed = seed
        problems = load_problems(self.path)
        self.splits: dict[str, list[dict]] = {split: [] for split in SPLITS}
        for problem in problems:
            self.splits[split_of(problem["key"])].append(problem)
        self.settle_splits(seed, lambda split: (
            f"{self.path}: the {split!r} split is empty ({len(problems)} problems in the "
            f"file); problems are split ~90/10 train/heldout by a hash of the prompt, so "
            f"give at least ~30 problems"))

    def settle_splits(self, seed: int, empty_message, allow_empty: tuple[str, ...] = ()) -> None:
        """Shuffles each split by the seed (files are often sorted, by source or difficulty) and
        reads answers as numbers when every answer is one, so answer diversity counts numbers.
        ValueError(empty_message(split)) for an empty split, unless `allow_empty` names it: then
        asking it for an item raises that error."""
        self.empty_message = empty_message
        for split, members in self.splits.items():
            if not members and split not in allow_empty:
                raise ValueError(empty_message(split))
            Random(f"{seed}:{split}").shuffle(members)
        self.verifier = "code_exec" if all(is_code_item(problem) for members in self.splits.values()
                                           for problem in members) else "task"
        self.numeric = all(parse_number(problem["answer"]) is not None for members in self.splits.values()
                           for problem in members)

    def item(self, split: str, index: int) -> dict:
        check_split(split)
        if index < 0:
            raise ValueError(f"item index must be >= 0, got {index}")
        members = self.splits[split]
        if not members:
            raise ValueError(self.empty_message(split))
        item = dict(members[index % len(members)])
        if is_code_item(item):  # judged by its tests: no answer format to state
            item["code_program"] = self.code_program
            item.setdefault("question", code_question(item["prompt"]))
            return item
        question = item.get("question", item["prompt"])
        if not self.answer_format_is_default:
            question = f"{question}\n\n{self.answer_format.instruction}"
        item["question"] = question
        return item

    def extract_answer(self, completion: str) -> str | None:
        text = self.answer_format.extract(completion)
        if text is None:
            return None
        return last_number(text) if self.numeric else last_line(text)

    def score(self, completion: str, item: dict) -> float:
        if is_code_item(item):
            raise ValueError(f"item {item.get('id')} is a code problem (HumanEval form): its tests judge it, with "
                             "--reward code_exec (which --reward task means for it)")
        text = self.answer_format.extract(completion)
        if text is None:
            return 0.0
        expected = parse_number(item["answer"])
        if expected is not None:
            found = last_number(text)
            if found is None:
                return 0.0
            correct = math.isclose(float(found), expected, rel_tol=1e-9, abs_tol=1e-9)
            return 1.0 if correct else 0.0
        line = last_line(text)
        if line is None:
            return 0.0
        return 1.0 if line.casefold() == item["answer"].strip().casefold() else 0.0
