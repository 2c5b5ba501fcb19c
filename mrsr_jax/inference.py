"""Inference: a trained generator restored from its workdir, and LR slices through it in batches.

`load_generator(config, workdir, mesh)` restores the SR stage's latest checkpoint into a `Generator`
(lr [B, N, M, 1] -> float32 sr [B, sN, sM, 1], its variables an argument of one compiled function per
input shape). `plan_batches` picks how many slices one call takes (as few calls as memory allows),
`super_resolve` / `batched` run fixed-shape batches sharded over the mesh's devices. Used by the
evaluation report (evaluate.py), volume prediction (predict.py) and the notebook api (api.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from mrsr_jax import errors
from mrsr_jax import sharding
from mrsr_jax.train import checkpoints
from mrsr_jax.train.stage_sr import SRStage, restore_state


# -- restoring a trained generator ---------------------------------------------------------------------
def load_generator(config: ml_collections.ConfigDict, workdir: str, mesh) -> tuple[Any, dict]:
  """(`Generator`: lr -> sr, info) of the SR generator trained in `workdir` (its latest
  checkpoint)."""
  stage = SRStage(config, workdir)
  directory = os.path.join(stage.dir, "checkpoints")
  if checkpoints.latest_step(directory) is None:
    raise FileNotFoundError(f"{workdir}: no trained SR checkpoint in {directory}; train first "
                            f"(python run.py --config=... --workdir={workdir})")
  meta = checkpoints.read_meta(directory)
  trained = json.loads(meta["config"]) if isinstance(meta.get("config"), str) else {}
  if trained and trained.get("scale") != config.scale:
    raise errors.UserError(f"{workdir}: the checkpoint was trained for scale {trained.get('scale')}, "
                     f"not {config.scale}")
  state, step = restore_state(stage, mesh)
  variables = {"params": state.params["gen"], "batch_stats": state.batch_stats["gen"]}
  # The training stage's own generator module (the same code and conv_impl as its train step); the
  # variables are arguments, so every load of this config shares one executable per shape.
  apply = Generator(stage.gen, variables, jnp.dtype(config.dtype).name)
  return apply, {"workdir": os.path.abspath(workdir), "step": int(step)}



# -- the model call ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _ModelApply:
  """(variables, lr) -> float32 SR of a Flax generator in inference mode. Hashable by value (the
  module's fields and the dtype): a static argument of the compiled functions below, so every load of
  a generator with the same config shares their executables."""
  model: Any
  dtype: str

  def __call__(self, variables, lr):
    return self.model.apply(variables, lr.astype(self.dtype), train=False).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class _FnApply:
  """(variables, lr) -> fn(lr) for any lr -> sr callable (its variables are its own)."""
  fn: Callable

  def __call__(self, variables, lr):
    del variables
    return self.fn(lr)


@functools.partial(jax.jit, static_argnums=0)
def _generate(apply, variables, lr):
  return apply(variables, lr)


@dataclasses.dataclass(frozen=True, eq=False)
class Generator:
  """A generator with its trained variables, called lr [B, N, M, 1] -> float32 sr [B, sN, sM, 1] (what
  `load_generator` returns). The variables are arguments of the compiled function, not
  constants in it: generators with the same config share one executable per input shape, whichever
  checkpoint their variables come from, across calls, volumes and loads."""
  model: Any
  variables: Any
  dtype: str = "float32"

  @property
  def apply(self) -> _ModelApply:
    return _ModelApply(self.model, jnp.dtype(self.dtype).name)

  def __call__(self, lr):
    return _generate(self.apply, self.variables, lr)

  def lower(self, lr):
    return _generate.lower(self.apply, self.variables, lr)


@functools.lru_cache(maxsize=32)
def _jitted(apply_fn: Callable) -> Callable:
  """`apply_fn` compiled, one jit per callable: a second call or volume finds its executables."""
  return apply_fn if hasattr(apply_fn, "lower") else jax.jit(apply_fn)


def split(apply_fn) -> tuple[Callable, Any]:
  """(static (variables, lr) -> sr, variables) of a Generator or of any lr -> sr callable."""
  if isinstance(apply_fn, Generator):
    return apply_fn.apply, apply_fn.variables
  return _FnApply(_jitted(apply_fn)), None



# -- batches ----------------------------------------------------------------------------------------------
def _to_host(x: jax.Array) -> np.ndarray:
  """The whole of a (possibly multi-process) array on this host."""
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _free_memory_per_device(mesh) -> float:
  """Bytes a generator call may use on each of this process's devices: what the device reports free
  (accelerators), else the host's available memory (CPU devices share it)."""
  local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
  stats = local[0].memory_stats() if local else None
  if stats and stats.get("bytes_limit"):
    return float(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
  avail = None
  with contextlib.suppress(OSError, ValueError, StopIteration):
    with open("/proc/meminfo") as f:
      avail = 1024.0 * int(next(line for line in f if line.startswith("MemAvailable:")).split()[1])
  if avail is None:
    avail = float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
  return avail / max(len(local), 1)


def _call_bytes(compiled) -> float | None:
  """XLA's own per-device figure for one call: arguments + outputs + temporaries (None if unknown)."""
  mem = compiled.memory_analysis()
  if mem is None:
    return None
  return float(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes)


# Share of the free memory one call may plan for: XLA's figure leaves out fragmentation and the
# runtime's own buffers, and on CPU the host also holds the volume and its result.
MEMORY_FRACTION = 0.5


# Slices per device and call on CPU devices. XLA:CPU runs the generator faster per slice on one slice
# at a time than on a batch (its activations stay in cache): 2x, 512² output, 2 cores, 470 ms per
# slice at 1 per call, 500 at 2 or 4, 653 at 16 (bench/bench_sr.py --rows=volume; docs/benchmarks.md).
# A call costs a CPU nothing to launch, so batching buys nothing there.
CPU_SLICES_PER_CALL = 1


def plan_batches(apply_fn, slice_hw: tuple[int, int], n_slices: int, mesh, *,
                 memory_bytes: float | None = None, max_per_device: int | None = None):
  """(call, batch size) to super-resolve `n_slices` LR slices of `slice_hw` in as few generator
  calls as memory allows, instead of many small ones. `call` is `apply_fn` jitted (one jit per
  `apply_fn`, so a later plan or volume of the same shapes compiles nothing), compiled for that batch.

  One call takes all the slices (rounded up to a multiple of the mesh's devices) if XLA's memory
  figure for it (`compiled.memory_analysis()`: arguments, outputs, temporaries per device) fits
  `MEMORY_FRACTION` of a device's free memory (`memory_bytes` overrides the free figure); otherwise
  the per-slice cost measured on that compile gives the fewest equal calls that fit. Every process
  takes the smallest batch any of them can afford, so all run the same calls. At most
  `max_per_device` slices per device and call (0: no cap); by default no cap on accelerators and
  `CPU_SLICES_PER_CALL` on CPU devices, where small calls are faster per slice.
  """
  apply_fn = _jitted(apply_fn)
  n_dev = mesh.devices.size
  if max_per_device is None:
    max_per_device = CPU_SLICES_PER_CALL if mesh.devices.flat[0].platform == "cpu" else 0
  data_sharding = sharding.data_sharding(mesh)
  budget = MEMORY_FRACTION * (memory_bytes if memory_bytes is not None else _free_memory_per_device(mesh))

  def compile_for(batch):
    spec = jax.ShapeDtypeStruct((batch, *slice_hw, 1), np.float32, sharding=data_sharding)
    return apply_fn.lower(spec).compile()

  per_dev = max(-(-n_slices // n_dev), 1)        # slices each device needs in all
  if max_per_device:
    per_dev = min(per_dev, max_per_device)
  first = per_dev * n_dev
  compiled = compile_for(first)
  need = _call_bytes(compiled)
  if need is not None and need > budget and per_dev > 1:
    # Temporaries grow with the batch; the parameters (in the arguments) do not, so this linear
    # per-slice figure over-estimates slightly and errs on the safe side.
    fit = max(int(budget // (need / per_dev)), 1)
    calls = -(-per_dev // fit)
    per_dev = -(-per_dev // calls)               # equal calls: the least padding for that many
  batch = per_dev * n_dev
  if jax.process_count() > 1:
    batch = int(np.min(multihost_utils.process_allgather(np.asarray(batch, np.int64))))
  if batch != first:
    compiled = compile_for(batch)
  logging.info("predict: %d slices of %s in %d call(s) of %d (XLA's figure %.2f GiB per device for "
               "%d slices; budget %.2f GiB)", n_slices, slice_hw, -(-n_slices // batch), batch,
               (need or 0) / 2**30, first, budget / 2**30)
  return apply_fn, batch


def batched(call, slices: np.ndarray, batch_size: int, mesh, channel: bool) -> np.ndarray:
  """`call` over `slices` [S, ...] in fixed-shape batches of `batch_size` (the last one padded with
  zeros), each sharded over the mesh's devices (taken from `slices` by the sharding's index, so the
  split is the same for one process as for many); with `channel` a trailing channel axis is added to
  the input and dropped from the output."""
  n = slices.shape[0]
  data_sharding = sharding.data_sharding(mesh)
  out = []
  for start in range(0, n, batch_size):
    chunk = slices[start:start + batch_size]
    pad = batch_size - chunk.shape[0]
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
    chunk = np.ascontiguousarray(chunk[..., None] if channel else chunk)
    x = jax.make_array_from_callback(chunk.shape, data_sharding, lambda index, c=chunk: c[index])
    y = _to_host(call(x))[:batch_size - pad]
    out.append(y[..., 0] if channel else y)
  return np.concatenate(out)


def super_resolve(apply_fn, slices: np.ndarray, batch_size: int, mesh) -> np.ndarray:
  """[S, H, W] -> [S, sH, sW] through `apply_fn` ([B, H, W, 1] -> [B, sH, sW, 1]) with fixed-shape
  batches (the last one padded).

  Every process passes the same `slices` and gets the whole result; each device computes only its
  rows of each batch.
  """
  return batched(apply_fn, slices, batch_size, mesh, channel=True)


