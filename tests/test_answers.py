"""Tests of rlvr.tasks.answers: each format's extraction on real-looking replies, and tasks using them."""
from __future__ import annotations

import json
from random import Random

import pytest

from rlvr.tasks.answers import ANSWER_FORMATS, AUTO, resolve_answer_format
from rlvr.registry import UnknownNameError
from rlvr.tasks import get_task
from rlvr.tasks.arithmetic import last_integer

FORMATS = ["answer-tag", "boxed", "last-line", "last-number", "whole"]


def extract(name: str, completion: str) -> str | None:
    return ANSWER_FORMATS.get(name).extract(completion)


def test_the_registry_holds_each_format_with_a_one_sentence_instruction():
    assert ANSWER_FORMATS.names() == FORMATS
    for name in FORMATS:
        answer_format = ANSWER_FORMATS.get(name)
        assert answer_format.name == name
        instruction = answer_format.instruction
        assert instruction.endswith(".") and ". " not in instruction and "\n" not in instruction


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("The answer is 22, as 2 + 9 equals 18.", "18"),  # the last number, not the claimed one
        ("12-40=-28", "-28"),
        ("So we get -28.", "-28"),
        ("12-40", "40"),  # a minus between digits is subtraction, not a sign
        ("half of 7 is 3.5", "3.5"),
        ("x = -3.50", "-3.50"),
        ("It is 95.", "95"),  # a full stop is not a decimal point
        ("007", "007"),  # the raw text; tasks normalise it
        ("no digits here", None),
        ("", None),
    ],
)
def test_last_number(completion, expected):
    assert extract("last-number", completion) == expected


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("Adding: 37 + 58 = 95.\n\nThe final answer is \\boxed{95}.", "95"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces are balanced
        ("first \\boxed{1}, corrected: \\boxed{ 2 }", "2"),  # the last box, stripped
        ("\\fbox{x^{2}}", "x^{2}"),
        ("\\boxed {7}", "7"),
        ("The answer is \\boxed{\\frac{1}{2}", None),  # never closed
        ("\\boxed{}", None),
        ("The answer is 95.", None),
    ],
)
def test_boxed(completion, expected):
    assert extract("boxed", completion) == expected


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>2 + 2</think>\n<answer>4</answer>", "4"),
        ("<answer>1</answer> then <answer> 2 </answer>\nbye", "2"),
        ("<ANSWER>\nline one\nline two\n</Answer>", "line one\nline two"),  # any case, many lines
        ("<answer></answer>", None),
        ("<answer>  </answer>", None),
        ("<answer>4", None),  # not closed
        ("The answer is 4.", None),  # no tags: no answer
    ],
)
def test_answer_tag(completion, expected):
    assert extract("answer-tag", completion) == expected


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("Thinking...\n  Paris  \n\n", "Paris"),
        ("one line", "one line"),
        (" \n\t\n", None),
        ("", None),
    ],
)
def test_last_line(completion, expected):
    assert extract("last-line", completion) == expected


def test_whole_is_the_stripped_reply():
    assert extract("whole", "  It is 4.\nDone. \n") == "It is 4.\nDone."
    assert extract("whole", " \n ") is None


def test_auto_resolves_to_each_tasks_default(tmp_path):
    assert resolve_answer_format(AUTO, get_task("arith")).name == "last-number"
    assert resolve_answer_format("boxed", get_task("arith")).name == "boxed"
    assert get_task("mul", answer_format="last-line").answer_format.name == "last-line"
    path = tmp_path / "double.jsonl"
    lines = [json.dumps({"prompt": f"{a}+{a}=", "answer": 2 * a}) for a in range(60)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert get_task(f"jsonl:{path}").answer_format.name == "whole"


def test_unknown_format_names_the_known_ones_and_auto():
    with pytest.raises(UnknownNameError) as error:
        resolve_answer_format("latex", get_task("arith"))
    message = str(error.value)
    assert "'latex'" in message and "auto" in message
    assert all(name in message for name in FORMATS)
    with pytest.raises(UnknownNameError, match="'latex'"):
        get_task("arith", answer_format="latex")


# --- arithmetic tasks -----------------------------------------------------------------------

ITEM_37_PLUS_58 = {"id": "x", "prompt": "37+58=", "answer": "95", "level": 2, "key": "37+58"}


def test_arith_default_reads_the_last_integer_of_a_chatty_reply():
    task = get_task("arith")
    assert task.score("The answer is 95.", ITEM_37_PLUS_58) == 1.0
    assert task.score("\\boxed{95}", ITEM_37_PLUS_58) == 1.0  # the last number is still 95
    assert task.score("95, no wait, 96", ITEM_37_PLUS_58) == 0.0


def test_arith_boxed_requires_the_box_and_an_integer_in_it():
    task = get_task("arith", answer_format="boxed")
    assert task.score("37 + 58 = 95, so \\boxed{95}", ITEM_37_PLUS_58) == 1.0
    assert task.score("\\boxed{095}", ITEM_37_PLUS_58) == 1.0
    assert task.score("95", ITEM_37_PLUS_58) == 0.0  # no box, no answer
    assert task.score("\\boxed{ninety-five} 95", ITEM_37_PLUS_58) == 0.0
    assert task.score("\\boxed{95", ITEM_37_PLUS_58) == 0.0
    assert task.extract_answer("\\boxed{-28}") == "-28"


def test_arith_default_extraction_is_exactly_the_last_integer_of_the_whole_reply():
    """The default format must not move any score of the built-in model: check against the old
    reading (the last signed integer of the completion) on random replies."""
    task = get_task("arith")
    pieces = list("0123456789-.+ =\nx") + ["<answer>", "</answer>", "\\boxed{", "}"]
    rng = Random(0)
    for _ in range(20_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 16)))
        assert task.extract_answer(text) == last_integer(text), text


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "add2",
            {"id": "add2/train/0", "prompt": "69+33=", "answer": "102", "level": 2, "key": "69+33",
             "question": "What is 69 + 33? Answer with just the number."},
        ),
        (
            "arith",
            {"id": "arith/train/0", "prompt": "13-396=", "answer": "-383", "level": 3,
             "key": "13-396", "question": "What is 13 - 396? Answer with just the number."},
        ),
        (
            "mul",
            {"id": "mul/train/0", "prompt": "51*9=", "answer": "459", "level": 2, "key": "51*9",
             "question": "What is 51 × 9? Answer with just the number."},
        ),
    ],
)
def test_arithmetic_items_keep_their_fields_and_gain_a_question(name, expected):
    # Every field but "question" was captured before answer formats existed.
    assert get_task(name, seed=0).item("train", 0) == expected


