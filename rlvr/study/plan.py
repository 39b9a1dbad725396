"""`rlvr plan`: before training, what each K would cost and how much of its batch would carry signal.

Run it:  rlvr plan --k 4 8 16 32          (the built-in model and task)

Two measurements, both on the user's model and task:
  * cost: a few real training steps per K (the same `train()` as `rlvr train`, in a temporary
    directory, no evaluation), reporting the median step time (after the first, warm-up, step)
    and the step's working memory (peak minus the memory in use before the step, measured on
    the first step: see rlvr.train.memory.StepMemory), with ratios to the first K, and the
    gradient noise scale those steps measured (`pilot_noise`);
  * signal: one pilot of n samples for each of P training prompts, scored by the verifier. A
    group of K samples carries no signal when all K rewards are equal. For a prompt with c
    correct of n samples, C(c, K)/C(n, K) and C(n−c, K)/C(n, K) are the unbiased estimates of
    P(all K correct) and P(all K wrong) (the pass@k argument: drawing K of the n without
    replacement), so the expected zero-signal fraction at every K ≤ n comes from one pilot,
    with a bootstrap CI over prompts. Rewards are counted correct when ≥ 0.5.
"""
from __future__ import annotations

import json
import statistics
import tempfile
from dataclasses import dataclass
from math import comb
from pathlib import Path

import numpy as np

from rlvr.config import ConfigError, TrainConfig, opt, require_positive
from rlvr.train.preflight import check_train_config


@dataclass
class PlanConfig:
    k: list = opt([4, 8, 16, 32], "group sizes K to plan for")
    model: str = opt("tiny", "model, as rlvr train --model (docs/models.md)")
    task: str = opt("arith", "task (see `rlvr tasks`)")
    answer_format: str = opt("auto", "answer format, as rlvr train --answer-format")
    chat_template: str = opt("auto", "auto or none, as rlvr train --chat-template")
    system_prompt: str = opt("", "system message for chat models, as rlvr train --system-prompt")
    micro_batch_size: str = opt("auto", "rows per forward/backward chunk of the timed steps (0 = the whole batch; "
                                        "auto as rlvr train)")
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass (Hugging Face models)")
    lora_rank: int = opt(0, "LoRA rank of the timed steps (0 = full fine-tuning)")
    reward: str = opt("task", "verifier: 'task' or module:function")
    prompts_per_step: int = opt(8, "B: prompts per training step (as rlvr train)")
    steps: int = opt(6, "training steps timed per K (the first is a warm-up and not counted)")
    pilot_prompts: int = opt(64, "P: training prompts in the signal pilot")
    pilot_samples: int = opt(0, "n: samples per pilot prompt (0 = the largest K; must be ≥ every K)")
    temperature: float = opt(1.0, "sampling temperature")
    top_k: int = opt(0, "sample from the k most probable tokens only (0 = off; as rlvr train)")
    top_p: float = opt(1.0, "nucleus sampling mass (1 = off; as rlvr train)")
    min_p: float = opt(0.0, "keep tokens with at least this fraction of the largest probability (0 = off)")
    code_program: str = opt("auto", "the program code_exec runs for HumanEval-form items (as rlvr train)")
    max_new_tokens: int = opt(8, "longest completion in tokens")
    engine: str = opt("rlvr", "what samples the timed steps' rollouts: rlvr or vllm (as rlvr train; the pilot "
                              "always samples with rlvr's own decode loop, the same distribution)")
    engine_dtype: str = opt("auto", "--engine vllm: bfloat16 or float32 (as rlvr train)")
    engine_memory: float = opt(0.0, "--engine vllm: GPU share or CPU KV-cache GiB (as rlvr train)")
    seed: int = opt(0, "seed of the pilot and of the timed steps")
    threads: int = opt(0, "torch CPU threads (0 = torch's default)")
    device: str = opt("cpu", "cpu or cuda")
    out: str = opt("", "also write the table as JSON to this file")

    HELP_GROUPS = {  # rlvr.config.HELP_GROUP_DOCS
        "plan": ("k", "steps", "pilot_prompts", "pilot_samples"),
        "model and data": ("model", "task", "answer_format", "chat_template", "system_prompt", "reward",
                           "code_program", "lora_rank"),
        "sampling and engine": ("prompts_per_step", "temperature", "top_k", "top_p", "min_p", "max_new_tokens",
                                "engine", "engine_dtype", "engine_memory"),
        "optimisation": ("micro_batch_size", "gradient_checkpointing"),
        "run and logging": ("seed", "out"),
        "processes": ("device", "threads"),
    }

    def validate(self) -> None:
        if not self.k or min(self.k) < 2:
            raise ConfigError("k", f"give group sizes of at least 2, got {self.k}")
        require_positive(self, ("prompts_per_step", "pilot_prompts", "max_new_tokens"))
        if self.steps < 2:
            raise ConfigError("steps", f"needs at least 2 (one warm-up, one timed), got {self.steps}")
        if self.pilot_samples and self.pilot_samples < max(self.k):
            raise ConfigError("pilot_samples", f"must be ≥ the largest K ({max(self.k)}) to estimate its zero-signal "
                                               f"fraction, got {self.pilot_samples}")
        # the rest (model, task, reward, device) is checked as a training config would be
        check_train_config(self.train_config(self.k[0], "plan-check"))

    def train_config(self, k: int, out: str) -> TrainConfig:
        return TrainConfig(model=self.model, task=self.task, answer_format=self.answer_format,
                           chat_template=self.chat_template, system_prompt=self.system_prompt,
                           micro_batch_size=self.micro_batch_size, gradient_checkpointing=self.gradient_checkpointing,
                           lora_rank=self.lora_rank, reward=self.reward, k=k, prompts_per_step=self.prompts_per_step,
                           steps=self.steps, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                           min_p=self.min_p, code_program=self.code_program, max_new_tokens=self.max_new_tokens,
                           engine=self.engine, engine_dtype=self.engine_dtype, engine_memory=self.engine_memory,
                           seed=self.seed, threads=self.threads, device=self.device, out=out, eval_every=0,
                           checkpoint_every=0, keep_checkpoints=1, quiet=True)


