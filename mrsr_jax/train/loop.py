"""The training loop every stage runs: resume, step, log, summarise, checkpoint, stop on NaN.

Hooks follow the flax examples: progress (steps/s, ETA) and metric writers with clu's interface
(`mrsr_jax.train.writers`: TensorBoard + console without TensorFlow, and a JSON-lines copy that the
evaluation report plots as Fig. 7), image summaries every `image_every_steps`, and orbax saves every
`checkpoint_every_steps` and at the end; each periodic action is a method of `StageHooks`, so
`train_stage`'s loop reads as the pipeline. Only process 0 writes logs and summaries; every process
takes part in checkpointing.
"""

from __future__ import annotations

import abc
import json
import math
import os
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from mrsr_jax import errors
from mrsr_jax import sharding
from mrsr_jax.data import pipeline, records
from mrsr_jax.train import checkpoints, step as step_lib, writers
from mrsr_jax.train.state import TrainState


class NonFiniteLossError(RuntimeError):
  pass


class Stage(abc.ABC):
  """One stage of the pipeline: its networks, its loss, its data shape."""

  name: str

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.workdir = workdir
    self.cfg = config[self.name]
    self.dtype = jnp.dtype(config.dtype)

  # What the stage trains on.
  @property
  def batch_size(self) -> int:
    return self.cfg.batch_size

  @property
  def crop_size(self) -> int:
    return self.config.crop_size

  @property
  def dir(self) -> str:
    return os.path.join(self.workdir, self.name)

  def num_steps(self, info: dict[str, Any]) -> int:
    if self.cfg.num_steps > 0:       # a step count wins over num_epochs (config_schema)
      return int(self.cfg.num_steps)
    n = records.split_size(info, "train")
    return max(1, math.ceil(self.cfg.num_epochs * n / self.batch_size))

  @abc.abstractmethod
  def init(self, rng: jax.Array) -> TrainState:
    """Fresh state for one example batch shape (called under jit)."""

  @abc.abstractmethod
  def grads(self, state: TrainState, batch: dict, rng: jax.Array, frozen: Any
            ) -> tuple[dict[str, Any], dict[str, Any], dict[str, jax.Array]]:
    """Gradients of one (micro)batch: ({network: grads}, {network: new BatchNorm stats}, metrics)."""

  def update(self, state: TrainState, batch: dict, rng: jax.Array, frozen: Any, *,
             microbatches: int = 1, mesh=None) -> tuple[TrainState, dict[str, jax.Array]]:
    """The pure step: one optimiser update of every network of the stage, from the gradients of
    `batch` accumulated over `microbatches` parts (step.accumulate)."""
    grads, stats, metrics = step_lib.accumulate(
        lambda st, part, key: self.grads(st, part, key, frozen), state, batch, rng, microbatches, mesh)
    return state.apply_gradients(grads, batch_stats=stats), metrics

  def microbatches(self, num_devices: int) -> int:
    """Gradient-accumulation steps on `num_devices` devices (`<stage>.microbatch_per_device`)."""
    cap = int(self.cfg.microbatch_per_device)
    k = step_lib.microbatch_count(self.batch_size, num_devices, cap, field=f"{self.name}.batch_size")
    part = self.batch_size // num_devices // k
    if k > 1 and 2 * part <= cap:
      logging.warning("[%s] %d slices per device do not split into parts near %s.microbatch_per_device"
                      "=%d: %d microbatches of %d (choose a batch whose share per device is a "
                      "multiple of the microbatch)", self.name, self.batch_size // num_devices,
                      self.name, cap, k, part)
    return k

  @property
  def remat(self) -> bool:
    return bool(self.cfg.remat)

  def frozen(self, mesh) -> Any:
    """Frozen inputs of the step (feature extractors of earlier stages); none by default."""
    return {}

  def images(self, state: TrainState, batch: dict, rng: jax.Array, frozen: Any
             ) -> dict[str, jax.Array]:
    """Images for the summaries, each [N, H, W, 1] in [0, 1]; none by default."""
    return {}

  def hparams(self) -> dict[str, Any]:
    flat = {}
    for k, v in self.cfg.items():
      if isinstance(v, ml_collections.ConfigDict):
        flat.update({f"{self.name}.{k}.{kk}": vv for kk, vv in v.items()})
      else:
        flat[f"{self.name}.{k}"] = v
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flat.items()}


