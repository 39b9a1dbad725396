"""`rlvr export RUN --to DIR` (rlvr/train/export.py): round trips and refusals.

An export's eval equals the run's eval (same seed and settings) for the built-in model, a
transformers model and a LoRA run (adapter alone, and merged); a transformers export loads with
AutoModelForCausalLM / AutoTokenizer and keeps the chat template; `--step N` and `--best` export
the same weights as the checkpoint or best/ they name; bad input exits 2 naming the option.
"""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlvr.cli import main

TINY_TRAIN = ["--k", "4", "--prompts-per-step", "2", "--max-new-tokens", "6", "--lr", "1e-3", "--quiet",
              "--checkpoint-every", "1"]
EVAL = ["--problems", "6", "--samples", "4", "--k", "1", "4", "--seed", "3"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def export(run: Path, to: Path, *extra: str) -> int:
    return main(["export", str(run), "--to", str(to), *extra])


def evaluate(tmp_path: Path, name: str, *source: str) -> dict:
    out = tmp_path / f"{name}.json"
    assert main(["eval", *source, *EVAL, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    result.pop("model")
    return result


def eval_of_model(tmp_path: Path, name: str, model: Path, run: Path) -> dict:
    """`rlvr eval --model` with the prompt settings `rlvr eval --run` takes from the run."""
    cfg = json.loads((run / "config.json").read_text())["config"]
    return evaluate(tmp_path, name, "--model", str(model), "--task", cfg["task"], "--max-new-tokens",
                    str(cfg["max_new_tokens"]), "--answer-format", cfg["answer_format"],
                    "--chat-template", cfg["chat_template"], "--system-prompt", cfg["system_prompt"],
                    "--reward", cfg["reward"])  # the run's one verifier: what --run evaluates with


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------- built-in model

def logits_of(model: Path) -> torch.Tensor:
    """Next-token logits of `--model model` (a LoRA adapter merged as eval loads it) on one prompt."""
    from rlvr.backends import load_policy
    from rlvr.tasks import get_task

    policy = load_policy(str(model))
    policy.module.eval()
    ids = torch.tensor([policy.encode_prompt(get_task("arith").item("heldout", 0))])  # (1, L)
    positions = torch.arange(ids.shape[1])[None]  # (1, L)
    with torch.no_grad():
        return policy.forward(ids, positions, torch.ones_like(ids, dtype=torch.bool))  # (1, L, V)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """The shipped model (it solves some arith problems, so the evals below compare real counts)."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    assert main(["train", "--out", str(out), "--steps", "2", "--eval-every", "1", "--eval-problems", "4",
                 "--eval-samples", "4", *TINY_TRAIN]) == 0
    return out


def test_builtin_export_evaluates_like_the_run(tiny_run, tmp_path, capsys):
    to = tmp_path / "export"
    assert export(tiny_run, to) == 0
    assert "final (step 2)" in capsys.readouterr().out
    meta = json.loads((to / "config.json").read_text())
    assert meta["backend"] == "tiny" and meta["source"] == "final" and meta["steps"] == 2
    assert same_tensors(load_file(str(to / "model.safetensors")), load_file(str(tiny_run / "final" / "model.safetensors")))
    exported = eval_of_model(tmp_path, "export", to, tiny_run)
    assert sum(p["correct"] for p in exported["per_problem"]) > 0  # the equality below is not one of zeros
    assert exported == evaluate(tmp_path, "run", "--run", str(tiny_run))
    assert torch.equal(logits_of(to), logits_of(tiny_run))


def test_builtin_step_and_best_export_their_weights(tiny_run, tmp_path):
    assert export(tiny_run, tmp_path / "step2", "--step", "2") == 0
    assert same_tensors(load_file(str(tmp_path / "step2" / "model.safetensors")),
                        load_file(str(tiny_run / "final" / "model.safetensors")))
    assert export(tiny_run, tmp_path / "step1", "--step", "1") == 0
    step1 = torch.load(tiny_run / "checkpoints" / "step_000001" / "state.pt", weights_only=False)["model"]
    assert same_tensors(load_file(str(tmp_path / "step1" / "model.safetensors")), step1)
    assert (tiny_run / "best" / "best.json").is_file()  # --keep-best hm@4 (the default) with --eval-every
    assert export(tiny_run, tmp_path / "best", "--best") == 0
    meta = json.loads((tmp_path / "best" / "config.json").read_text())
    assert meta["source"] == "best" and meta["steps"] == json.loads((tiny_run / "best" / "best.json").read_text())["step"]
    assert same_tensors(load_file(str(tmp_path / "best" / "model.safetensors")),
                        load_file(str(tiny_run / "best" / "model.safetensors")))


def refusal(capsys, code: int, *words: str) -> None:
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)


