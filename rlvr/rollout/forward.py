"""The training-side forward over prompt + completion: the log-probs (and exact entropies) the
loss uses, with gradients.

`Scorer` packs each micro-batch (each group's prompt once, its completions end to end, no padding
computed) where the backend can, and falls back to one row per completion
(`completion_logprobs`, also the reference the packed forward is tested against).
`micro_batches` splits a step's rows into chunks of whole groups under a token budget.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rlvr.algo.entropy import log_prob_entropy
from rlvr.backends import Policy
from rlvr.rollout.sample import pad_columns, position_ids, tempered_log_probs
from rlvr.types import RolloutBatch, Truncation

def completion_logprobs(
    policy: Policy,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float,
    with_entropy: bool = False,
    truncation: Truncation | None = None,
    entropy_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (N, T) of the completion tokens under `policy` at `temperature` (on
    `truncation`'s support, the sampled tokens always in it), with gradients, and optionally
    their exact token entropies (N, T), with gradients unless `entropy_grad` is False: one forward
    over each row's prompt + completion. The reference for the packed forward of `Scorer`."""
    completion_width = completion_ids.shape[1]
    ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (N, P+T)
    valid = torch.cat([prompt_mask, completion_mask], dim=1)
    # The logit at position i predicts token i+1: completion tokens are predicted from P-1 on, so
    # only the last T+1 positions need the vocabulary projection (the largest tensor of the step).
    logits = policy.forward(ids, position_ids(valid), valid, logits_to_keep=completion_width + 1)  # (N, T+1, V)
    force = None
    if truncation is not None and truncation.active:
        rows, columns = completion_ids.shape
        force = (torch.arange(rows, device=ids.device)[:, None].expand(rows, columns),
                 torch.arange(columns, device=ids.device)[None, :].expand(rows, columns), completion_ids)
    logp_all = tempered_log_probs(logits[:, :-1], temperature, truncation, force)  # (N, T, V)
    logp = logp_all.gather(2, completion_ids[..., None]).squeeze(2)  # (N, T)
    return logp, token_entropy(logp_all, entropy_grad) if with_entropy else None


def token_entropy(logp_all: torch.Tensor, grad: bool = True) -> torch.Tensor:
    """Exact entropies (...) from log-probs (..., V); without gradients (`grad` False: for metrics
    and decisions only) no graph over the (..., V) products is kept."""
    if grad:
        return log_prob_entropy(logp_all)
    with torch.no_grad():
        return log_prob_entropy(logp_all.detach())


@dataclass
class Packed:
    """Several prompts and their completions laid end to end in a few rows, no padding inside."""

    ids: torch.Tensor  # (M, L) long; each row right-padded to the longest
    positions: torch.Tensor  # (M, L) long: a prompt counts from 0, a completion from its prompt's length
    attend: torch.Tensor  # (M, L, L) bool: query i may attend key j
    row: torch.Tensor  # (R, T) long: the packed row of the logit that predicts completion token (r, t)
    column: torch.Tensor  # (R, T) long: and its column

    def predicting_positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The positions that predict a completion token, (n,) flat indices into the M·L positions,
        and (R, T) the index among them of the one predicting token (r, t): only these need the
        vocabulary projection, not the prompts, not the padding at a packed row's end."""
        return torch.unique(self.row * self.ids.shape[1] + self.column, return_inverse=True)


