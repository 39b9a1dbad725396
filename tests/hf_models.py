"""Tiny random-weight Hugging Face causal LMs with a real tokenizer, built offline for tests.

Tests of the Hugging Face backend need a directory that loads like a hub checkpoint
(`AutoModelForCausalLM` / `AutoTokenizer`, chat template included) without any download. Everything
here is made in-process: a byte-level BPE tokenizer trained on a few lines of built-in text, and a
two-layer Qwen2 or Llama model with random weights. A directory takes ~0.03 s, plus ~2 s once per
process while transformers imports its modelling code.
"""
from __future__ import annotations

from pathlib import Path

import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]

# Qwen2's split: digits one by one, letters in runs. transformers 5 loads any model_type "qwen2"
# directory with Qwen2Tokenizer, which rebuilds the normalizer and pre-tokenizer from this regex
# whatever tokenizer.json says, so every tokenizer here uses it and ids agree after a reload.
_QWEN_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

# ChatML, as Qwen uses. The {% generation %} block lets `return_assistant_tokens_mask=True` mark the
# tokens a policy produced, which is what an RL loss is masked on.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}"
    "{%- else -%}{{- message['content'] + '<|im_end|>' -}}{%- endif -%}"
    "{{- '\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)

# Enough prompt and answer text that common words and tags become single tokens (digits stay one
# per token, as in Qwen); any other text still encodes, byte by byte, because the 256-symbol
# ByteLevel alphabet is always in the vocabulary.
_CORPUS = [
    " ".join(str(i) for i in range(200)),
    *(f"{a} + {b} = {a + b}" for a, b in [(37, 58), (12, 30), (4, 9), (81, 7), (23, 46), (60, 15)]),
    *(f"{a} * {b} = {a * b}" for a, b in [(6, 7), (12, 3), (9, 9)]),
    *(f"{a} - {b} = {a - b}" for a, b in [(50, 8), (91, 19)]),
    "What is 12 + 30? Answer with just the number.",
    "What is 7 * 8? Put the final answer in <answer></answer> tags.",
    "Solve the problem step by step, then write the result as \\boxed{42}.",
    "<answer>42</answer> <answer>95</answer> \\boxed{95} \\boxed{}",
    "The answer is 95. Let me think about this. First, add the tens, then the ones.",
    "You are a helpful assistant. The quick brown fox jumps over the lazy dog.",
]


def make_tokenizer(
    directory: str | Path, *, chat: bool = True, vocab_size: int = 400
) -> transformers.PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on the built-in corpus and save it to `directory`."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)  # offsets stay byte-exact
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,  # ids 0..3, in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, so no text is unencodable
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>" if chat else "<|endoftext|>",
        pad_token="<|pad|>",  # distinct from eos, so padding never hides a real end of answer
        # All listed, so `all_special_ids` is the same whichever class AutoTokenizer picks on reload.
        additional_special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        padding_side="left",  # batched generation appends on the right
    )
    if chat:
        hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.save_pretrained(directory)
    return hf_tok


def make_hf_model_dir(
    directory: str | Path,
    arch: str = "qwen2",
    seed: int = 0,
    *,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    chat: bool = True,
) -> Path:
    """Save a random-init `arch` ("qwen2" or "llama") causal LM and its tokenizer to `directory`."""
    directory = Path(directory)
    tokenizer = make_tokenizer(directory, chat=chat)
    endoftext = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,  # kv_heads < heads exercises grouped-query attention
        max_position_embeddings=512,
        bos_token_id=endoftext,  # as Qwen2 does; the tokenizer itself adds no BOS
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",  # transformers 5 loads with dtype="auto", i.e. whatever the config says
    )
    # Tied embeddings for llama and untied for qwen2, so code that touches lm_head sees both layouts.
    if arch == "qwen2":
        config = transformers.Qwen2Config(tie_word_embeddings=False, **common)
        model_cls = transformers.Qwen2ForCausalLM
    elif arch == "llama":
        config = transformers.LlamaConfig(tie_word_embeddings=True, **common)
        model_cls = transformers.LlamaForCausalLM
    else:
        raise ValueError(f"unknown arch {arch!r}; expected 'qwen2' or 'llama'")
    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32)  # whatever torch's default dtype is set to
    # A chat model may end with either token (Qwen's generation_config lists both).
    eos_ids = [tokenizer.convert_tokens_to_ids("<|im_end|>"), endoftext] if chat else [endoftext]
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=endoftext, eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id
    )
    # transformers 5 always writes model.safetensors; it silently ignores safe_serialization=.
    model.save_pretrained(directory)
    return directory
