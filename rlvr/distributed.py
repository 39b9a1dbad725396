"""Data parallelism over torch.distributed: the process group, sharding, what ranks agree on,
DDP / FSDP2 wrapping, and the `--nproc` launcher (docs/distributed.md).

A run of W processes ("ranks") is the same run as one process with the same global batch:
  * a step's B prompts are split into W contiguous shards of whole groups (`World.shard`), and
    each group's sampling noise depends on (seed, step, prompt position) only, so the samples
    do not depend on W;
  * every rank scores its own samples in its own verifier pool;
  * the loss is normalised by the GLOBAL token (or sequence) count and DDP / FSDP SUM the
    ranks' gradients (not their mean), so the gradient is the one-process gradient;
  * decisions (how many prompts --group-filter adds, --adaptive-k's group sizes, collapse,
    early stop, whether a step is skipped) are taken from gathered global values by every rank
    alike, so the ranks never diverge;
  * only rank 0 writes files; a checkpoint holds nothing per rank, so it resumes at any W.

One process (no torchrun, --nproc 1) uses `SINGLE`, whose collectives are identities: that
path runs no torch.distributed code at all.

Small per-step values travel as pickled objects (`all_gather_object`) and are combined in rank
order by every rank, so every rank computes bit-identical metrics and decisions; gradients go
through DDP (or FSDP2's reduce-scatter).
"""
from __future__ import annotations

import contextlib
import ctypes
import datetime
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

from rlvr.config import ConfigError, RunFailed

ERROR_FILE_ENV = "TORCHELASTIC_ERROR_FILE"  # set by torchrun's agent for each rank: where its failure is recorded
FSDP_ON_CPU_ENV = "RLVR_TEST_FSDP_ON_CPU"  # test hook: run the --fsdp code path on CPU/gloo in float32
LAUNCHER_ENV = "RLVR_LAUNCHER_PID"  # set by `--nproc`'s launcher: the process its ranks must not outlive


class CollectiveFailed(RunFailed):
    """A collective with the other ranks failed: a rank ended, or did not answer within the timeout.
    Secondary: the rank that ended first says why."""


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run."""

    rank: int = 0
    size: int = 1  # the world size W
    local_rank: int = 0  # the rank on this machine (its GPU with --device cuda)
    local_size: int = 1
    timeout: float = 600.0  # seconds a collective may wait (--dist-timeout)
    fsdp: bool = False  # the policy is sharded with FSDP2 (--fsdp)

    @property
    def main(self) -> bool:
        """Rank 0: the one rank that writes files and prints."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1

    def where(self) -> str:
        """' (rank r of W)' for messages, '' in a single process."""
        return f" (rank {self.rank} of {self.size})" if self.parallel else ""

    def shard(self, count: int) -> range:
        """This rank's contiguous share of `count` consecutive things (groups, problems): the
        first count % W ranks take one more, so shards differ by at most one."""
        base, extra = divmod(count, self.size)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (self.rank < extra))

    def gather(self, value: Any, what: str) -> list:
        """`value` of every rank, in rank order, on every rank. `what` names the exchange in the
        message when it fails."""
        if not self.parallel:
            return [value]
        import torch.distributed as dist

        out: list = [None] * self.size
        try:
            dist.all_gather_object(out, value)
        except RuntimeError as err:
            raise self.lost(what, err) from None
        return out

    def broadcast(self, value: Any, what: str) -> Any:
        """Rank 0's `value` on every rank (what the others pass is ignored)."""
        if not self.parallel:
            return value
        import torch.distributed as dist

        box = [value if self.main else None]
        try:
            dist.broadcast_object_list(box, src=0)
        except RuntimeError as err:
            raise self.lost(what, err) from None
        return box[0]

    def agree(self, action, what: str) -> Any:
        """Runs `action()` on rank 0 only and gives its result to every rank; a ConfigError or
        RunFailed it raises is raised on every rank, so all ranks stop alike (exit 2 or 1)."""
        outcome: tuple = ("ok", None)
        if self.main:
            try:
                outcome = ("ok", action())
            except ConfigError as err:
                outcome = ("config", (err.field, str(err).split(": ", 1)[1]))
            except RunFailed as err:
                outcome = ("failed", str(err))
        kind, payload = self.broadcast(outcome, what)
        if kind == "config":
            raise ConfigError(*payload)
        if kind == "failed":
            raise RunFailed(payload, every_rank=True)
        return payload

    def lost(self, what: str, err: BaseException) -> CollectiveFailed:
        """The error of a failed collective, naming this rank and the likely cause."""
        text = str(err)
        if "timed out" in text.lower() or "timeout" in text.lower():
            cause = (f"no answer from the other ranks within --dist-timeout {self.timeout:g} s (a rank is stuck or "
                     "far slower; raise --dist-timeout if that is expected)")
        else:
            cause = "another rank ended first (its own message says why)"
        detail = text.splitlines()[0] if text else type(err).__name__
        detail = detail.split("] ", 1)[-1].split(". ")[0][:120]  # gloo's "[file.cc:line] Read error ...: reason"
        return CollectiveFailed(f"{what} with the other ranks failed: {cause} [{detail}]")


