"""The RLVR training loop: one run of group-sampled clipped policy gradient.

Run it:  rlvr train --k 8 --steps 100 --out runs/k8      (or rlvr.trainer.train(TrainConfig(...)))

One step, data flowing one way:
  B prompts -> K samples each, one batch, exact token entropy from the sampling logits
  -> rewards (verifier; failures contained) -> group advantages (by name)
  -> clipped policy-gradient loss, `updates_per_step` optimizer updates -> metrics -> checkpoint.

Where it departs from the papers:
  * The "old" log-probs of the first update are the current policy's own, detached, from the
    same forward pass that computes the loss: the ratio is exactly 1 on-policy and no extra
    forward pass is spent. Later updates on the same batch reuse those log-probs, as PPO does.
  * The prompt stream and the sampling noise are functions of (seed, step), so a resumed run
    samples exactly what an uninterrupted one would have, and evaluation (own generator) does
    not perturb training.
  * Entropy is the exact entropy of the full next-token distribution at the sampling
    temperature (TERMS.md), not the sampled token's negative log-prob.
"""
from __future__ import annotations

import json
import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rlvr import __version__
from rlvr.advantages import ADVANTAGES, zero_signal_fraction
from rlvr.backends.tiny import ByteTokenizer, load_policy, save_policy
from rlvr.checkpoint import clean_temporaries, load_latest, rng_state, save_checkpoint, set_rng_state
from rlvr.config import ConfigError, TrainConfig, to_dict
from rlvr.entropy import EntropyMonitor, masked_mean, masked_quantiles
from rlvr.evaluation import evaluate_policy, flat_eval_metrics, paired_bootstrap_gain, per_problem_values
from rlvr.losses import LossSettings, policy_loss
from rlvr.rewards import answer_diversity, load_verifier, score_batch
from rlvr.rollout import completion_logprobs, sample_groups
from rlvr.tasks import get_task

EVAL_KS = (1, 4, 8)
HEADLINE = "hm@4"  # the metric the progress bar shows and gains are reported for


def stream_seed(seed: int, step: int, stream: int = 0) -> int:
    """Independent, reproducible seeds per (run seed, step, stream): 0 sampling, 1 evaluation."""
    return (seed * 1_000_003 + step * 7_919 + stream * 104_729) % (2**63 - 1)


