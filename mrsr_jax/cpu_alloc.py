"""Keep freed memory in the process (glibc malloc): XLA:CPU's big per-call buffers stop page-faulting.

Why (docs/benchmarks.md, "Where the time goes"): XLA:CPU allocates an execution's temporaries afresh
on every call. glibc serves any allocation above its mmap threshold (at most 32 MiB) with a new
`mmap`, and returns it to the kernel on free, so every step touches its hundreds of MiB of
temporaries as brand-new pages: a page fault and a zeroed page per 4 KiB. Measured on one core of
this project's CPU: building a 265 MB im2col buffer took 300 ms that way and 54 ms from reused heap
memory; the whole SR train step (4x, batch 4, 240²) used 17% less CPU time (5.9 -> 4.9 s).

`keep_freed_memory()` sets `M_MMAP_MAX = 0` (big blocks come from the heap, whose freed memory is
reused), a high `M_TRIM_THRESHOLD` (the heap is not shrunk after each step) and `M_ARENA_MAX = 1`.
The last because XLA:CPU allocates from its worker threads, and glibc gives other threads their own
arenas made of heaps of at most 64 MiB: a block bigger than that cannot come from them and was
page-faulted in afresh on every call whatever the other settings (x * 2 on a 112 MiB array: 37 ms,
6 ms with one arena; the SR train step 2,091 -> 1,929 ms). One arena is what a process with a few
big allocations per step wants; many small concurrent allocations would contend on its lock. Call it
before any thread allocates (first thing in a process: threads keep the arena they started with).
The cost: the process's resident memory stays at its peak instead of falling between calls, which a
training or prediction process reaches every step anyway. Linux/glibc only; elsewhere it does nothing.

Only for a process whose JAX backend is the CPU (`cpu_backend_chosen`, decided before JAX starts a
backend, since the setting must precede its threads): an accelerator's buffers live in device memory,
and its host process keeps glibc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# glibc's mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1


def keep_freed_memory() -> bool:
  """Applies the setting to this process; True if glibc took it."""
  if not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):   # not glibc (e.g. musl has no mallopt)
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return (bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _INT_MAX))
          and bool(mallopt(_M_ARENA_MAX, 1)))


def cpu_backend_chosen(platforms: str | None = None) -> bool:
  """Whether this process's JAX backend will be the CPU, decided without starting any backend.

  `platforms` is JAX's platform list (default: the `JAX_PLATFORMS` environment variable): the first
  entry is the backend JAX takes. Unset, JAX takes an accelerator when it finds one, so the answer is
  True only when none is visible to JAX's own hardware probes (NVIDIA or AMD GPU, TPU chips); where
  those probes are unavailable the answer is False (glibc's defaults are always safe)."""
  if platforms is None:
    platforms = os.environ.get("JAX_PLATFORMS", "")
  first = platforms.split(",")[0].strip().lower()
  if first:
    return first == "cpu"
  try:
    from jax._src import hardware_utils   # reads /proc and sysfs only; starts nothing
    chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
    return not (hardware_utils.has_visible_nvidia_gpu() or hardware_utils.num_available_amd_gpus(stop_at=1)
                or chips)
  except Exception:   # noqa: BLE001 -- a JAX without these probes: cannot tell, so not CPU
    return False
