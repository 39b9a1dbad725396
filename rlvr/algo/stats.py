"""The statistics of evaluation: pass@k, HM@k and confidence intervals (definitions in TERMS.md).

Pure math: functions of sample counts, answers and per-problem scores, with no model code, so
each number can be checked against an independent computation. The runner that samples a
policy (rlvr/eval/runner.py) and the advantages of pass@k shaping (rlvr/algo/advantages.py)
call into it.

Conventions used throughout:
- a "per-problem" array is 1-D with one entry per held-out problem; every metric is the
  mean over problems, so its confidence interval resamples problems, never samples;
- gains are in percentage points (×100), everything else is a fraction in [0, 1];
- every interval is a 95% interval by default (alpha = 0.05) and every result carries its
  problem count `n`.
"""
from __future__ import annotations

import math
import operator
from statistics import NormalDist
from typing import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike

MIN_BOOTSTRAP_RESAMPLES = 1000
"""Fewer resamples make the percentile endpoints themselves noisy at the 2.5% tails."""

_MAX_MATRIX_ELEMENTS = 1 << 22
"""Cap on one intermediate matrix (bootstrap indices, padded pass@k factors): 32 MiB."""

_SAMPLES_FIX = "ask for more samples (--samples or --eval-samples ≥ k) or a smaller k"


def _as_int(value: object, name: str) -> int:
    """`value` as a Python int; floats such as 4.0 are refused rather than truncated."""
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None


