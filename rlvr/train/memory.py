"""Peak memory of the training steps (TERMS.md: peak memory): the resident set's high-water mark
on the CPU, reset before every step, and torch.cuda's allocator statistics on a GPU."""
from __future__ import annotations

import resource

import torch


def release_free_heap() -> None:
    """Returns freed heap pages to the OS (glibc malloc_trim), so the resident set before a step
    is the memory in use, not what earlier steps freed; without it the allocator's retained
    pages hide the step's working set. A no-op where glibc is absent."""
    import ctypes
    import ctypes.util

    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM = None


class StepMemory:
    """Peak memory of the training steps alone, in MiB (TERMS.md: peak memory).

    CPU: the process's peak resident set (VmHWM). Linux lets a process reset that high-water
    mark (/proc/self/clear_refs, "5"), so it is reset before every step and evaluation's large
    decoding batches never count as a step's memory. Where the reset is not allowed, the
    lifetime peak (ru_maxrss) is reported instead and `resets` is False.

    The memory a step itself needs is peak minus the memory in use before it, but the resident
    set before a step also holds heap the previous steps freed and the allocator kept. So on
    probe steps (step 1 and every PROBE_EVERY-th after it) the freed heap is first returned to
    the OS, and the resident set then is the memory in use. Probing costs its step ~15% more
    time (the step faults its pages back in: measured, A/B on alternate steps), so it is not
    done every step; the median step time is unaffected. GPU: allocated-memory statistics
    from torch.cuda, every step."""

    PROBE_EVERY = 25

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"
        self.resets = self.cuda or self._reset_cpu()

    @staticmethod
    def _reset_cpu() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            return True
        except OSError:
            return False

    @staticmethod
    def _status_mib(key: str) -> float | None:
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) / 1024  # kB
        except OSError:
            pass
        return None

    def start(self, step: int) -> float | None:
        """Resets the peak; on probe steps returns the memory in use before the step in MiB
        (None on other steps, and where the peak cannot be reset)."""
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated() / 2**20
        if not self.resets:
            return None
        probe = (step - 1) % self.PROBE_EVERY == 0
        if probe:
            release_free_heap()
        self._reset_cpu()
        return self._status_mib("VmRSS") if probe else None

    def peak(self) -> float:
        """Peak since start() in MiB."""
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        hwm = self._status_mib("VmHWM") if self.resets else None
        return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
