"""Episodes (rlvr/rollout/episodes.py): token in, token out, and the model's tokens alone trained on.

A scripted engine returns fixed ids per turn (as TRL's environment tests do) and a scripted
environment replies to every model turn, so each check knows exactly which id is whose. The same
checks then run with real sampling on a tiny random Hugging Face model through rlvr's engine and
vLLM's, against a record of what each engine returned.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

from conftest import make_policy
from rlvr.algo.entropy import masked_mean
from rlvr.algo.losses import LossSettings, policy_loss
from rlvr.rollout.episodes import EpisodeSettings, episode_metrics, sample_episodes
from rlvr.rollout.forward import Scorer
from rlvr.types import RolloutBatch

EOS = 258  # the built-in model's byte tokenizer


@dataclass
class Reply:  # the shape of rlvr.envs.EnvTurn
    messages: list
    tool_calls: int = 1
    tool_errors: int = 0
    done: bool = False


class ScriptedEnv:
    """Replies to each model turn with the next of `replies`, then answers None (the episode ends)."""

    done = False

    def __init__(self, replies: list[str]) -> None:
        self.replies, self.seen, self.failures = list(replies), [], 0

    def reset(self, item):
        return None

    def step(self, text):
        self.seen.append(text)
        if not self.replies:
            return None
        return Reply([{"role": "user", "content": self.replies.pop(0)}])

    def reward(self):
        return 0.5

    def close(self):
        pass


class ScriptedSpec:
    name, has_reward = "scripted", True

    def __init__(self, replies: list[str]) -> None:
        self.replies, self.envs = replies, []

    def tools(self):
        return []

    def new(self, fmt, timeout_s):
        self.envs.append(ScriptedEnv(self.replies))
        return self.envs[-1]

    def prompt_messages(self, question, first_text, fmt):
        return [{"role": "user", "content": question}]


class ScriptedEngine:
    """Turn t of every episode samples `turns[t]`, with log-prob -0.5 and entropy 1 + t/10 per token."""

    external = False

    def __init__(self, turns: list[list[int]]) -> None:
        self.turns, self.contexts = turns, []

    def continue_rows(self, policy, prompts, *, max_new_tokens, temperature, seeds, truncation=None, sizes=None,
                      suffixes=None):
        ids = self.turns[len(self.contexts)][:max_new_tokens]
        prompts = [p + s for p, s in zip(expand(prompts, sizes), suffixes or [[]] * len(seeds))]
        self.contexts.append([list(p) for p in prompts])
        rows, width = len(prompts), len(ids)
        return RolloutBatch(
            prompt_ids=torch.zeros(rows, 1, dtype=torch.long), prompt_mask=torch.ones(rows, 1, dtype=torch.bool),
            completion_ids=torch.tensor([ids] * rows), completion_mask=torch.ones(rows, width, dtype=torch.bool),
            logprobs=torch.full((rows, width), -0.5), entropy=torch.full((rows, width), 1 + len(self.contexts) / 10),
            group_ids=torch.arange(rows), texts=[""] * rows, items=[], k=1)


def stopping_policy(seed: int):
    """The built-in model, random, with EOS as likely as its favourite token: turns end after a few
    tokens, so episodes reach several turns."""
    policy = make_policy(seed=seed, max_seq_len=64)
    model = policy.module
    with torch.no_grad():
        ids = torch.tensor([policy.encode_prompt({"prompt": "12+7=123"})])
        hidden = model.ln_f(model.tok_emb(ids) + model.pos_emb(torch.arange(ids.shape[1])))  # rough final states
        direction = hidden[0].mean(dim=0)
        model.tok_emb.weight[EOS] = direction / direction.square().sum() * 5.0  # EOS logit ≈ 5 near there
    return policy


def expand(prompts, sizes):
    return [p for p, size in zip(prompts, sizes or [1] * len(prompts)) for _ in range(size)]


TURN0 = list(b"calc(2*3)") + [EOS]
TURN1 = list(b"6") + [EOS]


@pytest.fixture
def scripted():
    policy = make_policy(seed=3, max_seq_len=64)
    spec = ScriptedSpec(["6"])
    engine = ScriptedEngine([TURN0, TURN1])
    items = [{"id": 0, "prompt": "2*3=", "answer": "6"}]
    batch = sample_episodes(engine, policy, spec, items, 2, settings=EpisodeSettings(max_turns=4, max_new_tokens=16),
                            temperature=1.0, seeds=[7])
    return policy, spec, engine, batch


def test_the_trained_ids_are_the_sampled_ids_and_the_environments_as_appended(scripted):
    policy, spec, engine, batch = scripted
    env_ids = list(b"\n6\n")  # the built-in model's rendering of the reply (TinyPrompts.encode_env_turn)
    prompt = policy.prompts.encode_prompt({"prompt": "2*3="})
    # what the engine was asked to continue at turn 1: exactly the ids so far, not re-tokenised text
    assert engine.contexts == [[prompt, prompt], [prompt + TURN0 + env_ids] * 2]
    expected = TURN0 + env_ids + TURN1
    for row in range(2):
        real = batch.sequence_mask[row]
        assert batch.prompt_ids[row][batch.prompt_mask[row]].tolist() == prompt
        assert batch.completion_ids[row][real].tolist() == expected
        assert not bool(real[len(expected):].any())  # the real ids are contiguous, padding after
        model = [True] * len(TURN0) + [False] * len(env_ids) + [True] * len(TURN1)
        assert batch.completion_mask[row, : len(expected)].tolist() == model
        assert batch.env_mask[row, : len(expected)].tolist() == [not m for m in model]
    assert batch.texts == ["6", "6"]  # the final turn is what the verifiers score
    assert spec.envs[0].seen == ["calc(2*3)", "6"]  # the environment saw each decoded model turn
    record = batch.episodes[0]
    assert record["end"] == "answered" and not record["truncated"] and record["model_turns"] == 2
    assert record["tool_calls"] == 1 and record["env_reward"] == 0.5
    assert [t["role"] for t in record["turns"]] == ["model", "env", "model"]


def test_entropy_and_token_counts_see_only_the_models_tokens(scripted):
    _, _, _, batch = scripted
    model_tokens = len(TURN0) + len(TURN1)
    metrics = episode_metrics(batch.episodes)
    assert metrics["tokens/model"] == 2 * model_tokens == batch.generated_tokens()
    assert metrics["tokens/env"] == 2 * 3 == int(batch.env_mask.sum())
    assert metrics["episode/turns"] == 2 and metrics["episode/tool_calls"] == 1
    # turn 0 tokens have entropy 1.1, turn 1 tokens 1.2; environment positions hold 0 and are not counted
    expected = (len(TURN0) * 1.1 + len(TURN1) * 1.2) / model_tokens
    assert masked_mean(batch.entropy, batch.completion_mask) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("pack", [False, True])
def test_the_training_forward_attends_to_environment_tokens_as_one_sequence(scripted, pack):
    """The trainer's log-probs at the model's tokens equal those of one plain forward over the
    whole sequence (prompt, model turns, environment tokens), computed independently."""
    policy, _, _, batch = scripted
    scorer = Scorer(policy, 1.0, pack=pack)
    with torch.no_grad():
        logp, entropy = scorer(batch, torch.arange(batch.num_rows), with_entropy=True)
        for row in range(batch.num_rows):
            ids = torch.cat([batch.prompt_ids[row][batch.prompt_mask[row]],
                             batch.completion_ids[row][batch.sequence_mask[row]]])[None]
            n = ids.shape[1]
            logits = policy.forward(ids, torch.arange(n)[None], torch.ones(1, n, dtype=torch.bool))[0]
            prompt_len = int(batch.prompt_mask[row].sum())
            reference = torch.log_softmax(logits[prompt_len - 1 : n - 1].float(), -1)  # predicts each completion id
            completion = ids[0, prompt_len:]
            want = reference.gather(1, completion[:, None]).squeeze(1)
            mask = batch.completion_mask[row, : len(completion)]
            torch.testing.assert_close(logp[row, : len(completion)][mask], want[mask], rtol=0, atol=1e-5)
            assert bool((logp[row, : len(completion)][~mask] == 0).all())  # nothing at environment tokens
            assert bool((entropy[row, : len(completion)][~mask] == 0).all())


def test_the_losss_gradient_at_environment_positions_is_exactly_zero(scripted):
    policy, _, _, batch = scripted
    captured = {}
    forward = policy.forward

    def keep_logits(*args, **kwargs):
        logits = forward(*args, **kwargs)
        logits.retain_grad()
        captured["logits"] = logits
        return logits

    policy.forward = keep_logits
    scorer = Scorer(policy, 1.0, pack=False)
    logp, entropy = scorer(batch, torch.arange(batch.num_rows), with_entropy=True)
    settings = LossSettings(clip_low=0.2, clip_high=0.28, aggregation="token-mean", beta=0.0, entropy_coef=0.01)
    advantages = torch.tensor([1.0, -1.0])
    tokens = int(batch.completion_mask.sum())
    loss, _ = policy_loss(logp, batch.logprobs, advantages, batch.completion_mask, settings, tokens, batch.num_rows,
                          None, entropy, torch.Generator().manual_seed(0))
    loss.backward()
    grad = captured["logits"].grad  # (N, T+1, V): position t predicts completion token t
    width = batch.completion_ids.shape[1]
    env, model = batch.env_mask[:, :width], batch.completion_mask[:, :width]
    assert bool((grad[:, :width][env] == 0).all())
    assert bool((grad[:, :width][model].abs().sum(dim=-1) > 0).all())


class AlwaysReply(ScriptedSpec):
    """Every model turn gets a reply, so episodes run to --max-turns whatever the model says."""

    def new(self, fmt, timeout_s):
        self.envs.append(ScriptedEnv(["ok"] * 100))
        return self.envs[-1]


class Recording:
    """An engine wrapper that keeps what each continue_rows call was given and returned."""

    def __init__(self, engine) -> None:
        self.engine, self.calls = engine, []
        self.external = engine.external

    def continue_rows(self, policy, prompts, sizes=None, suffixes=None, **kwargs):
        out = self.engine.continue_rows(policy, prompts, sizes=sizes, suffixes=suffixes, **kwargs)
        prompts = [p + s for p, s in zip(expand(prompts, sizes), suffixes or [[]] * out.num_rows)]
        returned = [out.completion_ids[r][out.completion_mask[r]].tolist() for r in range(len(prompts))]
        self.calls.append(([list(p) for p in prompts], returned))
        return out


def check_token_in_token_out(policy, engine) -> RolloutBatch:
    """Samples episodes through `engine`; each episode's trained ids must be the prompt, then the
    ids each turn returned, then the environment's rendering of its reply, position by position."""
    recording = Recording(engine)
    items = [{"id": 0, "prompt": "12+7=", "answer": "19"}, {"id": 1, "prompt": "3+4=", "answer": "7"}]
    batch = sample_episodes(recording, policy, AlwaysReply([]), items, 2,
                            settings=EpisodeSettings(max_turns=3, max_new_tokens=6), temperature=1.0, seeds=[1, 2])
    env_ids = policy.prompts.encode_env_turn([{"role": "user", "content": "ok"}])
    # Rebuild each episode from the record alone: a row whose turn ended with a stop id, with turns
    # left, gets the reply appended and is asked to continue in the next call.
    sequences = {row: [] for row in range(4)}
    running = list(range(4))
    for turn, (prompts, returned) in enumerate(recording.calls):
        assert len(prompts) == len(running)
        for row, context, ids in zip(running, prompts, returned):
            prompt = batch.prompt_ids[row][batch.prompt_mask[row]].tolist()
            assert context == prompt + sequences[row]  # token in: exactly the ids so far
            sequences[row] += ids
        running = [row for row, ids in zip(running, returned) if ids and ids[-1] in policy.stop_ids and turn < 2]
        for row in running:
            sequences[row] += env_ids
    assert len(recording.calls) >= 2 and any(batch.episodes[row]["model_turns"] > 1 for row in range(4))
    for row in range(4):
        trained = batch.completion_ids[row][batch.sequence_mask[row]].tolist()
        assert trained == sequences[row]  # token out: position by position
        # the model's own ids are exactly those the engine returned, the rest the environment's
        model_ids = batch.completion_ids[row][batch.completion_mask[row]].tolist()
        env_part = batch.completion_ids[row][batch.env_mask[row]].tolist()
        assert len(model_ids) + len(env_part) == len(trained)
        assert env_part == env_ids * (len(env_part) // max(1, len(env_ids)))
    return batch


def test_token_in_token_out_with_rlvrs_sampler_on_the_builtin_model():
    from rlvr.rollout.engines import RlvrEngine

    check_token_in_token_out(stopping_policy(1), RlvrEngine())


@pytest.fixture(scope="module")
def hf_policy(tmp_path_factory):
    pytest.importorskip("transformers")
    from hf_models import make_hf_model_dir

    from rlvr.backends import load_policy

    path = make_hf_model_dir(tmp_path_factory.mktemp("llama") / "m", "llama", hidden=128, heads=4, kv_heads=2)
    policy = load_policy(str(path))
    with torch.no_grad():
        policy.model.model.norm.weight.mul_(8)  # peaked, varied samples
        # End-of-turn as likely as the token the random model favours most, so turns end after a
        # few tokens and episodes reach several turns.
        prompt = torch.tensor([policy.encode_prompt({"prompt": "12+7="})])
        favourite = int(policy.forward(prompt, torch.arange(prompt.shape[1])[None],
                                       torch.ones_like(prompt, dtype=torch.bool))[0, -1].argmax())
        head = policy.model.get_output_embeddings().weight
        for stop in policy.stop_ids:
            head[stop] = head[favourite]
    policy.model.save_pretrained(path)
    return path, load_policy(str(path))


def test_token_in_token_out_on_a_tiny_hf_model_with_rlvrs_sampler(hf_policy):
    from rlvr.rollout.engines import RlvrEngine

    _, policy = hf_policy
    batch = check_token_in_token_out(policy, RlvrEngine())
    env_ids = policy.prompts.encode_env_turn([{"role": "user", "content": "ok"}])
    assert policy.tokenizer.decode(env_ids).startswith("\n<|im_start|>user\nok<|im_end|>")
    assert batch.env_mask.any()


HAVE_VLLM = __import__("importlib").util.find_spec("vllm") is not None


@pytest.mark.skipif(not HAVE_VLLM and os.environ.get("CI") != "true", reason="vLLM is not installed")
def test_token_in_token_out_on_a_tiny_hf_model_with_vllm(hf_policy):
    from rlvr.rollout.engines import EngineSettings, open_engine, trainer_view

    path, policy = hf_policy
    engine = open_engine(EngineSettings("vllm"), str(path), policy, max_new_tokens=6, rows=8)
    try:
        batch = check_token_in_token_out(policy, engine)
    finally:
        engine.close()
    view = trainer_view(policy, batch, 1.0, None)  # the trainer's log-probs of the engine's tokens
    gap = (view.logprobs - batch.engine_logprobs)[batch.completion_mask].abs().max()
    assert float(gap) <= 1e-3
    assert bool((view.logprobs[batch.env_mask] == 0).all()) and bool((view.entropy[batch.env_mask] == 0).all())


class Ungrouped:
    """rlvr's engine asked for one row per whole context (prompt + the episode's ids): nothing
    prefilled once for a group."""

    external = False

    def __init__(self, engine) -> None:
        self.engine = engine

    def continue_rows(self, policy, prompts, sizes=None, suffixes=None, **kwargs):
        prompts = [p + s for p, s in zip(expand(prompts, sizes), suffixes or [[]] * len(kwargs["seeds"]))]
        return self.engine.continue_rows(policy, prompts, **kwargs)


@pytest.mark.parametrize("model", ["builtin", "hf"])
def test_prefilling_a_groups_prompt_once_changes_no_sample(model, request):
    """Every turn prefills each group's prompt once and each episode's own ids after it on a copy of
    the cache (padding holes masked); that gives the same samples as prefilling each episode's
    whole context alone."""
    from rlvr.rollout.engines import RlvrEngine

    policy = stopping_policy(2) if model == "builtin" else request.getfixturevalue("hf_policy")[1]
    items = [{"id": 0, "prompt": "12+7=", "answer": "19"}, {"id": 1, "prompt": "3+4=", "answer": "7"}]
    settings = EpisodeSettings(max_turns=3, max_new_tokens=6)
    grouped = sample_episodes(RlvrEngine(), policy, AlwaysReply([]), items, 3, settings=settings, temperature=1.0,
                              seeds=[5, 6])
    single = sample_episodes(Ungrouped(RlvrEngine()), policy, AlwaysReply([]), items, 3, settings=settings,
                             temperature=1.0, seeds=[5, 6])
    assert torch.equal(grouped.completion_ids, single.completion_ids)
    torch.testing.assert_close(grouped.logprobs, single.logprobs, rtol=0, atol=1e-4)
    assert max(e["model_turns"] for e in grouped.episodes) > 1
    assert len({tuple(row) for row in grouped.completion_ids.tolist()}) > 1  # the K episodes differ


# ---------------------------------------------------------------- whole runs with --env

def episode_run(tmp_path, name: str, *extra: str) -> tuple[list[dict], Path]:
    from rlvr.cli import main

    out = tmp_path / name
    assert main(["train", "--steps", "2", "--k", "4", "--prompts-per-step", "2", "--out", str(out), "--quiet",
                 "--threads", "1", "--max-new-tokens", "6", *extra]) == 0
    import json

    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()], out


