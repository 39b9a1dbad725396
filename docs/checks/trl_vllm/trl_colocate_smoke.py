"""TRL GRPOTrainer with vLLM in colocate mode on CPU: vs_trl.py's run_trl config + use_vllm=True, vllm_mode="colocate".

    VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=1 /tmp/trlvllm-venv/bin/python trl_colocate_smoke.py \
        --model DIR --items ITEMS.json [--prompts 2 --k 4 --max-new 16 --steps 3 --lr 1e-4] [--fix none|fallback|reload]

--fix none      TRL and vLLM as installed
--fix fallback  before the engine is built, replace vLLM's CPU GEMM dispatch (vllm.model_executor.layers.utils.
                dispatch_cpu_unquantized_gemm) by its own plain torch.nn.functional.linear fallback, so layers keep
                their real `weight` Parameter (with weight_loader) and TRL's per-tensor model.load_weights works
--fix reload    keep vLLM's packed kernels; replace TRL's colocate weight sync by vLLM's layerwise in-place reload,
                model_runner.reload_weights(weights_iterator=..., is_checkpoint_format=True), which restores the
                checkpoint-format parameters, loads and re-runs process_weights_after_loading (re-packs)
--vllm-dtype D  wrap the vllm.LLM that TRL calls to add dtype=D (TRL passes none; on CPU vLLM's "auto" downcasts a
                float32 checkpoint to bfloat16)
--reward length reward = completion length in characters / 100 instead of vs_trl's last-number reward (a random
                model never scores on add2, so its advantages, loss and gradient are all 0 and weights never move)
Check at the end: the vLLM engine's prompt log-probs of a fixed token sequence are compared with the trained HF
model's and with the initial model's (a synced engine must match the trained model, not the initial one).
"""
import argparse
import json
import os
import re
import sys
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--items", required=True)
ap.add_argument("--prompts", type=int, default=2)
ap.add_argument("--k", type=int, default=4)
ap.add_argument("--max-new", type=int, default=16)
ap.add_argument("--steps", type=int, default=3)
ap.add_argument("--lr", type=float, default=1e-4)
ap.add_argument("--fix", choices=["none", "fallback", "reload"], default="none")
ap.add_argument("--max-model-length", type=int, default=512)
ap.add_argument("--gpu-mem", type=float, default=0.3)
ap.add_argument("--vllm-dtype", default=None)
ap.add_argument("--reward", choices=["last-number", "length"], default="last-number")
args = ap.parse_args()

t0 = time.perf_counter()
import torch  # noqa: E402
import trl  # noqa: E402
import transformers  # noqa: E402
import vllm  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

print(f"versions torch {torch.__version__} transformers {transformers.__version__} trl {trl.__version__} "
      f"vllm {vllm.__version__}; imports {time.perf_counter() - t0:.1f}s", flush=True)

if args.fix == "fallback":
    import vllm.model_executor.layers.utils as vutils

    def plain_cpu_gemm(layer, remove_weight):  # vLLM's own fallback branch, weights left in place
        layer.cpu_linear = lambda x, weight, bias: torch.nn.functional.linear(x, weight, bias)

    vutils.dispatch_cpu_unquantized_gemm = plain_cpu_gemm  # linear.py / vocab_parallel_embedding.py import it lazily

if args.vllm_dtype:
    import functools

    import trl.generation.vllm_generation as tvg

    tvg.LLM = functools.partial(tvg.LLM, dtype=args.vllm_dtype)

if args.fix == "reload":
    from trl.generation.vllm_generation import VLLMGeneration

    original_sync = VLLMGeneration.sync_weights

    def sync_weights(self):
        if self.mode != "colocate":
            return original_sync(self)
        runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
        runner.reload_weights(weights_iterator=self._iter_named_params(), is_checkpoint_format=True)
        self.llm.reset_prefix_cache()

    VLLMGeneration.sync_weights = sync_weights


def last_number_reward(completions, answer, **_):  # vs_trl.py's reward
    scores = []
    for completion, expected in zip(completions, answer):
        text = completion[0]["content"] if isinstance(completion, list) else completion
        numbers = re.findall(r"-?\d+", text)
        scores.append(1.0 if numbers and numbers[-1] == expected else 0.0)
    return scores


def length_reward(completions, **_):
    return [len(c[0]["content"] if isinstance(c, list) else c) / 100 for c in completions]


items = json.loads(open(args.items).read())
data = Dataset.from_list([{"prompt": [{"role": "user", "content": it["question"]}], "answer": it["answer"],
                           "prompt_tokens": it["prompt_tokens"]} for it in items])