SINGLE = World()


def is_comm_error(err: BaseException) -> bool:
    """An exception raised by a collective (gloo / NCCL), e.g. inside DDP's backward all-reduce."""
    import torch.distributed as dist

    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    text = str(err)
    return any(mark in text for mark in ("gloo", "NCCL", "Connection reset", "Connection closed", "Timed out"))


# ---------------------------------------------------------------- the process group

def launched_world_size() -> int | None:
    """The world size when this process is a rank started by torchrun (or `--nproc`), else None."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    return None


def check_processes(nproc: int, timeout: float, device: str) -> None:
    """--nproc and --dist-timeout, of `rlvr train` and `rlvr eval`."""
    if nproc < 1:
        raise ConfigError("nproc", f"must be at least 1, got {nproc}")
    if not timeout > 0:
        raise ConfigError("dist_timeout", f"must be > 0 seconds, got {timeout}")
    launched = launched_world_size()
    if launched is not None and nproc not in (1, launched):
        raise ConfigError("nproc", f"this process is one of {launched} ranks started by torchrun, which decides the "
                                   f"world size; drop --nproc {nproc} (or launch without torchrun)")
    if device == "cuda" and launched is None and nproc > 1:
        if nproc > torch.cuda.device_count():
            raise ConfigError("nproc", f"one process per GPU, but torch sees {torch.cuda.device_count()} GPUs; use "
                                       f"--nproc {torch.cuda.device_count()} or fewer")


def start(device: str, timeout: float, fsdp: bool = False) -> World:
    """Joins the ranks' process group when this process is one of W > 1 ranks (gloo on CPU,
    NCCL on CUDA, every collective held to `timeout` seconds); else the single-process World."""
    size = launched_world_size()
    if not size or size == 1:
        if fsdp:  # FSDP2 needs a process group even for one rank (resuming an --fsdp run in 1 process)
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("nccl" if device == "cuda" else "gloo", store=dist.HashStore(), rank=0,
                                        world_size=1, timeout=datetime.timedelta(seconds=timeout))
        return World(timeout=timeout, fsdp=fsdp)
    import torch.distributed as dist

    _die_with_launcher()
    world = World(rank=int(os.environ["RANK"]), size=size, local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                  local_size=int(os.environ.get("LOCAL_WORLD_SIZE", size)), timeout=timeout, fsdp=fsdp)
    if device == "cuda":
        torch.cuda.set_device(world.local_rank)  # "cuda" now means this rank's GPU
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=datetime.timedelta(seconds=timeout))
    return world


def stop(world: World) -> None:
    """Leaves the process group (local: no collective, safe on every exit path)."""
    if world.parallel or world.fsdp:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _die_with_launcher() -> None:
    """Linux: the kernel kills this rank when its launcher (torchrun's agent, or `rlvr --nproc`)
    dies, even by SIGKILL, so no rank outlives a killed run and writes into a resumed one. Its
    reward workers follow it the same way (rlvr/rewards/pool.py)."""
    parent = int(os.environ.get(LAUNCHER_ENV, 0)) or os.getppid()  # torchrun: its agent, our parent
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        return
    if os.getppid() != parent:  # the launcher died before the line above
        os._exit(1)


def record_failure(message: str, code: int, secondary: bool = False, every_rank: bool = False) -> None:
    """Writes this rank's failure where the launcher reads it (torchrun's error file), so the
    launcher can name the rank that failed first and why. `code`: the exit code the rank is about
    to return (the launcher may stop it before it does); `secondary`: only a consequence of
    another rank's failure (a broken collective); `every_rank`: a stop all ranks agreed on."""
    path = os.environ.get(ERROR_FILE_ENV)
    if not path:
        return
    try:
        with open(path, "w") as fh:
            json.dump({"message": message, "timestamp": int(time.time()),
                       "rlvr": {"time": time.time(), "code": code, "secondary": secondary,
                                "every_rank": every_rank}}, fh)
    except OSError:
        pass


