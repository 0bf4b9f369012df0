"""What this CPU offers the local engine: native bfloat16 matmuls, and how many cores are actually free.

bfloat16 pays on a CPU only where the hardware multiplies it: AVX-512 BF16 (Zen 4, Cooper Lake on) or AMX
(Sapphire Rapids on). There a bf16 matmul runs 3-4x the fp32 rate; without them oneDNN emulates it, some 50x
*slower* than fp32 (0.7 against 31 GFLOP/s measured on a Zen 3 core). So `dtype: auto` asks the CPU, at run time.

Threads: torch sizes its pool to the cores it is allowed on, whatever else runs there. On a shared 2-core box under
load, two threads that wait for each other at every parallel op (one of them descheduled) made each op cost 7-10 ms
instead of 0.15-0.45 ms, and training fell 8x; one thread on the one free core degrades only with the load. So the
pool is sized to the cores left free by the 1-minute load average, unless the user says otherwise.

Memory: glibc's malloc raises its mmap threshold to the size of each large block freed (up to 32 MiB), so after
the first steps a step's activations come from the heap, and with their sizes changing every step (packed batches of
varying length) the heap fragments and is never given back: stage one of the cpu-lab grew from 1.4 to 5.8 GiB RSS.
`cap_heap_growth` pins the threshold, so large tensors are mapped and unmapped whole.

torch is imported inside functions: importing this module costs nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import os
import time
from pathlib import Path
from typing import Any

THREADS_ENV = "PTST_THREADS"  # a whole number of threads, or unset for the automatic choice
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs that multiply bfloat16 natively


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX-512 BF16 or AMX): torch's own probe where it has one,
    else the kernel's CPU flags (Linux)."""
    try:
        import torch

        probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
        if probe is not None and amx is not None:
            return bool(probe() or amx())
    except ImportError:
        pass
    return bf16_flags()


def bf16_flags() -> bool:
    """Whether this CPU's flags (Linux) name a bfloat16 multiplier: `native_bf16` without importing torch."""
    return bool(set(cpu_flags()) & set(BF16_FLAGS))


def cpu_flags() -> list[str]:
    """The first processor's flags from /proc/cpuinfo ([] where there is none: not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("flags"):
            return line.split(":", 1)[1].split()
    return []


def allowed_cores() -> int:
    """The cores this process may run on (its affinity mask, which containers and `taskset` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _times() -> tuple[float, float]:
    return time.monotonic(), sum(os.times()[:2])


# (wall clock, this process's CPU seconds) at the last `own_load` call; first set at import, so the first call
# counts what the process did before it (a GGUF conversion just before training is the process's own load too)
_LAST: list[tuple[float, float]] = [_times()]


def own_load() -> float:
    """The cores this process kept busy since the last call (or since ptst's import): its own work is in the load
    average and must not count as others' load. Over a window longer than the load average's minute, the plain mean
    stands in for the load average's decaying one."""
    wall, cpu = _times()
    own = 0.0
    if _LAST and wall > _LAST[0][0]:
        own = max(0.0, (cpu - _LAST[0][1]) / (wall - _LAST[0][0]))
    _LAST[:] = [(wall, cpu)]
    return own


def free_cores(allowed: int | None = None, load: float | None = None) -> int:
    """Cores not taken by other work: the allowed cores less the others' 1-minute load average (rounded), at least
    1. `load` defaults to the system's 1-minute load average less this process's own recent use (`own_load`)."""
    allowed = allowed_cores() if allowed is None else allowed
    if load is None:
        try:
            load = max(0.0, os.getloadavg()[0] - own_load())
        except OSError:
            load = 0.0
    return max(1, min(allowed, allowed - math.floor(load + 0.5)))


def thread_count(requested: int | None = None) -> int:
    """The threads for torch's pool: `requested` (the backend's `threads` option) if given, else `PTST_THREADS`,
    else the free cores (`free_cores`)."""
    if requested is not None:
        return max(1, requested)
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            from ptst.errors import UsageError

            raise UsageError(f"{THREADS_ENV}={env!r}: give a whole number of threads, or unset it") from None
    return free_cores()


M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc malloc.h)
MMAP_THRESHOLD_BYTES = 1 << 20  # blocks from 1 MiB up are mapped whole: a 135M model's activations, not small tensors


@functools.cache
def _glibc() -> Any:
    """The C library, where it is glibc (None: musl, macOS, Windows, where neither call below exists)."""
    name = ctypes.util.find_library("c")
    if name is None or "libc.so" not in name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):  # not glibc after all
        return None
    return libc


def trim_heap() -> bool:
    """Hand the heap's free pages back to the system (glibc's `malloc_trim`). Called when a CPU job ends: a training
    run's many sub-MiB blocks (under the mmap threshold) leave free holes across the heap that glibc keeps mapped,
    and the next job's peak would stack on them (SmolLM2's small real spec: 2.13 GiB peak without, see README)."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


@functools.cache
def cap_heap_growth() -> bool:
    """Pin glibc's mmap threshold at `MMAP_THRESHOLD_BYTES` (which also turns off its dynamic raising), once per
    process; False where the C library is not glibc (musl, macOS, Windows: nothing to do)."""
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def apply_threads(requested: int | None = None) -> int:
    """Size torch's intra-op pool for the work about to start (training or a generation call) and return the size.
    Called per job, not once per process: the load of a shared box changes between jobs. Also caps the heap's growth
    (`cap_heap_growth`), which every CPU job needs and which this is the one entry point to."""
    import torch

    cap_heap_growth()

    n = thread_count(requested)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