tokenizer = AutoTokenizer.from_pretrained(args.model)
model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
initial = {n: p.detach().clone() for n, p in model.named_parameters()}
out_dir = f"/tmp/trlvllm-work/run-{os.getpid()}"
config = GRPOConfig(  # vs_trl.py run_trl, verbatim, plus the vLLM lines
    output_dir=out_dir, per_device_train_batch_size=args.prompts * args.k, num_generations=args.k,
    gradient_accumulation_steps=1, max_completion_length=args.max_new, temperature=1.0, top_p=1.0, top_k=0,
    learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, adam_beta1=0.9, adam_beta2=0.99,
    weight_decay=0.0, max_grad_norm=1.0, beta=0.0, loss_type="dapo", num_iterations=1, max_steps=args.steps,
    logging_steps=1, save_strategy="no", report_to=[], shuffle_dataset=False, seed=0, use_cpu=True,
    bf16=False, dataloader_num_workers=0, disable_tqdm=True,
    use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=args.gpu_mem,
    vllm_max_model_length=args.max_model_length,
)


class StepClock(TrainerCallback):
    def __init__(self):
        self.steps = []

        self.phases = {}

    def on_step_begin(self, *_, **__):
        self.phases = {}
        self.start = time.perf_counter()

    def on_step_end(self, *_, **__):
        self.steps.append(time.perf_counter() - self.start)
        print(f"step {len(self.steps)}: {self.steps[-1]:.2f}s phases "
              f"{ {k: round(v, 2) for k, v in self.phases.items()} } torch threads {torch.get_num_threads()}", flush=True)

    def wrap(self, owner, name, phase):  # wall time inside owner.name, summed per step (as vs_trl.py's Timers)
        original = getattr(owner, name)

        def timed(*a, **kw):
            start = time.perf_counter()
            try:
                return original(*a, **kw)
            finally:
                self.phases[phase] = self.phases.get(phase, 0.0) + time.perf_counter() - start

        setattr(owner, name, timed)


clock = StepClock()
t1 = time.perf_counter()
reward = last_number_reward if args.reward == "last-number" else length_reward
trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=data,
                      processing_class=tokenizer, callbacks=[clock])
print(f"GRPOTrainer init (incl. vLLM engine) {time.perf_counter() - t1:.1f}s; torch threads {torch.get_num_threads()}",
      flush=True)
clock.wrap(trainer, "_generate_single_turn", "sampling (incl. sync)")
clock.wrap(trainer.vllm_generation, "sync_weights", "sync_weights")
clock.wrap(trainer.vllm_generation.llm, "generate", "vllm_generate")
clock.wrap(trainer, "compute_loss", "forward")
clock.wrap(trainer.accelerator, "backward", "backward")
t2 = time.perf_counter()
trainer.train()
print(f"train {time.perf_counter() - t2:.1f}s; step_s {[round(s, 2) for s in clock.steps]}", flush=True)
for log in trainer.state.log_history:
    keep = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in log.items()
            if k in ("step", "loss", "reward", "completions/mean_length", "sampling/sampling_logp_difference/mean",
                     "sampling/sampling_logp_difference/max", "sampling/importance_sampling_ratio/mean",
                     "grad_norm") or k.startswith("profiling/")}
    print("log", keep, flush=True)

# ---- weight-sync check: vLLM's prompt log-probs vs the trained and the initial HF model
gen = trainer.vllm_generation
gen.sync_weights()  # push the final (post-step-N) weights, as TRL would before the next generation
from vllm import SamplingParams  # noqa: E402

ids = tokenizer.apply_chat_template([{"role": "user", "content": items[0]["question"]}], add_generation_prompt=True,
                                    tokenize=True, return_dict=False)
if isinstance(ids, dict) or hasattr(ids, "keys"):
    ids = ids["input_ids"]
ids = list(ids) + tokenizer.encode("The answer is 102", add_special_tokens=False)
out = gen.llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0),
                       use_tqdm=False)[0]
vllm_lp = torch.tensor([d[t].logprob for t, d in zip(ids[1:], out.prompt_logprobs[1:])])


def hf_lp(m):
    with torch.no_grad():
        logits = m(torch.tensor([ids])).logits[0, :-1].float()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


trained_model = trainer.model
trained_lp = hf_lp(trained_model)
with torch.no_grad():
    current = {n: p.detach().clone() for n, p in trained_model.named_parameters()}
    for n, p in trained_model.named_parameters():
        p.copy_(initial[n])
    initial_lp = hf_lp(trained_model)
    for n, p in trained_model.named_parameters():
        p.copy_(current[n])
moved = max((current[n] - initial[n]).abs().max().item() for n in initial)
print(f"check: max |weight change| {moved:.3e}; max |vLLM - trained HF| logprob {(vllm_lp - trained_lp).abs().max():.3e}; "
      f"max |vLLM - initial HF| {(vllm_lp - initial_lp).abs().max():.3e}; "
      f"max |trained - initial HF| {(trained_lp - initial_lp).abs().max():.3e} over {len(ids) - 1} tokens", flush=True)
print(f"RESULT ok fix={args.fix} total {time.perf_counter() - t0:.1f}s", flush=True)
