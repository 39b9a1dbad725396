"""Prompts -> K samples each, as one batch, with exact per-token entropy at no extra cost.

`sample_groups` prefills each distinct prompt once, copies its KV cache K times and decodes all
B·K sequences together until every row has produced a stop token (EOS or the chat template's end
of turn). The log-probability and the exact entropy of every generated token come from the
logits the sampler computes anyway. The training-side forward over the same tokens is
rlvr/rollout/forward.py. Both only use the Policy interface (`rlvr.backends`), so they run on
every backend.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from rlvr.backends import Policy
from rlvr.types import RolloutBatch, Truncation


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


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Position of each token counting only real tokens: (N, L) bool -> (N, L) long."""
    return (mask.long().cumsum(dim=1) - 1).clamp(min=0)


# Finished rows leave the decoding batch once they are at least 1/COMPACT_FRACTION of the rows
# still decoding (0: never; benchmarks/ablation.py measures both).
COMPACT_FRACTION = 8


def _uniforms(generator, sizes: list[int], steps: int, device) -> torch.Tensor:
    """(N, steps) uniform draws in [0, 1): one per row and decoding step, drawn up front. With one
    generator per group, a group's draws come from its own generator only, so its samples do not
    depend on which other groups share the batch (or the process). With one generator per row
    (episodes: each its own seed), a row's draws come from its own."""
    if isinstance(generator, torch.Generator):
        return torch.rand((sum(sizes), steps), generator=generator, device=generator.device).to(device)
    if len(generator) == sum(sizes) != len(sizes):
        sizes = [1] * len(generator)
    if len(generator) != len(sizes):
        raise ValueError(f"{len(generator)} generators for {len(sizes)} groups; give one per group or per row")
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
    truncation: Truncation | None = None,
) -> RolloutBatch:
    """Samples k completions for each item's prompt, or k[g] for item g when k is a list (group
    sizes of --adaptive-k). temperature 0 means greedy decoding (its log-probs and entropies are
    then those of the untempered distribution). `generator` is one torch.Generator for the whole
    batch, or one per item: then each group's samples depend only on its own generator.
    `truncation` (--top-k/--top-p/--min-p): tokens are drawn from the truncated, renormalised
    distribution, and the log-probs and entropies recorded are of it (greedy decoding ignores it:
    the most probable token is always in the support).

    Rows that have stopped leave the batch (their cache rows are dropped) once they are an eighth
    of the rows still decoding, so short answers do not pay for long ones. Every row's noise is
    drawn up front, so which rows share a forward never changes what a row samples."""
    batch = sample_token_groups(policy, [policy.encode_prompt(it) for it in items], k, max_new_tokens=max_new_tokens,
                                temperature=temperature, generator=generator, truncation=truncation)
    batch.items = list(items)
    return batch


