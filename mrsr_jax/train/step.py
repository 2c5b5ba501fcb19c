"""The one train-step pattern shared by the three stages.

A stage supplies a pure `update(state, batch, rng, frozen) -> (state, metrics)`; this file compiles
it once with the data-parallel placement: state and frozen feature extractors replicated, batch
sharded along the mesh's `data` axis, the old state donated so its buffers are reused. XLA turns the
mean over the (global) batch into an all-reduce, so the result does not depend on the device count.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from mrsr_jax import sharding

UpdateFn = Callable[[Any, Any, jax.Array, Any], tuple[Any, dict[str, jax.Array]]]


def compile_step(update: UpdateFn, mesh: jax.sharding.Mesh) -> Callable:
  rep, data = sharding.replicated(mesh), sharding.data_sharding(mesh)
  return jax.jit(update, in_shardings=(rep, data, rep, rep), out_shardings=(rep, rep),
                 donate_argnums=(0,))


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
