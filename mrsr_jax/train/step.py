"""The one train-step pattern shared by the three stages.

A stage supplies a pure `update(state, batch, rng, frozen) -> (state, metrics)`; this file compiles
it once with the data-parallel placement: state and frozen feature extractors replicated, batch
sharded along the mesh's `data` axis, the old state donated so its buffers are reused. XLA turns the
mean over the (global) batch into an all-reduce, so the result does not depend on the device count.

Gradient accumulation lives here too (`accumulate`), inside the compiled step: a device's share of the
global batch is cut into `microbatches` equal parts, a `lax.scan` runs the stage's forward and backward
pass on one part at a time (every device on its own rows, so nothing moves between devices) and
averages the gradients, and the stage applies them in one optimiser update. One call, one step, one
checkpoint step per update, whatever the accumulation; schedules count updates. BatchNorm under
accumulation: each microbatch is normalised with its own statistics (over the microbatch's rows on all
devices), and the running averages move once per microbatch, i.e. `microbatches` times per step.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mrsr_jax import errors
from mrsr_jax import sharding
from mrsr_jax.models import cpu_conv

UpdateFn = Callable[[Any, Any, jax.Array, Any], tuple[Any, dict[str, jax.Array]]]


def compile_step(update: UpdateFn, mesh: jax.sharding.Mesh, microbatches: int = 1) -> Callable:
  """`update` jitted for `mesh`; with `microbatches` > 1 it is called as
  `update(..., microbatches=k, mesh=mesh)` (a stage's update, which accumulates; see `accumulate`).
  The loop passes `stage.microbatches(mesh.devices.size)`."""
  rep, data = sharding.replicated(mesh), sharding.data_sharding(mesh)
  if microbatches > 1:
    update = functools.partial(update, microbatches=microbatches, mesh=mesh)
  options = None
  if mesh.devices.flat[0].platform == "cpu" and cpu_conv.train_compiler_options():
    # XLA:CPU: Eigen's convolutions, for which the models' "cpu" convolutions (srgan.backend_conv_impl)
    # choose their kernel gradients (cpu_conv.py): the SR train step ~1.25x faster (4x, batch 4 at
    # 240²: 2.70 -> 2.14 s on 2 cores), the AE step ~1.07x, than with the default YNNPACK convolutions
    # (docs/benchmarks.md). Compiler options only: the traced step is the same on every backend.
    options = cpu_conv.train_compiler_options()
  return jax.jit(update, in_shardings=(rep, data, rep, rep), out_shardings=(rep, rep),
                 donate_argnums=(0,), compiler_options=options)


CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


def compile_timed(step: Callable, *args) -> tuple[float, bool]:
  """Compiles the jitted `step` for `args` ahead of its first call: (wall seconds of tracing,
  lowering and XLA's compile, whether JAX's persistent cache supplied the executable). The call that
  follows finds the executable in jit's cache and compiles nothing."""
  hits = []

  def listener(event, **kwargs):
    if event == CACHE_HIT_EVENT:
      hits.append(event)

  jax.monitoring.register_event_listener(listener)
  try:
    t0 = time.perf_counter()
    step.lower(*args).compile()
    seconds = time.perf_counter() - t0
  finally:
    jax.monitoring.unregister_event_listener(listener)
  return seconds, bool(hits)


def microbatch_count(global_batch: int, num_devices: int, microbatch_per_device: int,
                     field: str = "batch_size") -> int:
  """How many microbatches a step accumulates: the fewest k that split each device's share of the
  global batch (`global_batch / num_devices`) into k equal parts of at most `microbatch_per_device`
  slices (0: no limit, k = 1). More devices, fewer microbatches: a config that needs k = 8 on one GPU
  runs unsplit on eight."""
  if global_batch % num_devices:
    raise errors.UserError(f"{field} {global_batch} is not divisible by the {num_devices} devices of the mesh; "
                     f"choose a multiple of {num_devices}")
  if microbatch_per_device < 0:
    raise errors.UserError(f"microbatch_per_device must be >= 0, got {microbatch_per_device}")
  per_device = global_batch // num_devices
  if microbatch_per_device == 0 or per_device <= microbatch_per_device:
    return 1
  return next(k for k in range(-(-per_device // microbatch_per_device), per_device + 1)
              if per_device % k == 0)


# A stage's per-microbatch work: (state, microbatch, rng) -> (grads, batch_stats, metrics), where
# `grads` = {network: grads} for the networks to update, `batch_stats` = {network: new BatchNorm
# statistics} for those that have them (possibly {}), `metrics` = {name: scalar}.
GradFn = Callable[[Any, Any, jax.Array], tuple[dict, dict, dict]]


def split_microbatches(batch: Any, microbatches: int, num_devices: int) -> Any:
  """[B, ...] leaves -> [k, B/k, ...]: microbatch i holds rows i*m .. (i+1)*m - 1 of *each device's*
  block of B/n rows (m = B/(n*k)), so every microbatch is spread over all devices as the batch is and
  splitting moves no data between them."""
  def split(x):
    b = x.shape[0]
    if b % (num_devices * microbatches):
      raise errors.UserError(f"a batch of {b} cannot be split into {microbatches} microbatches on "
                       f"{num_devices} devices")
    x = x.reshape((num_devices, microbatches, b // (num_devices * microbatches)) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1).reshape((microbatches, b // microbatches) + x.shape[3:])
  return jax.tree.map(split, batch)


def accumulate(grad_fn: GradFn, state: Any, batch: Any, rng: jax.Array, microbatches: int = 1,
               mesh: jax.sharding.Mesh | None = None) -> tuple[dict, dict, dict]:
  """`grad_fn` over `microbatches` equal parts of `batch`: (mean gradients, BatchNorm statistics after
  the last part, mean metrics). With one microbatch this is `grad_fn(state, batch, rng)` exactly.

  For losses that are means over independent examples, k parts of B/k give the gradient of one batch
  of B (up to float summation order). Microbatch i draws its randomness from `fold_in(rng, i)`. The
  BatchNorm statistics are threaded from part to part (`state.batch_stats`, updated by what
  `grad_fn` returns), so each part is normalised by its own batch statistics and the running averages
  are updated once per part.
  """
  if microbatches == 1:
    return grad_fn(state, batch, rng)
  num_devices = 1 if mesh is None else mesh.devices.size
  parts = split_microbatches(batch, microbatches, num_devices)
  constrain = (lambda t: t) if mesh is None else (
      lambda t: jax.lax.with_sharding_constraint(t, sharding.data_sharding(mesh)))

  def run(stats, i, part):
    return grad_fn(state.replace(batch_stats=stats), constrain(part), jax.random.fold_in(rng, i))

  first = jax.tree.map(lambda x: x[0], parts)
  grads_shape, _, metrics_shape = jax.eval_shape(run, state.batch_stats, 0, first)
  zeros = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)

  def body(carry, xs):
    grads_sum, stats, metrics_sum = carry
    i, part = xs
    grads, new_stats, metrics = run(stats, i, part)
    stats = {**stats, **new_stats}
    return (jax.tree.map(jnp.add, grads_sum, grads), stats,
            jax.tree.map(jnp.add, metrics_sum, metrics)), None

  (grads, stats, metrics), _ = jax.lax.scan(
      body, (zeros(grads_shape), dict(state.batch_stats), zeros(metrics_shape)),
      (jnp.arange(microbatches), parts))
  mean = lambda tree: jax.tree.map(lambda x: x / microbatches, tree)
  return mean(grads), stats, mean(metrics)


def step_rng(seed: int, step: int) -> jax.Array:
  """The RNG of a step is a pure function of (seed, step): resuming needs no saved RNG state."""
  return jax.random.fold_in(jax.random.key(seed), step)


def value_and_grad_with_aux(loss_fn, params, *args):
  """`jax.value_and_grad(has_aux=True)` returning (loss, aux, grads): the idiom every stage uses."""
  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, *args)
  return loss, aux, grads


def nonfinite_terms(metrics: dict[str, Any]) -> list[str]:
  """Names of the non-finite scalars in host `metrics` (empty when all are finite)."""
  return [name for name, value in sorted(metrics.items())
          if not np.all(np.isfinite(np.asarray(value)))]
