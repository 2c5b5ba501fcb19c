"""mrsr_jax.cpu_alloc: freed big buffers are reused, not page-faulted in anew (issue 13, CPU speed)."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT

PROBE = r"""
import resource, sys
import numpy as np
sys.path.insert(0, sys.argv[2])
if sys.argv[1] == "keep":
  from mrsr_jax import cpu_alloc
  assert cpu_alloc.keep_freed_memory()
def faults_of_one_buffer():
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  a = np.ones(2**24, np.float32)      # 64 MiB, far above glibc's largest mmap threshold
  del a
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_one_buffer()                 # the first one has to come from the kernel either way
print(min(faults_of_one_buffer() for _ in range(3)))
"""

# XLA:CPU allocates from its worker threads: a block above glibc's 64 MiB per-thread heap, in a thread.
THREAD_PROBE = r"""
import resource, sys, threading
import numpy as np
sys.path.insert(0, sys.argv[2])
if sys.argv[1] == "keep":
  from mrsr_jax import cpu_alloc
  assert cpu_alloc.keep_freed_memory()
out = []
def worker():
  def faults_of_one_buffer():
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    a = np.ones(3 * 2**23, np.float32)  # 96 MiB
    del a
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before
  faults_of_one_buffer()
  out.append(min(faults_of_one_buffer() for _ in range(3)))
t = threading.Thread(target=worker)
t.start(); t.join()
print(out[0])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings (Linux)")
def test_freed_buffers_are_reused_without_page_faults():
  def faults(mode):
    out = subprocess.run([sys.executable, "-c", PROBE, mode, str(ROOT)], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.split()[-1])
  # glibc's default mmaps and unmaps 64 MiB each time: hundreds of faults at least (16384 with 4 KiB
  # pages; the kernel may map larger folios per fault), each on freshly zeroed memory. Kept: none.
  default, kept = faults("default"), faults("keep")
  assert default > 100 and kept < 20, (default, kept)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings (Linux)")
def test_big_buffers_of_other_threads_are_reused_too():
  """A 96 MiB buffer allocated and freed in a non-main thread (as XLA:CPU's workers do): without one
  malloc arena it is page-faulted in anew every time (glibc's thread heaps stop at 64 MiB), kept:
  none. Fails without M_ARENA_MAX = 1."""
  def faults(mode):
    out = subprocess.run([sys.executable, "-c", THREAD_PROBE, mode, str(ROOT)], capture_output=True,
                         text=True, check=True)
    return int(out.stdout.split()[-1])
  # Default: 48 faults here (the kernel maps 2 MiB per fault into this heap), each zeroing 2 MiB;
  # kept without one arena: the same 48 (measured); kept: 0.
  default, kept = faults("default"), faults("keep")
  assert default >= 20 and kept < 5, (default, kept)


@pytest.mark.parametrize("platforms,want", [("cpu", True), ("cpu,cuda", True), ("cuda", False),
                                            ("tpu,cpu", False), (" CPU ", True)])
def test_backend_from_jax_platforms(platforms, want):
  from mrsr_jax import cpu_alloc
  assert cpu_alloc.cpu_backend_chosen(platforms) is want


def test_unset_platforms_follow_visible_accelerators(monkeypatch):
  """JAX_PLATFORMS unset: CPU unless JAX's hardware probes see an accelerator (JAX would take it)."""
  from jax._src import hardware_utils
  from mrsr_jax import cpu_alloc
  monkeypatch.setattr(hardware_utils, "has_visible_nvidia_gpu", lambda: False)
  monkeypatch.setattr(hardware_utils, "num_available_amd_gpus", lambda stop_at=None: 0)
  monkeypatch.setattr(hardware_utils, "num_available_tpu_chips_and_device_id", lambda: (0, None))
  assert cpu_alloc.cpu_backend_chosen("") is True
  monkeypatch.setattr(hardware_utils, "has_visible_nvidia_gpu", lambda: True)
  assert cpu_alloc.cpu_backend_chosen("") is False


@pytest.mark.parametrize("platforms,applied", [("cpu", True), ("cuda", False)])
def test_run_sets_malloc_only_for_a_cpu_backend(tmp_path, monkeypatch, platforms, applied):
  """run.py changes glibc's settings only when JAX will run on the CPU (the run then stops at the
  missing dataset: the setting comes first)."""
  import run
  from mrsr_jax import cpu_alloc
  calls = []
  monkeypatch.setattr(cpu_alloc, "keep_freed_memory", lambda: calls.append(1) or True)
  monkeypatch.setenv("JAX_PLATFORMS", platforms)
  rc = run.main(["run.py", f"--config={ROOT}/configs/tiny.py", f"--workdir={tmp_path}",
                 f"--config.data_dir={tmp_path}/no_data", "--mode=eval"])
  assert rc == run.EXIT_BAD_INPUT
  assert bool(calls) is applied
