"""Supervised pretraining of the built-in tiny model: how the shipped checkpoint is made.

The model learns the default task's training split by next-token prediction on the answer
tokens. Training stops at the first evaluation whose greedy held-out accuracy reaches
`target_accuracy`, so RL starts from a model that solves some problems but not most: the regime
where RLVR has something to learn (rewards neither all 0 nor all 1).
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from rlvr.backends.tiny import ByteTokenizer, TinyConfig, TinyLM, TinyPolicy, save_policy
from rlvr.config import ConfigError, check_writable, opt, require_positive, to_dict
from rlvr.rollout.sample import sample_groups


@dataclass
class PretrainConfig:
    task: str = opt("arith", "task whose training split the model learns")
    seed: int = opt(0, "seed of initialisation and data order")
    out: str = opt("runs/pretrain", "directory for the model (model.safetensors + config.json)")
    max_steps: int = opt(4000, "optimizer steps at most")
    batch_size: int = opt(128, "sequences per step")
    lr: float = opt(2e-3, "AdamW peak learning rate (linear warm-up, then constant)")
    warmup_steps: int = opt(100, "learning-rate warm-up steps")
    target_accuracy: float = opt(0.5, "stop once greedy held-out accuracy reaches this (0-1)")
    label_smoothing: float = opt(0.2, "label smoothing of the answer tokens: keeps temperature-1 samples noisier than greedy")
    answer_spellings: int = opt(1, "spell each training answer in one of this many equivalent ways the verifier accepts "
                                   "(1 = plain; up to 4: '95', '095', ' 95', '95.'), so the model learns harmless diversity")
    eval_every: int = opt(100, "steps between held-out evaluations")
    eval_problems: int = opt(500, "held-out problems per evaluation")
    d_model: int = opt(128, "model width")
    n_layer: int = opt(4, "transformer blocks")
    n_head: int = opt(4, "attention heads")
    max_seq_len: int = opt(64, "context length in tokens")
    threads: int = opt(0, "torch CPU threads (0 = torch's default)")

    def validate(self) -> None:
        require_positive(self, ("max_steps", "batch_size", "eval_every", "eval_problems", "d_model", "n_layer", "n_head"))
        if self.d_model % self.n_head:
            raise ConfigError("n_head", f"must divide --d-model ({self.d_model}), got {self.n_head}")
        if not 0 < self.target_accuracy <= 1:
            raise ConfigError("target_accuracy", f"must be in (0, 1], got {self.target_accuracy}")
        if not 1 <= self.answer_spellings <= len(SPELLINGS):
            raise ConfigError("answer_spellings", f"must be in 1..{len(SPELLINGS)}, got {self.answer_spellings}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError("label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")
        if not self.lr > 0:
            raise ConfigError("lr", f"must be > 0, got {self.lr}")
        from rlvr.tasks import get_task

        try:
            get_task(self.task, seed=self.seed)
        except Exception as err:
            raise ConfigError("task", str(err)) from None
        check_writable(self.out)


# Equivalent spellings of an integer answer: the verifier reads the last signed integer and
# normalises it, so all four score the same. A leading zero goes after the sign ("-07").
SPELLINGS = (
    lambda a: a,
    lambda a: a[0] + "0" + a[1:] if a.startswith("-") else "0" + a,
    lambda a: " " + a,
    lambda a: a + ".",
)


def spell_answer(answer: str, index: int, spellings: int) -> str:
    """Training example `index`'s answer in one of the first `spellings` spellings, chosen by the index."""
    if spellings == 1:
        return answer
    choice = random.Random(index).randrange(spellings)
    return SPELLINGS[choice](answer)


def _training_batch(task, tokenizer: ByteTokenizer, start: int, size: int, spellings: int = 1):
    """Sequences BOS prompt answer EOS, right-padded; the loss covers answer and EOS only."""
    rows = []
    for index in range(start, start + size):
        item = task.item("train", index)
        prompt = tokenizer.encode(item["prompt"])
        answer = list(spell_answer(item["answer"], index, spellings).encode()) + [tokenizer.eos_id]
        rows.append((prompt + answer, len(prompt)))
    width = max(len(seq) for seq, _ in rows)
    ids = torch.full((size, width), tokenizer.pad_id, dtype=torch.long)
    loss_mask = torch.zeros((size, width), dtype=torch.bool)
    for row, (seq, prompt_len) in enumerate(rows):
        ids[row, : len(seq)] = torch.tensor(seq)
        loss_mask[row, prompt_len : len(seq)] = True  # targets: answer tokens and EOS
    return ids, loss_mask


def heldout_accuracy(model: TinyLM, task, problems: int, temperature: float, seed: int) -> float:
    """Share of held-out problems solved by one sample (greedy when temperature is 0)."""
    policy = TinyPolicy(model)
    generator = torch.Generator().manual_seed(seed)
    solved = 0
    for start in range(0, problems, 256):
        items = [task.item("heldout", i) for i in range(start, min(problems, start + 256))]
        batch = sample_groups(policy, items, 1, max_new_tokens=8, temperature=temperature,
                              generator=generator)
        solved += sum(task.score(text, item) for text, item in zip(batch.texts, items))
    return solved / problems


def pretrain(cfg: PretrainConfig, log=print) -> dict:
    from rlvr.tasks import get_task

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    task = get_task(cfg.task, seed=cfg.seed)
    tokenizer = ByteTokenizer()
    model_cfg = TinyConfig(d_model=cfg.d_model, n_layer=cfg.n_layer, n_head=cfg.n_head, max_seq_len=cfg.max_seq_len)
    model = TinyLM(model_cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    started = time.time()
    history = []
    step = 0
    for step in range(1, cfg.max_steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * min(1.0, step / max(1, cfg.warmup_steps))
        ids, loss_mask = _training_batch(task, tokenizer, (step - 1) * cfg.batch_size, cfg.batch_size,
                                         cfg.answer_spellings)
        positions = torch.arange(ids.shape[1]).expand_as(ids)
        attn = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).tril()[None, None]  # causal
        logits = model(ids[:, :-1], positions[:, :-1], attn[..., :-1, :-1])  # (N, L-1, V)
        targets = ids[:, 1:].masked_fill(~loss_mask[:, 1:], -100)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                               label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            model.eval()
            greedy = heldout_accuracy(model, task, cfg.eval_problems, 0.0, cfg.seed)
            sampled = heldout_accuracy(model, task, cfg.eval_problems, 1.0, cfg.seed)
            model.train()
            record = {"step": step, "loss": round(float(loss.detach()), 4), "greedy_accuracy": greedy,
                      "sampled_accuracy": sampled, "seconds": round(time.time() - started, 1)}
            history.append(record)
            log(json.dumps(record))
            if greedy >= cfg.target_accuracy:
                break
    seconds = time.time() - started
    final = history[-1]
    recipe = {
        "how": f"rlvr pretrain (rlvr.train.pretrain): supervised next-token training on the answers of "
               f"{cfg.task!r}'s training split, stopped at the first evaluation with greedy held-out "
               f"accuracy >= {cfg.target_accuracy}",
        "pretrain_config": to_dict(cfg),
        "steps": step,
        "seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "heldout_greedy_accuracy": final["greedy_accuracy"],
        "heldout_sampled_accuracy": final["sampled_accuracy"],
        "eval_problems": cfg.eval_problems,
        "history": history,
    }
    save_policy(model, Path(cfg.out), extra={"pretrain": recipe})
    if not math.isfinite(float(loss.detach())):
        raise RuntimeError("pretraining diverged (non-finite loss); lower --lr")
    return recipe
