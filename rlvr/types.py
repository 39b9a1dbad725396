"""The data that flows through one training step. N = B·K rows: B prompts, K samples each,
rows of one group adjacent (row i belongs to group i // K). With --adaptive-k groups have
different sizes; `group_ids` always says which prompt a row belongs to.

A row is one completion, or one episode (--env, rlvr/rollout/episodes.py): then its completion
holds the model's turns and the environment's tokens between them, in the order they were
appended, and `completion_mask` still marks only the model's own tokens, so everything that
trains on, counts or averages over generated tokens sees the model's tokens alone; the
environment's tokens (`env_mask`) are attended to and nothing else."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RolloutBatch:
    prompt_ids: torch.Tensor  # (N, P) long, left-padded with the tokenizer's pad id
    prompt_mask: torch.Tensor  # (N, P) bool, True on real prompt tokens
    completion_ids: torch.Tensor  # (N, T) long, right-padded; EOS counts as a generated token
    completion_mask: torch.Tensor  # (N, T) bool, True on generated tokens (EOS included)
    logprobs: torch.Tensor  # (N, T) float32, log-prob of each sampled token at the sampling temperature
    entropy: torch.Tensor  # (N, T) float32, exact next-token entropy in nats at each position
    group_ids: torch.Tensor  # (N,) long, the prompt each row was sampled for
    texts: list[str]  # N decoded completions (without EOS)
    items: list[dict]  # B task items; group g was prompted with items[g]
    k: int  # samples per prompt (the largest group's size when sizes differ; see group_sizes)
    # (N, T) float32: an external engine's (--engine vllm) log-prob of each sampled token, where
    # `logprobs` and `entropy` are then the trainer's (rlvr.rollout.engines.trainer_view); else None
    engine_logprobs: torch.Tensor | None = None
    # Episodes (--env) only, else None:
    env_mask: torch.Tensor | None = None  # (N, T) bool, True on the environment's tokens inside the completion
    truncated: torch.Tensor | None = None  # (N,) bool, the episode was cut (token budget, turn limit, per-turn limit)
    episodes: list[dict] | None = None  # N records: turns (role, text), tool calls and errors, end, env reward

    @property
    def sequence_mask(self) -> torch.Tensor:
        """(N, T) bool: every real token of the completion, the model's and the environment's; what
        attention sees (completion_mask: what is trained on and counted)."""
        return self.completion_mask if self.env_mask is None else self.completion_mask | self.env_mask

    @property
    def num_rows(self) -> int:
        return self.completion_ids.shape[0]

    @property
    def group_sizes(self) -> list[int]:
        """Rows per group, in group order: [K] * B unless group sizes vary."""
        return torch.bincount(self.group_ids, minlength=len(self.items)).tolist()

    def generated_tokens(self) -> int:
        return int(self.completion_mask.sum())


@dataclass(frozen=True)
class Truncation:
    """--top-k, --top-p, --min-p: the support the sampler draws from, renormalised over it.

    Applied to the tempered distribution in this order: the `top_k` most probable tokens (0 = all;
    ties with the k-th are kept), then the smallest set of those, most probable first, whose
    renormalised mass reaches `top_p` (1 = all), then the tokens with at least `min_p` times the
    largest probability (0 = all). The sampler draws from, and the training forward computes the
    log-probs, ratios and entropies of, this same truncated distribution (rlvr/rollout/sample.py)."""

    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0

    @property
    def active(self) -> bool:
        return self.top_k > 0 or self.top_p < 1.0 or self.min_p > 0.0

    @classmethod
    def of(cls, cfg) -> "Truncation":
        """The truncation a command's config asks for (none for a config without the options)."""
        return cls(int(getattr(cfg, "top_k", 0)), float(getattr(cfg, "top_p", 1.0)), float(getattr(cfg, "min_p", 0.0)))
