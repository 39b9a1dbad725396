"""Prompts -> K samples each, as one batch, with exact per-token entropy at no extra cost.

`sample_groups` prefills each distinct prompt once, copies its KV cache K times and decodes all
B·K sequences together until every row has produced a stop token (EOS or the chat template's end
of turn). The log-probability and the exact entropy of every generated token come from the
logits the sampler computes anyway. `completion_logprobs` is the training-side forward over
prompt + completion (with gradients) that the loss uses. Both only use the Policy interface
(`rlvr.backends`), so they run on every backend.
"""
from __future__ import annotations

import torch

from rlvr.backends import Policy
from rlvr.entropy import token_entropy
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


@torch.no_grad()
def sample_groups(
    policy: Policy,
    items: list[dict],
    k: int | list[int],
    *,
    max_new_tokens: int,
    temperature: float,
    generator: torch.Generator,
) -> RolloutBatch:
    """Samples k completions for each item's prompt, or k[g] for item g when k is a list (group
    sizes of --adaptive-k). temperature 0 means greedy decoding (its log-probs and entropies are
    then those of the untempered distribution)."""
    device = policy.device
    prompt_ids, prompt_mask = left_pad([policy.encode_prompt(it) for it in items], policy.pad_id)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)  # (B, P)
    batch, width = prompt_ids.shape
    repeats = k if isinstance(k, int) else torch.tensor(k, device=device)  # int, or (B,) long
    rows = batch * k if isinstance(k, int) else int(repeats.sum())
    scale = temperature if temperature > 0 else 1.0

    # Prefill each prompt once, then give every sample its own copy of the cache.
    if width + max_new_tokens > policy.max_seq_len:
        raise ValueError(f"prompts of up to {width} tokens plus {max_new_tokens} new tokens exceed the model's "
                         f"context of {policy.max_seq_len}; use shorter prompts or a smaller --max-new-tokens")
    cache = policy.new_cache(batch, width + max_new_tokens)
    logits = policy.forward(prompt_ids, _positions(prompt_mask), prompt_mask, cache, logits_to_keep=1)[:, -1]  # (B, V)
    logits = logits.repeat_interleave(repeats, dim=0)  # (N, V)
    cache = policy.repeat_cache(cache, repeats)
    prompt_ids = prompt_ids.repeat_interleave(repeats, dim=0)  # (N, P)
    prompt_mask = prompt_mask.repeat_interleave(repeats, dim=0)
    next_position = prompt_mask.sum(dim=1, keepdim=True)  # (N, 1) position of the first new token

    stop_ids = torch.tensor(policy.stop_ids, device=device)
    tokens = torch.full((rows, max_new_tokens), policy.pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((rows, max_new_tokens), device=device)
    entropy = torch.zeros((rows, max_new_tokens), device=device)
    generated = torch.zeros((rows, max_new_tokens), dtype=torch.bool, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    key_mask = torch.cat([prompt_mask, torch.ones(rows, max_new_tokens, dtype=torch.bool, device=device)], 1)

    for t in range(max_new_tokens):
        logp = torch.log_softmax(logits.float() / scale, dim=-1)  # (N, V)
        if temperature > 0:
            token = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)  # (N,)
        else:
            token = logp.argmax(dim=-1)
        token = torch.where(done, policy.pad_id, token)
        tokens[:, t] = token
        generated[:, t] = ~done
        logprobs[:, t] = logp.gather(1, token[:, None]).squeeze(1)
        entropy[:, t] = -(logp.exp() * logp).sum(dim=-1)
        done = done | torch.isin(token, stop_ids)
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        logits = policy.forward(token[:, None], next_position + t, key_mask[:, : width + t + 1], cache)[:, -1]  # (N, V)

    logprobs = logprobs * generated
    entropy = entropy * generated
    texts = [policy.decode(row) for row in tokens.tolist()]
    group_ids = torch.arange(batch, device=device).repeat_interleave(repeats)
    return RolloutBatch(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=tokens,
        completion_mask=generated, logprobs=logprobs, entropy=entropy,
        group_ids=group_ids, texts=texts, items=list(items), k=k if isinstance(k, int) else max(k),
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
    and optionally their exact token entropies (N, T)."""
    completion_width = completion_ids.shape[1]
    ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (N, P+T)
    valid = torch.cat([prompt_mask, completion_mask], dim=1)
    # The logit at position i predicts token i+1: completion tokens are predicted from P-1 on, so
    # only the last T+1 positions need the vocabulary projection (the largest tensor of the step).
    logits = policy.forward(ids, _positions(valid), valid, logits_to_keep=completion_width + 1)  # (N, T+1, V)
    logits = logits[:, :-1].float() / (temperature if temperature > 0 else 1.0)  # (N, T, V)
    logp = torch.log_softmax(logits, dim=-1).gather(2, completion_ids[..., None]).squeeze(2)  # (N, T)
    entropy = token_entropy(logits) if with_entropy else None
    return logp, entropy
