"""bench/memory.py: XLA's memory figures for the real train step are what the step allocates, and the
paper configs fit an 80 GB card by those figures."""

import ctypes
import importlib.util
import json
import os
import statistics
import subprocess
import sys

import pytest
from conftest import ROOT

MIB = 2 ** 20


def _load_tool():
  spec = importlib.util.spec_from_file_location("mrsr_memory_tool", ROOT / "bench" / "memory.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module       # its dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


memory = _load_tool()


def _glibc() -> bool:
  try:
    libc = ctypes.CDLL("libc.so.6")
    return hasattr(libc, "mallopt")       # glibc: MALLOC_MMAP_THRESHOLD_ is read at process start
  except OSError:
    return False


# Runs in a fresh process: the measurement needs glibc's heap in a known state from the start (see
# the test's docstring), which a pytest process that has run other tests is not.
_MEASURE = r"""
import json, os, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import importlib.util
import jax, jax.numpy as jnp, numpy as np
spec = importlib.util.spec_from_file_location("mrsr_memory_tool", os.path.join(sys.argv[1], "bench", "memory.py"))
memory = importlib.util.module_from_spec(spec); sys.modules[spec.name] = memory; spec.loader.exec_module(memory)
from configs import tiny
from mrsr_jax.train import step as step_lib


def status():
  with open("/proc/self/status") as f:
    return {l.split(":")[0]: int(l.split()[1]) * 1024 for l in f if l.startswith(("VmRSS:", "VmHWM:"))}


def settled_rss():
  # The runtime frees an execution's buffers on its own thread, possibly after the outputs are
  # ready: wait until the RSS has stopped moving (1 s unchanged) before taking the baseline.
  last, still = status()["VmRSS"], 0
  while still < 10:
    time.sleep(0.1)
    now = status()["VmRSS"]
    still, last = (still + 1 if now == last else 0), now
  return last

batch_size, crop = int(sys.argv[2]), int(sys.argv[3])
config = tiny.get_config()
config.crop_size = crop
config.sr.loss.update(lambda_vit=0.0, lambda_str=0.0, lambda_tex=0.0)
info = memory.synthetic_info(config, 1000)
stage = memory.make_stage(config, "sr", info)
compiled, fig = memory.compile_step_from_shapes(stage, batch_size, platform="cpu", info=info)
state = jax.jit(stage.init)(jax.random.key(0))
batch = {"hr": jnp.asarray(np.random.default_rng(0).random((batch_size, crop, crop, 1), np.float32)),
         "label": jnp.zeros((batch_size,), jnp.int32)}
keys = [step_lib.step_rng(0, i) for i in range(4)]
state, metrics = compiled(state, batch, keys[0], {})      # warm: the runtime's thread pools, code
jax.block_until_ready((state, metrics))
grown = []
for key in keys[1:]:
  before = settled_rss()
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")                                           # VmHWM := VmRSS
  state, metrics = compiled(state, batch, key, {})
  jax.block_until_ready((state, metrics))
  grown.append(status()["VmHWM"] - before)
print(json.dumps({"grown": grown, "temp": fig.temp, "output": fig.output, "alias": fig.alias,
                  "expected": fig.peak - fig.argument}))
"""


def test_figures_are_what_the_step_allocates():
  """The tool's figure for what one step allocates beyond its inputs (peak - argument = temporaries +
  outputs not written in place) against the process's real growth while the step runs.

  How it is measured: XLA:CPU allocates the buffers of an execution through the C heap. With glibc's
  mmap threshold fixed at 64 KiB from the start of the process (MALLOC_MMAP_THRESHOLD_; it otherwise
  rises to 32 MiB as large blocks are freed, and later ones come from the heap's free lists, whose
  pages may still be resident), every buffer of 64 KiB or more is its own mapping, counted in RSS
  while it lives and unmapped when freed. The peak RSS (VmHWM, reset through /proc/self/clear_refs)
  during a step minus the RSS just before it is what the execution held at its peak. Measured in a
  fresh process (a subprocess: a pytest process's heap has been shaped by other tests). The tolerance
  covers what the runtime allocates outside XLA's buffer assignment (measured: +2 to +26 MiB on
  164 MiB); the median of three steps is compared.
  """
  if not os.path.exists("/proc/self/clear_refs") or not _glibc():
    pytest.skip("needs Linux /proc (VmHWM reset) and glibc malloc to measure what a step allocates")
  # The SR step of the tiny networks on 96² crops with a batch big enough that the step's buffers
  # (~220 MB) dwarf the runtime's own; the frozen-feature terms are off (they only add compile time).
  # The tests' compiler level (conftest): buffer assignment, what is measured, comes before LLVM.
  env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(64 * 1024),
             XLA_FLAGS="--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", _MEASURE, str(ROOT), "32", "96"], env=env,
                        capture_output=True, text=True, timeout=1800)   # a hang guard only
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  expected, measured = got["expected"], statistics.median(got["grown"])
  assert got["temp"] > 100 * MIB      # a figure big enough to be told from the runtime's noise
  assert 0.95 * expected <= measured <= 1.15 * expected + 16 * MIB, (
      f"the step grew the process by {measured / MIB:.1f} MiB (runs: "
      f"{[round(g / MIB, 1) for g in got['grown']]}); the tool says {expected / MIB:.1f} MiB "
      f"(temp {got['temp'] / MIB:.1f} + output {got['output'] / MIB:.1f} - alias "
      f"{got['alias'] / MIB:.1f})")


