"""3a: seed reproducibility and batch-composition dependence."""
import sys; sys.path.insert(0, "/work/vllm_probe")
from common import *
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
model = sys.argv[1] if len(sys.argv) > 1 else PEAKY
dtype = sys.argv[2] if len(sys.argv) > 2 else "float32"
llm = LLM(model=model, dtype=dtype, enforce_eager=True, max_model_len=256, seed=0)
tok = llm.get_tokenizer()
P = ["What is 12 + 30?", "The answer is", "You are a helpful assistant.", "Solve the problem step by step"]
ids = [tok.encode(p) for p in P]
def toks(outs):
    return [[tuple(c.token_ids) for c in o.outputs] for o in outs]
sp = lambda seed, n=4: SamplingParams(n=n, temperature=1.0, max_tokens=24, seed=seed, logprobs=0)
r1 = toks(llm.generate([TokensPrompt(prompt_token_ids=ids[0])], sp(123), use_tqdm=False))
r2 = toks(llm.generate([TokensPrompt(prompt_token_ids=ids[0])], sp(123), use_tqdm=False))
print("same seed, two calls identical:", r1 == r2)
print("n=4 samples distinct within request:", len(set(r1[0])), "distinct of 4")
r3 = toks(llm.generate([TokensPrompt(prompt_token_ids=i) for i in ids], sp(123), use_tqdm=False))
print("P0 alone == P0 in batch of 4 (same SamplingParams obj for all):", r1[0] == r3[0])
r4 = toks(llm.generate([TokensPrompt(prompt_token_ids=i) for i in ids[::-1]], sp(123), use_tqdm=False))
print("batch reversed: P0 equal:", r4[-1] == r1[0], " all equal to forward order:", r4[::-1] == r3)
# a list of SamplingParams, one per prompt, distinct seeds
sps = [sp(1000 + j) for j in range(4)]
r5 = toks(llm.generate([TokensPrompt(prompt_token_ids=i) for i in ids], sps, use_tqdm=False))
r6 = toks(llm.generate([TokensPrompt(prompt_token_ids=ids[2])], sps[2], use_tqdm=False))
print("per-prompt seeds: P2 in batch == P2 alone:", r5[2] == r6[0])
# same seed across different prompts -> identical noise: how correlated?
same = sum(a[k] == b[k] for a, b in zip(r3[0], r3[1]) for k in range(min(len(a), len(b))))
print("same seed, P0 vs P1 sample j, positions with equal token:", same, "of", sum(min(len(a), len(b)) for a, b in zip(r3[0], r3[1])))
# string prompt vs TokensPrompt
r7 = toks(llm.generate([P[0]], sp(123), use_tqdm=False))
print("string prompt == TokensPrompt(tok.encode(prompt)):", r7 == r1, " (tokenizer adds BOS?)", llm.generate([P[0]], sp(1,1), use_tqdm=False)[0].prompt_token_ids[:3], ids[0][:3])
# no seed: two calls
u1 = toks(llm.generate([TokensPrompt(prompt_token_ids=ids[0])], SamplingParams(n=4, temperature=1.0, max_tokens=24), use_tqdm=False))
u2 = toks(llm.generate([TokensPrompt(prompt_token_ids=ids[0])], SamplingParams(n=4, temperature=1.0, max_tokens=24), use_tqdm=False))
print("no seed: two calls identical:", u1 == u2)
# n=K vs K copies of the prompt with n=1 and same seed
c = toks(llm.generate([TokensPrompt(prompt_token_ids=ids[0])] * 4, sp(123, 1), use_tqdm=False))
print("4 copies n=1 seed=123: distinct samples:", len(set(x[0] for x in c)), " first == n=4 seed=123 sample0:", c[0][0] == r1[0][0])
# greedy batch invariance
g1 = toks(llm.generate([TokensPrompt(prompt_token_ids=ids[0])], SamplingParams(temperature=0.0, max_tokens=24), use_tqdm=False))
g3 = toks(llm.generate([TokensPrompt(prompt_token_ids=i) for i in ids], SamplingParams(temperature=0.0, max_tokens=24), use_tqdm=False))
print("greedy P0 alone == in batch:", g1[0] == g3[0])
# seeded sample with a different max_tokens: is the prefix the same?
m1 = toks(llm.generate([TokensPrompt(prompt_token_ids=ids[0])], SamplingParams(n=4, temperature=1.0, max_tokens=8, seed=123), use_tqdm=False))
print("max_tokens=8 is prefix of max_tokens=24 (same seed):", all(r1[0][k][:8] == m1[0][k] for k in range(4)))
# LLM seed: fresh engine, unseeded requests
del llm; gc.collect()
llm = LLM(model=model, dtype=dtype, enforce_eager=True, max_model_len=256, seed=0)
u3 = toks(llm.generate([TokensPrompt(prompt_token_ids=ids[0])], SamplingParams(n=4, temperature=1.0, max_tokens=24), use_tqdm=False))
print("second LLM(seed=0): first unseeded call == first engine's first unseeded call:", u3 == u1)
s3 = toks(llm.generate([TokensPrompt(prompt_token_ids=ids[0])], sp(123), use_tqdm=False))
print("second LLM: seeded output == first engine's:", s3 == r1)
print("PROBE A DONE")
