"""Tests of rlvr.algo.stats's metrics against independent references (TERMS.md, Evaluation).

References: pass@k against the closed form with exact integer binomials; HM@k_ranked on
hand-made problems; bootstrap and Wilson intervals by their coverage on simulated data.
"""
from __future__ import annotations

import json
import math
import random
from fractions import Fraction
from statistics import NormalDist

import numpy as np
import pytest

from rlvr.algo.stats import (bootstrap_ci, hm_at_k_ranked, paired_bootstrap_gain, pass_at_k, pass_at_k_per_problem, summarize_metric, wilson_ci)


def closed_form_pass_at_k(n: int, c: int, k: int) -> float:
    """1 − C(n−c, k)/C(n, k) with exact integers; math.comb gives 0 when n − c < k."""
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


# ----------------------------------------------------------------------------- pass@k


def random_counts(count: int, max_n: int, seed: int) -> list[tuple[int, int, int]]:
    rng = random.Random(seed)
    triples = []
    for _ in range(count):
        n = rng.randint(1, max_n)
        triples.append((n, rng.randint(0, n), rng.randint(1, n)))
    return triples


def test_pass_at_k_matches_closed_form_on_random_counts():
    triples = random_counts(600, max_n=200, seed=0)
    for n, c, k in triples:
        assert pass_at_k(n, c, k) == pytest.approx(closed_form_pass_at_k(n, c, k), abs=1e-12), (
            n,
            c,
            k,
        )


def test_pass_at_k_per_problem_matches_scalar_and_closed_form():
    triples = random_counts(500, max_n=200, seed=1)
    n, c, k = (np.array(column) for column in zip(*triples))
    vectorised = pass_at_k_per_problem(n, c, k)
    assert vectorised.shape == (500,)
    expected = np.array([closed_form_pass_at_k(*t) for t in triples])
    np.testing.assert_allclose(vectorised, expected, rtol=0, atol=1e-12)
    # one k for all problems
    n16 = np.full(50, 16)
    c16 = np.arange(50) % 17
    np.testing.assert_allclose(
        pass_at_k_per_problem(n16, c16, 4),
        [closed_form_pass_at_k(16, int(ci), 4) for ci in c16],
        rtol=0,
        atol=1e-12,
    )


def test_pass_at_k_exact_edge_cases():
    assert pass_at_k(16, 0, 4) == 0.0
    assert pass_at_k(1, 0, 1) == 0.0
    assert pass_at_k(16, 13, 4) == 1.0  # n − c = 3 < k: every 4 samples include a correct one
    assert pass_at_k(16, 16, 16) == 1.0
    assert pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(16, 1, 1) == pytest.approx(1 / 16, abs=1e-15)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3, abs=1e-15)  # pass@1 is c/n
    np.testing.assert_array_equal(pass_at_k_per_problem([16, 16, 16], [0, 13, 16], 4), [0, 1, 1])
    assert pass_at_k_per_problem([], [], 4).shape == (0,)


@pytest.mark.parametrize(("c", "k"), [(3, 10), (500, 50), (9000, 1000), (1, 1), (9990, 10)])
def test_pass_at_k_large_n_does_not_overflow(c, k):
    n = 10_000
    value = pass_at_k(n, c, k)
    assert math.isfinite(value)
    assert value == pytest.approx(closed_form_pass_at_k(n, c, k), abs=1e-12)
    assert pass_at_k_per_problem([n], [c], k)[0] == pytest.approx(value, abs=1e-12)


def test_pass_at_k_rejects_k_greater_than_n_with_the_fix():
    with pytest.raises(ValueError) as error:
        pass_at_k(3, 1, 4)
    message = str(error.value)
    assert "k=4" in message and "n=3" in message
    assert "more samples" in message and "smaller k" in message
    with pytest.raises(ValueError, match=r"problem 1: .*k=4.*n=3"):
        pass_at_k_per_problem([16, 3], [1, 1], 4)


@pytest.mark.parametrize(
    ("n", "c", "k", "pattern"),
    [(16, 1, 0, "k ≥ 1"), (16, -1, 4, "c=-1"), (16, 17, 4, "c=17"), (0, 0, 1, "n=0")],
)
def test_pass_at_k_rejects_bad_counts(n, c, k, pattern):
    with pytest.raises(ValueError, match=pattern):
        pass_at_k(n, c, k)
    with pytest.raises(ValueError, match=pattern):
        pass_at_k_per_problem([n], [c], k)


