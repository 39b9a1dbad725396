"""Sampling strategies and reward structures for large K (docs/sampling.md).

A step's data comes in two stages, each a plain function of the config:
  collect  prompts from the stream -> group sizes -> samples -> rewards, in rounds: one round
           unless --group-filter has to replace groups that carry no signal;
  select   which generated samples the loss sees: --group-filter drops the groups without
           signal, --downsample keeps N of each group's K.
Advantages are then computed per group on what was selected (`group_advantages`), one rule
for groups of equal size (one batched call, the default path) and of unequal size (--adaptive-k).

With no strategy on, a step is exactly the plain one: B prompts at stream positions
(s−1)·B … s·B−1, K samples each, every sample trained on.

Sampling noise: each group has its own generator, seeded from the step's stream seed and the
prompt's position in the stream (`group_seed`), so what a group samples depends on neither the
other groups of its batch nor the process that samples it.

Resumption: the stream position, the success estimator of --adaptive-k and the count of
samples generated are `Sampler` state, saved in checkpoints, and the noise is a function of
(seed, step, position). So a resumed run samples what an uninterrupted one does.

Data parallelism (docs/distributed.md): with W ranks, every rank walks the same prompt stream
and samples only its shard of each round (`World.shard`, whole groups). What moves the stream
is agreed from gathered values: --group-filter's next round size comes from the count of groups
with signal over ALL ranks, and --adaptive-k's estimator is updated with every rank's rewards in
stream order, so every rank holds the same position and estimator as one process would.
"""
from __future__ import annotations

import hashlib
import heapq
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import torch

from rlvr.algo.advantages import ADVANTAGES, pass_at_k_advantage
from rlvr.config import TrainConfig
from rlvr.distributed import SINGLE, World
from rlvr.rewards.scoring import RewardFailure, score_batch
from rlvr.rollout.engines import RlvrEngine, trainer_view
from rlvr.rollout.episodes import episode_metrics
from rlvr.rollout.sample import batch_truncated, concat_batches
from rlvr.types import RolloutBatch, Truncation

# The success estimate must follow a policy that changes as it trains: old counts are
# discounted by this factor per step (a half-life of about 6.6 steps).
ESTIMATE_DECAY = 0.9


# ---------------------------------------------------------------- sampling noise

def group_seed(stream_seed: int, position: int) -> int:
    """The seed of one group's sampling noise: a hash of the stream's seed (run seed, step, stream;
    or an evaluation's seed) and the prompt's position in the stream (or the problem's index)."""
    digest = hashlib.blake2b(f"{stream_seed}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def group_seeds(stream_seed: int, positions) -> list[int]:
    """One seed per group, for an engine's `sample` (rlvr.rollout.engines: rlvr's own seeds a
    torch.Generator with it, vLLM a request)."""
    return [group_seed(stream_seed, p) for p in positions]


# ---------------------------------------------------------------- reward structures

def overlong_penalty(lengths: torch.Tensor, max_new_tokens: int, buffer: int, penalty: float) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), scaled by `penalty`: 0 for
    completions of at most max_new_tokens − buffer tokens, then rising linearly to `penalty` at
    max_new_tokens (truncated completions get all of it). Lengths count generated tokens, EOS
    included. (N,) -> (N,) float ≥ 0, subtracted from the reward."""
    start = max_new_tokens - buffer
    return penalty * ((lengths.float() - start) / buffer).clamp(0.0, 1.0)


def advantage_function(cfg: TrainConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """(G, k) rewards -> (G, k) advantages: Pass@k Training's with --reward-shaping passk,
    else the --advantage estimator."""
    if cfg.reward_shaping == "passk":
        return partial(pass_at_k_advantage, k=cfg.passk_k)
    return ADVANTAGES.get(cfg.advantage)


# ---------------------------------------------------------------- groups of any size

def groups_with_signal(rewards: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Flat rewards (N,) in consecutive groups of `sizes` -> (G,) bool: True where a group's
    rewards are not all equal (TERMS.md: only those carry a policy-gradient signal)."""
    if len(set(sizes)) == 1:
        grouped = rewards.view(len(sizes), sizes[0])  # (G, K)
        return ~(grouped == grouped[:, :1]).all(dim=1)
    return torch.tensor([bool((group != group[0]).any()) for group in rewards.split(sizes)], dtype=torch.bool)