def _paper_config(name):
  return memory.load_named_config(str(ROOT / "configs" / f"{name}.py"))


def _fits_80gb(config_name, stage):
  fig = memory.configured_figures(_paper_config(config_name), stage)
  budget = 0.9 * 80 * memory.GIB
  assert fig.peak <= budget, (
      f"{config_name} {stage}: the configured step ({fig.microbatches} microbatch(es) of "
      f"{fig.per_device_batch // fig.microbatches}) needs {fig.peak / memory.GIB:.1f} GiB per device "
      f"by XLA's figures, over 90% of an 80 GB card")


@pytest.mark.slow
def test_largest_paper_step_fits_80gb():
  """Slow (the full-size fastMRI 2x SR step compiled from shapes); the default suite checks the
  tool's figures against what a step really allocates (above).

  The paper config with the largest per-device step (fastMRI 2×: 320² slices, a 160² LR grid
  through 16 residual blocks; docs/benchmarks.md) fits one 80 GB card at the paper's batch 256 by the
  tool's figures for the step the loop would compile (its gradient accumulation, dtype, remat)."""
  _fits_80gb("sr_fastmri_x2", "sr")


@pytest.mark.slow
@pytest.mark.parametrize("config_name", ["sr_ixi_x2", "sr_ixi_x4", "sr_fastmri_x2", "sr_fastmri_x4"])
@pytest.mark.parametrize("stage", ["vit", "ae", "sr"])
def test_every_paper_step_fits_80gb(config_name, stage):
  _fits_80gb(config_name, stage)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["srcnn", "vdsr", "edsr", "rdn"])
def test_every_comparison_step_fits_80gb(method):
  """The comparison methods' paper-size configs (configs/compare/, SR stage only) fit one 80 GB card
  at the paper's batch 256 with their configured microbatches (RDN's are smaller for it)."""
  assert method in memory.COMPARE_CONFIGS[("srcnn", "vdsr", "edsr", "rdn").index(method)]
  _fits_80gb(f"compare/{method}_ixi_x4", "sr")


@pytest.mark.parametrize("name, slices, steps", [
    ("sr_ixi_x4", 144_000, (20_000, 300_000, 18_750)),   # three IXI contrasts pooled: not 3x the paper
    ("sr_ixi_x2", 48_000, (20_000, 300_000, 18_750)),    # one contrast: the paper's 100 epochs
    ("sr_fastmri_x2", 16_208, (20_000, 101_300, 6_332)),  # fastMRI: 100 epochs of its set
])
def test_paper_stage_lengths(name, slices, steps):
  """Stage lengths of the paper configs (paper_deviations.md row 31) for a training set of `slices`:
  what the cost table in docs/benchmarks.md multiplies the FLOPs per step by."""
  config = _paper_config(name)
  assert tuple(memory.stage_steps(config, stage, slices)[0] for stage in ("vit", "ae", "sr")) == steps


def test_cost_flops_reads_dict_and_list():
  """cost_analysis() is a dict in jax 0.10 and a list of per-module dicts in older versions."""
  class Fake:
    def __init__(self, cost):
      self.cost = cost

    def cost_analysis(self):
      return self.cost
  assert memory.cost_flops(Fake({"flops": 3.0, "bytes accessed": 9.0})) == 3.0
  assert memory.cost_flops(Fake([{"flops": 3.0}, {"flops": 4.0}])) == 7.0
  assert memory.cost_flops(Fake(None)) == 0.0


@pytest.mark.parametrize("argv, message", [
    (["--stage=decoder", "--config=configs/sr_ixi_x4.py"], "flag --stage=decoder: value should be one of"),
    (["--config=configs/missing.py"], "--config=configs/missing.py: no such file"),
    (["--config=configs/sr_ixi_x4.py", "--config.sr.bach=2"], "has no field 'sr.bach'"),
    (["--config=configs/sr_ixi_x4.py", "--sizes=2,2"], "--sizes=2,2: give two different sizes"),
    (["--config=configs/sr_ixi_x4.py", "--sizes=0,2"], "every value must be > 0"),
    (["--config=configs/sr_ixi_x4.py", "--devices=3"], "multiple of the 3 devices"),
    (["--config=configs/sr_ixi_x4.py", "--json=/nonexistent-dir/m.json"], "no such directory"),
    (["--from_json=/nonexistent-dir/m.json"], "not a --json file of this tool"),
    ([], "--config is required"),
])
def test_bad_input_is_one_line(argv, message, capsys, monkeypatch):
  monkeypatch.chdir(ROOT)
  assert memory.main(["memory.py", *argv]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_stage_built_for_the_platform_it_is_lowered_for():
  """--platform=gpu on a CPU host builds the models for a GPU: XLA's convolutions, not cpu_conv's
  (the models fix their convolution code when built, from the backend unless told)."""
  from mrsr_jax import api
  config = api.load_config("tiny")
  info = memory.synthetic_info(config, 64)
  gpu = memory.make_stage(config, "sr", info, "gpu")
  assert (gpu.gen.conv_impl, gpu.disc.conv_impl) == ("xla", "xla")
  cpu = memory.make_stage(config, "sr", info, "cpu")
  assert (cpu.gen.conv_impl, cpu.disc.conv_impl) == ("cpu", "cpu")