def pack(prompt_ids, prompt_mask, completion_ids, completion_mask, group_ids, row_tokens: int) -> Packed:
    """Lays the rows of a micro-batch out as packed rows: each group's prompt once, then each of its
    completions. A completion token attends to the tokens of its own prompt and to the tokens
    before it in its own completion, nothing else, at the positions it had when it was sampled,
    so its logits are those of the sequence prompt + completion alone. The last prompt token
    predicts every completion's first token. A packed row takes rows until the next would pass
    `row_tokens`; a group that spills over repeats its prompt in the next packed row."""
    device = completion_ids.device
    rows, width = completion_ids.shape
    lengths = completion_mask.sum(dim=1).clamp(min=1).tolist()  # an empty completion still gets one slot
    prompts = [ids[mask].tolist() for ids, mask in zip(prompt_ids.cpu(), prompt_mask.cpu())]
    completions = [ids[:n].tolist() for ids, n in zip(completion_ids.cpu(), lengths)]
    groups = group_ids.tolist()
    packed: list[dict] = []  # per packed row: tokens, positions, segment and parent-prompt segment ids
    where = torch.zeros((rows, width, 2), dtype=torch.long)  # (packed row, column) of each predicting logit
    current: dict = {}
    last_group, prompt_segment, prompt_end = None, 0, 0
    for r in range(rows):
        own_prompt = groups[r] == last_group
        need = len(completions[r]) + (0 if own_prompt else len(prompts[r]))
        if not current or (current["ids"] and len(current["ids"]) + need > row_tokens):
            current = {"ids": [], "positions": [], "segment": [], "parent": [], "segments": 0}
            packed.append(current)
            own_prompt = False
        if not own_prompt:  # this group's prompt, once per packed row
            prompt_segment, current["segments"] = current["segments"], current["segments"] + 1
            prompt_end = len(current["ids"]) + len(prompts[r])
            current["ids"] += prompts[r]
            current["positions"] += range(len(prompts[r]))
            current["segment"] += [prompt_segment] * len(prompts[r])
            current["parent"] += [prompt_segment] * len(prompts[r])
            last_group = groups[r]
        start, segment = len(current["ids"]), current["segments"]
        current["segments"] += 1
        current["ids"] += completions[r]
        current["positions"] += range(len(prompts[r]), len(prompts[r]) + len(completions[r]))
        current["segment"] += [segment] * len(completions[r])
        current["parent"] += [prompt_segment] * len(completions[r])
        columns = [prompt_end - 1] + list(range(start, start + len(completions[r]) - 1))
        columns += [columns[-1]] * (width - len(columns))  # padding tokens: any column, masked out later
        where[r, :, 0] = len(packed) - 1
        where[r, :, 1] = torch.tensor(columns[:width])
    length = max(len(p["ids"]) for p in packed)
    ids = torch.zeros((len(packed), length), dtype=torch.long)
    positions = torch.zeros_like(ids)
    segment = torch.full_like(ids, -1)
    parent = torch.full_like(ids, -2)
    for i, p in enumerate(packed):
        n = len(p["ids"])
        ids[i, :n], positions[i, :n] = torch.tensor(p["ids"]), torch.tensor(p["positions"])
        segment[i, :n], parent[i, :n] = torch.tensor(p["segment"]), torch.tensor(p["parent"])
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    same = segment[:, :, None] == segment[:, None, :]  # (M, L, L): key in the query's own segment
    own_prompt_key = parent[:, :, None] == segment[:, None, :]  # key in the query's prompt
    attend = causal & (same | own_prompt_key) & (segment >= 0)[:, None, :]
    attend |= torch.eye(length, dtype=torch.bool)  # a padding query sees itself, so its row stays finite
    return Packed(ids.to(device), positions.to(device), attend.to(device), where[..., 0].to(device),
                  where[..., 1].to(device))


