"""Episodes (--env): K multi-turn, tool-using rollouts per prompt, token in and token out.

An episode alternates model turns and environment turns. Each model turn continues exactly the
token ids of the episode so far (the engine is given ids, never text to re-tokenise); the
environment's reply is rendered by the model's chat template into ids once and appended as they
are. The row the trainer sees is therefore the sampled sequence itself: prompt, then model
tokens and environment tokens in the order they were appended, with `completion_mask` on the
model's tokens and `env_mask` on the environment's (rlvr.types.RolloutBatch).

An episode ends when the model answers without calling a tool, when the environment says it is
done, at `max_turns` model turns, or when its token budget (model and environment tokens after
the prompt) or the model's context runs out; the last three are recorded as truncation. A turn
cut by the per-turn limit (--max-new-tokens) ends the episode as truncated too: a model turn
without its end-of-turn token cannot be followed by an environment turn.

Each model turn is sampled with its own seed, derived from the group's seed, the episode's index
in the group and the turn, so an episode's tokens do not depend on which other episodes share
the batch, on the engine's batching or on the world size (as for single-turn groups).

The prompt of an episode is the environment's opening messages (tool instructions, example
conversations, the question and reset()'s text). When reset() returns different text to the K
episodes of one prompt, the group's prompt is their longest common prefix of ids and each
episode's own rest starts its completion as environment tokens, so the K rows still share one
prompt (the packed forward computes it once).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from rlvr.backends import Policy
from rlvr.config import ConfigError
from rlvr.envs import EnvFailure, EnvSpec, load_env
from rlvr.rewards import parse_reward
from rlvr.rollout.sample import left_pad
from rlvr.types import RolloutBatch, Truncation

# How an episode ended (episode records' "end"); the last four are truncation.
ANSWERED, ENV_DONE, ENV_FAILED = "answered", "env_done", "env_failed"
TURN_LIMIT, TURN_CUT, BUDGET, CONTEXT = "max_turns", "turn_cut", "budget", "context"
TRUNCATED_ENDS = (TURN_LIMIT, TURN_CUT, BUDGET, CONTEXT)


@dataclass(frozen=True)
class EpisodeSettings:
    """The limits of one episode (--max-turns, --max-new-tokens per model turn, --episode-tokens)."""

    max_turns: int = 4
    max_new_tokens: int = 64  # per model turn
    episode_tokens: int = 0  # model + environment tokens after the prompt; 0 = up to the model's context
    timeout_s: float = 10.0  # each environment call (--env-timeout)



def check_env(cfg: Any) -> None:
    """--env loads (a built-in, or a class of a contract rlvr.envs adapts) and suits the other
    settings; the `env` verifier of --reward needs an environment with a reward. ConfigError
    naming the option and the fix."""
    components = parse_reward(cfg.reward)  # already checked (rlvr.rewards.check_reward)
    names = [name for name, _ in components] if components else [cfg.reward]
    if not cfg.env:
        if "env" in names:
            raise ConfigError("reward", "the env verifier scores an episode with its environment's get_reward(); "
                                        "give --env NAME, or drop env from --reward")
        return
    spec = load_env(cfg.env, cfg.env_examples, cfg.env_system)
    if "env" in names and not spec.has_reward:
        raise ConfigError("reward", f"--env {cfg.env} defines no get_reward(), so the env verifier has nothing to "
                                    "score; drop env from --reward, or give the environment a get_reward()")
    if getattr(cfg, "overlong_buffer", 0):
        raise ConfigError("overlong_buffer", "penalises completions near --max-new-tokens, which bounds each model "
                                             "turn of an episode, not the episode (--episode-tokens); drop it with --env")


class EpisodeEngine:
    """An engine whose samples are episodes: `sample` runs K episodes per item through the inner
    engine's `continue_rows` (rlvr's decode loop or vLLM); everything else is the inner engine's.
    Training and evaluation call it exactly as they call an engine of single completions."""

    def __init__(self, engine, spec: EnvSpec, settings: EpisodeSettings) -> None:
        self.engine, self.spec, self.settings = engine, spec, settings

    def __getattr__(self, name: str):  # name, external, take_seconds, sync, resync, close, vllm, ...
        return getattr(self.engine, name)

    def sample(self, policy: Policy, items: list[dict], k: int | list[int], *, max_new_tokens: int,
               temperature: float, seeds: list[int], truncation: Truncation | None = None) -> RolloutBatch:
        settings = EpisodeSettings(self.settings.max_turns, max_new_tokens, self.settings.episode_tokens,
                                   self.settings.timeout_s)
        return sample_episodes(self.engine, policy, self.spec, items, k, settings=settings, temperature=temperature,
                               seeds=seeds, truncation=truncation)


def turn_seed(group_seed: int, episode: int, turn: int) -> int:
    """The seed of one model turn: a function of the group's seed, the episode's index in its group
    and the turn, nothing else."""
    return (group_seed * 1_000_003 + episode * 10_007 + turn * 101 + 1) % (2**63 - 1)


@dataclass
class Episode:
    """One episode while it runs: the ids after the prompt and what each of them is."""

    item: dict
    env: Any  # the EpisodeEnv, None once closed
    seed: int  # the group's
    index: int  # in the group
    prompt: list[int] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)  # after the prompt: model and environment tokens
    model: list[bool] = field(default_factory=list)  # per id: the model sampled it
    logprobs: list[float] = field(default_factory=list)  # per id (0 at environment tokens)
    entropy: list[float] = field(default_factory=list)
    turns: list[dict] = field(default_factory=list)  # {"role": "model"|"env", "text", "tokens"}
    model_turns: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    env_failures: int = 0
    failure_notes: list[str] = field(default_factory=list)  # what failed on the environment's side
    env_seconds: float = 0.0
    env_reward: float | None = None
    end: str | None = None
    final_text: str = ""

    def append(self, ids: list[int], model: bool, logprobs=None, entropy=None) -> None:
        self.ids += ids
        self.model += [model] * len(ids)
        self.logprobs += list(logprobs) if logprobs is not None else [0.0] * len(ids)
        self.entropy += list(entropy) if entropy is not None else [0.0] * len(ids)

    def record(self) -> dict:
        return {"turns": self.turns, "model_turns": self.model_turns, "tool_calls": self.tool_calls,
                "tool_errors": self.tool_errors, "env_failures": self.env_failures,
                "failure_notes": self.failure_notes[:3], "end": self.end,
                "truncated": self.end in TRUNCATED_ENDS, "env_reward": self.env_reward,
                "model_tokens": sum(self.model), "env_tokens": len(self.ids) - sum(self.model),
                "env_seconds": self.env_seconds}


def _timed(episode: Episode, call, *args):
    started = time.perf_counter()
    try:
        return call(*args)
    finally:
        episode.env_seconds += time.perf_counter() - started


def sample_episodes(engine, policy: Policy, spec: EnvSpec, items: list[dict], k: int | list[int], *,
                    settings: EpisodeSettings, temperature: float, seeds: list[int],
                    truncation: Truncation | None = None) -> RolloutBatch:
    """K episodes for each item (k[g] for item g when k is a list), sampled by `engine`
    (rlvr.rollout.engines: its `continue_rows`) -> one RolloutBatch row per episode, groups
    adjacent. The rows' `texts` are the final model turns (what --reward's verifiers score), and
    `episodes` holds each episode's record (turns, tool calls, how it ended, the environment's
    reward for the `env` verifier)."""
    sizes = [k] * len(items) if isinstance(k, int) else list(k)
    fmt = policy.prompts.tool_format
    tools = [tool.as_openai() for tool in spec.tools()] if fmt == "hermes" else None
    episodes: list[Episode] = []
    for item, size, seed in zip(items, sizes, seeds):
        group = [Episode(item=item, env=spec.new(fmt, settings.timeout_s), seed=seed, index=i) for i in range(size)]
        for episode in group:
            try:
                first_text = _timed(episode, episode.env.reset, item)
            except EnvFailure as err:
                episode.env_failures += 1
                episode.failure_notes.append(str(err))
                episode.end = ENV_FAILED
                episode.turns.append({"role": "env", "text": f"reset failed: {err}", "tokens": 0})
                first_text = None
            question = policy.prompt_text(item)
            episode.prompt = policy.prompts.encode_messages(spec.prompt_messages(question, first_text, fmt), tools)
        _share_prompt(group)
        episodes += group

    limit = policy.max_seq_len
    for turn in range(settings.max_turns):
        active = [e for e in episodes if e.end is None]
        if not active:
            break
        rooms = []
        for e in active:
            used = len(e.ids)
            budget = (settings.episode_tokens - used) if settings.episode_tokens else limit
            rooms.append(min(settings.max_new_tokens, budget, limit - len(e.prompt) - used))
        for e, room in zip(active, rooms):
            if room < 1:
                e.end = BUDGET if settings.episode_tokens and len(e.ids) >= settings.episode_tokens else CONTEXT
        active_rooms = [(e, room) for e, room in zip(active, rooms) if room >= 1]
        if not active_rooms:
            break
        active = [e for e, _ in active_rooms]
        contexts = [e.prompt + e.ids for e in active]
        call_tokens = max(room for _, room in active_rooms)
        call_tokens = min(call_tokens, limit - max(len(c) for c in contexts))
        if call_tokens < 1:  # the longest context is full: take those out and go on with the rest next turn
            for e, context in zip(active, contexts):
                if limit - len(context) < 1:
                    e.end = CONTEXT
            continue
        seeds = [turn_seed(e.seed, e.index, turn) for e in active]
        # The engine lays prompts and the episodes' own ids out padded to the longest of each; where
        # that would pass the context, each episode's whole context is sent alone instead.
        padded = max(len(e.prompt) for e in active) + max(len(e.ids) for e in active)
        if limit - padded >= 1:
            prefixes, repeats = _group_prompts(active)
            out = engine.continue_rows(policy, prefixes, max_new_tokens=min(call_tokens, limit - padded),
                                       temperature=temperature, seeds=seeds, truncation=truncation, sizes=repeats,
                                       suffixes=[e.ids for e in active])
        else:
            out = engine.continue_rows(policy, contexts, max_new_tokens=call_tokens, temperature=temperature,
                                       seeds=seeds, truncation=truncation)
        stops = set(policy.stop_ids)
        for row, (e, room) in enumerate(active_rooms):
            n = int(out.completion_mask[row].sum())
            ids = out.completion_ids[row, :n].tolist()[:room]
            e.append(ids, True, out.logprobs[row, : len(ids)].tolist(), out.entropy[row, : len(ids)].tolist())
            e.model_turns += 1
            text = policy.decode(ids)
            e.final_text = text
            e.turns.append({"role": "model", "text": text, "tokens": len(ids)})
            if not ids or ids[-1] not in stops:
                e.end = TURN_CUT if len(ids) == settings.max_new_tokens else (
                    BUDGET if settings.episode_tokens and len(e.ids) >= settings.episode_tokens else CONTEXT)
                continue
            try:
                reply = _timed(e, e.env.step, text)
            except EnvFailure as err:  # the environment itself broke: the episode ends, counted
                e.env_failures += 1
                e.failure_notes.append(str(err))
                e.end = ENV_FAILED
                e.turns.append({"role": "env", "text": f"environment failed: {err}", "tokens": 0})
                continue
            if reply is None:
                e.end = ANSWERED
                continue
            e.tool_calls += reply.tool_calls
            e.tool_errors += reply.tool_errors
            env_ids = policy.prompts.encode_env_turn(reply.messages)
            e.turns.append({"role": "env", "text": "\n".join(str(m["content"]) for m in reply.messages),
                            "tokens": len(env_ids)})
            if reply.done:
                e.end = ENV_DONE
                continue
            if e.model_turns >= settings.max_turns:
                e.end = TURN_LIMIT
                continue
            room_after = (settings.episode_tokens - len(e.ids)) if settings.episode_tokens else limit
            if len(env_ids) >= min(room_after, limit - len(e.prompt) - len(e.ids)):
                e.end = BUDGET if settings.episode_tokens else CONTEXT  # no room for the reply and a model token
                continue
            e.append(env_ids, False)
    for e in episodes:
        if e.end is None:
            e.end = TURN_LIMIT
        if e.env is not None:
            if e.end != ENV_FAILED or e.model_turns:
                try:
                    e.env_reward = _timed(e, e.env.reward)
                except EnvFailure as err:
                    e.env_failures += 1
                    e.failure_notes.append(str(err))
                    e.turns.append({"role": "env", "text": f"reward failed: {err}", "tokens": 0})
            e.env.close()
            e.env_failures += getattr(e.env, "failures", 0)  # the failures it contained (tool timeouts, close)
            e.failure_notes += [str(note) for note in getattr(e.env, "failure_notes", [])]
            e.env = None
    return _batch(policy, episodes, items, sizes, external=getattr(engine, "external", False))


def _group_prompts(active: list[Episode]) -> tuple[list[list[int]], list[int]]:
    """The running episodes' shared prompts, each once, and how many adjacent episodes continue it
    (the episodes of one group share one prompt, `_share_prompt`): the engine prefills it once and
    then each episode's own ids. The rows keep their order and their own seeds."""
    prompts: list[list[int]] = []
    sizes: list[int] = []
    for i, e in enumerate(active):
        if i and e.item is active[i - 1].item and e.prompt == prompts[-1]:
            sizes[-1] += 1
        else:
            prompts.append(e.prompt)
            sizes.append(1)
    return prompts, sizes