def group_advantages(estimator: Callable[[torch.Tensor], torch.Tensor], rewards: torch.Tensor,
                     sizes: list[int]) -> torch.Tensor:
    """Advantages of flat rewards (N,) in consecutive groups of `sizes` -> (N,).

    Equal sizes (the default path): one call on the (G, K) view, exactly the plain trainer's
    arithmetic. Unequal sizes (--adaptive-k): one call per group, so every group's mean, std or
    leave-one-out baseline uses its own size; padding would have to be masked inside every
    estimator, and B calls on a few numbers each cost nothing next to a forward pass."""
    if not sizes:
        return rewards.new_zeros(0)
    if len(set(sizes)) == 1:
        return estimator(rewards.view(len(sizes), sizes[0])).reshape(-1)
    return torch.cat([estimator(group.view(1, -1)).reshape(-1) for group in rewards.split(sizes)])


def answer_diversity(answers: list[str | None], sizes: list[int]) -> float:
    """Mean over groups of distinct final answers / group size (TERMS.md, answer diversity)."""
    total, start = 0.0, 0
    for size in sizes:
        total += len(set(answers[start : start + size])) / size
        start += size
    return total / len(sizes)


# ---------------------------------------------------------------- --downsample (PODS)

def max_variance_subset(rewards: torch.Tensor, n: int) -> torch.Tensor:
    """PODS max-variance down-sampling (Xu et al. 2025, "Not All Rollouts are Useful"): the n of a
    group's K rewards with the largest variance. Some maximiser consists of the i highest and
    the n − i lowest rewards, so sort once and try i = 0 … n (O(K log K)). For 0/1 rewards this
    keeps as even a split of correct and incorrect as the group has. Ties between options go to
    the smallest i, ties between equal rewards to the lower index (stable sort).
    (K,) -> (n,) long, indices into the group in ascending order."""
    values, order = torch.sort(rewards.double(), stable=True)  # ascending
    k = values.numel()
    prefix = torch.cat([values.new_zeros(1), values.cumsum(0)])  # (K+1,)
    prefix_sq = torch.cat([values.new_zeros(1), (values * values).cumsum(0)])
    best_i, best_var = 0, -1.0
    for i in range(n + 1):  # the n − i lowest and the i highest never overlap since n ≤ K
        total = prefix[n - i] + prefix[k] - prefix[k - i]
        total_sq = prefix_sq[n - i] + prefix_sq[k] - prefix_sq[k - i]
        var = float(total_sq / n - (total / n) ** 2)
        if var > best_var:
            best_i, best_var = i, var
    chosen = torch.cat([order[: n - best_i], order[k - best_i :]])
    return chosen.sort().values


# ---------------------------------------------------------------- --adaptive-k

def signal_probability(p: float, k: int) -> float:
    """Chance that k samples of success probability p are neither all right nor all wrong."""
    return 1.0 - p**k - (1.0 - p) ** k


def allocate_group_sizes(success: list[float], budget: int, min_size: int = 2) -> list[int]:
    """Group sizes, each ≥ min_size and summing to exactly `budget`, that maximise the expected
    number of groups with signal, Σ_g 1 − p_g^k_g − (1 − p_g)^k_g.

    One more sample adds p^k(1−p) + (1−p)^k p to a group, which falls as k grows (the objective
    is concave in each k), so giving samples one at a time to the group that gains most is
    optimal. Ties go to the smaller group, then the lower index: equal estimates give every
    group budget / B, the plain K."""
    if budget < min_size * len(success):
        raise ValueError(f"a budget of {budget} samples cannot give {len(success)} groups {min_size} each")
    sizes = [min_size] * len(success)

    def gain(g: int) -> float:
        p, k = success[g], sizes[g]
        return p**k * (1.0 - p) + (1.0 - p) ** k * p

    heap = [(-gain(g), sizes[g], g) for g in range(len(success))]
    heapq.heapify(heap)
    for _ in range(budget - sum(sizes)):
        _, _, g = heapq.heappop(heap)
        sizes[g] += 1
        heapq.heappush(heap, (-gain(g), sizes[g], g))
    return sizes


