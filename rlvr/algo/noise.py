"""The gradient's noise from squared norms of partial sums (TERMS.md, "Gradient estimates").

McCandlish et al. 2018 ("An Empirical Model of Large-Batch Training", app. A): the mean gradient
g_b of b independent units has E|g_b|² = |G|² + tr Σ/b, where G is the expected gradient and Σ
the covariance of one unit's gradient. Two such squared norms at two sizes from one step give
unbiased estimates of |G|² and tr Σ, and B_simple = tr Σ/|G|² is the noise scale in units.

rlvr's unit is the **group**: one prompt and its K rollouts, whose advantages need the whole
group. The step's accumulation is ordered so that two partial sums come out on the way
(`noise_split`), with H the first h = ⌊B/2⌋ of the step's B groups, S the first s = ⌈h/4⌉ of
them and m = ⌊K/2⌋:

    Q1   S's groups, the first m samples of each       |g_Q1|²  (advantages still from all K)
    Q12  H's groups, all K samples                     |g_Q12|²
    all  the step                                      |g|²     (before clipping)

With tr Σ = tr Σ_inter + tr Σ_intra/K per group (the split of "Critical Batch Size for LLM Policy
Optimization", HiLD at ICML 2026): Σ_inter how the prompts' expected gradients differ (plus what
the K rollouts of a group share), Σ_intra how one prompt's rollouts differ, per rollout:

    E|g|²      = |G|² + tr Σ/B
    E|g_Q12|²  = |G|² + tr Σ/h
    E|g_Q1|²   = |G|² + (tr Σ_inter + tr Σ_intra/m)/s

so (`estimate`):

    tr Σ       = (|g_Q12|² − |g|²) / (1/h − 1/B)
    |G|²       = (B·|g|² − h·|g_Q12|²) / (B − h)
    tr Σ_intra = (s·(|g_Q1|² − |G|²) − tr Σ) / (1/m − 1/K)
    tr Σ_inter = tr Σ − tr Σ_intra/K

(with s = h the third is h·(|g_Q1|² − |g_Q12|²)/(1/m − 1/K)). Why S and not all of H: a
group cut into its first m samples and the rest sits in two micro-batches, so its prompt is
forwarded twice; cutting s = ⌈h/4⌉ groups instead of h costs a quarter of those prompts
(docs/performance.md, "The gradient-noise measurement"), for a noisier tr Σ_intra (its Q1 term
averages s groups, not h). |G|² and tr Σ do not depend on s.

The rollouts of a group are exchangeable (drawn alike, advantages a symmetric function of the
group), so the first m are as good as any m. A partial sum of the accumulated gradient is the
loss over its rows divided by the WHOLE step's normaliser; `mean_gradient_sq_norm` rescales its
squared norm to the gradient the same loss would give on those rows alone: by tokens for
token-mean (a ratio of sums, so unbiased to first order in 1/rows: the approximation ragged
lengths make), by rows for seq-mean and token-sum (exact).

Data parallel: under DDP a partial sum is read before the all-reduce, so it is rank-local
(`NoiseProbe.synced` False): each rank estimates from its own H and the step's |g|², and the
ranks' estimates are averaged. Under FSDP2 the partial sums are reduce-scattered at each
boundary (`synced` True): the norms are the whole step's, and H is the union of the ranks' H.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


SPLIT_SHARE = 4  # Q1 cuts the first ⌈h/SPLIT_SHARE⌉ groups of H (module docstring: why not all of them)


@dataclass
class NoiseSplit:
    """The step's rows in the order that gives the two partial sums (each a row-index tensor,
    each group's rows adjacent): Q1, then the rest of H (Q12 = Q1 + it), then the other groups."""

    half_samples: torch.Tensor  # (s·m,) Q1: S's groups, the first m rows of each
    rest_of_half: torch.Tensor  # (h·K − s·m,) the rest of H: S's other rows, then H's other groups
    other_groups: torch.Tensor  # ((B−h)·K,) the groups outside H
    groups: int  # B: groups in this batch
    groups_half: int  # h = |H| = ⌊B/2⌋
    group_size: int  # K (every group has it)
    samples_half: int  # m = ⌊K/2⌋
    groups_split: int  # s = |S| = ⌈h/4⌉: the groups whose samples Q1 cuts in two


