"""The built-in model: a small decoder-only transformer over bytes, with a KV cache.

Any text task works with it because the tokenizer is byte-level (ids 0-255 are bytes; three
special ids follow). A trained checkpoint ships inside the package (`rlvr/assets/tiny/`), so
every command runs with no download; `rlvr pretrain` reproduces it.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from rlvr.backends.base import packed_row_tokens

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny"


class ByteTokenizer:
    """UTF-8 bytes as ids 0-255, then PAD, BOS and EOS."""

    pad_id = 256
    bos_id = 257
    eos_id = 258
    vocab_size = 259

    def encode(self, text: str) -> list[int]:
        return [self.bos_id, *text.encode("utf-8")]

    def decode(self, ids) -> str:
        """Decodes ids up to (not including) the first EOS; PAD and BOS are dropped."""
        out = bytearray()
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i < 256:
                out.append(i)
        return out.decode("utf-8", errors="replace")


@dataclass
class TinyConfig:
    vocab_size: int = ByteTokenizer.vocab_size  # byte-level vocabulary plus PAD/BOS/EOS
    d_model: int = 128  # width of the residual stream
    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # attention heads per block
    max_seq_len: int = 64  # longest prompt + completion the position table covers


class KVCache:
    """Keys/values of every layer, (N, heads, max_len, head_dim) each, preallocated and written in
    place as positions are decoded (sampling runs without gradients)."""

    def __init__(self, cfg: TinyConfig, batch: int, max_len: int, dtype, device) -> None:
        shape = (batch, cfg.n_head, max_len, cfg.d_model // cfg.n_head)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layer)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layer)]
        self.length = 0  # positions filled so far

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Writes (N, H, L, D) new keys/values of `layer`; -> all keys/values so far (N, H, S, D)."""
        start, end = self.length, self.length + k.shape[2]
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def select(self, rows: torch.Tensor) -> "KVCache":
        """The cache of `rows` (M,) long, in that order; a row may repeat (one prompt, K samples)."""
        out = KVCache.__new__(KVCache)
        out.keys = [k[rows] for k in self.keys]
        out.values = [v[rows] for v in self.values]
        out.length = self.length
        return out


