"""Prompts -> K samples each, as one batch, with exact per-token entropy at no extra cost.

`sample_groups` prefills each distinct prompt once, copies its KV cache K times and decodes all
B·K sequences together. The log-probability and the exact entropy of every generated token come
from the logits the sampler computes anyway. `completion_logprobs` is the training-side forward
over prompt + completion (with gradients) that the loss uses.
"""
from __future__ import annotations

import torch

from rlvr.backends.tiny import ByteTokenizer, TinyLM
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


def _causal_mask(valid: torch.Tensor) -> torch.Tensor:
    """(N, L) bool -> (N, 1, L, L): causal, padding keys hidden. Each position may always see
    itself so fully padded query rows stay finite; their outputs are never used."""
    length = valid.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=valid.device).tril()
    eye = torch.eye(length, dtype=torch.bool, device=valid.device)
    return ((causal & valid[:, None, None, :]) | eye)


@torch.no_grad()
def sample_groups(
    model: TinyLM,
    tokenizer: ByteTokenizer,
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
    device = model.tok_emb.weight.device
    prompt_ids, prompt_mask = left_pad([tokenizer.encode(it["prompt"]) for it in items], tokenizer.pad_id)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)  # (B, P)
    batch, width = prompt_ids.shape
    repeats = k if isinstance(k, int) else torch.tensor(k, device=device)  # int, or (B,) long
    rows = batch * k if isinstance(k, int) else int(repeats.sum())
    scale = temperature if temperature > 0 else 1.0

    # Prefill each prompt once, then give every sample its own copy of the cache.
    cache = model.new_cache(batch, width + max_new_tokens)
    logits = model(prompt_ids, _positions(prompt_mask), _causal_mask(prompt_mask), cache)[:, -1]  # (B, V)
    logits = logits.repeat_interleave(repeats, dim=0)  # (N, V)
    cache = cache.repeat_interleave(repeats)
    prompt_ids = prompt_ids.repeat_interleave(repeats, dim=0)  # (N, P)
    prompt_mask = prompt_mask.repeat_interleave(repeats, dim=0)
    next_position = prompt_mask.sum(dim=1, keepdim=True)  # (N, 1) position of the first new token

    tokens = torch.full((rows, max_new_tokens), tokenizer.pad_id, dtype=torch.long, device=device)
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
        token = torch.where(done, tokenizer.pad_id, token)
        tokens[:, t] = token
        generated[:, t] = ~done
        logprobs[:, t] = logp.gather(1, token[:, None]).squeeze(1)
        entropy[:, t] = -(logp.exp() * logp).sum(dim=-1)
        done = done | (token == tokenizer.eos_id)
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        attn = key_mask[:, None, None, : width + t + 1]  # (N, 1, 1, S)
        logits = model(token[:, None], next_position + t, attn, cache)[:, -1]  # (N, V)

    logprobs = logprobs * generated
    entropy = entropy * generated
    texts = [tokenizer.decode(row) for row in tokens.tolist()]
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
    model: TinyLM,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (N, T) of the completion tokens under `model` at `temperature`, with gradients,
    and optionally their exact token entropies (N, T)."""
    width = prompt_ids.shape[1]
    ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (N, P+T)
    valid = torch.cat([prompt_mask, completion_mask], dim=1)
    logits = model(ids, _positions(valid), _causal_mask(valid))  # (N, P+T, V)
    # The logit at position i predicts token i+1: completion tokens are predicted from P-1 on.
    logits = logits[:, width - 1 : -1].float() / (temperature if temperature > 0 else 1.0)  # (N, T, V)
    logp = torch.log_softmax(logits, dim=-1).gather(2, completion_ids[..., None]).squeeze(2)  # (N, T)
    entropy = token_entropy(logits) if with_entropy else None
    return logp, entropy