def test_arithmetic_question_ends_with_the_chosen_formats_instruction():
    item = get_task("add2", seed=0, answer_format="boxed").item("train", 0)
    assert item["question"] == "What is 69 + 33? Put your final answer inside \\boxed{}."
    assert item["prompt"] == "69+33="


# --- jsonl tasks ----------------------------------------------------------------------------


@pytest.fixture
def jsonl_path(tmp_path):
    lines = [
        json.dumps({"prompt": f"{a}*3=", "answer": 3 * a, "question": f"What is {a} times 3?"})
        for a in range(30)
    ]
    lines += [
        json.dumps({"prompt": f"capital of country {n}?", "answer": f"C{n}"}) for n in range(30)
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_question_is_the_files_own_unless_a_format_is_chosen(jsonl_path):
    default = get_task(f"jsonl:{jsonl_path}")
    chosen = get_task(f"jsonl:{jsonl_path}", answer_format="last-line")
    instruction = "Write your final answer alone on the last line."
    for index in range(len(default.splits["train"])):
        item, item_chosen = default.item("train", index), chosen.item("train", index)
        own = f"What is {item['prompt'][:-3]} times 3?" if "*" in item["prompt"] else item["prompt"]
        assert item["question"] == own
        assert item_chosen["question"] == f"{own}\n\n{instruction}"
        assert {**item_chosen, "question": own} == item


def test_jsonl_chosen_format_is_read_before_comparing(jsonl_path):
    task = get_task(f"jsonl:{jsonl_path}", answer_format="answer-tag")
    number = {"id": "n", "prompt": "4*3=", "answer": "12", "level": 0}
    text = {"id": "t", "prompt": "capital of country 7?", "answer": "C7", "level": 0}
    assert task.score("so <answer>12.0</answer>", number) == 1.0
    assert task.score("12", number) == 0.0  # tags required
    assert task.score("<answer> c7 </answer>", text) == 1.0
    assert get_task(f"jsonl:{jsonl_path}").score("It is 12.\nDone.", number) == 1.0


def test_jsonl_question_must_be_a_non_empty_string(tmp_path):
    lines = [json.dumps({"prompt": f"{a}+{a}=", "answer": 2 * a}) for a in range(40)]
    lines.append(json.dumps({"prompt": "q", "answer": 1, "question": 7}))
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:41: \"question\""):
        get_task(f"jsonl:{path}")


# --- reasoning-gym --------------------------------------------------------------------------

CHAIN_SUM_QUESTION = (
    "State the final answer to the following arithmetic problem: "
    "6515 + 3117 + 6593 - 9991 - 9606 ="
)
ANSWER_TAG_INSTRUCTION = "Give your final answer inside <answer></answer> tags."


@pytest.fixture(scope="module")
def chain_sum():
    pytest.importorskip("reasoning_gym")
    return get_task("rg:chain_sum", seed=0)


def test_rg_question_ends_with_the_answer_tag_instruction_and_the_prompt_is_unchanged(chain_sum):
    item = chain_sum.item("train", 0)
    assert item["question"] == f"{CHAIN_SUM_QUESTION}\n\n{ANSWER_TAG_INSTRUCTION}"
    assert item["prompt"] == f"{ANSWER_TAG_INSTRUCTION}\n\n{CHAIN_SUM_QUESTION}"  # as before
    assert item["key"] == CHAIN_SUM_QUESTION and item["answer"] == "-3372"


def test_rg_auto_falls_back_to_the_last_line_but_a_chosen_answer_tag_does_not(chain_sum):
    item = chain_sum.item("train", 0)
    strict = get_task("rg:chain_sum", seed=0, answer_format="answer-tag")
    assert chain_sum.score("work\n-3372", item) == 1.0
    assert strict.score("work\n-3372", item) == 0.0
    assert strict.score("<answer>-3372</answer>", item) == 1.0


def test_rg_boxed_format_asks_for_and_reads_a_box(chain_sum):
    boxed = get_task("rg:chain_sum", seed=0, answer_format="boxed")
    item = boxed.item("train", 0)
    assert item["question"].endswith("\n\nPut your final answer inside \\boxed{}.")
    assert item["prompt"].startswith("Put your final answer inside \\boxed{}.\n\n")
    assert boxed.score("so \\boxed{-3372}", item) == 1.0
    assert boxed.score("<answer>-3372</answer>", item) == 0.0
