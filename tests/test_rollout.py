import torch

from conftest import make_policy
from rlvr.backends.tiny import ByteTokenizer, attention_mask
from rlvr.rollout.sample import left_pad, position_ids, sample_groups
from rlvr.rollout.forward import completion_logprobs

TOK = ByteTokenizer()
ITEMS = [{"id": "a", "prompt": "12+3="}, {"id": "b", "prompt": "7-100="}, {"id": "c", "prompt": "1="}]


def sample(model, seed, k=4, temperature=1.0, max_new_tokens=6):
    gen = torch.Generator().manual_seed(seed)
    return sample_groups(model, ITEMS, k, max_new_tokens=max_new_tokens, temperature=temperature, generator=gen)


def test_sampler_is_deterministic_under_a_seed():
    model = make_policy()
    a, b, c = sample(model, 1), sample(model, 1), sample(model, 2)
    assert torch.equal(a.completion_ids, b.completion_ids) and a.texts == b.texts
    assert torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.completion_ids, c.completion_ids)


def test_batch_layout_groups_and_masks():
    model = make_policy()
    batch = sample(model, 0, k=4)
    assert batch.completion_ids.shape[0] == 12 and batch.group_ids.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    for row in range(12):
        ids, mask = batch.completion_ids[row], batch.completion_mask[row]
        eos = (ids == TOK.eos_id).nonzero()
        if len(eos):  # the mask covers tokens up to and including the first EOS, nothing after
            assert mask.tolist() == [True] * (int(eos[0]) + 1) + [False] * (len(ids) - int(eos[0]) - 1)
            assert (ids[~mask] == TOK.pad_id).all()
        else:
            assert mask.all()
    assert (batch.entropy[~batch.completion_mask] == 0).all()


def test_kv_cache_sampler_matches_full_forward():
    """Log-probs and entropies recorded by the cached sampler equal a full forward pass."""
    model = make_policy(seed=3)
    for temperature in (1.0, 0.7):
        batch = sample(model, 5, k=3, temperature=temperature)
        with torch.no_grad():
            logp, entropy = completion_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                                batch.completion_mask, temperature, with_entropy=True)
        m = batch.completion_mask
        assert torch.allclose(logp[m], batch.logprobs[m], atol=1e-5)
        assert torch.allclose(entropy[m], batch.entropy[m], atol=1e-5)


def test_kv_cache_logits_equal_full_forward_logits():
    model = make_policy(seed=4)
    ids, mask = left_pad([TOK.encode("123+45="), TOK.encode("9=")], TOK.pad_id)  # (2, P)
    extra = torch.tensor([[ord("1"), ord("6")], [ord("8"), TOK.eos_id]])  # two more tokens each
    with torch.no_grad():
        cache = model.new_cache(2, ids.shape[1] + 2)
        cached = [model.forward(ids, position_ids(mask), mask, cache)[:, -1]]
        start = mask.sum(1, keepdim=True)
        for t in range(2):
            key_mask = torch.cat([mask, torch.ones(2, t + 1, dtype=torch.bool)], 1)
            cached.append(model.forward(extra[:, t : t + 1], start + t, key_mask, cache)[:, -1])
        full_ids = torch.cat([ids, extra], 1)
        full_mask = torch.cat([mask, torch.ones(2, 2, dtype=torch.bool)], 1)
        full = model.forward(full_ids, position_ids(full_mask), full_mask)
    for t in range(3):
        assert torch.allclose(cached[t], full[:, ids.shape[1] - 1 + t], atol=1e-5)


def test_greedy_ignores_the_generator():
    model = make_policy()
    assert sample(model, 1, k=1, temperature=0).texts == sample(model, 9, k=1, temperature=0).texts


def test_attention_mask_is_causal_over_real_keys_and_a_query_sees_itself():
    keys = torch.tensor([[False, True, True, True]])  # one left-pad, then 3 real tokens; the last 2 are queries
    mask = attention_mask(keys, 2)  # (1, 2, 4)
    assert mask[0].tolist() == [[False, True, True, False], [False, True, True, True]]
    padded_query = attention_mask(torch.tensor([[False, False]]), 2)[0]
    assert padded_query.tolist() == [[True, False], [False, True]]  # only itself: finite, never used


def test_a_groups_samples_depend_only_on_its_own_generator():
    """With one generator per group, a group samples the same completions alone or batched with
    others (other prompt widths, other rows leaving the batch at other times)."""
    model = make_policy(seed=6)

    def gens(*seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    together = sample_groups(model, ITEMS, 4, max_new_tokens=8, temperature=1.0, generator=gens(10, 11, 12))
    alone = sample_groups(model, ITEMS[1:2], 4, max_new_tokens=8, temperature=1.0, generator=gens(11))
    rows = together.group_ids == 1
    width = alone.completion_ids.shape[1]
    assert torch.equal(together.completion_ids[rows][:, :width], alone.completion_ids)
    assert torch.allclose(together.logprobs[rows][:, :width], alone.logprobs, atol=1e-5)
    assert together.texts[4:8] == alone.texts
    mixed = sample_groups(model, ITEMS, 4, max_new_tokens=8, temperature=1.0, generator=gens(10, 99, 12))
    assert not torch.equal(mixed.completion_ids[rows], together.completion_ids[rows])
    assert torch.equal(mixed.completion_ids[~rows], together.completion_ids[~rows])


def test_inverse_cdf_draws_follow_the_probabilities_and_skip_zero_mass():
    from rlvr.rollout.sample import _draw

    probs = torch.tensor([0.5, 0.0, 0.3, 0.2, 0.0])
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(0))
    tokens = _draw(probs.expand(len(u), -1), u)
    freq = torch.bincount(tokens, minlength=5).float() / len(u)
    assert freq[1] == 0 and freq[4] == 0  # zero-probability tokens are never drawn
    assert torch.allclose(freq, probs, atol=0.005)
    edges = _draw(probs.expand(3, -1), torch.tensor([0.0, 0.5, 0.9999999]))
    assert edges.tolist() == [0, 2, 3]