def test_refusals_name_the_option_and_the_fix(tiny_run, tmp_path, capsys):
    refusal(capsys, export(tmp_path, tmp_path / "a"), "RUN", "not an rlvr run directory")
    refusal(capsys, export(tiny_run, tmp_path / "a", "--step", "7"), "--step", "steps 1, 2")
    refusal(capsys, export(tiny_run, tmp_path / "a", "--merge-lora"), "--merge-lora", "built-in", "drop --merge-lora")
    refusal(capsys, export(tiny_run, tmp_path / "a", "--best", "--step", "1"), "--best", "not both")
    refusal(capsys, export(tiny_run, tiny_run / "final"), "--to", "overwrite the run")
    refusal(capsys, export(tiny_run, tiny_run.parent), "--to", "overwrite the run")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(tiny_run, unfinished, ignore=shutil.ignore_patterns("final", "best"))
    refusal(capsys, export(unfinished, tmp_path / "a"), "RUN", "no final/", "--step N", "steps 1, 2")
    refusal(capsys, export(unfinished, tmp_path / "a", "--best"), "--best", "--keep-best")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    refusal(capsys, export(tiny_run, occupied), "--to", "not empty", "--force")
    assert (occupied / "keep.txt").read_text() == "mine"
    assert export(tiny_run, occupied, "--force") == 0
    assert not (occupied / "keep.txt").exists() and (occupied / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".tmp-*"))


# ---------------------------------------------------------------------------------------- transformers models

@pytest.fixture(scope="module")
def hf_start(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from hf_models import make_hf_model_dir

    return make_hf_model_dir(tmp_path_factory.mktemp("hf") / "qwen2", "qwen2")


def hf_train(start: Path, out: Path, *extra: str) -> Path:
    assert main(["train", "--model", str(start), "--out", str(out), "--steps", "2", "--reward",
                 "shaped_rewards:digit_share", "--reward-workers", "0", *TINY_TRAIN, *extra]) == 0
    return out


@pytest.fixture(scope="module")
def hf_run(hf_start, tmp_path_factory) -> Path:
    return hf_train(hf_start, tmp_path_factory.mktemp("hf_run") / "run")


@pytest.fixture(scope="module")
def lora_run(hf_start, tmp_path_factory) -> Path:
    return hf_train(hf_start, tmp_path_factory.mktemp("lora_run") / "run", "--lora-rank", "4", "--lr", "1e-2")


def test_hf_export_loads_with_transformers_and_evaluates_like_the_run(hf_run, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    to = tmp_path / "export"
    assert export(hf_run, to) == 0
    assert "transformers model" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(to)
    tokenizer = AutoTokenizer.from_pretrained(to)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "2+2?"}], tokenize=False, add_generation_prompt=True)
    final = load_file(str(hf_run / "final" / "model.safetensors"))
    assert all(torch.equal(model.state_dict()[k], final[k]) for k in final)
    assert json.loads((to / "rlvr.json").read_text())["source"] == "final"
    assert eval_of_model(tmp_path, "export", to, hf_run) == evaluate(tmp_path, "run", "--run", str(hf_run))
    assert torch.equal(logits_of(to), logits_of(hf_run))  # a random model's evals are mostly zeros
    refusal(capsys, export(hf_run, tmp_path / "a", "--merge-lora"), "--merge-lora", "no --lora-rank")


def test_hf_checkpoint_export_equals_the_final_export(hf_run, tmp_path):
    assert export(hf_run, tmp_path / "step2", "--step", "2") == 0
    assert same_tensors(load_file(str(tmp_path / "step2" / "model.safetensors")),
                        load_file(str(hf_run / "final" / "model.safetensors")))


def test_lora_adapter_export_loads_with_model_and_evaluates_like_the_run(lora_run, tmp_path):
    to = tmp_path / "adapter"
    assert export(lora_run, to) == 0
    assert (to / "adapter_config.json").is_file() and not (to / "model.safetensors").exists()
    assert Path(json.loads((to / "adapter_config.json").read_text())["base_model_name_or_path"]).is_absolute()
    assert eval_of_model(tmp_path, "adapter", to, lora_run) == evaluate(tmp_path, "run", "--run", str(lora_run))
    assert torch.equal(logits_of(to), logits_of(lora_run))
    assert export(lora_run, tmp_path / "step2", "--step", "2") == 0
    assert same_tensors(load_file(str(tmp_path / "step2" / "adapter_model.safetensors")),
                        load_file(str(to / "adapter_model.safetensors")))


def test_lora_merged_export_is_a_full_model_that_evaluates_like_the_run(lora_run, hf_start, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    to = tmp_path / "merged"
    assert export(lora_run, to, "--merge-lora") == 0
    assert not (to / "adapter_config.json").exists() and (to / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(to)
    assert AutoTokenizer.from_pretrained(to).chat_template
    merged = model.state_dict()
    start = load_file(str(hf_start / "model.safetensors"))
    assert set(start) <= set(merged) and not any("lora_" in k for k in merged)
    assert any(not torch.equal(merged[k], start[k]) for k in start)  # the adapter is in the weights
    assert eval_of_model(tmp_path, "merged", to, lora_run) == evaluate(tmp_path, "run", "--run", str(lora_run))
    assert torch.equal(logits_of(to), logits_of(lora_run))
    assert not torch.equal(logits_of(to), logits_of(hf_start))
    assert export(lora_run, tmp_path / "merged2", "--step", "2", "--merge-lora") == 0
    assert same_tensors(load_file(str(tmp_path / "merged2" / "model.safetensors")), load_file(str(to / "model.safetensors")))