def test_a_trl_environment_class_trains_unchanged(tmp_path):
    """The class of docs/episodes.md (tests/envs_trl_example.py), exactly as a TRL user writes it."""
    import json

    rows, out = episode_run(tmp_path, "trl", "--env", "envs_trl_example:AbacusEnv", "--task", "arith",
                            "--reward", "task:0.5,env:0.5", "--eval-every", "2", "--eval-problems", "4",
                            "--eval-samples", "4", "--eval-show", "1")
    step = [r for r in rows if "reward/mean" in r]
    assert len(step) == 2 and all(r["episode/turns"] >= 1 and "tokens/env" in r for r in step)
    assert all(r["tokens/model"] > 0 and "reward/env/mean" in r for r in step)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["completion"].startswith("[model] ") and "episode" in s for s in samples)


def test_an_openenv_text_environment_trains_over_several_turns(tmp_path):
    """A plain OpenEnv Environment (every model turn an action) runs episodes of several turns
    through the whole trainer; the model's tokens alone are counted."""
    pytest.importorskip("openenv")
    rows, _ = episode_run(tmp_path, "openenv", "--env", "envs_openenv:CountToThree", "--max-turns", "3")
    step = [r for r in rows if "reward/mean" in r]
    assert all(r["episode/turns"] > 1 and r["tokens/env"] > 0 for r in step)
    for r in step:  # completion/mean_length is over the model's tokens: 2 prompts x 4 episodes
        assert r["completion/mean_length"] * 8 == pytest.approx(r["tokens/model"])


