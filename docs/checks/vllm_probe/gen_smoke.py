import os, sys, time
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
model = sys.argv[1] if len(sys.argv) > 1 else "/work/vllm_probe/models/llama_h64"
dtype = sys.argv[2] if len(sys.argv) > 2 else "float32"
t = time.time()
from vllm import LLM, SamplingParams
print(f"TIME import {time.time()-t:.2f}s")
t = time.time()
llm = LLM(model=model, dtype=dtype, enforce_eager=True, max_model_len=256, seed=0)
print(f"TIME LLM() {time.time()-t:.2f}s")
t = time.time()
outs = llm.generate(["What is 12 + 30?", "The answer is"], SamplingParams(n=2, temperature=1.0, max_tokens=16, seed=1, logprobs=0))
print(f"TIME generate {time.time()-t:.2f}s")
for o in outs:
    for c in o.outputs:
        print(repr(c.text), c.token_ids[:8], c.finish_reason)
print("GEN OK")