class Block(nn.Module):
    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.fc = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.fc_out = nn.Linear(4 * cfg.d_model, cfg.d_model)

    def forward(self, x, attn_mask, cache: KVCache | None, layer: int):
        n, length, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        # (N, L, D) -> (N, H, L, D/H)
        q, k, v = (t.view(n, length, self.n_head, d // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (N, H, S, D/H)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (N, H, L, D/H)
        x = x + self.proj(y.transpose(1, 2).reshape(n, length, d))
        return x + self.fc_out(F.gelu(self.fc(self.ln2(x))))


class TinyLM(nn.Module):
    """Pre-LayerNorm GPT with learned positions and tied input/output embeddings."""

    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.apply(self._init)
        for block in self.blocks:  # GPT-2 scaling of residual projections
            for proj in (block.proj, block.fc_out):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        p = self.tok_emb.weight
        return KVCache(self.config, batch, max_len, p.dtype, p.device)

    def forward(self, ids, positions, attn_mask, cache: KVCache | None = None, keep: torch.Tensor | None = None):
        """ids, positions: (N, L) long; attn_mask: (N, 1, L, S) bool, True = may attend.

        With a cache, the L new positions are appended after `cache.length` and S counts the
        cached positions too. Returns logits (N, L, vocab), or with `keep` (n,) long, flat indices
        into the N·L positions, those positions' logits (n, vocab).
        """
        if int(positions.max()) >= self.config.max_seq_len:
            raise ValueError(
                f"sequence position {int(positions.max())} exceeds the model's max_seq_len "
                f"{self.config.max_seq_len}; use shorter prompts or a smaller --max-new-tokens"
            )
        x = self.tok_emb(ids) + self.pos_emb(positions)  # (N, L, D)
        for layer, block in enumerate(self.blocks):
            x = block(x, attn_mask, cache, layer)
        if cache is not None:
            cache.length += ids.shape[1]
        if keep is not None:
            x = x.reshape(-1, x.shape[-1])[keep]  # (n, D)
        return F.linear(self.ln_f(x), self.tok_emb.weight)  # (N, L, V) or (n, V)


def save_policy(model: TinyLM, directory: Path, extra: dict | None = None) -> None:
    """Writes model.safetensors and config.json (the layout of final/ and the shipped model)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    meta = {"backend": "tiny", "model_config": asdict(model.config), **(extra or {})}
    (directory / "config.json").write_text(json.dumps(meta, indent=2) + "\n")


def _model_dir(path: str | Path) -> Path:
    return SHIPPED_DIR if str(path) == "tiny" else Path(path)


def load_policy_config(path: str | Path) -> TinyConfig:
    """The model config of `tiny` or of a directory written by save_policy."""
    directory = _model_dir(path)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"no model at {directory}: expected config.json and model.safetensors "
            "(a run's final/ directory, a checkpoint, or 'tiny' for the built-in model)"
        )
    meta = json.loads(config_file.read_text())
    if meta.get("backend") != "tiny":
        raise ValueError(f"{directory} holds a {meta.get('backend')!r} model, not a tiny one")
    return TinyConfig(**meta["model_config"])


def load_policy(path: str | Path) -> TinyLM:
    """Loads `tiny` (the shipped checkpoint) or a directory written by save_policy."""
    from safetensors.torch import load_file

    directory = _model_dir(path)
    model = TinyLM(load_policy_config(path))
    model.load_state_dict(load_file(str(directory / "model.safetensors")))
    return model


class TinyPrompts:
    """Prompts of the built-in model: the item's raw `prompt` as bytes (it has no chat template)."""

    chat = False

    def __init__(self, max_seq_len: int) -> None:
        self.max_seq_len = max_seq_len
        self.tokenizer = ByteTokenizer()

    def encode_prompt(self, item: dict) -> list[int]:
        return self.tokenizer.encode(item["prompt"])

    tool_format = "python"  # an episode's tool calls (--env): the documented fallback format

    def encode_messages(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """An episode's prompt: the last message (the question) alone, as bytes. The byte-level
        model reads no instructions, and its context (64 positions) holds no example conversations."""
        return self.tokenizer.encode(str(messages[-1]["content"]))

    def encode_env_turn(self, messages: list[dict]) -> list[int]:
        """An environment's turn after the model's (which ended with EOS): its text as bytes, on a line."""
        return list(("\n" + "\n".join(str(m["content"]) for m in messages) + "\n").encode("utf-8"))


def attention_mask(key_mask: torch.Tensor, new: int) -> torch.Tensor:
    """(N, S) bool keys, the last `new` of them the queries -> (N, 1, new, S): causal, padding keys
    hidden. Each query may always see itself, so a fully padded row stays finite (never used)."""
    keys = key_mask.shape[1]
    query_at = torch.arange(keys - new, keys, device=key_mask.device)  # (new,) absolute query positions
    key_at = torch.arange(keys, device=key_mask.device)
    causal = key_at[None, :] <= query_at[:, None]  # (new, S)
    itself = key_at[None, :] == query_at[:, None]
    return (causal[None] & key_mask[:, None, :]) | itself[None]  # (N, new, S)


class TinyPolicy:
    """The built-in model behind the Policy interface (rlvr.backends.Policy)."""

    def __init__(self, model: TinyLM) -> None:
        self.module = model
        self.updates = 0  # optimizer updates applied in this process (Policy.updates)
        self.prompts = TinyPrompts(model.config.max_seq_len)
        self.tokenizer = self.prompts.tokenizer
        self.pad_id = ByteTokenizer.pad_id
        self.stop_ids = (ByteTokenizer.eos_id,)
        self.max_seq_len = model.config.max_seq_len
        self.decode_batch_rows = 2048
        self.can_pack = True
        block = model.blocks[0]
        self.packed_row_tokens = packed_row_tokens(model.config.d_model, sum(p.numel() for p in block.parameters()))
        self.update_token_budget = 1 << 16  # a step's activations are a few MiB per thousand tokens: one micro-batch

    @classmethod
    def load(cls, path: str | Path, settings) -> "TinyPolicy":
        if settings.lora_rank or settings.gradient_checkpointing:
            what = "--lora-rank" if settings.lora_rank else "--gradient-checkpointing"
            raise ValueError(f"{what} is for Hugging Face models; the built-in model is trained in full")
        return cls(load_policy(path).to(torch.device(settings.device)))

    @property
    def device(self) -> torch.device:
        return self.module.tok_emb.weight.device

    def encode_prompt(self, item: dict) -> list[int]:
        return self.prompts.encode_prompt(item)

    def prompt_text(self, item: dict) -> str:
        return item["prompt"]

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids)

    def forward(self, ids, positions, key_mask, cache: KVCache | None = None, logits_to_keep: int = 0):
        logits = self.module(ids, positions, attention_mask(key_mask, ids.shape[1])[:, None], cache)
        return logits[:, -logits_to_keep:] if logits_to_keep else logits

    def forward_packed(self, ids, positions, attend, keep=None):
        return self.module(ids, positions, attend[:, None], keep=keep)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        return self.module.new_cache(batch, max_len)

    def select_cache(self, cache: KVCache, rows: torch.Tensor) -> KVCache:
        return cache.select(rows)

    def trainable_state_dict(self) -> dict:
        return self.module.state_dict()

    def load_trainable_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)

    def reference(self) -> "TinyPolicy":
        import copy

        return TinyPolicy(copy.deepcopy(self.module).eval().requires_grad_(False))

    def save(self, directory: Path, extra: dict) -> None:
        save_policy(self.module, directory, extra)

    def describe(self) -> dict:
        count = sum(p.numel() for p in self.module.parameters())
        return {"backend": "tiny", "parameters": count, "trainable_parameters": count, "dtype": "float32"}
