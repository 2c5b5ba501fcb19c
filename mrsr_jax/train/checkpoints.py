"""orbax checkpoints of a stage, and the one resume order every stage follows.

Resume order (written once, used by all stages): the stage's own latest checkpoint, else a fresh
initialisation. What is saved is everything needed for a bit-exact continuation: the TrainState
(step, params, optimiser state, BatchNorm statistics). The RNG is a pure function of (seed, step)
and the data position equals the step (the pipeline is deterministic for a seed and skips that many
batches), so both are restored by restoring the step.

orbax writes each checkpoint into a temporary directory and renames it when complete, so a run killed
during a save leaves the previous checkpoint intact and the partial one is ignored on restart.
"""

from __future__ import annotations

import logging as pylogging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from mrsr_jax import errors


def manager(directory: str, *, keep: int = 3) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         cleanup_tmp_directories=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=("state", "meta"))


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict[str, Any]) -> None:
  # Only the pytree leaves are saved; optax transformations live in the (static) TrainState fields.
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)


def mismatches(directory: str, step: int, abstract_state: Any) -> list[str]:
  """How the arrays saved at `step` differ from `abstract_state` ("params/gen/conv_in/kernel: (3, 3,
  1, 64) saved, (3, 3, 1, 16) here"); empty when the checkpoint fits. Reads only the metadata."""
  path = os.path.join(os.path.abspath(directory), str(step), "state")
  with _quiet_metadata_warning(), ocp.StandardCheckpointer() as ckptr:
    saved = ckptr.metadata(path).item_metadata
  saved = ocp.tree.to_flat_dict(getattr(saved, "tree", saved))
  wanted = ocp.tree.to_flat_dict(ocp.tree.serialize_tree(abstract_state, keep_empty_nodes=True))
  out = []
  for key in sorted(set(saved) | set(wanted)):
    a, b = saved.get(key), wanted.get(key)
    if not hasattr(a, "shape") and not hasattr(b, "shape"):
      continue                       # empty nodes (a network without BatchNorm statistics)
    name = "/".join(str(k) for k in key)
    if a is None:
      out.append(f"{name}: not in the checkpoint")
    elif b is None:
      out.append(f"{name}: in the checkpoint, not in this config's model")
    elif tuple(a.shape) != tuple(b.shape):
      out.append(f"{name}: {tuple(a.shape)} saved, {tuple(b.shape)} here")
  return out


class _quiet_metadata_warning:
  """orbax warns that a StandardCheckpointer item has no `_CHECKPOINT_METADATA` file whenever it reads
  a CheckpointManager item directly (the manager keeps that file one level up): nothing is wrong."""

  def __enter__(self):
    self._filter = lambda record: "Metadata file does not exist" not in record.getMessage()
    pylogging.getLogger("absl").addFilter(self._filter)
    return self

  def __exit__(self, *exc):
    pylogging.getLogger("absl").removeFilter(self._filter)


def restore(mngr: ocp.CheckpointManager, abstract_state: Any, step: int | None = None
            ) -> tuple[Any, dict[str, Any], int]:
  """Restores `step` (default: latest) into the structure and shardings of `abstract_state`.

  A checkpoint that does not fit the state (another model size, another code version) is reported
  in one ValueError naming the differing arrays, before orbax is asked to read it."""
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"{mngr.directory}: no checkpoint to restore")
  bad = mismatches(str(mngr.directory), step, abstract_state)
  if bad:
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    raise errors.UserError(f"{mngr.directory}/{step}: the checkpoint does not fit the model this config "
                     f"builds ({'; '.join(bad[:3])}{more}); use the config it was trained with")
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  return restored["state"], restored["meta"], step


def restore_or_init(mngr: ocp.CheckpointManager, init_fn, abstract_state: Any
                    ) -> tuple[Any, int]:
  """The resume order: own latest checkpoint, else `init_fn()`. Returns (state, start step)."""
  if mngr.latest_step() is not None:
    state, _, step = restore(mngr, abstract_state)
    logging.info("Resuming from %s at step %d", mngr.directory, step)
    return state, step
  return init_fn(), 0


def abstract_with_shardings(tree: Any, sharding) -> Any:
  """ShapeDtypeStructs carrying `sharding`, the restore target orbax needs to place arrays."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def read_meta(directory: str, step: int | None = None) -> dict[str, Any]:
  """The JSON metadata saved beside a checkpoint (stage, step count, config), without its arrays."""
  mngr = ocp.CheckpointManager(os.path.abspath(directory), item_names=("state", "meta"))
  try:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{directory}: no checkpoint")
    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  finally:
    mngr.close()


def load_state(directory: str, step: int | None = None) -> tuple[dict[str, Any], int]:
  """The saved state as a plain tree on one local device, whatever topology saved it (no target
  structure needed: inspection, tests, tools)."""
  step = latest_step(directory) if step is None else step
  if step is None:
    raise FileNotFoundError(f"{directory}: no checkpoint")
  path = os.path.join(os.path.abspath(directory), str(step), "state")
  with _quiet_metadata_warning(), ocp.StandardCheckpointer() as ckptr:
    tree = ckptr.metadata(path).item_metadata
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
    return ckptr.restore(path, target), step


def latest_step(directory: str) -> int | None:
  if not os.path.isdir(directory):
    return None
  mngr = ocp.CheckpointManager(os.path.abspath(directory), item_names=("state", "meta"))
  try:
    return mngr.latest_step()
  finally:
    mngr.close()
