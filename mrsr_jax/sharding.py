"""The device mesh and how batches and train state are placed on it.

Data parallelism only: a 1D mesh with axis `data` over every device of every process. Batches are
sharded along their leading axis, everything else (params, optimiser state) is replicated. Under
`jax.jit` with these shardings XLA inserts the gradient all-reduce itself, and BatchNorm statistics
are over the global batch because the batch *is* one global array.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mrsr_jax import errors

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
  n = mesh.devices.size
  if global_batch_size % n:
    raise errors.UserError(
        f"global batch size {global_batch_size} is not divisible by the {n} devices of the mesh; "
        f"choose a multiple of {n}")


def to_global(local_batch: Any, mesh: Mesh) -> Any:
  """Host-local numpy batch (this process's rows) -> global jax.Arrays sharded along `data`.

  Single process: the local batch is the global batch. Multi-process: each process passes its own
  disjoint rows and the result is one array spanning all processes.
  """
  sharding = data_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, replicated(mesh))