@torch.no_grad()
def sample_token_groups(
    policy: Policy,
    prompts: list[list[int]],
    k: int | list[int],
    *,
    max_new_tokens: int,
    temperature: float,
    generator: torch.Generator | Sequence[torch.Generator],
    truncation: Truncation | None = None,
    suffixes: list[list[int]] | None = None,
) -> RolloutBatch:
    """`sample_groups` on prompts given as token ids (the batch's `items` are left empty): an
    episode's next model turn continues exactly the ids sampled and appended so far.
    `suffixes` (one per row): each row continues its group's prompt followed by its own suffix
    (an episode's turns so far); the prompt is prefilled once for the group, then each row's
    suffix on its copy of the cache, so the row samples exactly as from prompt + suffix alone."""
    device = policy.device
    prompt_ids, prompt_mask = left_pad(prompts, policy.pad_id)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)  # (B, P)
    batch, width = prompt_ids.shape
    sizes = [k] * batch if isinstance(k, int) else list(k)
    rows = sum(sizes)
    uniforms = _uniforms(generator, sizes, max_new_tokens, device) if temperature > 0 else None  # (N, T)
    suffix_width = max((len(s) for s in suffixes), default=0) if suffixes is not None else 0

    # Prefill each prompt once, then give every sample its own copy of the cache.
    if width + suffix_width + max_new_tokens > policy.max_seq_len:
        raise ValueError(f"prompts of up to {width + suffix_width} tokens plus {max_new_tokens} new tokens exceed the "
                         f"model's context of {policy.max_seq_len}; use shorter prompts or a smaller --max-new-tokens")
    cache = policy.new_cache(batch, width + suffix_width + max_new_tokens)
    logits = policy.forward(prompt_ids, position_ids(prompt_mask), prompt_mask, cache, logits_to_keep=1)[:, -1]  # (B, V)
    group_of_row = torch.arange(batch, device=device).repeat_interleave(torch.tensor(sizes, device=device))  # (N,)
    logits = logits[group_of_row]  # (N, V)
    cache = policy.select_cache(cache, group_of_row)
    prompt_ids, prompt_mask = prompt_ids[group_of_row], prompt_mask[group_of_row]  # (N, P)
    if suffix_width:  # each row's own suffix, right-padded: its padding keys stay masked from then on
        suffix_ids = torch.full((rows, suffix_width), policy.pad_id, dtype=torch.long, device=device)
        suffix_mask = torch.zeros((rows, suffix_width), dtype=torch.bool, device=device)
        for row, suffix in enumerate(suffixes):
            suffix_ids[row, : len(suffix)] = torch.tensor(suffix, dtype=torch.long)
            suffix_mask[row, : len(suffix)] = True
        lengths = suffix_mask.sum(dim=1)  # (N,)
        start = prompt_mask.sum(dim=1, keepdim=True)  # (N, 1)
        positions = start + torch.arange(suffix_width, device=device)[None]  # (N, S)
        suffix_logits = policy.forward(suffix_ids, positions, torch.cat([prompt_mask, suffix_mask], 1), cache)  # (N, S, V)
        last = (lengths - 1).clamp(min=0)
        chosen = suffix_logits[torch.arange(rows, device=device), last]  # (N, V): after each row's last suffix id
        logits = torch.where((lengths > 0)[:, None], chosen, logits)
        prompt_ids = torch.cat([prompt_ids, suffix_ids], 1)  # the rows' contexts, for the position arithmetic below
        prompt_mask = torch.cat([prompt_mask, suffix_mask], 1)
        width += suffix_width

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
        logp = tempered_log_probs(logits, temperature, truncation if temperature > 0 else None)  # (M, V)
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
    if suffix_width:  # the prompt without the suffixes (they are the callers' to keep)
        prompt_ids, prompt_mask = prompt_ids[:, : width - suffix_width], prompt_mask[:, : width - suffix_width]
    return RolloutBatch(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=tokens,
        completion_mask=generated, logprobs=logprobs, entropy=entropy,
        group_ids=group_of_row, texts=texts, items=[], k=max(sizes),
    )


def truncated_rows(completion_ids: torch.Tensor, stop_ids) -> torch.Tensor:
    """(N, T) completion ids -> (N,) bool: True where no stop token was generated, i.e. the
    completion was cut at --max-new-tokens."""
    stops = torch.tensor(list(stop_ids), device=completion_ids.device)
    return ~torch.isin(completion_ids, stops).any(dim=1)


def batch_truncated(batch: RolloutBatch, stop_ids) -> torch.Tensor:
    """(N,) bool: the rows cut short -- an episode as its rollout recorded it (the budget or the
    turn limit), a completion when it holds no stop token."""
    if getattr(batch, "truncated", None) is not None:
        return batch.truncated
    return truncated_rows(batch.completion_ids, stop_ids)