def zero_signal_expectation(correct: np.ndarray, n: int, k: int) -> np.ndarray:
    """Per prompt, the unbiased estimate of P(a group of k has all-equal rewards) from c correct
    of n samples: [C(c, k) + C(n − c, k)] / C(n, k)."""
    total = comb(n, k)
    return np.array([(comb(int(c), k) + comb(n - int(c), k)) / total for c in correct])


def pilot(cfg: PlanConfig) -> tuple[np.ndarray, int]:
    """Correct counts (P,) out of n samples per prompt."""
    import torch

    from rlvr.backends import ModelSettings, load_policy
    from rlvr.rewards.pool import open_pool
    from rlvr.rewards.scoring import score_batch
    from rlvr.rollout.sample import sample_groups
    from rlvr.tasks import get_task
    from rlvr.train.preflight import resolved_task_options
    from rlvr.types import Truncation

    n = cfg.pilot_samples or max(cfg.k)
    options = resolved_task_options(cfg)
    task = get_task(cfg.task, seed=cfg.seed, answer_format=cfg.answer_format, options=options)
    defaults = TrainConfig()
    policy = load_policy(cfg.model, ModelSettings.of(cfg))
    policy.module.eval()
    generator = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
    items = [task.item("train", i) for i in range(cfg.pilot_prompts)]
    correct = []
    with open_pool(cfg.reward, cfg.task, cfg.seed, defaults.reward_workers, defaults.reward_timeout,
                    cfg.answer_format, options) as pool:
        for start in range(0, len(items), 16):
            chunk = items[start:start + 16]
            batch = sample_groups(policy, chunk, n, max_new_tokens=cfg.max_new_tokens,
                                  temperature=cfg.temperature, generator=generator, truncation=Truncation.of(cfg))
            rewards = score_batch(pool, task, batch.texts, chunk, n).rewards  # (chunk, n); failures score 0
            correct.extend((rewards >= 0.5).sum(dim=1).tolist())
    return np.array(correct), n


