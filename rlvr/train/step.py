"""One training step: sample and score the groups, choose what to train on, compute advantages,
take `updates_per_step` clipped policy-gradient updates, and return the step's metrics row.

`run_step` is the step as the loop calls it; `train_step` is the update alone (micro-batches,
loss, backward, the optimizer), usable on any rollout batch.
"""
from __future__ import annotations

import dataclasses
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from rlvr import distributed
from rlvr.algo.correction import importance_weights, mismatch_of_totals, mismatch_totals
from rlvr.algo.entropy import masked_mean, masked_quantiles
from rlvr.algo.losses import NORMALISED_BY, LossSettings, policy_loss, top_entropy_select
from rlvr.algo.noise import NoiseProbe, NoiseSplit, combine, noise_split
from rlvr.config import RunFailed, TrainConfig
from rlvr.distributed import World
from rlvr.rewards.verifiers import TIMEOUT, parse_reward
from rlvr.rollout.engines import trainer_view
from rlvr.rollout.forward import Scorer, micro_batches
from rlvr.rollout.sample import batch_truncated, select_rows
from rlvr.rollout.strategies import (advantage_function, answer_diversity, gather_samples, group_advantages,
                                     overlong_penalty, reward_mean, select_for_training)
from rlvr.train.guards import check_env_failures, check_reward_failures
from rlvr.train.memory import StepMemory
from rlvr.train.state import RunState
from rlvr.types import Truncation


@dataclass
class StepView:
    """The trainer's view of an external engine's rollouts, taken in the update's first forward
    (`--trainer-view fused`): what a separate no-grad forward before the update would give."""

    logprobs: torch.Tensor  # (N, T) float32 π_old of each sampled token, detached; 0 off the mask
    entropy: torch.Tensor  # (N, T) float32 exact token entropy in nats, detached; 0 off the mask
    viewed: torch.Tensor  # (N,) bool: rows the forward reached (all, unless a non-finite loss cut the update short)


@dataclass
class StepResult:
    metrics: dict
    skipped: str | None  # why the update was not applied ("loss" or "gradient" was non-finite), or None
    view: StepView | None = None  # train_step(fused_view=True): the trainer's view of the batch
    noise: NoiseProbe | None = None  # the partial sums' norms of the first update (rlvr.algo.noise), or None
    sq_grad_norm: float | None = None  # |g|² of the first update's whole gradient, before clipping
    corrected: tuple[float, int] | None = None  # --is-correction: (tokens it cut, tokens it weighed) on this rank


# What train_step reports per step, averaged over its updates (plus tokens/trained_frac).
UPDATE_METRICS = ("loss/policy", "loss/entropy", "loss/kl", "clip/frac", "grad/norm", "clip/cov_tokens",
                  "clip/kl_cov_tokens")


def loss_settings(cfg: TrainConfig, entropy_coef: float) -> LossSettings:
    return LossSettings(
        clip_low=cfg.clip_low, clip_high=cfg.clip_high, aggregation=cfg.loss_agg, beta=cfg.beta,
        entropy_coef=entropy_coef, clip_cov_ratio=cfg.clip_cov_ratio if cfg.clip_cov else 0.0,
        clip_cov_bounds=(cfg.clip_cov_low, cfg.clip_cov_high),
        kl_cov_ratio=cfg.kl_cov_ratio if cfg.kl_cov else 0.0, kl_cov_coef=cfg.kl_cov_coef,
        objective=cfg.policy_loss, ratio_level=cfg.ratio_level, dual_clip=cfg.dual_clip,
        kl_estimator=cfg.kl_estimator, positive_weight=cfg.positive_weight,
    )


def loss_token_mask(batch, cfg: TrainConfig, stop_ids) -> torch.Tensor:
    """The tokens the loss trains on (N, T) bool: the generated ones, less the completions cut at
    --max-new-tokens with --mask-truncated, less all but the top entropy tokens with
    --top-entropy-tokens."""
    token_mask = batch.completion_mask  # (N, T)
    if cfg.mask_truncated:
        token_mask = token_mask & ~batch_truncated(batch, stop_ids)[:, None]
    if cfg.top_entropy_tokens > 0 and bool(token_mask.any()):
        token_mask = top_entropy_select(batch.entropy, token_mask, cfg.top_entropy_tokens)
    return token_mask