class SuccessEstimator:
    """The policy's success probability per task difficulty level (items' `level`), online:
    discounted counts with a uniform prior, p = (successes + 1) / (trials + 2). Every level
    starts at 1/2, so before any data all groups get the plain K. With partial credit the
    "successes" are summed rewards and p is the mean reward."""

    def __init__(self, decay: float = ESTIMATE_DECAY) -> None:
        self.decay = decay
        self.successes: dict = {}
        self.trials: dict = {}

    def estimate(self, level) -> float:
        return (self.successes.get(level, 0.0) + 1.0) / (self.trials.get(level, 0.0) + 2.0)

    def discount(self) -> None:
        """Once per step: older evidence counts less."""
        for level in self.trials:
            self.successes[level] *= self.decay
            self.trials[level] *= self.decay

    def update(self, level, rewards: list[float]) -> None:
        self.successes[level] = self.successes.get(level, 0.0) + sum(rewards)
        self.trials[level] = self.trials.get(level, 0.0) + len(rewards)

    def state_dict(self) -> dict:
        return {"successes": dict(self.successes), "trials": dict(self.trials)}

    def load_state_dict(self, state: dict) -> None:
        self.successes, self.trials = dict(state["successes"]), dict(state["trials"])


# ---------------------------------------------------------------- one step's samples

@dataclass
class Generated:
    """Every sample a step generated on this rank, all rounds, groups adjacent in generation order."""

    batch: RolloutBatch  # N rows
    task_rewards: torch.Tensor  # (N,) float32, the verifier's rewards in [0, 1]
    rewards: torch.Tensor  # (N,) float32, what advantages see: task reward − overlong penalty
    group_sizes: list[int]  # G sizes, summing to N
    answers: list[str | None]  # N extracted final answers
    failures: list[RewardFailure] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)  # sampling/... of the whole step (every rank's), but for two of this rank's
    sampling_seconds: float = 0.0  # wall time spent in the sampler, all rounds
    round_groups: list[int] = field(default_factory=list)  # groups of each round (this rank's)
    components: torch.Tensor | None = None  # (N, C) each weighted verifier's reward (--reward a:w,b:w), else None
    episode_records: list[dict] | None = None  # --env: every rank's episode records, less the turns' text
    policy_version: int | None = None  # --max-staleness: the steps trained before these were sampled (rlvr.train.pipeline)

    def reward_mean(self) -> float:
        return reward_mean(self.task_rewards, self.group_sizes)

    def zero_signal_frac(self) -> float:
        return float((~groups_with_signal(self.rewards, self.group_sizes)).float().mean())

    def samples(self, stop_ids) -> "StepSamples":
        """What the step's metrics need of these samples, on the CPU."""
        batch = self.batch
        truncated = batch_truncated(batch, stop_ids)  # (N,) cut at the limit (an episode: its budget or turns)
        return StepSamples(task_rewards=self.task_rewards.cpu(), rewards=self.rewards.cpu(),
                           group_sizes=list(self.group_sizes), answers=list(self.answers),
                           failures=list(self.failures), failure_ranks=[0] * len(self.failures),
                           entropy=batch.entropy.float().cpu(), completion_mask=batch.completion_mask.cpu(),
                           truncated=truncated.cpu(),
                           components=None if self.components is None else self.components.cpu())


def reward_mean(task_rewards: torch.Tensor, sizes: list[int]) -> float:
    """Mean verifier reward; with unequal group sizes the mean of group means, so prompts given
    more samples by --adaptive-k do not weigh more."""
    if len(set(sizes)) == 1:
        return float(task_rewards.mean())
    return float(torch.stack([g.mean() for g in task_rewards.split(sizes)]).mean())