def measure_cost(cfg: PlanConfig, k: int) -> dict:
    from rlvr.train import train

    with tempfile.TemporaryDirectory(prefix="rlvr-plan-") as tmp:
        train(cfg.train_config(k, str(Path(tmp) / "run")), progress=False)
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if r.get("step", 0) >= 2 and "perf/memory_before_step_mib" not in r]
    probed = [r for r in rows if "perf/memory_before_step_mib" in r]  # step 1 (see rlvr.train.memory.StepMemory)
    return {**pilot_noise(rows), "step_seconds": statistics.median(r["perf/step_seconds"] for r in timed),
            "step_memory_mib": statistics.median(r["perf/peak_memory_mib"] - r["perf/memory_before_step_mib"]
                                                 for r in probed) if probed else 0.0,
            "peak_memory_mib": max(r["perf/peak_memory_mib"] for r in rows if "perf/peak_memory_mib" in r)}


def pilot_noise(rows: list[dict]) -> dict:
    """The gradient noise the timed steps measured (docs/metrics.md, Gradient noise): B_simple =
    Σ tr Σ / Σ |G|² over the steps, in prompts (None where the summed |G|² is not positive: the
    signal cannot be told from 0 in so few steps), and the intra-prompt share (tr Σ_intra/K)/tr Σ."""
    steps = [r for r in rows if "grad/noise" in r and "grad/signal" in r]
    signal, noise = sum(r["grad/signal"] for r in steps), sum(r["grad/noise"] for r in steps)
    intra = sum(r["grad/noise_intra"] for r in steps)
    group = steps[0]["sampling/effective_k"] if steps and "sampling/effective_k" in steps[0] else None
    return {"noise_scale": noise / signal if steps and signal > 0 and noise > 0 else None,
            "noise_intra_share": intra / group / noise if steps and group and noise > 0 else None,
            "noise_steps": len(steps)}


def noise_reading(rows: list[dict], prompts: int) -> str:
    """The one sentence that says what the measured noise scale implies for the choice of K."""
    above = [r["k"] for r in rows if r["noise_scale"] is not None and r["noise_scale"] > 2 * prompts]
    below = [r["k"] for r in rows if r["noise_scale"] is not None and r["noise_scale"] < prompts]
    unknown = [r["k"] for r in rows if r["noise_scale"] is None]
    parts = []
    if above:
        parts.append(f"at K = {', '.join(map(str, above))} B_simple is well above B = {prompts}: more samples per step "
                     "still cut the gradient's noise nearly in proportion (more K does so for its intra-prompt share)")
    if below:
        parts.append(f"at K = {', '.join(map(str, below))} it is below B = {prompts}: more samples per step mostly buy "
                     "nothing, spend them on more steps")
    if unknown:
        parts.append(f"at K = {', '.join(map(str, unknown))} the summed |G|² of the timed steps is not positive (n/a): "
                     "the noise swamps the signal, or the steps are too few (raise --steps)")
    if not parts:
        parts.append(f"B_simple is near B = {prompts} at every K: more samples per step buy less than proportionally")
    return "Gradient noise: " + "; ".join(parts) + " (a few steps' estimate: docs/metrics.md, Gradient noise)."


def run_plan(cfg: PlanConfig) -> list[dict]:
    from rlvr.algo.stats import bootstrap_ci

    cfg.validate()
    correct, n = pilot(cfg)
    table = []
    for k in cfg.k:
        per_prompt = zero_signal_expectation(correct, n, k)
        cost = measure_cost(cfg, k)
        zero = float(per_prompt.mean())
        table.append({"k": k, **cost, "zero_signal_frac": zero, "zero_signal_ci": list(bootstrap_ci(per_prompt)),
                      "signal_groups_per_step": cfg.prompts_per_step * (1 - zero),
                      "pilot_prompts": len(correct), "pilot_samples": n})
    first = table[0]
    for row in table:
        row["step_time_ratio"] = row["step_seconds"] / first["step_seconds"]
        row["step_memory_ratio"] = row["step_memory_mib"] / first["step_memory_mib"] if first["step_memory_mib"] else None
        row["seconds_per_signal_group"] = row["step_seconds"] / row["signal_groups_per_step"] \
            if row["signal_groups_per_step"] else None
    if cfg.out:
        Path(cfg.out).write_text(json.dumps(table, indent=1) + "\n")
    return table
