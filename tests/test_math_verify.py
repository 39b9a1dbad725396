"""`--reward math_verify` (rlvr/rewards/math_answers.py): what math-verify 0.9.0 scores equal, measured.

The table asserts what the library actually does, including the pairs it does not score equal;
docs/rewards.md shows the same table. Then: the verifier in reward worker processes, in the
training process (`--reward-workers 0`) and off the main thread; a gold answer it cannot read is a
reward error; a missing package is refused before any work; and `rlvr train --reward math_verify`
runs end to end on a JSONL task with `\\boxed{}` answers.
"""
import json
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("math_verify")

from rlvr.cli import main  # noqa: E402
from rlvr.rewards.math_answers import score  # noqa: E402
from rlvr.rewards.pool import RewardPool  # noqa: E402
from rlvr.rewards.verifiers import EXCEPTION  # noqa: E402

# (item answer, completion, score math-verify gives)
EQUIVALENCE = [
    # the three the issue names
    ("0.5", r"\boxed{1/2}", 1.0),
    (r"\frac{1}{2}", "1/2", 1.0),
    ("3", "x=3", 1.0),
    # fractions, decimals, LaTeX forms
    ("1/2", r"The answer is $\frac{1}{2}$.", 1.0),
    ("0.5", r"\boxed{\frac{1}{2}}", 1.0),
    (r"\frac{3}{4}", r"\boxed{\dfrac{3}{4}}", 1.0),
    (r"\frac{3}{4}", r"\boxed{6/8}", 1.0),
    (r"-\frac{3}{4}", r"\boxed{-0.75}", 1.0),
    ("2", r"\boxed{\frac{4}{2}}", 1.0),
    ("42", "42.0", 1.0),
    ("1/3", "0.333333", 1.0),
    ("0.1", r"\boxed{0.1000001}", 1.0),  # floats compared rounded to 6 decimals
    # equations and assignments
    ("x=3", r"\boxed{3}", 1.0),
    ("3", r"$x = 3$", 1.0),
    # answers in text
    ("42", r"So the total is \boxed{42}.", 1.0),
    ("42", "The answer is 42", 1.0),
    ("2", r"\boxed{2 \text{ apples}}", 1.0),
    ("10", r"\boxed{10^\circ}", 1.0),
    # symbolic forms
    (r"\sqrt{8}", r"\boxed{2\sqrt{2}}", 1.0),
    (r"\sqrt{2}", "1.41421356", 1.0),
    (r"\pi", r"\boxed{\pi}", 1.0),
    ("x^2+2x+1", r"\boxed{(x+1)^2}", 1.0),
    # number spellings, percentages, sets, intervals
    ("1,000", r"\boxed{1000}", 1.0),
    ("1e3", r"\boxed{1000}", 1.0),  # rlvr writes E-notation golds out: math-verify reads 1e3 as 1·e·3
    ("50\\%", r"\boxed{0.5}", 1.0),
    ("50%", r"\boxed{50}", 1.0),
    (r"\{1,2\}", r"\boxed{\{2,1\}}", 1.0),
    ("[0,1)", r"\boxed{[0,1)}", 1.0),
    # not equal
    ("1/3", "0.33", 0.0),
    (r"\pi", "3.14159", 0.0),
    ("3", r"\boxed{3.0000001}", 0.0),  # an integer gold is compared exactly
    ("5", r"\boxed{-5}", 0.0),
    ("(1,2)", r"\boxed{[1,2]}", 0.0),
    ("x=3", r"\boxed{y=3}", 0.0),
    ("3", "x = 3, y = 4", 0.0),  # without LaTeX the last number is read
    ("2", "I think 2 then 5", 0.0),
    ("2", r"\boxed{3} ... wait, \boxed{2}", 0.0),  # two boxed answers are read as the set {2, 3}
    ("7", r"\boxed{7", 0.0),  # unclosed: no answer
    ("7", "no answer here", 0.0),
]


@pytest.mark.parametrize("gold, completion, expected", EQUIVALENCE, ids=[f"{g}|{c}" for g, c, _ in EQUIVALENCE])
def test_equivalence_table(gold, completion, expected):
    assert score(completion, {"id": "q", "prompt": "", "answer": gold}) == expected


def test_the_table_is_large_and_holds_the_issues_three_pairs():
    assert len(EQUIVALENCE) >= 15
    assert {("0.5", r"\boxed{1/2}"), (r"\frac{1}{2}", "1/2"), ("3", "x=3")} <= {(g, c) for g, c, _ in EQUIVALENCE}


PAIRS = EQUIVALENCE[:6] + EQUIVALENCE[-6:]


@pytest.mark.parametrize("workers", [2, 0], ids=["worker-processes", "in-process"])
def test_pool_scores_like_a_direct_call_and_an_unreadable_gold_is_an_error(workers):
    items = [{"id": str(i), "prompt": "", "answer": gold} for i, (gold, _, _) in enumerate(PAIRS)]
    texts = [completion for _, completion, _ in PAIRS]
    items.append({"id": "bad", "prompt": "", "answer": r"\frac{"})
    texts.append(r"\boxed{1}")
    with RewardPool("math_verify", "arith", 0, workers=workers, timeout=30) as pool:
        outcomes = pool.score(texts, items)
    assert [o.value for o in outcomes[:-1]] == [expected for _, _, expected in PAIRS]
    assert outcomes[-1].value is None and outcomes[-1].kind == EXCEPTION
    assert "cannot parse the item's answer" in outcomes[-1].detail


def test_works_off_the_main_thread():
    """math-verify's signal-based timeout refuses other threads; rlvr switches it off there."""
    results = []
    worker = threading.Thread(target=lambda: results.append([score(c, {"answer": g}) for g, c, _ in PAIRS]))
    worker.start()
    worker.join()
    assert results == [[expected for _, _, expected in PAIRS]]


def test_missing_package_is_refused_before_work_naming_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "math_verify", None)  # import math_verify -> ImportError
    code = main(["train", "--reward", "math_verify", "--out", str(tmp_path / "run"), "--steps", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--reward" in err and 'pip install -e ".[math]"' in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def boxed_task(path: Path) -> Path:
    """40 short sums whose answers are written \\boxed{n}; prompts fit the built-in model's 64 tokens."""
    lines = [{"prompt": f"{a}+{b}=", "answer": f"\\boxed{{{a + b}}}"} for a in range(1, 9) for b in range(1, 6)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.mark.parametrize("workers", ["2", "0"])
def test_train_end_to_end_on_a_jsonl_task_with_boxed_answers(tmp_path, workers):
    task = boxed_task(tmp_path / "sums.jsonl")
    out = tmp_path / "run"
    code = main(["train", "--task", f"jsonl:{task}", "--reward", "math_verify", "--reward-workers", workers,
                 "--steps", "2", "--k", "4", "--prompts-per-step", "4", "--max-new-tokens", "6", "--eval-every", "0",
                 "--out", str(out), "--quiet"])
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["step"] > 0]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(r["reward/errors"] == 0 for r in steps)
    # The shipped model answers sums with digits, which math-verify reads and scores against \boxed{n}.
    assert sum(r["reward/mean"] for r in steps) > 0
    assert json.loads((out / "config.json").read_text())["config"]["reward"] == "math_verify"
