"""Tasks: problems with verifiers, looked up by name.

A name is a built-in task (`add2`, `arith`, `mul`, `guess`; see `list_tasks()`), `rg:<dataset>` for a
reasoning-gym dataset, `jsonl:<path>` for a file of the user's own problems, or `hf:<path>` for a
data set on disk (rlvr/tasks/hf.py). `answer_format`
names how the final answer is stated and read (rlvr.tasks.answers); "auto" is each task's default.
"""
from __future__ import annotations

from rlvr.config import ConfigError
from rlvr.registry import UnknownNameError
from rlvr.tasks.answers import ANSWER_FORMATS, AUTO
from rlvr.tasks import arithmetic, guess  # noqa: F401  (register the built-in tasks)
from rlvr.tasks.base import HELDOUT_FRACTION, SPLITS, TASKS, Task, split_of
from rlvr.tasks.jsonl import JsonlTask
from rlvr.tasks.reasoning_gym import ReasoningGymTask, list_reasoning_gym

DEFAULT_TASK = "arith"

RG_PREFIX = "rg:"
JSONL_PREFIX = "jsonl:"
HF_PREFIX = "hf:"
HUMANEVAL = "humaneval"
# The data-set options of hf: tasks (TrainConfig and EvalConfig fields), with their defaults;
# humaneval takes eval_split too ("" or "all").
TASK_OPTIONS = {"prompt_key": "prompt", "answer_key": "answer", "split": "train", "eval_split": ""}
HUMANEVAL_OPTIONS = ("eval_split",)

__all__ = [
    "DEFAULT_TASK",
    "HELDOUT_FRACTION",
    "SPLITS",
    "TASKS",
    "JsonlTask",
    "ReasoningGymTask",
    "Task",
    "get_task",
    "task_options",
    "list_reasoning_gym",
    "list_tasks",
    "split_of",
]


def task_options(cfg, code_program: str = "completion") -> dict:
    """The data-set options of a command's config (defaults for a config without them), and the
    resolved --code-program (completion or prompt+completion) of HumanEval-form items."""
    return {**{key: getattr(cfg, key, default) for key, default in TASK_OPTIONS.items()}, "code_program": code_program}


def get_task(name: str, seed: int = 0, answer_format: str = AUTO, options: dict | None = None) -> Task:
    """The task called `name`, streaming problems chosen by `seed`, reading `answer_format`;
    `options`: an hf: task's column and split settings (TASK_OPTIONS), humaneval's eval_split, and
    the program HumanEval-form items are judged on (`code_program`, rlvr/tasks/code_items.py)."""
    options = {**TASK_OPTIONS, "code_program": "completion", **(options or {})}
    if name == HUMANEVAL:
        from rlvr.tasks.humaneval import HumanEvalTask

        return HumanEvalTask(seed=seed, answer_format=answer_format, code_program=options["code_program"],
                             eval_split=options["eval_split"])
    if name.startswith(HF_PREFIX):
        from rlvr.tasks.hf import HFDatasetTask

        path = name[len(HF_PREFIX) :]
        if not path:
            raise ValueError("task 'hf:' names no data set; write hf:<a save_to_disk directory, or a parquet, "
                             "JSON, JSONL or CSV file, or a folder of them>")
        return HFDatasetTask(path, seed=seed, answer_format=answer_format, **options)
    if name.startswith(RG_PREFIX):
        return ReasoningGymTask(name[len(RG_PREFIX) :], seed=seed, answer_format=answer_format)
    if name.startswith(JSONL_PREFIX):
        path = name[len(JSONL_PREFIX) :]
        if not path:
            raise ValueError("task 'jsonl:' names no file; write jsonl:<path to a .jsonl file>")
        return JsonlTask(path, seed=seed, answer_format=answer_format, code_program=options["code_program"])
    try:
        factory = TASKS.get(name)
    except UnknownNameError as error:
        raise UnknownNameError(
            f"{error}; or humaneval, rg:<reasoning-gym dataset>, jsonl:<path> or hf:<path> (`rlvr tasks` lists them)"
        ) from None
    return factory(seed=seed, answer_format=answer_format)


def list_tasks() -> list[tuple[str, str]]:
    """(name, description) of each built-in task, in name order."""
    from rlvr.tasks.humaneval import HumanEvalTask

    return sorted([(name, TASKS.get(name).description) for name in TASKS.names()]
                  + [(HUMANEVAL, HumanEvalTask.description)])


def check_task(name: str, seed: int, answer_format: str = AUTO, field_name: str = "task",
               options: dict | None = None, splits: tuple[str, ...] = SPLITS) -> list[dict]:
    """The task and its answer format must exist and build -> a sample of its items (32 of each
    of `splits`) for the checks that need them. ConfigError otherwise, naming the option at fault."""
    if answer_format != AUTO and answer_format not in ANSWER_FORMATS:
        raise ConfigError("answer_format", f"unknown {answer_format!r}; known: auto, {', '.join(ANSWER_FORMATS.names())}")
    options = options or {}
    if not name.startswith(HF_PREFIX):
        for key, default in TASK_OPTIONS.items():
            if options.get(key, default) != default and not (name == HUMANEVAL and key in HUMANEVAL_OPTIONS):
                raise ConfigError(key, f"chooses a column or split of an hf:<path> data set; --task {name} has "
                                       "none: drop it, or give --task hf:<path>")
    try:
        task = get_task(name, seed=seed, answer_format=answer_format, options=options)
        return [task.item(split, i) for split in splits for i in range(32)]
    except ConfigError:  # a data-set option at fault names itself
        raise
    except Exception as err:  # any other failure to build the task is the user's task setting
        raise ConfigError(field_name, str(err)) from None
