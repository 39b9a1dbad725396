"""Prompts -> K samples each, as one batch, with exact per-token entropy at no extra cost.

`sample_groups` prefills each distinct prompt once, copies its KV cache K times and decodes all
B·K sequences together until every row has produced a stop token (EOS or the chat template's end
of turn). The log-probability and the exact entropy of every generated token come from the
logits the sampler computes anyway. `completion_logprobs` is the training-side forward over
prompt + completion (with gradients) that the loss uses. Both only use the Policy interface
(`rlvr.backends`), so they run on every backend.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rlvr.backends import Policy
from rlvr.entropy import log_prob_entropy
from rlvr.types import RolloutBatch


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ids (N, P) long and mask (N, P) bool, real tokens flush right."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = True
    return ids, mask


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position of each token counting only real tokens: (N, L) bool -> (N, L) long."""
    return (mask.long().cumsum(dim=1) - 1).clamp(min=0)


# Finished rows leave the decoding batch once they are at least 1/COMPACT_FRACTION of the rows
# still decoding (0: never; benchmarks/ablation.py measures both).
COMPACT_FRACTION = 8


def _uniforms(generator, sizes: list[int], steps: int, device) -> torch.Tensor:
    """(N, steps) uniform draws in [0, 1): one per row and decoding step, drawn up front. With one
    generator per group, a group's draws come from its own generator only, so its samples do not
    depend on which other groups share the batch (or the process)."""
    if isinstance(generator, torch.Generator):
        return torch.rand((sum(sizes), steps), generator=generator, device=generator.device).to(device)
    if len(generator) != len(sizes):
        raise ValueError(f"{len(generator)} generators for {len(sizes)} groups; give one per group")
    return torch.cat([torch.rand((size, steps), generator=g, device=g.device).to(device)
                      for g, size in zip(generator, sizes)])


