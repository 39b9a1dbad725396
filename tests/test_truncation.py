"""--top-k / --top-p / --min-p: the sampler draws from the truncated, renormalised distribution,
and the training forward's log-probs, ratios and entropies are of that same distribution.

References are independent of rlvr.rollout.sample.support: the truncated support is built here
from a float64 sort, one position at a time."""
import importlib.util
import math

import pytest
import torch

from conftest import make_policy
from rlvr.config import ConfigError, TrainConfig
from rlvr.rollout.forward import Scorer, completion_logprobs
from rlvr.rollout.sample import sample_groups, tempered_log_probs
from rlvr.types import Truncation

HAS_HF = importlib.util.find_spec("transformers") is not None and importlib.util.find_spec("peft") is not None
ITEMS = [{"id": "a", "prompt": "12+3="}, {"id": "b", "prompt": "7-100="}, {"id": "c", "prompt": "1="}]


def reference_distribution(logits: torch.Tensor, temperature: float, t: Truncation) -> torch.Tensor:
    """(V,) logits -> (V,) float64 probabilities of the truncated, renormalised distribution."""
    p = torch.softmax(logits.double() / temperature, dim=0)
    order = sorted(range(len(p)), key=lambda v: -float(p[v]))
    kept = set(range(len(p)))
    if t.top_k:
        kth = float(p[order[t.top_k - 1]])
        kept = {v for v in kept if float(p[v]) >= kth}
    if t.top_p < 1:
        mass = sum(float(p[v]) for v in kept)
        nucleus, before = set(), 0.0
        for v in (v for v in order if v in kept):
            if before < t.top_p:
                nucleus.add(v)
            before += float(p[v]) / mass
        kept = nucleus
    if t.min_p:
        top = float(p.max())
        kept = {v for v in kept if float(p[v]) >= t.min_p * top}
    q = torch.zeros_like(p)
    for v in kept:
        q[v] = p[v]
    return q / q.sum()


@pytest.mark.parametrize("truncation", [Truncation(top_k=5), Truncation(top_p=0.6), Truncation(min_p=0.2),
                                        Truncation(top_k=8, top_p=0.9, min_p=0.05)],
                         ids=["top-k", "top-p", "min-p", "all-three"])
def test_truncated_log_probs_equal_the_float64_reference(truncation):
    torch.manual_seed(0)
    logits = torch.randn(6, 40) * 2
    logp = tempered_log_probs(logits, 0.8, truncation)
    for row in range(6):
        expected = reference_distribution(logits[row], 0.8, truncation)
        assert torch.allclose(logp[row].exp().double(), expected, atol=1e-6)
        assert ((logp[row].exp() > 0) == (expected > 0)).all()  # the same support, exactly


def test_forced_tokens_stay_in_the_support_and_everything_stays_finite():
    logits = torch.tensor([[5.0, 4.0, 0.0, -3.0]])
    logp = tempered_log_probs(logits, 1.0, Truncation(top_k=1), force=(torch.tensor([0]), torch.tensor([3])))
    probs = logp.exp()
    assert probs[0, 2] == 0 and probs[0, 3] > 0 and probs[0, 0] > 0
    entropy = -(probs * logp).sum()
    assert torch.isfinite(entropy) and entropy > 0


def test_sampled_frequencies_follow_the_truncated_distribution_chi_square():
    """20,000 first tokens of one prompt drawn with top-k + top-p: their counts against the
    truncated distribution (chi-square, p > 0.001), and never a token outside its support."""
    policy = make_policy(seed=5)
    truncation = Truncation(top_k=12, top_p=0.8)
    n = 20_000
    batch = sample_groups(policy, [ITEMS[0]], n, max_new_tokens=1, temperature=1.3,
                          generator=torch.Generator().manual_seed(0), truncation=truncation)
    with torch.no_grad():
        ids = torch.tensor([policy.encode_prompt(ITEMS[0])])
        logits = policy.forward(ids, torch.arange(ids.shape[1])[None], torch.ones_like(ids, dtype=torch.bool))[0, -1]
    expected = reference_distribution(logits, 1.3, truncation)
    counts = torch.bincount(batch.completion_ids[:, 0], minlength=len(expected)).double()
    assert counts[expected == 0].sum() == 0
    support = expected > 0
    assert int(support.sum()) >= 3  # a test of the shape, not of a near-deterministic token
    chi2 = float((((counts - n * expected) ** 2) / (n * expected))[support].sum())
    dof = int(support.sum()) - 1
    # Wilson-Hilferty: the chi-square quantile at p = 0.001 for `dof` degrees of freedom
    z = 3.0902
    critical = dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3
    assert chi2 < critical, (chi2, critical, dof)


def check_training_logprobs_equal_the_samplers(policy, items, truncation, temperature=0.9):
    batch = sample_groups(policy, items, 4, max_new_tokens=6, temperature=temperature,
                          generator=[torch.Generator().manual_seed(i) for i in range(len(items))], truncation=truncation)
    m = batch.completion_mask
    rows = torch.arange(batch.num_rows)
    for scorer in (Scorer(policy, temperature, truncation=truncation),
                   Scorer(policy, temperature, pack=False, truncation=truncation)):
        with torch.no_grad():
            logp, entropy = scorer(batch, rows, with_entropy=True)
        assert (logp[m] - batch.logprobs[m]).abs().max() <= 1e-5
        assert (entropy[m] - batch.entropy[m]).abs().max() <= 1e-5
    # ... and they are not the untruncated log-probs: the truncation is really applied
    with torch.no_grad():
        full, _ = completion_logprobs(policy, batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                      batch.completion_mask, temperature)
    assert (full[m] - batch.logprobs[m]).abs().max() > 1e-3
    assert (full[m] <= batch.logprobs[m] + 1e-6).all()  # renormalising over fewer tokens only raises them


@pytest.mark.parametrize("truncation", [Truncation(top_k=20), Truncation(top_p=0.9), Truncation(min_p=0.8)],
                         ids=["top-k", "top-p", "min-p"])
def test_training_logprobs_of_sampled_tokens_equal_the_samplers_builtin(truncation):
    check_training_logprobs_equal_the_samplers(make_policy(seed=1), ITEMS, truncation)


@pytest.mark.skipif(not HAS_HF, reason="transformers and peft are not installed")
def test_training_logprobs_of_sampled_tokens_equal_the_samplers_hf(tmp_path):
    from hf_models import make_hf_model_dir
    from rlvr.backends import load_policy
    from rlvr.tasks import get_task

    policy = load_policy(str(make_hf_model_dir(tmp_path / "qwen2", "qwen2")))
    items = [get_task("arith").item("train", i) for i in (0, 1, 5)]
    check_training_logprobs_equal_the_samplers(policy, items, Truncation(top_k=20, top_p=0.9))


def test_the_gradient_flows_only_through_the_support():
    policy = make_policy(seed=2)
    batch = sample_groups(policy, ITEMS[:1], 2, max_new_tokens=3, temperature=1.0,
                          generator=torch.Generator().manual_seed(0), truncation=Truncation(top_k=3))
    logp, _ = Scorer(policy, 1.0, truncation=Truncation(top_k=3))(batch, torch.arange(2))
    (logp * batch.completion_mask).sum().backward()
    grads = [p.grad for p in policy.module.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("field, value", [("top_k", -1), ("top_p", 0.0), ("top_p", 1.5), ("min_p", 1.0),
                                          ("min_p", -0.1)])
def test_bad_truncation_settings_are_refused_naming_the_option(field, value):
    with pytest.raises(ConfigError, match=f"--{field.replace('_', '-')}"):
        TrainConfig(**{field: value}).validate()