def test_pass_at_k_rejects_non_integers_and_mismatched_lengths():
    with pytest.raises(TypeError, match="k must be an integer"):
        pass_at_k(16, 2, 4.0)
    with pytest.raises(TypeError, match="c must hold integers"):
        pass_at_k_per_problem([16], [2.5], 4)
    with pytest.raises(ValueError, match="one entry per problem"):
        pass_at_k_per_problem([16, 16], [2], 4)
    with pytest.raises(ValueError, match="one per problem, got 3 values for 2"):
        pass_at_k_per_problem([16, 16], [2, 3], [1, 2, 4])


# ------------------------------------------------------------------------ HM@k ranked


def test_hm_ranked_vote_tie_is_broken_by_mean_logprob():
    answers = ["a", "a", "b", "b", "c"]
    correct = [False, False, True, True, False]
    # a and b both have 2 votes; b's samples are more likely, so b ranks first
    assert hm_at_k_ranked(answers, correct, [-5.0, -5.0, -1.0, -3.0, -0.1], k=1) == 1.0
    # now a is more likely: a first, b second
    assert hm_at_k_ranked(answers, correct, [-1.0, -3.0, -5.0, -5.0, -0.1], k=1) == 0.0
    assert hm_at_k_ranked(answers, correct, [-1.0, -3.0, -5.0, -5.0, -0.1], k=2) == 1.0


def test_hm_ranked_votes_beat_logprob():
    # c has the highest log-probability but one vote; a has three votes and is wrong
    answers = ["a", "a", "a", "c"]
    correct = [False, False, False, True]
    assert hm_at_k_ranked(answers, correct, [-9.0, -9.0, -9.0, -0.1], k=1) == 0.0
    assert hm_at_k_ranked(answers, correct, [-9.0, -9.0, -9.0, -0.1], k=2) == 1.0


def test_hm_ranked_correct_answer_second():
    answers = ["7", "12", "7", "12", "7", None]
    correct = [False, True, False, True, False, False]
    logprobs = [-2.0, -1.0, -2.0, -1.0, -2.0, -0.5]
    assert hm_at_k_ranked(answers, correct, logprobs, k=1) == 0.0
    assert hm_at_k_ranked(answers, correct, logprobs, k=2) == 1.0


def test_hm_ranked_none_is_never_a_candidate():
    # five unextracted samples would outvote everything if None were a candidate
    answers = [None, None, None, None, None, "x", "y", "y"]
    correct = [True, True, True, True, True, True, False, False]
    logprobs = [0.0] * 5 + [-1.0, -2.0, -2.0]
    assert hm_at_k_ranked(answers, correct, logprobs, k=1) == 0.0  # y (2 votes) beats x
    assert hm_at_k_ranked(answers, correct, logprobs, k=2) == 1.0
    # a None sample marked correct cannot make the problem a hit
    assert hm_at_k_ranked([None, None, "z"], [True, True, False], [0.0, 0.0, -1.0], k=3) == 0.0
    assert hm_at_k_ranked([None, None], [False, False], [-1.0, -1.0], k=1) == 0.0


def test_hm_ranked_k_larger_than_candidates():
    answers = ["a", "b", "a"]
    assert hm_at_k_ranked(answers, [False, True, False], [-1.0, -9.0, -1.0], k=10) == 1.0
    assert hm_at_k_ranked(answers, [False, False, False], [-1.0, -9.0, -1.0], k=10) == 0.0


def test_hm_ranked_full_tie_is_broken_by_answer_string_whatever_the_order():
    answers = ["b", "a", "c"]
    correct = [False, True, False]
    logprobs = [-1.0, -1.0, -1.0]
    for permutation in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
        permuted = [[column[i] for i in permutation] for column in (answers, correct, logprobs)]
        assert hm_at_k_ranked(*permuted, k=1) == 1.0  # "a" sorts first
    assert hm_at_k_ranked(answers, [True, False, False], logprobs, k=1) == 0.0


def test_hm_ranked_correct_if_any_sample_of_the_answer_was_scored_correct():
    assert hm_at_k_ranked(["a", "a"], [False, True], [-1.0, -1.0], k=1) == 1.0


def test_hm_ranked_matches_pass_at_k_equivalent_when_answers_are_distinct():
    # all answers distinct, one vote each: ranking is by log-probability alone
    answers = ["a", "b", "c", "d"]
    correct = [False, False, True, False]
    logprobs = [-4.0, -3.0, -2.0, -1.0]  # order d, c, b, a
    assert [hm_at_k_ranked(answers, correct, logprobs, k) for k in (1, 2, 3, 4)] == [0, 1, 1, 1]


