"""Self-supervised training on a volume's own in-plane slices (SMORE, Zhao et al. 2020).

The in-plane slices of a thick-slice volume are fine along both of their axes. Degrading one of those
axes with the acquisition's slice profile and spacing (`profile.Geometry`) makes a pair that looks,
along that axis, like a through-plane reformat of the volume looks along the slice axis; a network
trained to undo it is then applied to the reformats (apply.py). The bet is that anatomy varies along
the slice axis as it does in-plane (docs/through_plane.md says when it does not).

Each step draws `batch_size` crops from the (normalised) in-plane slices: a slice, which in-plane axis
plays the slice axis (the crop is transposed for the other one, so both directions train), a flip of
each axis, and a crop position. The draw is a pure function of (seed, step), so a resumed run sees the
batches an uninterrupted one would; the one-axis degradation runs on the devices inside the step.

The step is the project's (step.compile_step): state replicated, batch sharded along the mesh's `data`
axis, the gradient mean an all-reduce, so it runs data-parallel on every device. Checkpoints are orbax's
(train/checkpoints.py) in `<workdir>/through_plane/checkpoints`, with a record of the volume and
geometry they were trained for: a rerun on the same input resumes (or, when complete, skips training),
one on another input or geometry stops with an error rather than reuse the wrong model.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from mrsr_jax import errors
from mrsr_jax import sharding
from mrsr_jax.through_plane import model as model_lib
from mrsr_jax.through_plane import profile
from mrsr_jax.train import checkpoints, loop, step as step_lib, writers
from mrsr_jax.train.state import TrainState, make_optimizer

STAGE = "through_plane"


def settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config.through_plane`, or one error saying which config has it."""
  if "through_plane" not in config:
    raise errors.UserError("this config has no through_plane section; use --config=configs/through_plane.py "
                           "(or add one like it)")
  return config.through_plane


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, STAGE, "checkpoints")


def fingerprint(slices: np.ndarray) -> str:
  """A short hash of the training slices (which volume, normalised as trained on)."""
  return hashlib.sha256(np.ascontiguousarray(slices, np.float32).tobytes()).hexdigest()[:16]


def identity(cfg, geometry: profile.Geometry) -> dict:
  """What a checkpoint must match to be resumed or applied: model and geometry."""
  return {"arch": cfg.arch, "model": dict(cfg.model), "factor": geometry.factor,
          "thickness_px": round(geometry.thickness, 4), "spacing_px": round(geometry.spacing, 4),
          "profile": geometry.profile}