# ---------------------------------------------------------------- gradients: DDP and FSDP2

def _sum_allreduce_hook(process_group, bucket):
    """DDP comm hook: the SUM of the ranks' gradients (DDP's default divides by W). The loss is
    normalised by the global token count, so the sum is the gradient of the whole batch."""
    import torch.distributed as dist

    group = process_group if process_group is not None else dist.group.WORLD
    work = dist.all_reduce(bucket.buffer(), group=group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def wrap_scorer(scorer: torch.nn.Module, world: World) -> torch.nn.Module:
    """The training forward as train_step calls it: unchanged in one process; under DDP (with
    the summing hook) for W > 1; for FSDP2 (already sharded) a wrapper whose `no_sync()` defers
    the reduce-scatter to the last micro-batch."""
    if not world.parallel and not world.fsdp:
        return scorer
    if world.fsdp:
        return _FSDPScorer(scorer)
    from torch.nn.parallel import DistributedDataParallel

    # device_ids=None: the module lives on one device and its inputs are already there.
    # forward_sync_buffers=False: buffers are constants (rotary tables), never trained.
    ddp = DistributedDataParallel(scorer, device_ids=None, forward_sync_buffers=False)
    ddp.register_comm_hook(state=None, hook=_sum_allreduce_hook)
    return ddp


class _FSDPScorer(torch.nn.Module):
    """An FSDP2-sharded policy's scorer with DDP's `no_sync()`: gradients of all micro-batches
    but the last accumulate unsharded; the last one's backward reduce-scatters their sum.

    Unlike DDP's all-reduce, a reduce-scatter ADDS to the sharded gradient already there, so a
    micro-batch boundary may also sync (`syncs_partial_sums`): the gradient noise measurement
    (rlvr.algo.noise) reads the whole step's partial sums that way."""

    syncs_partial_sums = True

    def __init__(self, scorer: torch.nn.Module) -> None:
        super().__init__()
        self.scorer = scorer

    def forward(self, *args, **kwargs):
        return self.scorer(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        root = self.scorer.policy.model
        root.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            root.set_requires_gradient_sync(True)


def fsdp_shard(policy, world: World) -> None:
    """FSDP2 (`fully_shard`) over every decoder layer of a Hugging Face model, then the whole
    model: parameters, gradients and optimizer state are split over the ranks. bf16 parameters
    for compute, float32 gradient reduction, gradients SUMMED (see _sum_allreduce_hook).
    Must run before the optimizer is built (it replaces the parameters by sharded DTensors)."""
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    model = policy.model
    layer_classes = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in layer_classes]
    if not layers:
        raise ConfigError("fsdp", f"{type(model).__name__} declares no decoder-layer class (_no_split_modules), so "
                                  "there is nothing to shard layer by layer; train it without --fsdp")
    on_cuda = not os.environ.get(FSDP_ON_CPU_ENV)
    precision = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if on_cuda else torch.float32,
                                     reduce_dtype=torch.float32)
    for layer in layers:
        fully_shard(layer, mp_policy=precision)
    fully_shard(model, mp_policy=precision)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # plain SUM: gloo has no PREMUL_SUM
    if on_cuda:
        policy.decode_batch_rows = 1024  # loaded on the CPU (HFPolicy's CPU default), sharded onto the GPU


@contextlib.contextmanager
def decoding(policy, world: World):
    """Sampling and evaluation with an FSDP2 policy: every layer all-gathered ONCE and kept
    until the end, so the many decoding forwards run no collective (ranks decode different
    numbers of tokens, and a per-forward all-gather would have to be matched on every rank).
    A no-op without FSDP."""
    if not world.fsdp:
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    modules = [m for m in policy.model.modules() if isinstance(m, FSDPModule)]
    for module in modules:
        module.set_reshard_after_forward(False, recurse=False)
        module.unshard()
    try:
        yield
    finally:
        for module in modules:
            module.reshard()
            module.set_reshard_after_forward(module is not policy.model, recurse=False)


