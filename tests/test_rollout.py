import torch

from conftest import make_model
from rlvr.backends.tiny import ByteTokenizer
from rlvr.rollout import _causal_mask, _positions, completion_logprobs, left_pad, sample_groups

TOK = ByteTokenizer()
ITEMS = [{"id": "a", "prompt": "12+3="}, {"id": "b", "prompt": "7-100="}, {"id": "c", "prompt": "1="}]


def sample(model, seed, k=4, temperature=1.0, max_new_tokens=6):
    gen = torch.Generator().manual_seed(seed)
    return sample_groups(model, TOK, ITEMS, k, max_new_tokens=max_new_tokens, temperature=temperature, generator=gen)


def test_sampler_is_deterministic_under_a_seed():
    model = make_model().eval()
    a, b, c = sample(model, 1), sample(model, 1), sample(model, 2)
    assert torch.equal(a.completion_ids, b.completion_ids) and a.texts == b.texts
    assert torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.completion_ids, c.completion_ids)


def test_batch_layout_groups_and_masks():
    model = make_model().eval()
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
    model = make_model(seed=3).eval()
    for temperature in (1.0, 0.7):
        batch = sample(model, 5, k=3, temperature=temperature)
        with torch.no_grad():
            logp, entropy = completion_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                                batch.completion_mask, temperature, with_entropy=True)
        m = batch.completion_mask
        assert torch.allclose(logp[m], batch.logprobs[m], atol=1e-5)
        assert torch.allclose(entropy[m], batch.entropy[m], atol=1e-5)


def test_kv_cache_logits_equal_full_forward_logits():
    model = make_model(seed=4).eval()
    ids, mask = left_pad([TOK.encode("123+45="), TOK.encode("9=")], TOK.pad_id)  # (2, P)
    extra = torch.tensor([[ord("1"), ord("6")], [ord("8"), TOK.eos_id]])  # two more tokens each
    with torch.no_grad():
        cache = model.new_cache(2, ids.shape[1] + 2)
        cached = [model(ids, _positions(mask), _causal_mask(mask), cache)[:, -1]]
        start = mask.sum(1, keepdim=True)
        for t in range(2):
            key_mask = torch.cat([mask, torch.ones(2, t + 1, dtype=torch.bool)], 1)[:, None, None, :]
            cached.append(model(extra[:, t : t + 1], start + t, key_mask, cache)[:, -1])
        full_ids = torch.cat([ids, extra], 1)
        full_mask = torch.cat([mask, torch.ones(2, 2, dtype=torch.bool)], 1)
        full = model(full_ids, _positions(full_mask), _causal_mask(full_mask))
    for t in range(3):
        assert torch.allclose(cached[t], full[:, ids.shape[1] - 1 + t], atol=1e-5)


def test_greedy_ignores_the_generator():
    model = make_model().eval()
    assert sample(model, 1, k=1, temperature=0).texts == sample(model, 9, k=1, temperature=0).texts