def noise_split(group_ids: torch.Tensor) -> NoiseSplit | None:
    """The Q1 / rest-of-H / other-groups split of a batch's rows (`group_ids` (N,), each group's
    rows adjacent), or None where it cannot be measured: fewer than 2 groups, a group of fewer
    than 2 rows, or groups of different sizes (--adaptive-k)."""
    if group_ids.numel() == 0:
        return None
    _, sizes = torch.unique_consecutive(group_ids, return_counts=True)  # (B,)
    groups, k = sizes.numel(), int(sizes[0])
    if groups < 2 or k < 2 or bool((sizes != k).any()):
        return None
    half, m = groups // 2, k // 2
    cut = -(-half // SPLIT_SHARE)  # s = ⌈h/4⌉
    rows = torch.arange(group_ids.numel()).view(groups, k)  # (B, K): row index of sample j of group g
    rest = torch.cat([rows[:cut, m:].reshape(-1), rows[cut:half].reshape(-1)])
    return NoiseSplit(rows[:cut, :m].reshape(-1), rest, rows[half:].reshape(-1), groups, half, k, m, cut)


def mean_gradient_sq_norm(sq_norm: float, step_units: float, part_units: float) -> float:
    """|accumulated gradient|² of a partial sum -> |gradient of the same loss on those rows alone|²:
    the partial sum was normalised by the step's `step_units` (tokens or rows), the rows alone
    by their own `part_units`."""
    return sq_norm * (step_units / part_units) ** 2


@dataclass
class NoiseProbe:
    """What one rank's update measured: raw squared norms of the accumulated gradient (before any
    rescaling) after Q1 and after Q12, and the counts that rescale them."""

    sq_half_samples: float  # |Σ over Q1|², as accumulated (normalised by the step's units)
    sq_half_groups: float  # |Σ over Q12|²
    units_half_samples: float  # the aggregation's units (tokens or rows) in Q1
    units_half_groups: float  # ... in Q12
    units_step: float  # ... in the whole step (every rank's): the loss's normaliser
    groups_half: int  # h = |H| on this rank
    group_size: int  # K
    samples_half: int  # m
    groups_split: int  # s = |S| on this rank
    synced: bool  # the norms are of the whole step's partial sums (FSDP2), not this rank's


@dataclass
class NoiseEstimate:
    """One step's unbiased estimates, per group (prompt) and in the gradient's squared units."""

    signal: float  # |G|²
    noise: float  # tr Σ per group
    intra: float  # tr Σ_intra per rollout
    inter: float  # tr Σ_inter per group
    group_size: int  # K

    @property
    def scale(self) -> float | None:
        """B_simple in prompts, where both estimates are positive (else the ratio means nothing)."""
        return self.noise / self.signal if self.signal > 0 and self.noise > 0 else None


def estimate(sq_half_samples: float, sq_half_groups: float, sq_full: float, groups_half: int, groups: int,
             samples_half: int, group_size: int, groups_split: int) -> NoiseEstimate:
    """The module docstring's four formulas, from mean-gradient squared norms."""
    b, big, m, k, s = groups_half, groups, samples_half, group_size, groups_split
    noise = (sq_half_groups - sq_full) / (1.0 / b - 1.0 / big)
    signal = (big * sq_full - b * sq_half_groups) / (big - b)
    intra = (s * (sq_half_samples - signal) - noise) / (1.0 / m - 1.0 / k)
    return NoiseEstimate(signal, noise, intra, noise - intra / k, k)


def combine(probes: list[NoiseProbe | None], sq_full: float, groups: int) -> NoiseEstimate | None:
    """The step's estimate from every rank's probe (None where a rank measured nothing), the
    step's |g|² before clipping and its group count B. Rank-local probes (DDP, or one process)
    give one estimate each, averaged; synced probes (FSDP2) give one from the union of the
    ranks' H. None when nothing was measured, a partial sum holds no unit, or B ≤ |H|."""
    measured = [p for p in probes if p is not None]
    if not measured:
        return None
    step_units = measured[0].units_step
    if measured[0].synced:
        if len(measured) != len(probes):
            return None  # every rank must take part in a synced probe
        first = measured[0]
        units_q1 = sum(p.units_half_samples for p in measured)
        units_q12 = sum(p.units_half_groups for p in measured)
        half = sum(p.groups_half for p in measured)
        cut = sum(p.groups_split for p in measured)
        if not units_q1 or not units_q12 or half >= groups:
            return None
        return estimate(mean_gradient_sq_norm(first.sq_half_samples, step_units, units_q1),
                        mean_gradient_sq_norm(first.sq_half_groups, step_units, units_q12), sq_full, half, groups,
                        first.samples_half, first.group_size, cut)
    estimates = [estimate(mean_gradient_sq_norm(p.sq_half_samples, step_units, p.units_half_samples),
                          mean_gradient_sq_norm(p.sq_half_groups, step_units, p.units_half_groups), sq_full,
                          p.groups_half, groups, p.samples_half, p.group_size, p.groups_split)
                 for p in measured if p.units_half_samples and p.units_half_groups and p.groups_half < groups]
    if not estimates:
        return None
    n = len(estimates)
    return NoiseEstimate(sum(e.signal for e in estimates) / n, sum(e.noise for e in estimates) / n,
                         sum(e.intra for e in estimates) / n, sum(e.inter for e in estimates) / n,
                         estimates[0].group_size)


class GradientNoiseMonitor:
    """The step's `grad/*` noise metrics, and the smoothed noise scale: EMAs (half-life 10 steps,
    as entropy's) of |G|² and tr Σ, divided, never an average of per-step ratios (McCandlish et
    al. 2018, app. A.1). Both EMAs start at their first value, so no bias correction is needed."""

    def __init__(self, half_life: float = 10.0) -> None:
        self.decay = 0.5 ** (1.0 / half_life)
        self.signal: float | None = None
        self.noise: float | None = None

    def update(self, e: NoiseEstimate) -> dict[str, float]:
        if self.signal is None or self.noise is None:
            self.signal, self.noise = e.signal, e.noise
        else:
            self.signal = self.decay * self.signal + (1.0 - self.decay) * e.signal
            self.noise = self.decay * self.noise + (1.0 - self.decay) * e.noise
        out = {"grad/signal": e.signal, "grad/noise": e.noise, "grad/noise_intra": e.intra,
               "grad/noise_inter": e.inter}
        if e.scale is not None:
            out["grad/noise_scale"] = e.scale
            out["grad/noise_scale_per_completion"] = e.scale * e.group_size
        if self.signal > 0 and self.noise > 0:
            out["grad/noise_scale_ema"] = self.noise / self.signal
            out["grad/noise_scale_per_completion_ema"] = self.noise / self.signal * e.group_size
        return out

    def state_dict(self) -> dict:
        return {"signal": self.signal, "noise": self.noise, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.signal, self.noise, self.decay = state["signal"], state["noise"], state["decay"]