def full_model_state(policy) -> dict:
    """FSDP2: the policy's trainable weights gathered in full (rank 0 gets them, on the CPU;
    the other ranks get {}). Collective: every rank calls it. Keys as in one process."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(policy.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if getattr(policy, "peft_model", None) is not None:  # LoRA: the adapter is what is trained and saved
        trained = {name for name, p in policy.module.named_parameters() if p.requires_grad}
        state = {name: value for name, value in state.items() if name in trained}
    return state


def full_optimizer_state(policy, optimizer) -> dict:
    """FSDP2: the optimizer state gathered in full, keyed by parameter name (rank 0; collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(policy.module, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(policy, optimizer, model_state: dict, optimizer_state: dict | None) -> None:
    """FSDP2: rank 0's full weights (and optimizer state) broadcast and re-sharded on every rank
    (collective; the other ranks pass {})."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    lora = getattr(policy, "peft_model", None) is not None
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=not lora)
    set_model_state_dict(policy.module, model_state, options=options)
    if optimizer_state is not None:
        set_optimizer_state_dict(policy.module, optimizer, optimizer_state, options=options)


# ---------------------------------------------------------------- the --nproc launcher

def launch(nproc: int, argv: list[str], command: str) -> int:
    """`rlvr <argv>` as `nproc` ranks on this machine, under torch's elastic agent (the engine of
    torchrun, --standalone: a rendezvous on a free local port). Returns the exit code: 0, or the
    code of the rank that failed first (2 bad input, 1 otherwise). When a rank fails the agent
    stops the others (SIGTERM, then SIGKILL after 5 s), and this names the rank and its cause."""
    import logging
    import uuid

    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, launch_agent

    for name in list(logging.root.manager.loggerDict):  # the agent's modules each set their own level
        if name.startswith("torch.distributed.elastic") or name.startswith("torch.distributed.launcher"):
            logging.getLogger(name).setLevel(logging.CRITICAL)  # failures are reported below, once
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          monitor_interval=0.1, shutdown_timeout=5)
    before = os.environ.get(LAUNCHER_ENV)
    os.environ[LAUNCHER_ENV] = str(os.getpid())  # the ranks inherit it (the agent runs in this process)
    try:
        launch_agent(config, sys.executable, ["-m", "rlvr", *argv])
    except ChildFailedError as err:
        return _report_failure(err.failures, nproc, command)
    except SignalException as err:  # Ctrl-C or a kill of this launcher: the agent has stopped the ranks
        print(f"rlvr {command}: interrupted ({signal.Signals(err.sigval).name}); the ranks were stopped. Re-run "
              "the same command to resume from the last checkpoint.", file=sys.stderr)
        return 1
    finally:  # a later torchrun launch from this process must not inherit this launcher's pid: its ranks
        # would take the stale pid for a dead launcher and exit (_die_with_launcher)
        if before is None:
            os.environ.pop(LAUNCHER_ENV, None)
        else:
            os.environ[LAUNCHER_ENV] = before
    return 0


def _report_failure(failures: dict, nproc: int, command: str) -> int:
    """Names the rank that failed first (a rank whose failure is only a broken collective is a
    consequence, not the cause) and returns its exit code."""
    def info(failure) -> dict:
        data = failure.error_file_data if isinstance(failure.error_file_data, dict) else {}
        return data.get("rlvr", {}) if isinstance(data.get("rlvr"), dict) else {}

    def order(item):
        # A rank stopped by the agent's SIGTERM without a message of its own is a consequence too:
        # the agent's timestamps are whole seconds, so time alone can rank it before the cause.
        rank, failure = item
        extra = info(failure)
        stopped = not extra and failure.exitcode == -signal.SIGTERM
        return (bool(extra.get("secondary")), stopped, extra.get("time", float(failure.timestamp)), rank)

    def code(failure) -> int:  # what the rank meant to return (the agent may have stopped it while it exited)
        return info(failure).get("code") or (failure.exitcode if failure.exitcode in (1, 2) else 1)

    ranked = sorted(failures.items(), key=order)
    rank, first = ranked[0]
    if info(first).get("every_rank") and 0 in failures and info(failures[0]).get("every_rank"):
        return code(failures[0])  # a stop every rank agreed on: rank 0 has printed why
    if info(first):
        how = "failed"
    elif first.exitcode < 0:
        how = f"was killed by {first.signal_name()}"
    else:
        how = f"exited with code {first.exitcode}"
    if info(first):
        cause = str(first.message)
    else:
        cause = "it left no message (os._exit, a crash, or killed from outside, e.g. by the OOM killer)"
    print(f"rlvr {command}: rank {rank} of {nproc} {how}: {cause}; the other ranks were stopped. "
          "Re-run the same command to resume from the last checkpoint.", file=sys.stderr)
    return code(first)