def test_hm_ranked_rejects_bad_input():
    with pytest.raises(ValueError, match="k ≥ 1"):
        hm_at_k_ranked(["a"], [True], [-1.0], k=0)
    with pytest.raises(ValueError, match="lengths 2, 1 and 2"):
        hm_at_k_ranked(["a", "b"], [True], [-1.0, -2.0], k=1)
    with pytest.raises(ValueError, match="at least one sample"):
        hm_at_k_ranked([], [], [], k=1)
    with pytest.raises(ValueError, match="log-probabilities"):
        hm_at_k_ranked(["a", "b"], [True, False], [float("nan"), -1.0], k=1)
    # −inf is a legitimate log-probability
    assert hm_at_k_ranked(["a", "b"], [True, False], [float("-inf"), -1.0], k=1) == 0.0


# --------------------------------------------------------------- confidence intervals


def test_bootstrap_ci_covers_the_true_mean_about_95_percent():
    rng = np.random.default_rng(123)
    p, problems, datasets = 0.3, 200, 200
    data = (rng.random((datasets, problems)) < p).astype(float)
    covered = 0
    for seed, row in enumerate(data):
        low, high = bootstrap_ci(row, n_resamples=1000, seed=seed)
        assert low <= row.mean() <= high
        covered += low <= p <= high
    assert 0.90 <= covered / datasets <= 0.99


def test_wilson_ci_covers_the_true_proportion_about_95_percent():
    rng = np.random.default_rng(321)
    p, problems, datasets = 0.3, 200, 2000
    successes = rng.binomial(problems, p, size=datasets)
    intervals = [wilson_ci(int(s), problems) for s in successes]
    coverage = np.mean([low <= p <= high for low, high in intervals])
    assert 0.90 <= coverage <= 0.99


def test_bootstrap_ci_width_matches_the_normal_approximation():
    rng = np.random.default_rng(7)
    values = rng.random(400)
    low, high = bootstrap_ci(values, n_resamples=4000, seed=1)
    standard_error = values.std() / math.sqrt(values.size)
    assert (high - low) == pytest.approx(2 * 1.959964 * standard_error, rel=0.1)
    assert low < values.mean() < high


def test_bootstrap_ci_is_seeded_and_handles_degenerate_input():
    values = np.random.default_rng(0).random(50)
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)
    assert bootstrap_ci([0.25]) == (0.25, 0.25)
    assert bootstrap_ci([0.1] * 37) == (0.1, 0.1)
    narrow = bootstrap_ci(values, alpha=0.5)
    wide = bootstrap_ci(values, alpha=0.01)
    assert wide[0] < narrow[0] < narrow[1] < wide[1]


def test_bootstrap_ci_many_problems_is_chunked_and_still_correct():
    # 5000 problems × 2000 resamples exceeds one chunk; the interval must still be sane
    values = (np.random.default_rng(11).random(5000) < 0.6).astype(float)
    low, high = bootstrap_ci(values, seed=0)
    expected_half_width = 1.959964 * values.std() / math.sqrt(values.size)
    assert low == pytest.approx(values.mean() - expected_half_width, abs=0.004)
    assert high == pytest.approx(values.mean() + expected_half_width, abs=0.004)