def pad_columns(tensor: torch.Tensor, width: int, value, left: bool) -> torch.Tensor:
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
        prompt_ids=torch.cat([pad_columns(b.prompt_ids, prompt_width, pad_id, True) for b in batches]),
        prompt_mask=torch.cat([pad_columns(b.prompt_mask, prompt_width, False, True) for b in batches]),
        completion_ids=torch.cat([pad_columns(b.completion_ids, completion_width, pad_id, False) for b in batches]),
        completion_mask=torch.cat([pad_columns(b.completion_mask, completion_width, False, False) for b in batches]),
        logprobs=torch.cat([pad_columns(b.logprobs, completion_width, 0.0, False) for b in batches]),
        entropy=torch.cat([pad_columns(b.entropy, completion_width, 0.0, False) for b in batches]),
        group_ids=torch.cat([b.group_ids + offset for b, offset in zip(batches, offsets)]),
        texts=[t for b in batches for t in b.texts], items=[it for b in batches for it in b.items],
        k=max(b.k for b in batches),
        engine_logprobs=None if any(b.engine_logprobs is None for b in batches) else
        torch.cat([pad_columns(b.engine_logprobs, completion_width, 0.0, False) for b in batches]),
        env_mask=None if batches[0].env_mask is None else
        torch.cat([pad_columns(b.env_mask, completion_width, False, False) for b in batches]),
        truncated=None if batches[0].truncated is None else torch.cat([b.truncated for b in batches]),
        episodes=None if batches[0].episodes is None else [e for b in batches for e in b.episodes],
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
        k=batch.k, engine_logprobs=None if batch.engine_logprobs is None else batch.engine_logprobs[rows],
        env_mask=None if batch.env_mask is None else batch.env_mask[rows],
        truncated=None if batch.truncated is None else batch.truncated[rows],
        episodes=None if batch.episodes is None else [batch.episodes[i] for i in row_list],
    )


def tempered_log_probs(logits: torch.Tensor, temperature: float, truncation: Truncation | None = None,
                       force: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
    """Logits (..., V) -> float32 log-probabilities at `temperature` (0: the untempered ones),
    renormalised over `truncation`'s support (rlvr.types.Truncation) when one is given.

    The sampler and the training forward both call this, so a sampled token's log-prob, the
    policy-gradient ratio and the exact entropy are all of the distribution the tokens were drawn
    from. `force`: an index into (..., V) of tokens kept in the support whatever their rank (the
    training forward passes the sampled tokens: after an update, or by rounding, a sampled token
    could fall just outside the recomputed support and get no finite log-prob)."""
    logits = logits.float()
    if temperature > 0 and temperature != 1.0:  # dividing by 1 would copy the largest tensor of the step
        logits = logits / temperature
    logp = torch.log_softmax(logits, dim=-1)
    if truncation is None or not truncation.active:
        return logp
    with torch.no_grad():
        keep = support(logp, truncation)
        if force is not None:
            keep[force] = True
    # Outside the support: a finite floor, so exp() is exactly 0 and 0 · log p stays 0 in the
    # entropy (-inf would give NaN); the masked logits get no gradient.
    return torch.log_softmax(logp.masked_fill(~keep, OUTSIDE), dim=-1)


OUTSIDE = -1e30  # the log-prob floor of a token outside the truncated support


def support(logp: torch.Tensor, truncation: Truncation) -> torch.Tensor:
    """(..., V) log-probs -> (..., V) bool: the tokens `truncation` keeps (top-k, then top-p of
    the renormalised rest, then min-p). The most probable token is always kept."""
    keep = torch.ones_like(logp, dtype=torch.bool)
    if truncation.top_k and truncation.top_k < logp.shape[-1]:
        kth = logp.topk(truncation.top_k, dim=-1).values[..., -1:]
        keep &= logp >= kth
    if truncation.top_p < 1.0:
        ordered, order = logp.masked_fill(~keep, float("-inf")).sort(dim=-1, descending=True)
        probs = torch.softmax(ordered, dim=-1)  # renormalised over what top-k kept
        before = probs.cumsum(dim=-1) - probs  # mass of the more probable tokens
        nucleus = torch.zeros_like(keep).scatter_(-1, order, before < truncation.top_p)
        keep &= nucleus
    if truncation.min_p > 0.0:
        keep &= logp >= logp.max(dim=-1, keepdim=True).values + math.log(truncation.min_p)
    return keep