class Trainer:
  """The model, its optimiser and the batch sampler for one volume's slices `[S, H, W]` (normalised)."""

  def __init__(self, cfg, geometry: profile.Geometry, slices: np.ndarray | None, *, seed: int = 0):
    """`slices` None: the model and optimiser only (restoring a trained model)."""
    self.cfg, self.geometry, self.seed = cfg, geometry, seed
    self.model = model_lib.build(cfg.arch, geometry.factor, dict(cfg.model))
    peak = float(cfg.learning_rate)
    warmup = int(cfg.warmup_steps)
    sched = optax.warmup_cosine_decay_schedule(0.0, peak, max(warmup, 1), max(int(cfg.num_steps), warmup + 1),
                                               end_value=0.01 * peak)
    self.txs = {"gen": make_optimizer(sched)}
    self.crop = int(cfg.crop_size)
    if slices is None:
      return
    s, h, w = slices.shape
    self.crop = min(self.crop, h, w)
    if self.crop < 2 * geometry.spacing + geometry.factor:
      raise errors.UserError(f"in-plane slices of {h}x{w} pixels are too small to learn slices "
                             f"{geometry.spacing:.3g} pixels apart")
    self.matrix, self.rows = geometry.training_matrix(self.crop)
    # Slices with anatomy: the mean of a slice above a tenth of the brightest slice's mean (the ends of
    # a stack are often air).
    means = slices.reshape(s, -1).mean(axis=1)
    self.slices = np.ascontiguousarray(slices[means > 0.1 * means.max()], np.float32)
    self.fingerprint = fingerprint(slices)

  # -- data ----------------------------------------------------------------------------------------
  def batch(self, step: int) -> np.ndarray:
    """The global batch of `step`: `[B, crop, crop, 1]` crops whose rows are the axis to degrade."""
    rng = np.random.default_rng([self.seed, step])
    b, c = int(self.cfg.batch_size), self.crop
    out = np.empty((b, c, c, 1), np.float32)
    for i in range(b):
      img = self.slices[rng.integers(len(self.slices))]
      if rng.integers(2):
        img = img.T                   # the other in-plane axis plays the slice axis
      if rng.integers(2):
        img = img[::-1]
      if rng.integers(2):
        img = img[:, ::-1]
      r0 = rng.integers(img.shape[0] - c + 1)
      c0 = rng.integers(img.shape[1] - c + 1)
      out[i, :, :, 0] = img[r0:r0 + c, c0:c0 + c]
    return out

  # -- the step ------------------------------------------------------------------------------------
  def init(self, rng: jax.Array) -> TrainState:
    v = _model_init(self.model)(rng)
    return TrainState.create({"gen": v["params"]}, self.txs, {"gen": v.get("batch_stats", {})})

  def update(self, state: TrainState, batch: dict, rng: jax.Array, frozen) -> tuple[TrainState, dict]:
    """One Adam step of the L1 loss between the network's output for the degraded crops and the crops."""
    del rng
    hr = batch["hr"]
    lr = profile.apply_along_axis(frozen["matrix"], hr, 1)
    target = hr[:, :self.rows]

    def loss_fn(params):
      variables = {"params": params, "batch_stats": state.batch_stats["gen"]}
      if state.batch_stats["gen"]:
        sr, upd = self.model.apply(variables, lr, train=True, mutable=["batch_stats"])
      else:
        sr, upd = self.model.apply(variables, lr, train=True), {}
      l1 = jnp.mean(jnp.abs(sr - target))
      base = jnp.mean(jnp.abs(model_lib.spline_upsample_rows(lr, self.geometry.factor) - target))
      return l1, ({"l1": l1, "l1_spline": base}, upd.get("batch_stats", state.batch_stats["gen"]))

    loss, (metrics, stats), grads = step_lib.value_and_grad_with_aux(loss_fn, state.params["gen"])
    return state.apply_gradients({"gen": grads}, batch_stats={"gen": stats}), metrics


@functools.lru_cache(maxsize=8)
def _model_init(model):
  """`model`'s variables from a key, compiled once per model config (its compile is most of a short
  run's start-up on CPU; a resumed run, the test suite and the study reuse it)."""
  # Every layer is a convolution: any input size will do.
  return jax.jit(lambda rng: model.init(rng, jnp.zeros((1, 8, 8, 1), jnp.float32), train=False))