def micro_batch_rows(value) -> int | None:
    """--micro-batch-size: rows per micro-batch (0 = the whole batch), or None for auto."""
    return None if str(value) == "auto" else int(value)


class PhaseClock:
    """Seconds spent per phase of the update (forward, backward, optimizer); on CUDA it waits for
    the device at each boundary so the time lands in the phase that queued the work."""

    def __init__(self, device: torch.device) -> None:
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.seconds: dict[str, float] = {}
        self.sync()
        self.last = time.perf_counter()

    def lap(self, phase: str) -> None:
        self.sync()
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self.last
        self.last = now


def grad_sq_norm(params) -> float:
    """|accumulated gradient|² over `params`; with FSDP2's sharded gradients, of the whole (a collective)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norm = torch.nn.utils.get_total_norm(grads, 2.0)
    if hasattr(norm, "full_tensor"):  # a DTensor: the norm of this rank's shards, reduced over the ranks
        norm = norm.full_tensor()
    return float(norm) ** 2


def update_chunks(batch, cfg: TrainConfig, policy) -> tuple[list, NoiseSplit | None]:
    """The update's micro-batches, and with --grad-noise the split they are ordered by: Q1's
    micro-batches, then the rest of H's, then the other groups' (rlvr.algo.noise; three lists),
    so the accumulated gradient passes through Q1 and Q12 on the way. The split is None where the
    batch cannot be split (one group, unequal groups): then one list in the plain order."""
    rows_per_chunk = micro_batch_rows(cfg.micro_batch_size)
    split = noise_split(batch.group_ids) if cfg.grad_noise else None
    if split is None:
        return micro_batches(batch, rows_per_chunk, policy.update_token_budget, policy.can_pack), None
    chunks = []
    for rows in (split.half_samples, split.rest_of_half, split.other_groups):
        chunks.append(micro_batches(batch, rows_per_chunk, policy.update_token_budget, policy.can_pack, rows))
    return chunks, split


def train_step(policy, optimizer, batch, advantages, cfg: TrainConfig, reference=None, entropy_coef: float | None = None,
               generator: torch.Generator | None = None, *, scorer=None, totals: tuple[int, int] | None = None,
               fused_view: bool = False, anchor: str = "proximal") -> StepResult:
    """`updates_per_step` optimizer updates on one rollout batch; returns the step's loss metrics.

    `entropy_coef` is the coefficient in force (controllers and rollbacks move it; default the
    config's). With `top_entropy_tokens`, only that top fraction of the rollout tokens by entropy
    is trained on, and the loss is normalised over them. The batch is split into micro-batches
    (`--micro-batch-size`); each runs through `scorer` (default `Scorer(policy)`; data
    parallelism passes a wrapped one: then every micro-batch but the last runs under its
    `no_sync()`), and the loss is normalised by `totals` = (tokens, sequences) of the whole step
    (default: this batch's), so the gradient does not depend on the split.

    `fused_view` (an external engine's batch, whose `logprobs` are still the engine's): the
    trainer's log-probs π_old and exact entropies are taken from the first update's own forward,
    micro-batch by micro-batch, instead of a separate forward before the update. Each
    micro-batch's importance weights are computed from its detached log-probs before its loss
    needs them (a weight depends on its own token, or its own row, only), so the gradient and the
    `mismatch/corrected_frac` are those of the separate pass. The view is returned in `view`.

    `anchor` (a batch with `engine_logprobs` μ: an external engine's, or stale rollouts'):
    "proximal" clips the ratio against the trainer's own log-probs at this step (π_old of the
    first update's forward) and weights each token by --is-correction's function of π_old/μ: the
    decoupled PPO objective of Hilton et al. 2022 (docs/async.md). "behaviour" (--stale-loss
    naive) clips against μ itself, with no weight.

    With --grad-noise (default) the micro-batches are ordered by `update_chunks`, and on the
    first update (the on-policy gradient) the squared norms of the accumulated gradient after
    Q1 and after Q12 are kept (`StepResult.noise`): norms only, no copy of a gradient. Under
    DDP they are this rank's, read before the all-reduce; under FSDP2 (a scorer with
    `syncs_partial_sums`) the last micro-batch of Q1 and of Q12 also reduce-scatters, so they
    are the whole step's (two more reduce-scatters per step)."""
    entropy_coef = cfg.entropy_coef if entropy_coef is None else entropy_coef
    settings = loss_settings(cfg, entropy_coef)
    clock = PhaseClock(policy.device)
    scorer = scorer if scorer is not None else Scorer(policy, cfg.temperature, truncation=Truncation.of(cfg))
    rows = batch.num_rows
    token_mask = loss_token_mask(batch, cfg, policy.stop_ids)  # (N, T)
    total_tokens, total_rows = totals if totals is not None else (max(1, int(token_mask.sum())), rows)
    is_weights, correction, view, weighed = None, {}, None, 0
    correct = anchor == "proximal"  # weights from π_old/μ; the naive anchor trains on μ's ratio unweighted
    if batch.engine_logprobs is not None and fused_view:  # π_old and the weights come from update 0's forward
        is_weights = torch.zeros_like(batch.logprobs) if correct else None
        view = StepView(torch.zeros_like(batch.logprobs), torch.zeros_like(batch.logprobs),
                        torch.zeros(rows, dtype=torch.bool, device=batch.logprobs.device))
    elif batch.engine_logprobs is not None and correct:  # toward the trainer's distribution (--is-correction)
        weighed = int(token_mask.sum())
        is_weights, correction = importance_weights(batch.logprobs, batch.engine_logprobs, token_mask,
                                                    cfg.is_correction, cfg.is_cap)
    no_sync = getattr(scorer, "no_sync", None)
    synced = bool(getattr(scorer, "syncs_partial_sums", False))  # FSDP2: a boundary may reduce-scatter
    segments, split = update_chunks(batch, cfg, policy)
    chunks = [c for segment in segments for c in segment] if split is not None else segments
    # the micro-batch after which a partial sum is read: the last of Q1 and the last of the rest of H
    probes = {} if split is None else {len(segments[0]) - 1: "q1", len(segments[0]) + len(segments[1]) - 1: "q12"}
    old_logprobs = torch.zeros_like(batch.logprobs)
    ref_logprobs = None
    if cfg.beta > 0:
        with torch.no_grad():
            ref_scorer = Scorer(reference, cfg.temperature, truncation=Truncation.of(cfg))
            ref_logprobs = torch.zeros_like(batch.logprobs)
            for c in chunks:
                ref_logprobs[c] = ref_scorer(batch, c)[0]
    sums = dict.fromkeys(UPDATE_METRICS, 0.0)
    skipped = None
    params = [p for p in policy.module.parameters() if p.requires_grad]
    read: dict[str, float] = {}
    sq_full = None
    clock.lap("other")
    for update in range(cfg.updates_per_step):
        optimizer.zero_grad(set_to_none=True)
        for i, c in enumerate(chunks):
            sync = no_sync is None or i == len(chunks) - 1 or (synced and i in probes)
            with nullcontext() if sync else no_sync():
                logprobs, entropy = scorer(batch, c, with_entropy=entropy_coef != 0 or view is not None,
                                           entropy_grad=entropy_coef != 0)
                if update == 0:
                    mine = logprobs.detach()
                    old_logprobs[c] = mine if correct or batch.engine_logprobs is None else batch.engine_logprobs[c]
                    if view is not None:  # the trainer's view of these rows, and their weights, before their loss
                        if is_weights is not None:
                            is_weights[c] = importance_weights(mine, batch.engine_logprobs[c], token_mask[c],
                                                               cfg.is_correction, cfg.is_cap)[0]
                        view.logprobs[c], view.entropy[c], view.viewed[c] = mine, entropy.detach(), True
                loss, m = policy_loss(logprobs, old_logprobs[c], advantages[c], token_mask[c], settings,
                                      total_tokens, total_rows, None if ref_logprobs is None else ref_logprobs[c],
                                      entropy if entropy_coef != 0 else None, generator,
                                      None if is_weights is None else is_weights[c])
                clock.lap("forward")
                if not torch.isfinite(loss):
                    skipped = "loss"
                    if no_sync is None:
                        break
                    # Data parallel: every rank must run the same backward collectives, so this one
                    # goes on; the non-finite gradient reaches every rank and all skip the update.
                loss.backward()
                clock.lap("backward")
                if update == 0 and i in probes:
                    read[probes[i]] = grad_sq_norm(params)
                    clock.lap("noise")
            sums["loss/policy"] += m["loss/policy"]
            sums["clip/cov_tokens"] += m.get("clip/cov_tokens", 0.0)
            sums["clip/kl_cov_tokens"] += m.get("clip/kl_cov_tokens", 0.0)
            sums["loss/entropy"] += -entropy_coef * m.get("loss/entropy", 0.0)
            sums["loss/kl"] += cfg.beta * m.get("loss/kl", 0.0)
            sums["clip/frac"] += m["clip/frac_sum"] / total_tokens
        if skipped is None or no_sync is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
            sums["grad/norm"] += float(norm)
            if update == 0:
                sq_full = float(norm) ** 2
            skipped = skipped or (None if torch.isfinite(norm) else "gradient")
        if skipped is not None:  # never apply a non-finite update; the step is counted and logged
            optimizer.zero_grad(set_to_none=True)
            break
        optimizer.step()
        policy.updates += 1
        optimizer.zero_grad(set_to_none=True)  # the gradients' memory is free while the next step samples
        clock.lap("optimizer")
    if view is not None and correct:  # the share the weights cut, over the tokens the forward reached (all, normally)
        weighed = int((token_mask & view.viewed[:, None]).sum())
        correction = importance_weights(view.logprobs, batch.engine_logprobs, token_mask & view.viewed[:, None],
                                        cfg.is_correction, cfg.is_cap)[1]
    metrics = {key: value / cfg.updates_per_step for key, value in sums.items()}
    metrics["tokens/trained_frac"] = total_tokens / max(1, batch.generated_tokens())
    metrics["perf/micro_batches"] = len(chunks)
    metrics.update(correction)
    metrics.update({f"perf/{phase}_seconds": seconds for phase, seconds in clock.seconds.items() if phase != "other"})
    noise = None
    if split is not None and skipped is None and len(read) == 2:
        units = token_mask.sum(dim=1) if NORMALISED_BY[cfg.loss_agg] == "tokens" else torch.ones(rows)  # (N,)
        q1 = float(units[split.half_samples].sum())
        step_units = total_tokens if NORMALISED_BY[cfg.loss_agg] == "tokens" else total_rows
        noise = NoiseProbe(read["q1"], read["q12"], q1, q1 + float(units[split.rest_of_half].sum()), step_units,
                           split.groups_half, split.group_size, split.samples_half, split.groups_split, synced)
    corrected = (correction["mismatch/corrected_frac"] * max(1, weighed), weighed) if correction else None
    return StepResult(metrics, skipped, view=view, noise=noise, sq_grad_norm=sq_full if skipped is None else None,
                      corrected=corrected)


def no_update() -> StepResult:
    """The metrics of a step that trained on nothing (no group had signal): no update is made."""
    return StepResult(dict.fromkeys((*UPDATE_METRICS, "tokens/trained_frac"), 0.0), skipped=None)


# What train_step reports as a share of the whole step: with W ranks, the ranks' values add up
# (each is normalised by the step's global token or sequence count).
SUMMED_UPDATE_METRICS = ("loss/policy", "loss/entropy", "loss/kl", "clip/frac", "clip/cov_tokens", "clip/kl_cov_tokens")


def fuses_view(cfg: TrainConfig, engine) -> bool:
    """Whether the trainer's view of an external engine's (or stale) rollouts (π_old, exact entropies) is taken
    in the update's own first forward (True) or in a separate forward before it: fused unless
    `--trainer-view separate`, or `--top-entropy-tokens`, whose choice of tokens needs the whole
    step's entropies before the first micro-batch's loss (docs/engines.md, "The trainer's view")."""
    sampled_elsewhere = (engine is not None and engine.external) or cfg.max_staleness > 0  # μ is not the trainer's
    return bool(sampled_elsewhere and cfg.trainer_view == "fused" and not cfg.top_entropy_tokens)


def run_step(st: RunState, cfg: TrainConfig, task, pool, reference, memory: StepMemory, events_log,
             engine=None, source=None) -> dict:
    """One optimizer step: collect -> select -> advantages -> update -> the step's metrics row.

    With W ranks each rank samples, scores and trains on its shard; the samples' metrics are
    computed over every rank's samples (gathered), the loss terms summed, times and memory taken
    at their maximum, so the row describes the whole step and is the same on every rank.

    An external engine's rollouts get the trainer's view (log-probs, exact entropies) either before
    the update (a separate forward in `collect`) or from the update's first forward (`fuses_view`);
    then the entropy is known only after the update, and --entropy-target's coefficient reacts to
    a step's entropy from the next step on, as TRL's adaptive entropy control does.

    `source` (--max-staleness N ≥ 1, rlvr.train.pipeline): the step's rollouts were sampled up to
    N versions ago; they are trained on as an external engine's are, their sampler's log-probs
    being the behaviour policy's (--stale-loss), and the row gains async/...."""
    world, step = st.world, st.step
    for group in st.optimizer.param_groups:
        group["lr"] = cfg.lr * min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
    memory_before = memory.start(step)
    started = time.perf_counter()
    fused = fuses_view(cfg, engine)
    if source is None:
        generated, samples = collect(st, cfg, task, pool, events_log, engine, view=not fused)
        stale = {}
    else:
        generated, samples, stale = collect_stale(st, cfg, source, events_log, view=not fused)
    selected = select_for_training(generated, cfg)  # --group-filter, --downsample: this rank's N' ≤ N rows
    batch = generated.batch if selected.rows is None else select_rows(generated.batch, selected.rows)
    advantages = group_advantages(advantage_function(cfg), selected.rewards, selected.group_sizes)  # (N',)
    step_selection = select_for_training(samples, cfg) if world.parallel else selected  # the whole step's

    if not fused:
        entropy = masked_mean(samples.entropy, samples.completion_mask)
        st.controller.update(entropy)  # the coefficient of this step's loss reacts to its own entropy
    trained_rows = sum(step_selection.group_sizes)
    coefficient = st.entropy_coef  # the one this step's loss uses (control/entropy_coef)
    result = update_policy(st, cfg, batch, advantages, reference, samples, step_selection, generated.batch, fused,
                           anchor="behaviour" if source is not None and cfg.stale_loss == "naive" else "proximal")
    if fused:  # the view of the rows trained on came from the update; the rest (if any) gets its own pass
        samples = complete_view(st, cfg, generated, selected.rows, result.view)
        entropy = masked_mean(samples.entropy, samples.completion_mask)
        st.controller.update(entropy)  # --entropy-target: in force from the next step on
    if generated.batch.engine_logprobs is not None:
        generated.metrics.update(step_mismatch(world, generated.batch))
    local = {"perf/step_seconds": time.perf_counter() - started, "perf/rollout_seconds": generated.sampling_seconds,
             "perf/peak_memory_mib": memory.peak(), "sampling/extra_seconds": generated.metrics["sampling/extra_seconds"]}
    # this rank's engine times (reload, the trainer's log-prob pass, the environment): the slowest rank's in the row
    local.update({key: generated.metrics.pop(key) for key in [k for k in generated.metrics if k.startswith("perf/")]})
    if memory_before is not None:  # a probe step (StepMemory)
        local["perf/memory_before_step_mib"] = memory_before
    update, skipped, local, probes, sq_full = reduce_update(world, step, result, local, trained_rows)
    if skipped is None and sq_full is not None:  # the gradient's noise (rlvr.algo.noise), measured on update 1
        estimate = combine(probes, sq_full, sum(size > 0 for size in step_selection.group_sizes))
        if estimate is not None:
            update = {**update, **st.noise_monitor.update(estimate)}
    st.bad_steps = st.bad_steps + 1 if skipped else 0
    if skipped:
        events_log.write({"event": "nan_skip", "step": step, "cause": skipped, "in_a_row": st.bad_steps,
                          "message": f"non-finite {skipped}; the update was not applied"})
    return step_row(st, cfg, samples, entropy, update, skipped,
                    {**generated.metrics, **step_selection.metrics, **local, **stale, "control/entropy_coef": coefficient})


def collect(st: RunState, cfg: TrainConfig, task, pool, events_log, engine=None, view: bool = True) -> tuple:
    """Samples (with `engine`, rlvr.rollout.engines) and scores this rank's groups -> (its
    Generated, every rank's StepSamples); stops the run on too many failed verifier calls.
    `view` False: an external engine's rollouts keep its log-probs and no entropies until the
    update's forward supplies the trainer's (`complete_view`)."""
    world, step = st.world, st.step
    st.policy.module.eval()
    with distributed.decoding(st.policy, world):
        generated = st.sampler.collect(st.policy, task, pool, st.sampling_seed(step, 0), engine,
                                       trainer_view=view)  # this rank's samples
    st.policy.module.train()
    return generated, step_samples(st, cfg, generated, events_log)


def collect_stale(st: RunState, cfg: TrainConfig, source, events_log, view: bool) -> tuple:
    """--max-staleness: the step's rollouts from `source` (sampled when admitted), with the
    trainer's view taken now when `view` (not fused into the update) -> (this rank's Generated,
    every rank's StepSamples, the async/... metrics)."""
    generated, stale = source.take(st.step)
    if view:
        started = time.perf_counter()
        with distributed.decoding(st.policy, st.world):
            generated.batch = trainer_view(st.policy, generated.batch, cfg.temperature, Truncation.of(cfg))
        generated.metrics["perf/logprob_seconds"] = time.perf_counter() - started
    return generated, step_samples(st, cfg, generated, events_log), stale


def step_samples(st: RunState, cfg: TrainConfig, generated, events_log):
    """Every rank's StepSamples of this rank's Generated; stops the run on too many failed
    verifier calls or environment failures."""
    world, step = st.world, st.step
    # Entropy, lengths and rewards describe the policy: every generated sample counts, every rank's.
    samples = gather_samples(world, generated.samples(st.policy.stop_ids), generated.round_groups)  # N rows
    calls = samples.rows * (1 if samples.components is None else samples.components.shape[1])  # one per verifier
    check_reward_failures(samples.failures, calls, cfg, step, events_log,
                          samples.failure_ranks if world.parallel else None)
    if generated.episode_records is not None:
        check_env_failures(generated.episode_records, cfg, step, events_log)
    return samples


def complete_view(st: RunState, cfg: TrainConfig, generated, rows: torch.Tensor | None, view: StepView | None):
    """`generated.batch` with the trainer's log-probs and entropies in every row: those the update's
    first forward reached (`view`, over the trained `rows` of the batch; None = all), and for the
    rest (groups --group-filter dropped, rows --downsample left out, an update cut short) one
    forward without gradients over those rows only -> every rank's StepSamples, gathered again
    now that the entropies are known. Its time is perf/logprob_seconds."""
    started = time.perf_counter()
    batch = generated.batch
    logprobs, entropy = torch.zeros_like(batch.logprobs), torch.zeros_like(batch.entropy)
    covered = torch.zeros(batch.num_rows, dtype=torch.bool, device=batch.logprobs.device)
    if view is not None:
        index = torch.arange(batch.num_rows, device=covered.device) if rows is None else rows.to(covered.device)
        reached = index[view.viewed]
        logprobs[reached], entropy[reached] = view.logprobs[view.viewed], view.entropy[view.viewed]
        covered[reached] = True
    missing = (~covered).nonzero().squeeze(1)
    if missing.numel():
        # With --fsdp decoding() is a collective; every rank gets here alike: --fsdp refuses --group-filter
        # (the one option that can leave one rank's rows out and not another's), and --downsample
        # leaves the same number out of every group, so every rank has rows missing or none has.
        with distributed.decoding(st.policy, st.world):
            rest = trainer_view(st.policy, select_rows(batch, missing), cfg.temperature, Truncation.of(cfg))
        logprobs[missing], entropy[missing] = rest.logprobs, rest.entropy
    generated.batch = dataclasses.replace(batch, logprobs=logprobs, entropy=entropy)
    generated.metrics["perf/logprob_seconds"] = time.perf_counter() - started if missing.numel() else 0.0
    return gather_samples(st.world, generated.samples(st.policy.stop_ids), generated.round_groups)


def step_mismatch(world: World, batch) -> dict:
    """mismatch/* of the whole step: every rank's sums and extremes over its generated tokens,
    combined (rlvr.algo.correction)."""
    totals = mismatch_totals(batch.logprobs, batch.engine_logprobs, batch.completion_mask)
    return mismatch_of_totals(world.gather(totals, "exchanging the step's mismatch") if world.parallel else [totals])


def update_policy(st: RunState, cfg: TrainConfig, batch, advantages, reference, samples, step_selection,
                  generated_batch, fused: bool = False, anchor: str = "proximal") -> StepResult:
    """train_step on this rank's selected rows, or no update when the step kept no group. With W
    ranks the loss is normalised by the whole step's tokens and sequences, and a rank none of
    whose groups were kept still joins the gradient all-reduce with an empty row. `fused`: the
    update's first forward also takes the trainer's view of the rows (train_step's `fused_view`)."""
    world = st.world
    loss_generator = torch.Generator().manual_seed(st.sampling_seed(st.step, 2))
    trained_rows = sum(step_selection.group_sizes)
    totals = None  # one process: train_step normalises by its own batch
    if world.parallel:
        trained_mask = samples.completion_mask if not cfg.mask_truncated else \
            samples.completion_mask & ~samples.truncated[:, None]
        if step_selection.rows is not None:
            trained_mask = trained_mask[step_selection.rows]
        totals = (max(1, int(trained_mask.sum())), trained_rows)  # the loss normaliser of the whole step
        if trained_rows and not batch.num_rows:  # none of this rank's groups kept: it still joins the all-reduce
            batch, advantages, fused = idle_batch(generated_batch), advantages.new_zeros(1), False
    if not trained_rows:  # --group-filter found no group with signal within its budget: nothing to learn from
        return no_update()
    try:
        return train_step(st.policy, st.optimizer, batch, advantages, cfg, reference, entropy_coef=st.entropy_coef,
                          generator=loss_generator, scorer=st.scorer, totals=totals, fused_view=fused,
                          anchor=anchor)
    except RuntimeError as err:
        if world.parallel and distributed.is_comm_error(err):
            raise world.lost("the gradient all-reduce", err) from None
        raise


def step_row(st: RunState, cfg: TrainConfig, samples, entropy: float, update: dict, skipped: str | None,
             rest: dict) -> dict:
    """The step's row of metrics.jsonl (docs/metrics.md), from every rank's samples and the
    reduced update; `rest`: the sampling, selection and timing metrics, added as they are."""
    p10, p50, p90 = masked_quantiles(samples.entropy, samples.completion_mask)
    lengths = samples.completion_mask.sum(dim=1)  # (N,)
    penalty = 0.0 if not cfg.overlong_buffer else float(
        overlong_penalty(lengths, cfg.max_new_tokens, cfg.overlong_buffer, cfg.overlong_penalty).mean())
    generated_tokens = int(lengths.sum())
    return {
        "step": st.step,
        "reward/mean": samples.reward_mean(),
        "reward/std": float(samples.task_rewards.std(unbiased=False)),
        "reward/zero_signal_frac": samples.zero_signal_frac(),
        "reward/errors": len(samples.failures),
        "reward/timeouts": sum(f.kind == TIMEOUT for f in samples.failures),
        **st.reward_monitor.update(samples.reward_mean()),
        "entropy/mean": entropy,
        **st.monitor.update(entropy),
        "entropy/p10": p10, "entropy/p50": p50, "entropy/p90": p90,
        "diversity/answers": answer_diversity(samples.answers, samples.group_sizes),
        **update,
        "control/entropy_coef": st.entropy_coef,
        "control/rollbacks": st.rollbacks,
        "optim/lr": st.optimizer.param_groups[0]["lr"],
        "optim/skipped": int(skipped is not None),
        "completion/mean_length": float(lengths.float().mean()),
        "completion/truncated_frac": float(samples.truncated.float().mean()),
        "perf/rollout_tokens_per_s": generated_tokens / max(rest["perf/rollout_seconds"], 1e-9),
        **rest,
        "reward/overlong_penalty": penalty,
        **component_metrics(cfg, samples),
    }


def component_metrics(cfg: TrainConfig, samples) -> dict:
    """reward/<name>/mean, /errors and /timeouts of each weighted verifier (--reward a:w,b:w)."""
    components = parse_reward(cfg.reward)
    if components is None or samples.components is None:
        return {}
    metrics = {}
    for column, (name, _) in enumerate(components):
        metrics[f"reward/{name}/mean"] = reward_mean(samples.components[:, column], samples.group_sizes)
        failures = [f for f in samples.failures if f.component == name]
        metrics[f"reward/{name}/errors"] = len(failures)
        metrics[f"reward/{name}/timeouts"] = sum(f.kind == TIMEOUT for f in failures)
    return metrics


def idle_batch(batch):
    """One row of `batch` with no token to train on: a rank none of whose groups were kept runs
    it so that it still takes part in the gradient all-reduce (its loss and gradient are 0)."""
    row = select_rows(batch, torch.zeros(1, dtype=torch.long))
    return dataclasses.replace(row, completion_mask=torch.zeros_like(row.completion_mask))


def reduce_update(world: World, step: int, result: StepResult, local: dict, trained_rows: int) -> tuple:
    """The update's metrics, skip decision and timings of the whole step, with every rank's
    gradient-noise probe and the step's |g|² -> (metrics, skipped, timings, probes, |g|²). One
    process: unchanged. W ranks: loss terms summed (each rank's is its share of the global
    normaliser), times and memory at their maximum; grad/norm (and |g|², rank 0's) is the same on
    every rank (the gradients were all-reduced before it was taken)."""
    if not world.parallel:
        return result.metrics, result.skipped, local, [result.noise], result.sq_grad_norm
    every = world.gather((result.metrics, result.skipped, local, result.noise, result.sq_grad_norm, result.corrected),
                         "reducing the step's metrics")
    probes, sq_full, corrected = [e[3] for e in every], every[0][4], [e[5] for e in every if e[5] is not None]
    every = [e[:3] for e in every]
    skipped = {s for _, s, _ in every}
    if None in skipped and len(skipped) > 1:
        ranks = ", ".join(f"rank {r}: {'applied' if s is None else 'skipped (non-finite ' + s + ')'}"
                          for r, (_, s, _) in enumerate(every))
        raise RunFailed(f"step {step}: the ranks disagree on applying the update ({ranks}), so their weights now "
                        "differ; re-run the same command to resume from the last checkpoint", every_rank=True)
    metrics = dict(every[0][0])
    for key in metrics:
        if key in SUMMED_UPDATE_METRICS:
            metrics[key] = sum(m.get(key, 0.0) for m, _, _ in every)
        elif key.startswith("perf/"):
            metrics[key] = max(m.get(key, 0.0) for m, _, _ in every)
    if corrected:  # the share of the step's weighed tokens (every rank's) that --is-correction cut
        metrics["mismatch/corrected_frac"] = sum(c for c, _ in corrected) / max(1, sum(t for _, t in corrected))
    # What the loss trained on, of the tokens selected: < 1 only with --top-entropy-tokens, refused with W > 1.
    metrics["tokens/trained_frac"] = 1.0 if trained_rows else 0.0
    timings = {key: max(t[key] for _, _, t in every if key in t) for key in {k for _, _, t in every for k in t}}
    return metrics, "/".join(sorted(skipped)) if None not in skipped else None, timings, probes, sq_full