def test_bad_episode_settings_are_refused_before_any_work(tmp_path, capsys):
    from rlvr.cli import main

    cases = [(["--env", "nowhere:Nothing"], "--env"), (["--max-turns", "3"], "--max-turns"),
             (["--env", "calc", "--max-turns", "0"], "--max-turns"), (["--reward", "env"], "--reward"),
             (["--env", "calc", "--reward", "env"], "get_reward"),
             (["--env", "calc", "--env-system", "maybe"], "--env-system"),
             (["--env", "calc", "--overlong-buffer", "2"], "--overlong-buffer")]
    for args, named in cases:
        out = tmp_path / "never"
        assert main(["train", "--steps", "1", "--out", str(out), *args]) == 2, args
        assert named in capsys.readouterr().err, args
        assert not out.exists()


def test_an_environment_that_fails_stops_the_run_with_its_message(tmp_path, capsys):
    """A reset that raises in every episode: env_error events, then a stop past
    --max-reward-error-frac (exit 1) naming the environment's message and the fix."""
    import json

    from rlvr.cli import main

    out = tmp_path / "broken"
    assert main(["train", "--steps", "2", "--k", "4", "--prompts-per-step", "2", "--out", str(out), "--quiet",
                 "--threads", "1", "--env", "envs_bad:ResetRaises"]) == 1
    err = capsys.readouterr().err
    assert "--max-reward-error-frac" in err and "the environment failed in 8 of 8 episodes" in err
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    errors = [e for e in events if e["event"] == "env_error"]
    assert errors and errors[0]["episodes"] == 8 and "reset()" in errors[0]["message"]
    assert events[-1]["event"] == "stop"


def test_rlvr_eval_over_episodes_writes_eval_json_with_the_environment(tmp_path):
    import json

    from rlvr.cli import main

    out = tmp_path / "eval.json"
    assert main(["eval", "--env", "calc", "--task", "mul", "--problems", "3", "--samples", "4", "--k", "1", "4",
                 "--max-new-tokens", "6", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["env"] == "calc" and report["max_turns"] == 4
    assert report["metrics"]["hm@4"]["n"] == 3 and 0 <= report["metrics"]["pass@1"]["value"] <= 1