@pytest.mark.parametrize(
    ("values", "kwargs", "pattern"),
    [
        ([], {}, "empty"),
        ([[0.1, 0.2]], {}, "1-D"),
        ([0.1, float("nan")], {}, "non-finite"),
        ([0.1, 0.2], {"n_resamples": 999}, "n_resamples must be ≥ 1000"),
        ([0.1, 0.2], {"alpha": 1.5}, "alpha"),
    ],
)
def test_bootstrap_ci_rejects_bad_input(values, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        bootstrap_ci(values, **kwargs)


def test_wilson_ci_known_values():
    # reference values of the Wilson 95% interval (z = 1.959964)
    assert wilson_ci(5, 10) == pytest.approx((0.236593, 0.763407), abs=1e-6)
    # at 0/n and n/n the far bound is z²/(n + z²) from the edge
    z = NormalDist().inv_cdf(0.975)
    edge = z * z / (10 + z * z)  # 0.277533
    assert wilson_ci(0, 10) == pytest.approx((0.0, edge), rel=1e-12)
    assert wilson_ci(10, 10) == pytest.approx((1 - edge, 1.0), rel=1e-12)
    assert wilson_ci(0, 10)[0] == 0.0 and wilson_ci(10, 10)[1] == 1.0
    # against the formula written out with z from the normal quantile
    z = NormalDist().inv_cdf(0.995)
    s, n = 37, 120
    p = s / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert wilson_ci(s, n, alpha=0.01) == pytest.approx((center - half, center + half), rel=1e-12)


@pytest.mark.parametrize(
    ("successes", "n", "alpha", "pattern"),
    [(1, 0, 0.05, "n ≥ 1"), (-1, 5, 0.05, "successes=-1"), (6, 5, 0.05, "successes=6"),
     (1, 5, 0.0, "alpha")],
)
def test_wilson_ci_rejects_bad_input(successes, n, alpha, pattern):
    with pytest.raises(ValueError, match=pattern):
        wilson_ci(successes, n, alpha)


# ----------------------------------------------------------------------------- gain


def correlated_before_after(problems: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-problem pass rates where difficulty dominates and training adds a little."""
    rng = np.random.default_rng(seed)
    difficulty = rng.random(problems)
    before = np.clip(difficulty + rng.normal(0, 0.03, problems), 0, 1)
    after = np.clip(difficulty + 0.05 + rng.normal(0, 0.03, problems), 0, 1)
    return before, after


def test_paired_gain_value_is_mean_difference_in_points():
    before, after = correlated_before_after(300, seed=0)
    gain = paired_bootstrap_gain(before, after)
    assert gain["value"] == pytest.approx(100 * np.mean(after - before), rel=1e-12)
    assert gain["ci"][0] < gain["value"] < gain["ci"][1]
    assert gain["n"] == 300
    assert 0 < gain["ci"][0]  # a clear improvement is resolved as one
    json.dumps(gain)  # plain Python types: ready for summary.json


def test_paired_gain_is_narrower_than_unpaired_on_correlated_data():
    before, after = correlated_before_after(300, seed=1)
    paired_low, paired_high = paired_bootstrap_gain(before, after)["ci"]
    # unpaired reference: resample the two evaluations' problems independently
    rng = np.random.default_rng(5)
    resamples = 2000
    before_means = before[rng.integers(0, before.size, (resamples, before.size))].mean(axis=1)
    after_means = after[rng.integers(0, after.size, (resamples, after.size))].mean(axis=1)
    unpaired_low, unpaired_high = 100 * np.quantile(after_means - before_means, [0.025, 0.975])
    assert (paired_high - paired_low) < 0.5 * (unpaired_high - unpaired_low)


def test_paired_gain_of_identical_scores_is_exactly_zero():
    scores = np.random.default_rng(2).random(64)
    gain = paired_bootstrap_gain(scores, scores.copy())
    assert gain == {"value": 0.0, "ci": [0.0, 0.0], "n": 64}


def test_paired_gain_rejects_bad_input():
    with pytest.raises(ValueError, match="same problems.*3 and 2"):
        paired_bootstrap_gain([0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(ValueError, match="empty"):
        paired_bootstrap_gain([], [])
    with pytest.raises(ValueError, match="n_resamples"):
        paired_bootstrap_gain([0.1, 0.2], [0.3, 0.5], n_resamples=10)


# ------------------------------------------------------------------------ summarize


def test_summarize_metric_bootstrap_and_wilson():
    hits = np.array([1, 0, 1, 1, 0, 1, 0, 1, 1, 1], dtype=float)
    wilson = summarize_metric(hits, kind="wilson")
    assert wilson == {"value": 0.7, "ci": list(wilson_ci(7, 10)), "n": 10}
    rates = np.linspace(0, 1, 21)
    boot = summarize_metric(rates, kind="bootstrap", seed=4)
    assert boot["value"] == pytest.approx(0.5)
    assert boot["ci"] == list(bootstrap_ci(rates, seed=4))
    assert boot["n"] == 21
    json.dumps(boot)
    json.dumps(wilson)


def test_summarize_metric_rejects_bad_input():
    with pytest.raises(ValueError, match="only 0 and 1.*bootstrap"):
        summarize_metric([0.5, 1.0], kind="wilson")
    with pytest.raises(ValueError, match="known: bootstrap, wilson"):
        summarize_metric([0.5, 1.0], kind="normal")
    with pytest.raises(ValueError, match="empty"):
        summarize_metric([], kind="wilson")


def test_heldout_items_are_distinct_problems_in_stream_order_and_a_small_split_gives_all_it_has():
    from rlvr.eval.runner import heldout_items
    from rlvr.tasks import get_task
    from rlvr.tasks.base import split_of

    arith = get_task("arith", seed=0)
    stream = [arith.item("heldout", i)["key"] for i in range(200)]
    assert len(set(stream)) < 200  # independent draws repeat problems: what an evaluation must not count twice
    items = heldout_items(arith, 200)
    keys = [item["key"] for item in items]
    assert len(keys) == len(set(keys)) == 200
    firsts = list(dict.fromkeys(stream))
    assert keys[: len(firsts)] == firsts  # first appearances, in the stream's order
    assert heldout_items(arith, 5, skip=3) == items[3:8]
    # mul's held-out split is small: asking for more than it holds gives every held-out problem once
    mul = get_task("mul", seed=3)
    every = {f"{a}*{b}" for a in range(100) for b in range(10) if split_of(f"{a}*{b}") == "heldout"}
    got = [item["key"] for item in heldout_items(mul, 500)]
    assert len(got) == len(set(got)) and set(got) == every and len(every) == 104