class JsonlWriter(writers.Writer):
  """Scalars as JSON lines (one per step and writer call): the loss-curve source of the evaluation
  report. Each write is flushed, so a killed run keeps every step it logged."""

  def __init__(self, path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    self._f = open(path, "a")

  def write_scalars(self, step, scalars):
    self._f.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n")
    self._f.flush()

  def flush(self):
    self._f.flush()

  def close(self):
    self._f.close()


def truncate_metrics(path: str, last_step: int) -> None:
  """Drops the records of `path` after `last_step` (and a line cut short by a kill), so a run resumed
  from the checkpoint at `last_step` logs each later step once, however often it was interrupted."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.read().splitlines()
  keep = []
  for line in lines:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue                      # the tail of a write interrupted by a kill
    if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= last_step:
      keep.append(line)
  if len(keep) == len(lines):
    return
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.write("".join(line + "\n" for line in keep))
  os.replace(tmp, path)


def make_writer(stage_dir: str, start_step: int = 0) -> writers.Writer:
  """Process 0's log + TensorBoard + metrics.jsonl writer for a stage resumed at `start_step`
  (the other processes log only)."""
  if jax.process_index() != 0:
    return writers.LoggingWriter()
  truncate_metrics(os.path.join(stage_dir, "metrics.jsonl"), start_step)
  return writers.MultiWriter([
      writers.LoggingWriter(),
      writers.TensorBoardWriter(os.path.join(stage_dir, "logs")),
      JsonlWriter(os.path.join(stage_dir, "metrics.jsonl")),
  ])


def dataset_dir(config) -> str:
  """The prepared TFDS dataset the config reads: `<data_dir>/<dataset>[/<contrast>]` (see records)."""
  return os.path.join(config.data_dir, config.dataset, config.contrast)


def train_iterator(stage: Stage, config, start_step: int, mesh) -> Iterator[dict]:
  """Global batches from `config.input_readers` readers (default: one per process), each reading
  a disjoint subset of the shard files; this process runs its share of the readers and feeds only
  its local devices. The global batch is the readers' batches in reader order, so a fixed reader count
  gives the same batches whatever the number of processes (the multi-process test relies on it)."""
  procs, me = jax.process_count(), jax.process_index()
  readers = config.input_readers or procs
  if readers % procs or stage.batch_size % readers:
    raise errors.UserError(f"input_readers={readers} must be a multiple of the {procs} processes and "
                     f"divide the global batch {stage.batch_size}")
  per_proc = readers // procs
  streams = [pipeline.create_dataset(
      dataset_dir(config), "train", global_batch_size=stage.batch_size, crop_size=stage.crop_size,
      seed=config.seed, train=True, start_step=start_step, cache=config.input_cache,
      process_index=r, process_count=readers).as_numpy_iterator()
      for r in range(me * per_proc, (me + 1) * per_proc)]
  while True:
    try:
      parts = [next(s) for s in streams]
    except StopIteration:
      return
    local = {k: np.concatenate([p[k] for p in parts]) for k in ("hr", "label")}
    batch = sharding.to_global(local, mesh)
    if "orientation" in parts[0]:   # host-side strings for the image summaries; popped before the step
      batch["orientation"] = np.concatenate([p["orientation"] for p in parts])
    yield batch


def init_state(stage: Stage, mesh) -> tuple[TrainState, Any]:
  """Initialises under jit straight into the replicated layout; returns (state, abstract state)."""
  rep = sharding.replicated(mesh)
  rng = jax.random.key(stage.config.seed)
  abstract = jax.eval_shape(stage.init, rng)
  init = jax.jit(stage.init, out_shardings=rep)
  return init, checkpoints.abstract_with_shardings(abstract, rep)


@jax.jit
def _finite_leaves(tree) -> jax.Array:
  """One bool per floating-point leaf of `tree`: all its values finite (one fused reduction)."""
  flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
           if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.stack(flags) if flags else jnp.ones((0,), bool)


def nonfinite_leaves(tree) -> list[str]:
  """Paths (e.g. ".params['gen']['conv_in']['kernel']") of the leaves of `tree` holding a NaN or inf."""
  paths = [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
           if jnp.issubdtype(x.dtype, jnp.inexact)]
  ok = np.asarray(jax.device_get(_finite_leaves(tree)))
  return [p for p, good in zip(paths, ok) if not good]


def due(done: int, every: int, num_steps: int) -> bool:
  """Whether a periodic action runs after step `done`: every `every` steps (0: never) and at the last."""
  return bool(every) and (done % every == 0 or done == num_steps)


class StageHooks:
  """The periodic actions of `train_stage` around its step: the (one step late) loss check, scalar
  logs, image summaries and checkpoints. Each raises NonFiniteLossError rather than log or save
  anything non-finite; the message says what is on disk."""

  def __init__(self, stage: Stage, mngr, writer: writers.Writer, images_fn, frozen: Any, meta: dict):
    self.stage, self.mngr, self.writer = stage, mngr, writer
    self.images_fn, self.frozen, self.meta = images_fn, frozen, meta

  def _kept(self) -> str:
    self.mngr.wait_until_finished()      # a save still in flight is part of what is kept
    last = self.mngr.latest_step()
    return (f"the last good checkpoint (step {last}) in {self.mngr.directory} is intact"
            if last is not None else "no checkpoint had been written yet")

  def check(self, metrics, step_no: int) -> dict[str, Any]:
    """The step's metrics on the host, if its loss is finite."""
    host = jax.device_get(metrics)
    bad = step_lib.nonfinite_terms(host)
    if bad:
      raise NonFiniteLossError(
          f"[{self.stage.name}] non-finite loss at step {step_no}: "
          + ", ".join(f"{k}={host[k]}" for k in bad) + f"; stopping, {self._kept()}.")
    return host

  def log_metrics(self, done: int, metrics) -> None:
    host = self.check(metrics, done)
    self.writer.write_scalars(done, {f"{self.stage.name}/{k}": v for k, v in host.items()})

  def write_images(self, done: int, state: TrainState, batch: dict, rng: jax.Array, orientation) -> None:
    from mrsr_jax import figures   # matplotlib only once an image is written
    imgs = jax.device_get(self.images_fn(state, batch, rng, self.frozen))
    self.writer.write_images(done, {f"{self.stage.name}/{k}": figures.display_batch(np.clip(v, 0, 1),
                                                                                      orientation)
                                    for k, v in imgs.items()})

  def save_checkpoint(self, done: int, state: TrainState, metrics) -> None:
    self.check(metrics, done)
    # The loss was computed from the parameters *before* this step's update; what is saved is the
    # state after it, so that is what must be finite.
    bad = nonfinite_leaves(state)
    if bad:
      more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
      raise NonFiniteLossError(
          f"[{self.stage.name}] step {done} made the train state non-finite ({', '.join(bad[:3])}"
          f"{more}); not saved: stopping, {self._kept()}.")
    checkpoints.save(self.mngr, done, state, self.meta)


def _next_batch(batches: Iterator[dict], stage: Stage, step: int) -> tuple[dict, Any]:
  """(the global batch, its host-side orientations) for `step`."""
  try:
    batch = next(batches)
  except StopIteration:
    raise RuntimeError(f"[{stage.name}] the training data ran out at step {step}") from None
  # This process's rows only, the first rows of the global batch on process 0, which writes.
  return batch, batch.pop("orientation", ())


def _log_start(stage: Stage, mesh, start: int, num_steps: int, microbatches: int) -> None:
  per_device = stage.batch_size // mesh.devices.size
  logging.info("[%s] training steps %d..%d, global batch %d on %d devices (%d per device, %d "
               "microbatch(es) of %d)", stage.name, start, num_steps, stage.batch_size,
               mesh.devices.size, per_device, microbatches, per_device // microbatches)


def _log_compile(stage: Stage, update, *args) -> None:
  """Compiles the step ahead of its first call, to log how long that took."""
  seconds, cached = step_lib.compile_timed(update, *args)
  logging.info("[%s] step compiled in %.1f s%s", stage.name, seconds,
               " (from JAX's persistent compilation cache)" if cached else "")


def train_stage(stage: Stage, mesh) -> TrainState:
  """Trains `stage` to its step count, resuming from its checkpoints; returns the final state.

  Nothing non-finite is saved: the loss of every step is checked (one step late, so the host never
  waits on the device), and the whole state (params, optimiser state, BatchNorm statistics) before
  each checkpoint. Either failure stops the run with NonFiniteLossError, the checkpoints on disk intact.
  """
  config = stage.config
  num_steps = stage.num_steps(records.read_info(dataset_dir(config)))
  sharding.check_batch_size(stage.batch_size, mesh)
  microbatches = stage.microbatches(mesh.devices.size)
  mngr = checkpoints.manager(os.path.join(stage.dir, "checkpoints"), keep=config.keep_checkpoints)
  writer = None
  try:
    init, abstract = init_state(stage, mesh)
    state, start = checkpoints.restore_or_init(mngr, lambda: init(jax.random.key(config.seed)),
                                               abstract)
    if start >= num_steps:
      logging.info("[%s] complete (%d/%d steps); skipped", stage.name, start, num_steps)
      return state

    frozen = stage.frozen(mesh)
    update = step_lib.compile_step(stage.update, mesh, microbatches)
    writer = make_writer(stage.dir, start)
    if start == 0:
      writer.write_hparams(stage.hparams())
    progress = writers.Progress(num_train_steps=num_steps, writer=writer,
                                every_steps=config.log_every_steps)
    hooks = StageHooks(stage, mngr, writer, jax.jit(stage.images), frozen,
                       meta={"stage": stage.name, "num_steps": num_steps,
                             "config": config.to_json_best_effort()})
    _log_start(stage, mesh, start, num_steps, microbatches)

    batches = train_iterator(stage, config, start, mesh)
    pending = None          # metrics of the previous step: checked after the next one is dispatched
    for step in range(start, num_steps):
      batch, orientation = _next_batch(batches, stage, step)
      rng = step_lib.step_rng(config.seed, step)
      if step == start:
        _log_compile(stage, update, state, batch, rng, frozen)
      state, metrics = update(state, batch, rng, frozen)
      if pending is not None:
        hooks.check(*pending)
      done = step + 1
      pending = (metrics, done)
      progress(done)
      if due(done, config.log_every_steps, num_steps):
        hooks.log_metrics(done, metrics)
      if due(done, config.image_every_steps, num_steps):
        hooks.write_images(done, state, batch, rng, orientation)
      if due(done, config.checkpoint_every_steps, num_steps):
        hooks.save_checkpoint(done, state, metrics)
    mngr.wait_until_finished()
  finally:
    if writer is not None:
      writer.flush()
      writer.close()
    mngr.close()
  logging.info("[%s] finished %d steps", stage.name, num_steps)
  return state