def peak_memory_mib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class RunDir:
    """The files of a run directory (INTERFACE.md) and the decision to resume or start over."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.root = Path(cfg.out)
        self.config_file = self.root / "config.json"
        self.metrics_file = self.root / "metrics.jsonl"
        self.events_file = self.root / "events.jsonl"
        self.checkpoints = self.root / "checkpoints"
        self.final = self.root / "final"

    def check_compatible(self, cfg: TrainConfig) -> None:
        """Refuses (exit 2) an --out that holds a run of another config, unless --force."""
        if not self.config_file.is_file() or cfg.force:
            return
        old = json.loads(self.config_file.read_text()).get("config", {})
        new = to_dict(cfg)
        diffs = [f"{name}: {old.get(name)!r} -> {new[name]!r}" for name in new
                 if name not in cfg.RESUMABLE_CHANGES and old.get(name) != new[name]]
        if diffs:
            raise ConfigError("out", f"{cfg.out} holds a run with a different config ({'; '.join(diffs)}); "
                                     "use another --out, or --force to start over there")

    def start_fresh(self) -> None:
        import shutil

        for path in (self.metrics_file, self.events_file, self.root / "eval.json"):
            path.unlink(missing_ok=True)
        for path in (self.checkpoints, self.final):
            shutil.rmtree(path, ignore_errors=True)

    def write_config(self, cfg: TrainConfig) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(json.dumps({"rlvr_version": __version__, "config": to_dict(cfg)}, indent=2) + "\n")

    def truncate_metrics(self, last_step: int) -> None:
        """Drops rows after the checkpoint being resumed, which the resumed run re-creates."""
        if not self.metrics_file.is_file():
            return
        kept = []
        for line in self.metrics_file.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line torn by the kill
                continue
            if row.get("step", math.inf) <= last_step:
                kept.append(line)
        self.metrics_file.write_text("".join(line + "\n" for line in kept))


class JsonlWriter:
    """Appends one JSON object per line and flushes, so a kill loses at most the current line."""

    def __init__(self, path: Path) -> None:
        self.handle = open(path, "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        self.handle.write(json.dumps(row, allow_nan=True) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


@dataclass
class StepResult:
    metrics: dict
    skipped: bool


def train_step(model, optimizer, batch, advantages, cfg: TrainConfig, ref_model=None) -> StepResult:
    """`updates_per_step` optimizer updates on one rollout batch; returns the step's loss metrics."""
    settings = LossSettings(cfg.clip_low, cfg.clip_high, cfg.loss_agg, cfg.beta, cfg.entropy_coef)
    rows = batch.num_rows
    mbs = cfg.micro_batch_size or rows
    total_tokens = max(1, batch.generated_tokens())
    chunks = [slice(i, min(rows, i + mbs)) for i in range(0, rows, mbs)]
    old_logprobs = torch.zeros_like(batch.logprobs)
    ref_logprobs = None
    if cfg.beta > 0:
        with torch.no_grad():
            ref_logprobs = torch.cat([completion_logprobs(ref_model, batch.prompt_ids[c], batch.prompt_mask[c],
                                                          batch.completion_ids[c], batch.completion_mask[c],
                                                          cfg.temperature)[0] for c in chunks])
    sums = {"loss/policy": 0.0, "loss/entropy": 0.0, "loss/kl": 0.0, "clip/frac": 0.0, "grad/norm": 0.0}
    skipped = False
    params = [p for p in model.parameters() if p.requires_grad]
    for update in range(cfg.updates_per_step):
        optimizer.zero_grad(set_to_none=True)
        for c in chunks:
            logprobs, entropy = completion_logprobs(model, batch.prompt_ids[c], batch.prompt_mask[c],
                                                    batch.completion_ids[c], batch.completion_mask[c],
                                                    cfg.temperature, with_entropy=cfg.entropy_coef != 0)
            if update == 0:
                old_logprobs[c] = logprobs.detach()
            loss, m = policy_loss(logprobs, old_logprobs[c], advantages[c], batch.completion_mask[c], settings,
                                  total_tokens, rows, None if ref_logprobs is None else ref_logprobs[c], entropy)
            loss.backward()
            sums["loss/policy"] += m["loss/policy"]
            sums["loss/entropy"] += -cfg.entropy_coef * m.get("loss/entropy", 0.0)
            sums["loss/kl"] += cfg.beta * m.get("loss/kl", 0.0)
            sums["clip/frac"] += m["clip/frac_sum"] / total_tokens
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
        sums["grad/norm"] += float(norm)
        if not torch.isfinite(norm):
            skipped = True  # never apply a non-finite update; the step is counted and logged
            optimizer.zero_grad(set_to_none=True)
            break
        optimizer.step()
    metrics = {key: value / cfg.updates_per_step for key, value in sums.items()}
    return StepResult(metrics, skipped)