def _draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: (M, V) probabilities, (M,) uniforms -> (M,) token ids. The first token
    whose cumulative probability exceeds u·total, so a zero-probability token is never drawn."""
    cdf = probs.cumsum(dim=-1)
    token = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(1)
    return token.clamp(max=probs.shape[-1] - 1)


@torch.no_grad()
def sample_groups(
    policy: Policy,
    items: list[dict],
    k: int | list[int],
    *,
    max_new_tokens: int,
    temperature: float,
    generator: torch.Generator | Sequence[torch.Generator],
) -> RolloutBatch:
    """Samples k completions for each item's prompt, or k[g] for item g when k is a list (group
    sizes of --adaptive-k). temperature 0 means greedy decoding (its log-probs and entropies are
    then those of the untempered distribution). `generator` is one torch.Generator for the whole
    batch, or one per item: then each group's samples depend only on its own generator.

    Rows that have stopped leave the batch (their cache rows are dropped) once they are an eighth
    of the rows still decoding, so short answers do not pay for long ones. Every row's noise is
    drawn up front, so which rows share a forward never changes what a row samples."""
    device = policy.device
    prompt_ids, prompt_mask = left_pad([policy.encode_prompt(it) for it in items], policy.pad_id)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)  # (B, P)
    batch, width = prompt_ids.shape
    sizes = [k] * batch if isinstance(k, int) else list(k)
    rows = sum(sizes)
    uniforms = _uniforms(generator, sizes, max_new_tokens, device) if temperature > 0 else None  # (N, T)

    # Prefill each prompt once, then give every sample its own copy of the cache.
    if width + max_new_tokens > policy.max_seq_len:
        raise ValueError(f"prompts of up to {width} tokens plus {max_new_tokens} new tokens exceed the model's "
                         f"context of {policy.max_seq_len}; use shorter prompts or a smaller --max-new-tokens")
    cache = policy.new_cache(batch, width + max_new_tokens)
    logits = policy.forward(prompt_ids, _positions(prompt_mask), prompt_mask, cache, logits_to_keep=1)[:, -1]  # (B, V)
    group_of_row = torch.arange(batch, device=device).repeat_interleave(torch.tensor(sizes, device=device))  # (N,)
    logits = logits[group_of_row]  # (N, V)
    cache = policy.select_cache(cache, group_of_row)
    prompt_ids, prompt_mask = prompt_ids[group_of_row], prompt_mask[group_of_row]  # (N, P)

    stop_ids = torch.tensor(policy.stop_ids, device=device)
    tokens = torch.full((rows, max_new_tokens), policy.pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((rows, max_new_tokens), device=device)
    entropy = torch.zeros((rows, max_new_tokens), device=device)
    generated = torch.zeros((rows, max_new_tokens), dtype=torch.bool, device=device)
    # The rows still in the decoding batch: their index in the output, and per live row whether it
    # has stopped, its next position and which keys are real.
    live = torch.arange(rows, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    next_position = prompt_mask.sum(dim=1, keepdim=True)  # (M, 1) position of the first new token
    key_mask = torch.cat([prompt_mask, torch.ones(rows, max_new_tokens, dtype=torch.bool, device=device)], 1)

    for t in range(max_new_tokens):
        logp = _log_probs(logits, temperature)  # (M, V)
        probs = logp.exp()
        token = _draw(probs, uniforms[live, t]) if uniforms is not None else logp.argmax(dim=-1)  # (M,)
        token = torch.where(done, policy.pad_id, token)
        tokens[live, t] = token
        generated[live, t] = ~done
        logprobs[live, t] = logp.gather(1, token[:, None]).squeeze(1)
        entropy[live, t] = -(probs * logp).sum(dim=-1)
        done = done | torch.isin(token, stop_ids)
        finished = int(done.sum())
        if finished == len(live) or t == max_new_tokens - 1:
            break
        if COMPACT_FRACTION and finished * COMPACT_FRACTION >= len(live):  # drop stopped rows and their cache
            keep = (~done).nonzero().squeeze(1)
            cache = policy.select_cache(cache, keep)
            live, done, token = live[keep], done[keep], token[keep]
            next_position, key_mask = next_position[keep], key_mask[keep]
        logits = policy.forward(token[:, None], next_position + t, key_mask[:, : width + t + 1], cache)[:, -1]  # (M, V)

    logprobs = logprobs * generated
    entropy = entropy * generated
    texts = [policy.decode(row) for row in tokens.tolist()]
    return RolloutBatch(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=tokens,
        completion_mask=generated, logprobs=logprobs, entropy=entropy,
        group_ids=group_of_row, texts=texts, items=list(items), k=max(sizes),
    )


def _pad_columns(tensor: torch.Tensor, width: int, value, left: bool) -> torch.Tensor:
    """(N, W) -> (N, width), filled with `value` on the left or the right."""
    extra = width - tensor.shape[1]
    if extra == 0:
        return tensor
    pad = torch.full((tensor.shape[0], extra), value, dtype=tensor.dtype, device=tensor.device)
    return torch.cat([pad, tensor] if left else [tensor, pad], dim=1)


def concat_batches(batches: list[RolloutBatch], pad_id: int) -> RolloutBatch:
    """One batch from several sampling rounds of a step (--group-filter): prompts re-padded on the
    left to the widest, group ids offset so groups stay distinct and adjacent."""
    if len(batches) == 1:
        return batches[0]
    prompt_width = max(b.prompt_ids.shape[1] for b in batches)
    completion_width = max(b.completion_ids.shape[1] for b in batches)
    offsets = [0]
    for b in batches[:-1]:
        offsets.append(offsets[-1] + len(b.items))
    return RolloutBatch(
        prompt_ids=torch.cat([_pad_columns(b.prompt_ids, prompt_width, pad_id, True) for b in batches]),
        prompt_mask=torch.cat([_pad_columns(b.prompt_mask, prompt_width, False, True) for b in batches]),
        completion_ids=torch.cat([_pad_columns(b.completion_ids, completion_width, pad_id, False) for b in batches]),
        completion_mask=torch.cat([_pad_columns(b.completion_mask, completion_width, False, False) for b in batches]),
        logprobs=torch.cat([_pad_columns(b.logprobs, completion_width, 0.0, False) for b in batches]),
        entropy=torch.cat([_pad_columns(b.entropy, completion_width, 0.0, False) for b in batches]),
        group_ids=torch.cat([b.group_ids + offset for b, offset in zip(batches, offsets)]),
        texts=[t for b in batches for t in b.texts], items=[it for b in batches for it in b.items],
        k=max(b.k for b in batches),
    )


def select_rows(batch: RolloutBatch, rows: torch.Tensor) -> RolloutBatch:
    """The sub-batch of `rows` (N',) long, which must keep each group's rows adjacent and in group
    order; groups are renumbered 0.. and only the items of kept groups remain."""
    rows = rows.to(batch.group_ids.device)
    kept_groups, group_ids = torch.unique_consecutive(batch.group_ids[rows], return_inverse=True)
    row_list = rows.tolist()
    return RolloutBatch(
        prompt_ids=batch.prompt_ids[rows], prompt_mask=batch.prompt_mask[rows],
        completion_ids=batch.completion_ids[rows], completion_mask=batch.completion_mask[rows],
        logprobs=batch.logprobs[rows], entropy=batch.entropy[rows], group_ids=group_ids,
        texts=[batch.texts[i] for i in row_list], items=[batch.items[g] for g in kept_groups.tolist()],
        k=batch.k,
    )


def completion_logprobs(
    policy: Policy,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (N, T) of the completion tokens under `policy` at `temperature`, with gradients,
    and optionally their exact token entropies (N, T): one forward over each row's prompt +
    completion. The reference for the packed forward of `Scorer`."""
    completion_width = completion_ids.shape[1]
    ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (N, P+T)
    valid = torch.cat([prompt_mask, completion_mask], dim=1)
    # The logit at position i predicts token i+1: completion tokens are predicted from P-1 on, so
    # only the last T+1 positions need the vocabulary projection (the largest tensor of the step).
    logits = policy.forward(ids, _positions(valid), valid, logits_to_keep=completion_width + 1)  # (N, T+1, V)
    logp_all = _log_probs(logits[:, :-1], temperature)  # (N, T, V)
    logp = logp_all.gather(2, completion_ids[..., None]).squeeze(2)  # (N, T)
    return logp, log_prob_entropy(logp_all) if with_entropy else None


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits (..., V) -> float32 log-probabilities at `temperature` (0: the untempered ones)."""
    logits = logits.float()
    if temperature > 0 and temperature != 1.0:  # dividing by 1 would copy the largest tensor of the step
        logits = logits / temperature
    return torch.log_softmax(logits, dim=-1)


@dataclass
class Packed:
    """Several prompts and their completions laid end to end in a few rows, no padding inside."""

    ids: torch.Tensor  # (M, L) long; each row right-padded to the longest
    positions: torch.Tensor  # (M, L) long: a prompt counts from 0, a completion from its prompt's length
    attend: torch.Tensor  # (M, L, L) bool: query i may attend key j
    row: torch.Tensor  # (R, T) long: the packed row of the logit that predicts completion token (r, t)
    column: torch.Tensor  # (R, T) long: and its column


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
                    with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (R, T) of the completion tokens, and optionally their entropies, from one forward
    over the packed rows (`pack`): the same numbers as `completion_logprobs`."""
    logp_all = _log_probs(policy.forward_packed(packed.ids, packed.positions, packed.attend), temperature)  # (M, L, V)
    logp = logp_all[packed.row, packed.column, completion_ids]  # (R, T)
    return logp, log_prob_entropy(logp_all)[packed.row, packed.column] if with_entropy else None


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

    def __init__(self, policy: Policy, temperature: float, pack: bool = True) -> None:
        super().__init__()
        self.model = policy.module  # registered, so a DDP/FSDP wrapper of the scorer sees the parameters
        self.policy = policy
        self.temperature = temperature
        self.pack = pack and policy.can_pack

    def forward(self, batch: RolloutBatch, rows: torch.Tensor, with_entropy: bool = False):
        completion_mask = batch.completion_mask[rows]
        width = batch.completion_ids.shape[1]
        used = max(1, int(completion_mask.sum(dim=1).max()))  # trailing all-padding columns cost nothing
        completion_ids, completion_mask = batch.completion_ids[rows, :used], completion_mask[:, :used]
        if self.pack:
            row_tokens = max(self.policy.packed_row_tokens, int(batch.prompt_mask.sum(dim=1).max()) + used)
            packed = pack(batch.prompt_ids[rows], batch.prompt_mask[rows], completion_ids, completion_mask,
                          batch.group_ids[rows], row_tokens)
            logp, entropy = packed_logprobs(self.policy, packed, completion_ids, self.temperature, with_entropy)
        else:
            prompt_mask = batch.prompt_mask[rows]
            first_real = int(prompt_mask.any(dim=0).long().argmax())  # left padding shared by every row
            logp, entropy = completion_logprobs(self.policy, batch.prompt_ids[rows, first_real:],
                                                prompt_mask[:, first_real:], completion_ids, completion_mask,
                                                self.temperature, with_entropy)
        logp = _pad_columns(logp * completion_mask, width, 0.0, left=False)
        return logp, None if entropy is None else _pad_columns(entropy * completion_mask, width, 0.0, left=False)


def micro_batches(batch: RolloutBatch, rows_per_chunk: int | None, token_budget: int,
                  packed: bool = True) -> list[torch.Tensor]:
    """Splits a batch's rows into micro-batches (row-index tensors, rows in order, each group's
    rows adjacent). rows_per_chunk: that many rows each (0: one micro-batch). None (auto): as many
    rows as fit `token_budget` tokens, counted as the Scorer computes them (packed: each group's
    prompt once plus its rows' real completion tokens; else prompt + completion per row, padded
    to the batch's longest); a group larger than the budget is split across micro-batches. So a
    micro-batch's activations, and the peak memory, do not grow with K."""
    n = batch.num_rows
    if rows_per_chunk is not None:
        size = rows_per_chunk or n
        return [torch.arange(i, min(n, i + size)) for i in range(0, n, size)]
    if packed:
        prompt_lens = batch.prompt_mask.sum(dim=1).tolist()
        completion_lens = batch.completion_mask.sum(dim=1).clamp(min=1).tolist()
    else:
        prompt_lens = [int(batch.prompt_mask.sum(dim=1).max())] * n
        completion_lens = [max(1, int(batch.completion_mask.sum(dim=1).max()))] * n
    chunks, current, cost, last_group = [], [], 0, None
    for row, group in enumerate(batch.group_ids.tolist()):
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