@dataclass
class StepSamples:
    """What a step's metrics need of each sample, for the samples of EVERY rank in the order one
    process holds them (`gather_samples`): so each metric is computed over the whole step, with
    the same arithmetic, whatever the world size."""

    task_rewards: torch.Tensor  # (N,) float32
    rewards: torch.Tensor  # (N,) float32, after the overlong penalty
    group_sizes: list[int]  # G sizes, summing to N
    answers: list[str | None]  # N
    failures: list[RewardFailure]
    failure_ranks: list[int]  # the rank that made each failed verifier call
    entropy: torch.Tensor  # (N, T) float32 exact token entropy, 0 off the mask
    completion_mask: torch.Tensor  # (N, T) bool, generated tokens
    truncated: torch.Tensor  # (N,) bool, no stop token: cut at --max-new-tokens
    components: torch.Tensor | None = None  # (N, C) float32 each weighted verifier's reward, else None

    @property
    def rows(self) -> int:
        return int(self.task_rewards.numel())

    def reward_mean(self) -> float:
        return reward_mean(self.task_rewards, self.group_sizes)

    def zero_signal_frac(self) -> float:
        return float((~groups_with_signal(self.rewards, self.group_sizes)).float().mean())

    def split(self, round_groups: list[int]) -> list["StepSamples"]:
        """One part per sampling round (`round_groups` groups each); failures stay with the first."""
        parts, group, row = [], 0, 0
        for count in round_groups:
            sizes = self.group_sizes[group : group + count]
            rows = slice(row, row + sum(sizes))
            parts.append(StepSamples(self.task_rewards[rows], self.rewards[rows], sizes, self.answers[rows],
                                     [], [], self.entropy[rows], self.completion_mask[rows], self.truncated[rows],
                                     None if self.components is None else self.components[rows]))
            group, row = group + count, row + sum(sizes)
        if parts:
            parts[0].failures, parts[0].failure_ranks = self.failures, self.failure_ranks
        return parts

    @staticmethod
    def concat(parts: list["StepSamples"]) -> "StepSamples":
        width = max(p.entropy.shape[1] for p in parts)
        pad = lambda t, value: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)  # noqa: E731
        return StepSamples(
            task_rewards=torch.cat([p.task_rewards for p in parts]), rewards=torch.cat([p.rewards for p in parts]),
            group_sizes=[s for p in parts for s in p.group_sizes], answers=[a for p in parts for a in p.answers],
            failures=[f for p in parts for f in p.failures], failure_ranks=[r for p in parts for r in p.failure_ranks],
            entropy=torch.cat([pad(p.entropy, 0.0) for p in parts]),
            completion_mask=torch.cat([pad(p.completion_mask, False) for p in parts]),
            truncated=torch.cat([p.truncated for p in parts]),
            components=None if parts[0].components is None else torch.cat([p.components for p in parts]))


def gather_samples(world: World, local: StepSamples, round_groups: list[int]) -> StepSamples:
    """Every rank's StepSamples, in one process's order: round by round, and within a round rank
    by rank (each rank holds a contiguous shard of the round's prompts)."""
    if not world.parallel:
        return local
    for failure_index in range(len(local.failures)):
        local.failure_ranks[failure_index] = world.rank
    every = world.gather(local.split(round_groups), "exchanging the step's samples")  # [rank][round]
    return StepSamples.concat([every[rank][r] for r in range(len(round_groups)) for rank in range(world.size)])


@dataclass
class Round:
    """One sampling round of a step: this rank's share, and what every rank agrees on."""

    batch: RolloutBatch | None  # n rows (None: this rank's shard of the round was empty)
    task_rewards: torch.Tensor  # (n,) float32, the verifier's rewards
    sizes: list[int]  # group sizes, summing to n
    answers: list[str | None]
    failures: list[RewardFailure]
    sampling_seconds: float  # drawing the items and sampling
    seconds: float  # the whole round, scoring included
    expected_signal: float  # --adaptive-k: Σ 1 − p^k − (1 − p)^k over the round's groups (all ranks'), else 0
    all_sizes: list[int]  # the group sizes of the whole round, every rank's
    signal_groups: int  # --group-filter: groups with signal in the whole round, every rank's (else 0)
    components: torch.Tensor | None = None  # (n, C) each weighted verifier's reward, else None
    logprob_seconds: float = 0.0  # an external engine's rollouts: the trainer's forward over them