def train(cfg: TrainConfig, progress: bool = True, console=None) -> dict:
    """Runs (or resumes) one training run; returns the summary. Raises ConfigError on bad input."""
    cfg.validate()
    run = RunDir(cfg)
    run.check_compatible(cfg)
    if cfg.force:
        run.start_fresh()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    task = get_task(cfg.task, seed=cfg.seed)
    try:
        verifier = load_verifier(cfg.reward, task)
    except ValueError as err:
        raise ConfigError("reward", str(err)) from None
    tokenizer = ByteTokenizer()

    torch.manual_seed(cfg.seed)
    model = load_policy(cfg.model).to(device)
    model.train()
    ref_model = None
    if cfg.beta > 0:
        ref_model = load_policy(cfg.model).to(device).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    monitor = EntropyMonitor(half_life=10)
    baseline_eval: list[dict] | None = None  # step-0 per-problem results, for paired gains

    clean_temporaries(run.checkpoints)
    state = load_latest(run.checkpoints) if run.config_file.is_file() else None
    start_step = 0
    if state is None:
        run.start_fresh()
    else:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        monitor.load_state_dict(state["entropy_monitor"])
        set_rng_state(state["rng"])
        baseline_eval = state.get("baseline_eval")
        start_step = state["step"]
        run.truncate_metrics(start_step)
    run.write_config(cfg)
    metrics_log, events_log = JsonlWriter(run.metrics_file), JsonlWriter(run.events_file)
    if start_step:
        events_log.write({"event": "resume", "step": start_step, "message": f"resumed from checkpoint at step {start_step}"})
    if start_step >= cfg.steps and run.final.is_dir():
        metrics_log.close(), events_log.close()
        return summarize(run, cfg, already_done=True)

    def evaluate(step: int) -> dict:
        nonlocal baseline_eval
        result = evaluate_policy(model, tokenizer, task, problems=cfg.eval_problems, samples=cfg.eval_samples,
                                 ks=[k for k in EVAL_KS if k <= cfg.eval_samples], temperature=cfg.eval_temperature,
                                 max_new_tokens=cfg.max_new_tokens, seed=stream_seed(cfg.seed, 0, 1))
        flat = flat_eval_metrics(result)
        if baseline_eval is None:
            baseline_eval = result["per_problem"]
        if HEADLINE in result["metrics"]:
            gain = paired_bootstrap_gain(per_problem_values(baseline_eval, HEADLINE),
                                         per_problem_values(result["per_problem"], HEADLINE))
            flat[f"eval/{HEADLINE}_gain"] = gain["value"]
            flat[f"eval/{HEADLINE}_gain_ci_low"], flat[f"eval/{HEADLINE}_gain_ci_high"] = gain["ci"]
        eval_json = {"model": cfg.model, "task": cfg.task, "split": "heldout", "step": step,
                     "n_samples": cfg.eval_samples, "temperature": cfg.eval_temperature,
                     "n_problems": cfg.eval_problems, **result}
        (run.root / "eval.json").write_text(json.dumps(eval_json) + "\n")
        events_log.write({"event": "eval", "step": step, "message": ", ".join(
            f"{name} {m['value']:.3f} [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]" for name, m in result["metrics"].items())})
        return flat

    bar = _Progress(cfg, enabled=progress and not cfg.quiet, console=console)
    last_eval: dict = {}
    if start_step == 0 and cfg.eval_every:
        last_eval = evaluate(0)
        metrics_log.write({"step": 0, **last_eval})
    bar.start(start_step)
    bad_steps = 0
    try:
        for step in range(start_step + 1, cfg.steps + 1):
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
            started = time.perf_counter()
            items = [task.item("train", (step - 1) * cfg.prompts_per_step + j) for j in range(cfg.prompts_per_step)]
            generator = torch.Generator(device=device).manual_seed(stream_seed(cfg.seed, step))
            model.eval()
            batch = sample_groups(model, tokenizer, items, cfg.k, max_new_tokens=cfg.max_new_tokens,
                                  temperature=cfg.temperature, generator=generator)
            model.train()
            rollout_seconds = time.perf_counter() - started

            scored = score_batch(verifier, task, batch.texts, items, cfg.k)
            for failure in scored.failures:
                events_log.write({"event": "reward_error", "step": step, "kind": failure.kind,
                                  "item": failure.item_id, "message": failure.detail})
            rewards = scored.rewards.to(device)  # (B, K)
            advantages = ADVANTAGES.get(cfg.advantage)(rewards).reshape(-1)  # (N,)

            result = train_step(model, optimizer, batch, advantages, cfg, ref_model)
            if result.skipped:
                bad_steps += 1
                events_log.write({"event": "nan_skip", "step": step,
                                  "message": "non-finite gradient norm; the update was not applied"})
            entropy = masked_mean(batch.entropy, batch.completion_mask)
            p10, p50, p90 = masked_quantiles(batch.entropy, batch.completion_mask)
            lengths = batch.completion_mask.sum(dim=1).float()  # (N,)
            truncated = ~(batch.completion_ids == tokenizer.eos_id).any(dim=1)  # (N,)
            seconds = time.perf_counter() - started
            row = {
                "step": step,
                "reward/mean": float(rewards.mean()),
                "reward/std": float(rewards.std(unbiased=False)),
                "reward/zero_signal_frac": zero_signal_fraction(rewards),
                "reward/errors": len(scored.failures),
                "entropy/mean": entropy,
                **monitor.update(entropy),
                "entropy/p10": p10, "entropy/p50": p50, "entropy/p90": p90,
                "diversity/answers": answer_diversity(scored.answers, cfg.k),
                **result.metrics,
                "control/entropy_coef": cfg.entropy_coef,
                "optim/lr": optimizer.param_groups[0]["lr"],
                "optim/skipped": int(result.skipped),
                "completion/mean_length": float(lengths.mean()),
                "completion/truncated_frac": float(truncated.float().mean()),
                "perf/step_seconds": seconds,
                "perf/rollout_seconds": rollout_seconds,
                "perf/rollout_tokens_per_s": batch.generated_tokens() / max(rollout_seconds, 1e-9),
                "perf/peak_memory_mib": peak_memory_mib(cfg.device),
            }
            if cfg.eval_every and step % cfg.eval_every == 0:
                last_eval = evaluate(step)
                row.update(last_eval)
            metrics_log.write(row)
            bar.update(step, row, last_eval)
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps:
                save_checkpoint(run.checkpoints, step, {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "entropy_monitor": monitor.state_dict(), "rng": rng_state(), "baseline_eval": baseline_eval,
                }, keep=cfg.keep_checkpoints)
    finally:
        bar.stop()
        metrics_log.close()
    save_policy(model, run.final, extra={"trained_by": "rlvr train", "steps": cfg.steps, "config": to_dict(cfg)})
    summary = summarize(run, cfg)
    events_log.write({"event": "done", "step": cfg.steps, "message": summary["line"]})
    events_log.close()
    return summary