def packed_logprobs(policy: Policy, packed: Packed, completion_ids: torch.Tensor, temperature: float,
                    with_entropy: bool = False, truncation: Truncation | None = None,
                    completion_mask: torch.Tensor | None = None,
                    entropy_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (R, T) of the completion tokens, and optionally their entropies, from one forward
    over the packed rows (`pack`): the same numbers as `completion_logprobs`. With a truncation,
    `completion_mask` (R, T) says which tokens are real: only those are forced into the support
    (a padding slot points at its row's last real logit)."""
    keep, where = packed.predicting_positions()  # the projection, log-softmax and entropy run on these alone
    force = None
    if truncation is not None and truncation.active:
        real = completion_mask if completion_mask is not None else torch.ones_like(completion_ids, dtype=torch.bool)
        force = (where[real], completion_ids[real])
    logits = policy.forward_packed(packed.ids, packed.positions, packed.attend, keep)  # (n, V)
    logp_all = tempered_log_probs(logits, temperature, truncation, force)  # (n, V)
    logp = logp_all[where, completion_ids]  # (R, T)
    return logp, token_entropy(logp_all, entropy_grad)[where] if with_entropy else None


class Scorer(torch.nn.Module):
    """The training forward of one micro-batch: rows of a RolloutBatch -> log-probs (R, T) and
    entropies of their completion tokens, with gradients.

    A module whose single call covers a micro-batch, so data parallelism can wrap it (DDP's
    reducer follows one forward per backward). By default the rows are packed (`pack`): each
    group's prompt runs once for its K completions and no padding is computed, so a micro-batch
    costs what its real tokens cost. The price is attention over whole packed rows, most of it
    masked out; the backend's `packed_row_tokens` bounds it. `pack=False` (or a backend whose attention takes no
    custom mask) runs one forward per row over prompt + completion instead, trimmed to the
    longest in the micro-batch."""

    def __init__(self, policy: Policy, temperature: float, pack: bool = True,
                 truncation: Truncation | None = None) -> None:
        super().__init__()
        self.model = policy.module  # registered, so a DDP/FSDP wrapper of the scorer sees the parameters
        self.policy = policy
        self.temperature = temperature
        self.truncation = truncation  # --top-k/--top-p/--min-p: the support the rollouts were sampled on
        self.pack = pack and policy.can_pack

    def forward(self, batch: RolloutBatch, rows: torch.Tensor, with_entropy: bool = False, entropy_grad: bool = True):
        # entropy_grad False: the entropies come without gradients (for metrics and the engine's
        # fused view: rlvr.train.step), so no graph over the vocabulary-sized products is kept.
        # Attention runs over every real token (an episode's environment tokens too); the log-probs
        # and entropies are kept at the model's own tokens only (completion_mask).
        sequence_mask = batch.sequence_mask[rows]
        width = batch.completion_ids.shape[1]
        used = max(1, int(sequence_mask.sum(dim=1).max()))  # trailing all-padding columns cost nothing
        completion_ids, sequence_mask = batch.completion_ids[rows, :used], sequence_mask[:, :used]
        completion_mask = batch.completion_mask[rows, :used]
        if self.pack:
            row_tokens = max(self.policy.packed_row_tokens, int(batch.prompt_mask.sum(dim=1).max()) + used)
            packed = pack(batch.prompt_ids[rows], batch.prompt_mask[rows], completion_ids, sequence_mask,
                          batch.group_ids[rows], row_tokens)
            logp, entropy = packed_logprobs(self.policy, packed, completion_ids, self.temperature, with_entropy,
                                            self.truncation, sequence_mask, entropy_grad)
        else:
            prompt_mask = batch.prompt_mask[rows]
            first_real = int(prompt_mask.any(dim=0).long().argmax())  # left padding shared by every row
            logp, entropy = completion_logprobs(self.policy, batch.prompt_ids[rows, first_real:],
                                                prompt_mask[:, first_real:], completion_ids, sequence_mask,
                                                self.temperature, with_entropy, self.truncation, entropy_grad)
        logp = pad_columns(logp * completion_mask, width, 0.0, left=False)
        return logp, None if entropy is None else pad_columns(entropy * completion_mask, width, 0.0, left=False)


def micro_batches(batch: RolloutBatch, rows_per_chunk: int | None, token_budget: int,
                  packed: bool = True, rows: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Splits a batch's rows (or `rows` of it, in that order, each group's rows adjacent) into
    micro-batches (row-index tensors, rows in order, each group's rows adjacent). rows_per_chunk:
    that many rows each (0: one micro-batch). None (auto): as many rows as fit `token_budget`
    tokens, counted as the Scorer computes them (packed: each group's prompt once plus its rows'
    real completion tokens; else prompt + completion per row, padded to the batch's longest); a
    group larger than the budget is split across micro-batches. So a micro-batch's activations,
    and the peak memory, do not grow with K."""
    order = torch.arange(batch.num_rows) if rows is None else rows
    n = order.numel()
    if rows_per_chunk is not None:
        size = rows_per_chunk or max(n, 1)
        return [order[i:i + size] for i in range(0, n, size)]
    sequence_mask = batch.sequence_mask  # (N, T) an episode's environment tokens cost what the model's do
    if packed:
        prompt_lens = batch.prompt_mask.sum(dim=1).tolist()
        completion_lens = sequence_mask.sum(dim=1).clamp(min=1).tolist()
    else:
        prompt_lens = [int(batch.prompt_mask.sum(dim=1).max())] * batch.num_rows
        completion_lens = [max(1, int(sequence_mask.sum(dim=1).max()))] * batch.num_rows
    group_ids = batch.group_ids.tolist()
    chunks, current, cost, last_group = [], [], 0, None
    for row in order.tolist():
        group = group_ids[row]
        shares_prompt = packed and current and group == last_group
        extra = completion_lens[row] + (0 if shares_prompt else prompt_lens[row])
        if current and cost + extra > token_budget:
            chunks.append(torch.tensor(current))
            current, cost, extra = [], 0, completion_lens[row] + prompt_lens[row]
        current.append(row)
        cost += extra
        last_group = group
    if current:
        chunks.append(torch.tensor(current))
    return chunks