def _share_prompt(group: list[Episode]) -> None:
    """Makes the group's K episodes share one prompt: their longest common prefix of ids (at least
    one id, as the packed forward needs a prompt token to predict the first completion token);
    each episode's rest becomes its first environment tokens."""
    first = group[0].prompt
    if all(e.prompt == first for e in group):
        return
    common = 0
    while all(common < len(e.prompt) and e.prompt[common] == first[common] for e in group):
        common += 1
    common = max(1, common)
    for e in group:
        rest = e.prompt[common:]
        e.prompt = e.prompt[:common]
        e.append(rest, False)


def _batch(policy: Policy, episodes: list[Episode], items: list[dict], sizes: list[int], external: bool
           ) -> RolloutBatch:
    """The episodes as rows; an external engine's log-probs are kept as `engine_logprobs` too (the
    trainer's own replace `logprobs` and `entropy`: rlvr.rollout.engines.trainer_view)."""
    device = policy.device
    group_of_row = torch.arange(len(items)).repeat_interleave(torch.tensor(sizes))
    prompt_ids, prompt_mask = left_pad([e.prompt for e in episodes], policy.pad_id)
    width = max(1, max(len(e.ids) for e in episodes))
    rows = len(episodes)
    completion_ids = torch.full((rows, width), policy.pad_id, dtype=torch.long)
    completion_mask = torch.zeros((rows, width), dtype=torch.bool)
    env_mask = torch.zeros((rows, width), dtype=torch.bool)
    logprobs = torch.zeros((rows, width))
    entropy = torch.zeros((rows, width))
    for row, e in enumerate(episodes):
        n = len(e.ids)
        if n:
            completion_ids[row, :n] = torch.tensor(e.ids, dtype=torch.long)
            model = torch.tensor(e.model, dtype=torch.bool)
            completion_mask[row, :n] = model
            env_mask[row, :n] = ~model
            logprobs[row, :n] = torch.tensor(e.logprobs)
            entropy[row, :n] = torch.tensor(e.entropy)
    truncated = torch.tensor([e.end in TRUNCATED_ENDS for e in episodes], dtype=torch.bool)
    return RolloutBatch(
        prompt_ids=prompt_ids.to(device), prompt_mask=prompt_mask.to(device),
        completion_ids=completion_ids.to(device), completion_mask=completion_mask.to(device),
        logprobs=logprobs.to(device), entropy=entropy.to(device), group_ids=group_of_row.to(device),
        texts=[e.final_text for e in episodes], items=list(items), k=max(sizes),
        engine_logprobs=logprobs.clone().to(device) if external else None,
        env_mask=env_mask.to(device), truncated=truncated.to(device), episodes=[e.record() for e in episodes])


def episode_metrics(records: list[dict]) -> dict:
    """The step's episode/... and tokens/... metrics from every rank's episode records
    (docs/metrics.md): per episode means of turns, tool calls and errors, the truncated share,
    and the environment's against the model's tokens."""
    n = max(1, len(records))
    model_tokens = sum(r["model_tokens"] for r in records)
    env_tokens = sum(r["env_tokens"] for r in records)
    return {
        "episode/turns": sum(r["model_turns"] for r in records) / n,
        "episode/tool_calls": sum(r["tool_calls"] for r in records) / n,
        "episode/tool_errors": sum(r["tool_errors"] for r in records) / n,
        "episode/call_rate": sum(r["tool_calls"] > 0 for r in records) / n,
        "episode/truncated_frac": sum(r["truncated"] for r in records) / n,
        "episode/env_failures": sum(r["env_failures"] for r in records),
        "tokens/model": model_tokens,
        "tokens/env": env_tokens,
        "tokens/env_frac": env_tokens / max(1, env_tokens + model_tokens),
    }