def summarize(run: RunDir, cfg: TrainConfig, already_done: bool = False) -> dict:
    """Reads metrics.jsonl back: first/last-10-step reward and entropy, step time, last eval."""
    rows = [json.loads(line) for line in run.metrics_file.read_text().splitlines() if line.strip()]
    steps = [r for r in rows if r.get("step", 0) >= 1 and "reward/mean" in r]
    window = min(10, len(steps))
    mean = lambda key, part: sum(r[key] for r in part) / len(part)  # noqa: E731
    first, last = steps[:window], steps[-window:]
    seconds = sorted(r["perf/step_seconds"] for r in steps)
    summary = {
        "steps": len(steps), "out": str(run.root),
        "reward_first10": mean("reward/mean", first), "reward_last10": mean("reward/mean", last),
        "entropy_first10": mean("entropy/mean", first), "entropy_last10": mean("entropy/mean", last),
        "entropy_retention_final": steps[-1]["entropy/retention"],
        "step_seconds_median": seconds[len(seconds) // 2],
        "peak_memory_mib": max(r["perf/peak_memory_mib"] for r in steps),
    }
    evals = [r for r in rows if f"eval/{HEADLINE}" in r]
    line = (f"{'already complete: ' if already_done else ''}{len(steps)} steps, K={cfg.k}, "
            f"{summary['step_seconds_median']:.3f} s/step (median) | reward {summary['reward_first10']:.3f} -> "
            f"{summary['reward_last10']:.3f} (mean of first/last {window} steps) | entropy "
            f"{summary['entropy_first10']:.3f} -> {summary['entropy_last10']:.3f} nats")
    if evals:
        e = evals[-1]
        summary["eval"] = {k: v for k, v in e.items() if k.startswith("eval/")}
        line += (f" | {HEADLINE} {e[f'eval/{HEADLINE}']:.3f} [{e[f'eval/{HEADLINE}_ci_low']:.3f}, "
                 f"{e[f'eval/{HEADLINE}_ci_high']:.3f}] at step {e['step']}, n={e['eval/n_problems']}")
        if f"eval/{HEADLINE}_gain" in e:
            line += (f", gain {e[f'eval/{HEADLINE}_gain']:+.1f} pts [{e[f'eval/{HEADLINE}_gain_ci_low']:+.1f}, "
                     f"{e[f'eval/{HEADLINE}_gain_ci_high']:+.1f}]")
    summary["line"] = line + f" | {run.root}"
    return summary


class _Progress:
    """A rich progress bar: step, reward, entropy, last hm@4, ETA. Silent when disabled."""

    def __init__(self, cfg: TrainConfig, enabled: bool, console=None) -> None:
        self.enabled = enabled
        self.total = cfg.steps
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn(f"[bold]K={cfg.k}[/]"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeRemainingColumn(),
            console=console or Console(stderr=True), transient=False,
        )

    def start(self, completed: int) -> None:
        if self.enabled:
            self.progress.start()
            self.task = self.progress.add_task("train", total=self.total, completed=completed, stats="")

    def update(self, step: int, row: dict, last_eval: dict) -> None:
        if not self.enabled:
            return
        stats = f"reward {row['reward/mean']:.3f}  entropy {row['entropy/mean']:.3f}"
        if f"eval/{HEADLINE}" in last_eval:
            stats += f"  {HEADLINE} {last_eval[f'eval/{HEADLINE}']:.3f}"
        self.progress.update(self.task, completed=step, stats=stats)

    def stop(self) -> None:
        if self.enabled:
            self.progress.stop()
