"""Shared helpers for the probes. Env vars must be set before vllm is imported."""
import os, sys, time, gc
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
MODELS = "/work/vllm_probe/models"
PEAKY = f"{MODELS}/llama_h128_peaky"
QPEAKY = f"{MODELS}/qwen2_h128_peaky"

def t():
    return time.perf_counter()

def hf_logprobs(model_dir, prompt_ids, completion_ids, temperature=1.0, top_k=None, dtype="float32", top_p=None):
    """Return (raw, temp-scaled, temp+top_k renormalised) logprobs of completion tokens from a transformers forward."""
    import torch, transformers
    m = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    m.eval()
    ids = torch.tensor([list(prompt_ids) + list(completion_ids)])
    with torch.no_grad():
        logits = m(ids).logits[0].float()
    L = len(prompt_ids)
    lg = logits[L - 1 : L - 1 + len(completion_ids)]
    tgt = torch.tensor(list(completion_ids))
    raw = torch.log_softmax(lg, -1).gather(1, tgt[:, None])[:, 0]
    scaled = torch.log_softmax(lg / temperature, -1).gather(1, tgt[:, None])[:, 0]
    if top_k:
        s = lg / temperature
        kth = s.topk(top_k, -1).values[:, -1:]
        s = s.masked_fill(s < kth, float("-inf"))
        topk = torch.log_softmax(s, -1).gather(1, tgt[:, None])[:, 0]
    elif top_p:
        s = lg / temperature
        srt, idx = s.sort(-1)  # ascending, as vLLM's top-p
        cum = srt.softmax(-1).cumsum(-1)
        mask = cum <= 1 - top_p
        mask[:, -1] = False
        s = s.scatter(1, idx, srt.masked_fill(mask, float("-inf")))
        topk = torch.log_softmax(s, -1).gather(1, tgt[:, None])[:, 0]
    else:
        topk = scaled
    return raw, scaled, topk