@dataclass
class Selection:
    """The samples the loss sees."""

    rows: torch.Tensor | None  # (N',) long rows of Generated.batch, each group's adjacent; None = all
    rewards: torch.Tensor  # (N',) float32, their rewards
    group_sizes: list[int]  # G' sizes, summing to N'
    metrics: dict


class Sampler:
    """Where a step's prompts come from and how many samples each gets. Its state -- the stream
    position, the success estimator and the samples generated so far -- is checkpointed, and is
    the same on every rank (it describes the whole step, not a rank's shard)."""

    def __init__(self, cfg: TrainConfig, world: World = SINGLE) -> None:
        self.cfg = cfg
        self.world = world
        self.position = 0  # index of the next item of the task's training stream
        self.generated_total = 0  # samples generated since step 1, every rank's (the cost axis of a comparison)
        self.estimator = SuccessEstimator()

    def state_dict(self) -> dict:
        return {"position": self.position, "generated_total": self.generated_total,
                "estimator": self.estimator.state_dict()}

    def load_state_dict(self, state: dict | None, step: int) -> None:
        """`state` None: a checkpoint from before strategies existed, where step s consumed B
        prompts of B·K samples each."""
        if state is None:
            self.position = step * self.cfg.prompts_per_step
            self.generated_total = self.position * self.cfg.k
            self.estimator = SuccessEstimator()
            return
        self.position, self.generated_total = state["position"], state["generated_total"]
        self.estimator.load_state_dict(state["estimator"])

    def group_sizes(self, items: list[dict]) -> list[int]:
        """K for every prompt, or --adaptive-k's sizes for these prompts' levels (sum B·K)."""
        cfg = self.cfg
        if not cfg.adaptive_k:
            return [cfg.k] * len(items)
        success = [self.estimator.estimate(item.get("level")) for item in items]
        min_size = max(2, cfg.passk_k) if cfg.reward_shaping == "passk" else 2
        return allocate_group_sizes(success, len(items) * cfg.k, min_size)

    def collect(self, policy, task, pool, seed: int, engine=None, trainer_view: bool = True) -> Generated:
        """Samples the step's groups (this rank's shard of each round) with `engine` (default
        rlvr's own, rlvr.rollout.engines); `seed` is the step's stream seed, from which each
        group's noise is derived. --group-filter: after each round, draw as many new prompts as
        groups with signal are still missing, while the extra budget allows (each new prompt
        costs K samples), so no group with signal is ever wasted. An external engine's rollouts
        get the trainer's log-probs and entropies here (`trainer_view`), or keep the engine's
        log-probs until the update's first forward supplies them (rlvr.train.step)."""
        cfg = self.cfg
        engine = engine or RlvrEngine()
        engine.sync(policy)  # the trained weights into an external engine: here, at the same point on every rank
        wanted = cfg.prompts_per_step
        budget = cfg.extra_rollout_budget() if cfg.group_filter else 0
        if cfg.adaptive_k:
            self.estimator.discount()
        rounds: list[Round] = []
        prompts, with_signal = wanted, 0
        while prompts > 0:
            rounds.append(self.sample_round(policy, task, pool, seed, prompts, engine, trainer_view))
            if not cfg.group_filter:
                break
            with_signal += rounds[-1].signal_groups
            prompts = min(wanted - with_signal, budget // cfg.k)
            budget -= prompts * cfg.k

        sampled = [r for r in rounds if r.batch is not None]  # the first round always holds ≥ 1 group per rank
        batch = concat_batches([r.batch for r in sampled], policy.pad_id)
        task_rewards = torch.cat([r.task_rewards for r in sampled])  # (N,)
        sizes = [size for r in sampled for size in r.sizes]
        penalty = self.penalty(batch)
        all_sizes = [size for r in rounds for size in r.all_sizes]
        self.generated_total += sum(all_sizes)
        metrics = {
            "sampling/prompts": len(all_sizes),
            "sampling/rounds": len(rounds),
            "sampling/generated": sum(all_sizes),
            "sampling/generated_total": self.generated_total,
            "sampling/extra_generated": sum(all_sizes) - sum(rounds[0].all_sizes),
            "sampling/extra_seconds": sum(r.seconds for r in rounds[1:]),  # this rank's
            "sampling/k_min": min(all_sizes),
            "sampling/k_max": max(all_sizes),
            "reward/overlong_penalty": 0.0 if penalty is None else float(penalty.mean()),  # this rank's
        }
        if cfg.adaptive_k:
            metrics["sampling/expected_signal_groups"] = sum(r.expected_signal for r in rounds)
        if batch.engine_logprobs is not None and trainer_view:  # (mismatch/*: rlvr.train.step, over every rank)
            metrics["perf/logprob_seconds"] = sum(r.logprob_seconds for r in rounds)
        records = None
        if batch.episodes is not None:
            records, episode = self.episode_metrics(batch.episodes)
            metrics.update(episode)
        metrics.update(engine.take_seconds())
        return Generated(batch=batch, task_rewards=task_rewards,
                         rewards=task_rewards if penalty is None else task_rewards - penalty,
                         group_sizes=sizes, answers=[a for r in sampled for a in r.answers],
                         failures=[f for r in sampled for f in r.failures], metrics=metrics,
                         sampling_seconds=sum(r.sampling_seconds for r in rounds),
                         round_groups=[len(r.sizes) for r in rounds],
                         components=None if sampled[0].components is None else
                         torch.cat([r.components for r in sampled]), episode_records=records)

    def episode_metrics(self, episodes: list[dict]) -> tuple[list[dict], dict]:
        """Every rank's episode records, less the turns' text (the whole step's), and the step's
        episode/..., tokens/... and perf/env_seconds from them; the environment's seconds are the
        slowest rank's."""
        counts = [{key: value for key, value in e.items() if key != "turns"} for e in episodes]
        every = self.world.gather(counts, "exchanging the step's episode counts") if self.world.parallel else [counts]
        records = [record for part in every for record in part]
        metrics = episode_metrics(records)
        metrics["perf/env_seconds"] = max(sum(r["env_seconds"] for r in part) for part in every)
        return records, metrics

    def sample_round(self, policy, task, pool, seed: int, prompts: int, engine, view: bool = True) -> Round:
        """The next `prompts` items of the stream: this rank's shard sampled and scored; every
        rank's rewards gathered where the stream depends on them (--adaptive-k's estimator,
        --group-filter's count of groups with signal)."""
        cfg, world = self.cfg, self.world
        started = time.perf_counter()
        positions = range(self.position, self.position + prompts)
        self.position += prompts
        every_item = [task.item("train", p) for p in positions]
        every_size = self.group_sizes(every_item)  # allocated over the whole round, as one process does
        expected_signal = 0.0
        if cfg.adaptive_k:
            expected_signal = sum(signal_probability(self.estimator.estimate(item.get("level")), k)
                                  for item, k in zip(every_item, every_size))
        mine = world.shard(prompts)
        items, sizes = every_item[mine.start : mine.stop], every_size[mine.start : mine.stop]
        batch, rewards, answers, failures, components = None, torch.zeros(0), [], [], None
        if items:
            batch = engine.sample(policy, items, sizes if cfg.adaptive_k else cfg.k,
                                  max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                  seeds=group_seeds(seed, positions[mine.start : mine.stop]),
                                  truncation=Truncation.of(cfg))
        sampling_seconds = time.perf_counter() - started
        logprob_seconds = 0.0
        if items and engine.external and view:
            batch = trainer_view(policy, batch, cfg.temperature, Truncation.of(cfg))
            logprob_seconds = time.perf_counter() - started - sampling_seconds
        if items:
            rewards, answers, failures, components = score_groups(pool, task, batch, items, sizes,
                                                                  cfg.reward_error_value)
        signal_groups = 0
        if cfg.adaptive_k or cfg.group_filter:
            # (task rewards, shaped rewards) of every group of the round, in stream order on every rank
            shaped = self.shape(rewards, batch) if batch is not None else rewards
            mine_groups = list(zip(rewards.cpu().split(sizes), shaped.cpu().split(sizes)))
            every_group = [g for part in world.gather(mine_groups, "agreeing on the prompt stream") for g in part]
            if cfg.adaptive_k:
                for item, (group, _) in zip(every_item, every_group):
                    self.estimator.update(item.get("level"), group.tolist())
            if cfg.group_filter:
                signal_groups = int(groups_with_signal(torch.cat([g for _, g in every_group]), every_size).sum())
        return Round(batch, rewards, sizes, answers, failures, sampling_seconds, time.perf_counter() - started,
                     expected_signal, every_size, signal_groups, components, logprob_seconds)

    def penalty(self, batch: RolloutBatch) -> torch.Tensor | None:
        """The overlong penalty of each row (N,), or None when --overlong-buffer is 0."""
        if not self.cfg.overlong_buffer:
            return None
        lengths = batch.completion_mask.sum(dim=1)  # (N,)
        return overlong_penalty(lengths, self.cfg.max_new_tokens, self.cfg.overlong_buffer, self.cfg.overlong_penalty)

    def shape(self, task_rewards: torch.Tensor, batch: RolloutBatch) -> torch.Tensor:
        penalty = self.penalty(batch)
        return task_rewards if penalty is None else task_rewards - penalty


def score_groups(pool, task, batch: RolloutBatch, items: list[dict], sizes: list[int],
                 error_value: float = 0.0) -> tuple[torch.Tensor, list, list[RewardFailure], torch.Tensor | None]:
    """Scores a round's completions in the reward pool -> rewards (N,) on the batch's device,
    answers, failures (failed calls score `error_value`), and each weighted verifier's reward
    (N, C) (None for one verifier)."""
    if len(set(sizes)) == 1 and batch.episodes is None:
        scored = score_batch(pool, task, batch.texts, items, sizes[0], error_value)  # rewards (B, K)
    else:  # groups of different sizes, or episodes (each with its environment's reward): one item per row
        row_items = [item for item, size in zip(items, sizes) for _ in range(size)]
        if batch.episodes is not None:
            row_items = [{**item, "env_reward": episode["env_reward"]} for item, episode in zip(row_items, batch.episodes)]
        scored = score_batch(pool, task, batch.texts, row_items, 1, error_value)  # rewards (N, 1)
    return scored.rewards.reshape(-1).to(batch.group_ids.device), scored.answers, scored.failures, scored.components


def select_for_training(generated: Generated, cfg: TrainConfig) -> Selection:
    """--group-filter drops groups without signal; --downsample keeps each group's max-variance
    N. Neither on: every row (rows None, the default path copies nothing)."""
    sizes, rewards = generated.group_sizes, generated.rewards
    dropped = 0
    if not cfg.group_filter and not cfg.downsample:
        rows, kept_sizes, kept_rewards = None, sizes, rewards
    else:
        keep = groups_with_signal(rewards, sizes).tolist() if cfg.group_filter else [True] * len(sizes)
        dropped = keep.count(False)
        chosen, kept_sizes, start = [], [], 0
        for size, kept in zip(sizes, keep):
            if kept:
                index = torch.arange(start, start + size)
                if cfg.downsample:
                    index = start + max_variance_subset(rewards[start : start + size].cpu(), cfg.downsample)
                chosen.append(index)
                kept_sizes.append(len(index))
            start += size
        rows = torch.cat(chosen) if chosen else torch.zeros(0, dtype=torch.long)
        kept_rewards = rewards[rows.to(rewards.device)]
    trained = sum(kept_sizes)
    missing = max(0, cfg.prompts_per_step - len(kept_sizes)) if cfg.group_filter else 0
    metrics = {
        "sampling/trained": trained,
        "sampling/groups_trained": len(kept_sizes),
        "sampling/groups_dropped": dropped,
        "sampling/groups_missing": missing,
        "sampling/effective_k": trained / len(kept_sizes) if kept_sizes else 0.0,
    }
    return Selection(rows=rows, rewards=kept_rewards, group_sizes=kept_sizes, metrics=metrics)
