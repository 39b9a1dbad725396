"""The data that flows through one training step. N = B·K rows: B prompts, K samples each,
rows of one group adjacent (row i belongs to group i // K). With --adaptive-k groups have
different sizes; `group_ids` always says which prompt a row belongs to."""
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

    @property
    def num_rows(self) -> int:
        return self.completion_ids.shape[0]

    @property
    def group_sizes(self) -> list[int]:
        """Rows per group, in group order: [K] * B unless group sizes vary."""
        return torch.bincount(self.group_ids, minlength=len(self.items)).tolist()

    def generated_tokens(self) -> int:
        return int(self.completion_mask.sum())