def _local_rows(batch: np.ndarray) -> np.ndarray:
  """This process's rows of a global batch every process draws alike (sharding.to_global's input)."""
  n, p, i = batch.shape[0], jax.process_count(), jax.process_index()
  return batch[i * n // p:(i + 1) * n // p]


def train(trainer: Trainer, workdir: str, mesh, *, log_every: int = 50,
          checkpoint_every: int = 100, num_steps: int | None = None) -> tuple[TrainState, dict]:
  """Trains to `num_steps` (default `cfg.num_steps`), resuming from `workdir`'s checkpoint when it
  was trained on the same volume and geometry; returns (state, {"step", "resumed_from", ...})."""
  cfg = trainer.cfg
  num_steps = int(cfg.num_steps if num_steps is None else num_steps)
  sharding.check_batch_size(int(cfg.batch_size), mesh)
  directory = checkpoint_dir(workdir)
  want = {**identity(cfg, trainer.geometry), "volume": trainer.fingerprint, "seed": trainer.seed,
          "crop_size": trainer.crop, "batch_size": int(cfg.batch_size)}
  if checkpoints.latest_step(directory) is not None:
    got = checkpoints.read_meta(directory).get("identity", {})
    diff = sorted(k for k in set(want) | set(got) if json.dumps(want.get(k)) != json.dumps(got.get(k)))
    if diff:
      what = ", ".join(f"{k}: {got.get(k)!r} there, {want.get(k)!r} here" for k in diff[:3])
      raise errors.UserError(f"{workdir}: holds a through-plane model trained for another volume or "
                             f"setting ({what}); use a new --workdir for this input")
  rep = sharding.replicated(mesh)
  abstract = checkpoints.abstract_with_shardings(
      jax.eval_shape(trainer.init, jax.random.key(trainer.seed)), rep)
  init = jax.jit(trainer.init, out_shardings=rep)
  mngr = checkpoints.manager(directory, keep=2)
  writer = None
  try:
    state, start = checkpoints.restore_or_init(mngr, lambda: init(jax.random.key(trainer.seed)), abstract)
    info = {"step": num_steps, "resumed_from": start}
    if start >= num_steps:
      logging.info("[through_plane] model complete (%d/%d steps) in %s; not retrained", start,
                   num_steps, directory)
      return state, info
    frozen = sharding.replicate({"matrix": jnp.asarray(trainer.matrix)}, mesh)
    update = step_lib.compile_step(trainer.update, mesh)
    writer = loop.make_writer(os.path.dirname(directory), start)
    progress = writers.Progress(num_train_steps=num_steps, writer=writer, every_steps=log_every,
                                every_secs=10.0)
    logging.info("[through_plane] training steps %d..%d on %d device(s): %s x%d, batch %d crops of "
                 "%d px, slices %.3g px thick %.3g px apart (%s profile)", start, num_steps,
                 mesh.devices.size, cfg.arch, trainer.geometry.factor, cfg.batch_size, trainer.crop,
                 trainer.geometry.thickness, trainer.geometry.spacing, trainer.geometry.profile)
    meta = {"stage": STAGE, "num_steps": num_steps, "identity": want}
    progress(start)
    for step in range(start, num_steps):
      batch = sharding.to_global({"hr": _local_rows(trainer.batch(step))}, mesh)
      state, metrics = update(state, batch, step_lib.step_rng(trainer.seed, step), frozen)
      done = step + 1
      progress(done)
      if done % log_every == 0 or done == num_steps or done % checkpoint_every == 0:
        host = jax.device_get(metrics)
        bad = step_lib.nonfinite_terms(host)
        if bad:
          last = mngr.latest_step()
          raise loop.NonFiniteLossError(f"[through_plane] non-finite loss at step {done}; the last "
                                        f"checkpoint (step {last}) in {directory} is intact")
        if done % log_every == 0 or done == num_steps:
          writer.write_scalars(done, {f"through_plane/{k}": v for k, v in host.items()})
      if done % checkpoint_every == 0 or done == num_steps:
        if loop.nonfinite_leaves(state):
          raise loop.NonFiniteLossError(f"[through_plane] step {done} made the model non-finite; "
                                        f"not saved")
        checkpoints.save(mngr, done, state, meta)
    mngr.wait_until_finished()
    return state, info
  finally:
    if writer is not None:
      writer.flush()
      writer.close()
    mngr.close()


def restore(cfg, geometry: profile.Geometry, workdir: str, mesh, *, seed: int = 0) -> tuple[dict, dict]:
  """(variables, meta) of the through-plane model trained in `workdir` (a pre-trained model): it must
  be the same network and upsampling factor; another profile or thickness is allowed, with a warning."""
  directory = checkpoint_dir(workdir)
  if checkpoints.latest_step(directory) is None:
    raise FileNotFoundError(f"{workdir}: no through-plane model in {directory}")
  got = checkpoints.read_meta(directory).get("identity", {})
  want = identity(cfg, geometry)
  for key in ("arch", "model", "factor"):
    if json.dumps(got.get(key)) != json.dumps(want[key]):
      raise errors.UserError(f"{workdir}: its through-plane model has {key} {got.get(key)!r}, this input "
                             f"and config need {want[key]!r}")
  for key in ("thickness_px", "spacing_px", "profile"):
    if got.get(key) != want[key]:
      logging.warning("%s: model trained for %s %r, this input has %r", workdir, key, got.get(key),
                      want[key])
  trainer = Trainer(cfg, geometry, None, seed=seed)
  rep = sharding.replicated(mesh)
  abstract = checkpoints.abstract_with_shardings(jax.eval_shape(trainer.init, jax.random.key(seed)), rep)
  mngr = checkpoints.manager(directory)
  try:
    state, meta, _ = checkpoints.restore(mngr, abstract)
  finally:
    mngr.close()
  return variables_of(state), meta


def variables_of(state: TrainState) -> dict:
  variables = {"params": state.params["gen"]}
  if state.batch_stats.get("gen"):
    variables["batch_stats"] = state.batch_stats["gen"]
  return variables