def _check_counts(n: int, c: int, k: int) -> None:
    if k < 1:
        raise ValueError(f"pass@k needs k ≥ 1, got k={k}")
    if k > n:
        raise ValueError(
            f"pass@k needs at least k samples per problem, got k={k} > n={n}: {_SAMPLES_FIX}"
        )
    if c < 0 or c > n:
        raise ValueError(
            f"the correct count c must lie in [0, n], got c={c} with n={n} samples"
        )


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with `n` samples of which `c` are correct.

    Definition (Chen et al., 2021): 1 − C(n−c, k) / C(n, k), the probability that k samples
    drawn without replacement from the n include at least one correct one. Computed as
    1 − Π_{i=n−c+1}^{n} (1 − k/i), which never forms a binomial, so n = 10⁵ is as safe
    as n = 16. Exactly 0.0 when c = 0 and exactly 1.0 when n − c < k (every k-subset must
    contain a correct sample).

    Raises ValueError when k < 1, k > n, c < 0 or c > n.
    """
    n, c, k = _as_int(n, "n"), _as_int(c, "c"), _as_int(k, "k")
    _check_counts(n, c, k)
    if c == 0:
        return 0.0
    if n - c < k:
        return 1.0
    # all factors lie in (0, 1) here because every i > n − c ≥ k
    denominators = np.arange(n - c + 1, n + 1, dtype=np.float64)  # (c,)
    return float(1.0 - np.prod(1.0 - k / denominators))


def pass_at_k_per_problem(
    n: Sequence[int] | ArrayLike, c: Sequence[int] | ArrayLike, k: int | Sequence[int] | ArrayLike
) -> np.ndarray:
    """pass@k (see `pass_at_k`) of every problem at once; `k` is one int or one per problem.

    Returns a float64 array of shape (problems,). The metric "pass@k" is its mean.
    Same product form and same errors as `pass_at_k`, naming the first offending problem.
    """
    n_arr = _as_int_array(n, "n")
    c_arr = _as_int_array(c, "c")
    if n_arr.shape != c_arr.shape:
        raise ValueError(
            f"n and c must have one entry per problem, got {n_arr.size} and {c_arr.size}"
        )
    if np.ndim(k) == 0:
        k_arr = np.full(n_arr.shape, _as_int(k, "k"), dtype=np.int64)  # (problems,)
    else:
        k_arr = _as_int_array(k, "k")  # (problems,)
        if k_arr.shape != n_arr.shape:
            raise ValueError(
                f"k must be one int or one per problem, got {k_arr.size} values "
                f"for {n_arr.size} problems"
            )
    bad = (k_arr < 1) | (k_arr > n_arr) | (c_arr < 0) | (c_arr > n_arr)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        try:
            _check_counts(int(n_arr[first]), int(c_arr[first]), int(k_arr[first]))
        except ValueError as error:
            raise ValueError(f"problem {first}: {error}") from None

    result = np.zeros(n_arr.shape, dtype=np.float64)  # (problems,); c = 0 stays 0
    result[n_arr - c_arr < k_arr] = 1.0
    todo = np.flatnonzero((c_arr > 0) & (n_arr - c_arr >= k_arr))
    if todo.size == 0:
        return result
    # Pad each problem's product to the largest c with factors of 1 so one masked matrix
    # does all problems; chunk the problems so the matrix stays small.
    width = int(c_arr[todo].max())
    rows_per_chunk = max(1, _MAX_MATRIX_ELEMENTS // width)
    offsets = np.arange(width, dtype=np.float64)  # (width,)
    for start in range(0, todo.size, rows_per_chunk):
        rows = todo[start : start + rows_per_chunk]  # (rows,)
        first_i = (n_arr[rows] - c_arr[rows] + 1).astype(np.float64)[:, None]  # (rows, 1)
        denominators = first_i + offsets  # (rows, width): i = n−c+1, n−c+2, ...
        inside = offsets < c_arr[rows][:, None]  # (rows, width): the c real factors
        factors = np.where(inside, 1.0 - k_arr[rows][:, None] / denominators, 1.0)
        result[rows] = 1.0 - np.prod(factors, axis=1)  # (rows,)
    return result


def _as_int_array(values: object, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim > 1:
        raise ValueError(f"{name} must be 1-D (one entry per problem), got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must hold integers, got dtype {array.dtype}")
    return array.astype(np.int64).reshape(-1)


def hm_at_k_ranked(
    answers: Sequence[str | None],
    correct: Sequence[bool],
    seq_logprobs: Sequence[float],
    k: int,
) -> float:
    """HM@k_ranked of ONE problem: 1.0 if a top-k candidate answer is correct, else 0.0.

    Sample j of the problem's n samples has final answer `answers[j]` (None when no answer
    could be extracted), verifier verdict `correct[j]` and sequence log-probability
    `seq_logprobs[j]`. The candidates are the distinct non-None answers, ranked by
      1. votes: how many of the n samples produced the answer (more first),
      2. the mean sequence log-probability of those samples (higher first),
      3. the answer string itself (so the ranking never depends on sample order).
    A candidate is correct when any sample with that answer was scored correct. Samples
    with the same extracted answer are normally scored the same (the verifier checks the
    answer), so "any" and "all" agree; "any" is the choice if a verifier also looks at the
    rest of the completion. Answers are compared as given: normalise them before calling.
    None never counts as a candidate, nor does it use a rank. With fewer than k candidates
    all of them are considered; with none the result is 0.0. The metric is the mean over
    problems (TERMS.md: the share of problems with a correct top-k candidate).
    """
    k = _as_int(k, "k")
    if k < 1:
        raise ValueError(f"hm@k_ranked needs k ≥ 1, got k={k}")
    if not (len(answers) == len(correct) == len(seq_logprobs)):
        raise ValueError(
            "answers, correct and seq_logprobs must have one entry per sample, got lengths "
            f"{len(answers)}, {len(correct)} and {len(seq_logprobs)}"
        )
    if len(answers) == 0:
        raise ValueError("hm@k_ranked needs at least one sample of the problem, got none")
    logprobs = np.asarray(seq_logprobs, dtype=np.float64)  # (n,)
    if np.isnan(logprobs).any() or (logprobs == np.inf).any():
        raise ValueError(
            "seq_logprobs must be log-probabilities (finite or −inf), got "
            f"{logprobs[np.isnan(logprobs) | (logprobs == np.inf)][:3].tolist()}"
        )

    votes: dict[str, int] = {}
    logprob_sums: dict[str, float] = {}
    any_correct: dict[str, bool] = {}
    for answer, is_correct, logprob in zip(answers, correct, logprobs):
        if answer is None:
            continue
        votes[answer] = votes.get(answer, 0) + 1
        logprob_sums[answer] = logprob_sums.get(answer, 0.0) + float(logprob)
        any_correct[answer] = any_correct.get(answer, False) or bool(is_correct)

    ranked = sorted(votes, key=lambda a: (-votes[a], -logprob_sums[a] / votes[a], a))
    return 1.0 if any(any_correct[a] for a in ranked[:k]) else 0.0


def _as_per_problem(values: ArrayLike, name: str) -> np.ndarray:
    """`values` as a finite 1-D float64 array with at least one problem."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per problem), got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty: a metric needs at least one problem")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds non-finite values (NaN or inf); fix the scores first")
    return array


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha} (0.05 gives a 95% interval)")


def bootstrap_ci(
    per_problem: ArrayLike,
    *,
    n_resamples: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap (1 − alpha) interval of the mean of `per_problem`.

    Each resample draws as many problems as there are, with replacement, and takes their
    mean; the interval is the alpha/2 and 1 − alpha/2 quantiles of the resampled means.
    Deterministic for a given input, n_resamples and seed. A single problem, or problems
    that all have the same value, give the degenerate interval (value, value).

    Raises ValueError for empty or non-finite input, n_resamples < 1000 or alpha ∉ (0, 1).
    """
    values = _as_per_problem(per_problem, "per_problem")  # (problems,)
    n_resamples = _as_int(n_resamples, "n_resamples")
    if n_resamples < MIN_BOOTSTRAP_RESAMPLES:
        raise ValueError(
            f"n_resamples must be ≥ {MIN_BOOTSTRAP_RESAMPLES} for a stable interval, "
            f"got {n_resamples}"
        )
    _check_alpha(alpha)
    if np.all(values == values[0]):
        # every resample has this mean; skip the draws and the rounding of a long sum
        return float(values[0]), float(values[0])

    problems = values.size
    rng = np.random.default_rng(seed)
    resample_means = np.empty(n_resamples, dtype=np.float64)  # (n_resamples,)
    per_chunk = max(1, _MAX_MATRIX_ELEMENTS // problems)
    for start in range(0, n_resamples, per_chunk):
        stop = min(start + per_chunk, n_resamples)
        indices = rng.integers(0, problems, size=(stop - start, problems))  # (chunk, problems)
        resample_means[start:stop] = values[indices].mean(axis=1)  # (chunk,)
    low, high = np.quantile(resample_means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def seed_bootstrap_ci(
    per_seed: Sequence[ArrayLike],
    *,
    n_resamples: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Two-level percentile bootstrap of the mean over seeds of per-seed problem means.

    `per_seed[s]` holds seed s's per-problem values (e.g. paired differences, for a gain).
    Each resample draws the seeds with replacement, then each drawn seed's problems with
    replacement, so the interval holds both the training noise between seeds and the
    evaluation noise between problems; with one seed it is `bootstrap_ci`'s interval. With
    few seeds the seed level is resampled from few values and the interval is optimistic:
    report the seed count alongside it.
    """
    arrays = [_as_per_problem(values, f"per_seed[{i}]") for i, values in enumerate(per_seed)]
    if not arrays:
        raise ValueError("per_seed must hold at least one seed's values")
    n_resamples = _as_int(n_resamples, "n_resamples")
    if n_resamples < MIN_BOOTSTRAP_RESAMPLES:
        raise ValueError(f"n_resamples must be ≥ {MIN_BOOTSTRAP_RESAMPLES} for a stable interval, got {n_resamples}")
    _check_alpha(alpha)
    rng = np.random.default_rng(seed)
    seeds = len(arrays)
    # problem-level resample means of every seed, drawn once: (seeds, n_resamples)
    inner = np.empty((seeds, n_resamples), dtype=np.float64)
    for s, values in enumerate(arrays):
        per_chunk = max(1, _MAX_MATRIX_ELEMENTS // values.size)
        for start in range(0, n_resamples, per_chunk):
            stop = min(start + per_chunk, n_resamples)
            inner[s, start:stop] = values[rng.integers(0, values.size, size=(stop - start, values.size))].mean(axis=1)
    picks = rng.integers(0, seeds, size=(n_resamples, seeds))  # (n_resamples, seeds): seeds drawn per resample
    means = inner[picks, np.arange(n_resamples)[:, None]].mean(axis=1)  # (n_resamples,)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def wilson_ci(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score (1 − alpha) interval of the proportion successes / n.

    With p = successes/n and z the 1 − alpha/2 normal quantile:
    (p + z²/2n ± z·sqrt(p(1−p)/n + z²/4n²)) / (1 + z²/n). Unlike the normal approximation
    it stays inside [0, 1] and is not degenerate at p = 0 or 1.

    Raises ValueError when n < 1, successes ∉ [0, n] or alpha ∉ (0, 1).
    """
    successes, n = _as_int(successes, "successes"), _as_int(n, "n")
    if n < 1:
        raise ValueError(f"wilson_ci needs n ≥ 1 trials, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n], got successes={successes} with n={n}")
    _check_alpha(alpha)
    z = NormalDist().inv_cdf(1 - alpha / 2)
    p = successes / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # at p = 0 and p = 1 the bound is exactly 0 or 1; pin it instead of trusting rounding
    low = 0.0 if successes == 0 else max(0.0, center - half_width)
    high = 1.0 if successes == n else min(1.0, center + half_width)
    return low, high


def paired_bootstrap_gain(
    before: ArrayLike,
    after: ArrayLike,
    *,
    n_resamples: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict:
    """The "gain" of TERMS.md: mean(after − before) over problems, in percentage points.

    `before[i]` and `after[i]` are the same problem's score (e.g. at step 0 and step s).
    The interval is a paired bootstrap: each resample draws one set of problem indices and
    uses it for both arrays, which equals bootstrapping the per-problem differences. Pairing
    removes the problem-difficulty variance that both evaluations share, so on correlated
    evaluations (the usual case) it is far narrower than two independent intervals.

    Returns {"value": points, "ci": [low, high] in points, "n": problems}.
    Raises ValueError when the arrays differ in length, plus bootstrap_ci's errors.
    """
    before_arr = _as_per_problem(before, "before")  # (problems,)
    after_arr = _as_per_problem(after, "after")  # (problems,)
    if before_arr.shape != after_arr.shape:
        raise ValueError(
            "before and after must score the same problems in the same order, got "
            f"{before_arr.size} and {after_arr.size} problems"
        )
    differences = after_arr - before_arr  # (problems,)
    low, high = bootstrap_ci(differences, n_resamples=n_resamples, alpha=alpha, seed=seed)
    return {
        "value": 100.0 * float(differences.mean()),
        "ci": [100.0 * low, 100.0 * high],
        "n": int(differences.size),
    }


def _bootstrap_interval(
    values: np.ndarray, *, alpha: float, seed: int, n_resamples: int
) -> tuple[float, float]:
    return bootstrap_ci(values, n_resamples=n_resamples, alpha=alpha, seed=seed)


def _wilson_interval(
    values: np.ndarray, *, alpha: float, seed: int, n_resamples: int
) -> tuple[float, float]:
    if not np.isin(values, (0.0, 1.0)).all():
        raise ValueError(
            "kind='wilson' is for plain proportions: per_problem must hold only 0 and 1, got "
            f"e.g. {values[~np.isin(values, (0.0, 1.0))][:3].tolist()}; use kind='bootstrap'"
        )
    return wilson_ci(int(values.sum()), int(values.size), alpha)


_INTERVALS: dict[str, Callable[..., tuple[float, float]]] = {
    "bootstrap": _bootstrap_interval,
    "wilson": _wilson_interval,
}


def summarize_metric(
    per_problem: ArrayLike,
    *,
    kind: str = "bootstrap",
    seed: int = 0,
    alpha: float = 0.05,
    n_resamples: int = 2000,
) -> dict:
    """A metric as eval.json stores it: {"value": mean, "ci": [low, high], "n": problems}.

    kind="bootstrap": percentile bootstrap over problems (any per-problem score, e.g.
    pass@k estimates); kind="wilson": Wilson interval, only for 0/1 scores (e.g. greedy
    correctness, hm@k_ranked hits). `seed` and `n_resamples` only affect the bootstrap.
    """
    if kind not in _INTERVALS:
        raise ValueError(f"unknown interval kind {kind!r}; known: {', '.join(sorted(_INTERVALS))}")
    values = _as_per_problem(per_problem, "per_problem")  # (problems,)
    low, high = _INTERVALS[kind](values, alpha=alpha, seed=seed, n_resamples=n_resamples)
    return {"value": float(values.mean()), "ci": [low, high], "n": int(values.size)}

def metrics_from_per_problem(per_problem: list[dict], ks: Sequence[int], seed: int = 0) -> dict:
    """The metric table of eval.json, recomputable from its per-problem counts."""
    n = [p["n"] for p in per_problem]
    c = [p["correct"] for p in per_problem]
    metrics = {}
    for k in ks:
        name = "pass@1" if k == 1 else f"hm@{k}"
        metrics[name] = summarize_metric(pass_at_k_per_problem(n, c, k), kind="bootstrap", seed=seed)
        ranked = [p[f"hm@{k}_ranked"] for p in per_problem]
        metrics[f"hm@{k}_ranked"] = summarize_metric(ranked, kind="wilson")
    metrics["pass@1_greedy"] = summarize_metric([float(p["greedy_correct"]) for p in per_problem], kind="wilson")
    return metrics


def per_problem_values(per_problem: list[dict], metric: str) -> np.ndarray:
    """Per-problem values of one metric (for paired gains): pass@1, hm@k, hm@k_ranked, pass@1_greedy."""
    if metric == "pass@1_greedy":
        return np.array([float(p["greedy_correct"]) for p in per_problem])
    if metric.endswith("_ranked"):
        return np.array([float(p[metric]) for p in per_problem])
    k = 1 if metric == "pass@1" else int(metric.split("@")[1])
    return pass_at_k_per_problem([p["n"] for p in per_problem], [p["correct"] for p in per_problem], k)
