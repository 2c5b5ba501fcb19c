"""Stage 3: the SR GAN trained with L_SR (Eq. 9) against frozen ViT and AE features.

The LR input is made from the HR crop on device (data/degrade.py), so one shard set serves 2× and
4× and training, evaluation and prediction share one degradation. Generator and discriminator are
updated in the same compiled step, from the same state (`sr.gd_update="simultaneous"`) or D first and
G against the updated D (`"alternating"`, SRGAN's order); a loss without L_adv (`adv_weight=0`)
leaves D out of the step altogether. The ViT and AE encoder params come from the earlier stages'
checkpoints (only their params) and enter the step as the `frozen` argument: they are outside the
optimiser and never differentiated.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from absl import logging

from mrsr_jax import errors
from mrsr_jax import features, losses
from mrsr_jax.data import degrade
from mrsr_jax import models
from mrsr_jax.models import srgan
from mrsr_jax.train import checkpoints, loop
from mrsr_jax.train.state import TrainState, make_optimizer


def generator(config):
  """The SR generator of `config.sr.arch` built from `config.sr.model`, at `config.scale` and
  `config.dtype`."""
  arch = config.sr.arch
  cls = models.check_arch(arch)
  fields = dict(config.sr.model)
  models.check_model_fields(arch, fields)
  kwargs = {}
  if bool(config.sr.remat):
    def has_remat(c):
      return any(f.name == "remat" for f in dataclasses.fields(c))
    if not has_remat(cls):
      with_remat = [a for a, c in models.GENERATORS.items() if has_remat(c)]
      raise errors.UserError(f"config.sr.remat = True: the {arch!r} generator (config.sr.arch) has no blocks "
                       f"to rematerialise (these have: {', '.join(with_remat)}); set it to False")
    kwargs["remat"] = True
  if any(f.name == "conv_impl" for f in dataclasses.fields(cls)):
    # The platform's convolutions, fixed here for every trace of the model (srgan.backend_conv_impl).
    kwargs["conv_impl"] = srgan.backend_conv_impl()
  return cls(scale=config.scale, dtype=jnp.dtype(config.dtype), **fields, **kwargs)


def make_lr(config, hr: jax.Array) -> jax.Array:
  """The LR input as evaluation and prediction make it: the config's one degradation."""
  return degrade.downsample(hr, config.scale, method=config.degradation, hamming=config.hamming)


def lr_mix(config) -> dict[str, float]:
  """The training LR-model weights {family: weight > 0}, or {} for "the config's degradation only"."""
  mix = config.sr.lr_mix
  return {f: float(mix[f]) for f in degrade.METHODS if float(mix[f]) > 0.0}


def make_train_lr(config, hr: jax.Array, rng: jax.Array) -> jax.Array:
  """The LR input of a training step: `make_lr`'s, or one drawn per example from `sr.lr_mix`."""
  weights = lr_mix(config)
  if not weights:
    return make_lr(config, hr)
  mix = config.sr.lr_mix
  return degrade.random_downsample(hr, config.scale, rng, weights=weights,
                                   sigma_jitter=float(mix.sigma_jitter),
                                   hamming_prob=float(mix.hamming_prob), noise_std=float(mix.noise_std))


# A user loss term: fn(*, sr, hr, lr, feats_sr, feats_target) -> scalar, added to L_SR with a weight.
LossTerm = Callable[..., jax.Array]


class SRStage(loop.Stage):
  """`extra_losses` = {name: (weight, fn)} adds user terms to Eq. 9 inside the same compiled step;
  each is logged as `g_<name>` (unweighted) like the built-in terms."""
  name = "sr"

  def __init__(self, config, workdir, extra_losses: Mapping[str, tuple[float, LossTerm]] | None = None):
    super().__init__(config, workdir)
    self.extra_losses = dict(extra_losses or {})
    for term, spec in self.extra_losses.items():
      if not (isinstance(spec, tuple) and len(spec) == 2 and callable(spec[1])):
        raise errors.UserError(f"extra_losses['{term}'] must be a (weight, function) pair, got {spec!r}")
    self.gen = generator(config)
    self.disc = srgan.SRDiscriminator(features=self.cfg.disc_features, conv_impl=srgan.backend_conv_impl(),
                                      dtype=self.dtype)
    self.which = features.needed(self.cfg.loss)
    self._total_steps: int | None = None
    tx = make_optimizer(self._learning_rate, b1=self.cfg.b1, b2=self.cfg.b2,
                        weight_decay=self.cfg.weight_decay, grad_clip_norm=config.grad_clip_norm)
    self.txs = {"gen": tx, "disc": tx}

  # -- learning-rate schedule ---------------------------------------------------------------------
  def num_steps(self, info) -> int:
    # The cosine schedule decays over the whole stage: remember its length (known once the loop has
    # read the dataset info, before anything is compiled).
    self._total_steps = super().num_steps(info)
    return self._total_steps

  def _learning_rate(self, count: jax.Array) -> jax.Array:
    """`sr.lr_schedule`: "constant" (after `sr.warmup_steps` of linear warm-up) or "cosine" decay to
    1% over the stage. Warm-up matters here: Adam's first steps move every weight by about the
    learning rate, which at 1e-3 throws the zero-initialised output conv far off bicubic and makes
    short runs land wherever that jolt left them."""
    peak = self.cfg.learning_rate
    warmup = int(self.cfg.warmup_steps)
    kind = self.cfg.lr_schedule
    if kind == "constant":
      sched = optax.constant_schedule(peak) if warmup <= 0 else optax.join_schedules(
          [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup])
    elif kind == "cosine":
      if self._total_steps is None:
        # Traced outside the training loop (a notebook, a compile test): the stage's length from the
        # config, or from the dataset it trains on.
        from mrsr_jax.data import records
        self.num_steps({} if self.cfg.num_steps > 0 else
                       records.read_info(loop.dataset_dir(self.config)))
      sched = optax.warmup_cosine_decay_schedule(0.0, peak, max(warmup, 1), max(self._total_steps, warmup + 1),
                                                 end_value=0.01 * peak)
    else:
      raise errors.UserError(f"sr.lr_schedule must be 'constant' or 'cosine', got {kind!r}")
    return sched(count)

  def init(self, rng):
    k_g, k_d = jax.random.split(rng)
    m = self.crop_size
    lr = jnp.zeros((1, m // self.config.scale, m // self.config.scale, 1), jnp.float32)
    g = self.gen.init(k_g, lr, train=False)
    d = self.disc.init(k_d, jnp.zeros((1, m, m, 1), jnp.float32), train=False)
    # A generator with norm="none" has no BatchNorm statistics: its entry is an empty dict.
    return TrainState.create({"gen": g["params"], "disc": d["params"]}, self.txs,
                             {"gen": g.get("batch_stats", {}), "disc": d.get("batch_stats", {})})

  # -- frozen feature extractors ------------------------------------------------------------------
  def features_workdir(self) -> str:
    return self.cfg.features_workdir or self.workdir

  def frozen(self, mesh):
    """Restores only what the loss uses; a missing checkpoint is an error at start, not mid-run."""
    from mrsr_jax.train.stage_ae import AEStage
    from mrsr_jax.train.stage_vit import ViTStage
    out = {}
    if "vit" in self.which:
      out["vit"] = restore_params(ViTStage(self.config, self.features_workdir()), mesh)["vit"]["vit"]
    if self.which & {"z_s", "z_t"}:
      out["ae_enc"] = restore_params(AEStage(self.config, self.features_workdir()), mesh)["enc"]
    return out

  # -- the step -----------------------------------------------------------------------------------
  @property
  def adversarial(self) -> bool:
    """Whether L_adv is in the loss (read when the step is traced). Without it D has no effect on G,
    so the step neither runs nor updates D: D keeps its initial params, optimiser state and statistics
    and no d_loss is logged. D's passes at the HR size are most of the step's FLOPs (two thirds at 4x,
    batch 4, 240²), so an L1-only run (SRResNet pre-training, the ablation's `l1` row) costs about a
    third of an adversarial one."""
    return losses.sr_term_on(self.cfg.loss, "adv_weight")

  def _generate(self, params, stats, lr, train):
    if train:
      sr, upd = self.gen.apply({"params": params, "batch_stats": stats}, lr, train=True,
                               mutable=["batch_stats"])
      return sr.astype(jnp.float32), upd.get("batch_stats", {})
    sr = self.gen.apply({"params": params, "batch_stats": stats}, lr, train=False)
    return sr.astype(jnp.float32), stats

  def _disc(self, params, stats, x):
    logits, upd = self.disc.apply({"params": params, "batch_stats": stats}, x.astype(self.dtype),
                                  train=True, mutable=["batch_stats"])
    return logits.astype(jnp.float32), upd.get("batch_stats", {})

  def _fake_logits_for_g(self, params, stats, hr, sr):
    """D's logits on the SR batch inside G's loss; `sr.disc_bn_in_g` says how D's BatchNorm normalises
    them: "train" (the all-fake batch's own statistics), "eval" (D's running statistics) or "joint" (D
    applied to [HR; SR] in train mode, as in D's own step, and the SR half kept). D's statistics move
    only in D's step, so whatever this pass computes of them is dropped."""
    mode = self.cfg.disc_bn_in_g
    if mode == "train":
      return self._disc(params, stats, sr)[0]
    if mode == "eval":
      logits = self.disc.apply({"params": params, "batch_stats": stats}, sr.astype(self.dtype),
                               train=False)
      return logits.astype(jnp.float32)
    if mode == "joint":
      return jnp.split(self._disc(params, stats, jnp.concatenate([hr, sr]))[0], 2)[1]
    raise errors.UserError(f"sr.disc_bn_in_g must be 'train', 'eval' or 'joint', got {mode!r}")

  def _inputs(self, batch, rng, frozen, with_features=True):
    """(HR, LR, features of the loss target) of a (micro)batch; the LR drawn from `rng`."""
    cfg = self.cfg.loss
    hr = batch["hr"].astype(jnp.float32)
    lr = make_train_lr(self.config, hr, jax.random.fold_in(rng, 0x1a))
    if not with_features:
      return hr, lr, None
    target = degrade.upsample_bicubic(lr, self.config.scale) if cfg.feature_target == "lr" else hr
    feats_target = jax.lax.stop_gradient(features.extract(self.config, frozen, target, self.which))
    return hr, lr, feats_target

  def _gen_grads(self, state, hr, lr, feats_target, frozen):
    """G's gradients against D as `state` holds it: (grads, G's BN stats, loss terms, SR batch)."""
    cfg = self.cfg.loss
    s = state.batch_stats

    def gen_loss(gen_params):
      sr, gen_stats = self._generate(gen_params, s["gen"], lr.astype(self.dtype), train=True)
      fake_logits = (self._fake_logits_for_g(state.params["disc"], s["disc"], hr, sr)
                     if self.adversarial else None)
      feats_sr = features.extract(self.config, frozen, sr, self.which, remat=self.remat)
      total, parts = losses.sr_generator_loss(sr=sr, hr=hr, fake_logits=fake_logits,
                                              feats_sr=feats_sr, feats_target=feats_target,
                                              weights=cfg)
      for term, (weight, fn) in self.extra_losses.items():
        value = jnp.asarray(fn(sr=sr, hr=hr, lr=lr, feats_sr=feats_sr, feats_target=feats_target),
                            jnp.float32)
        if value.shape != ():
          raise errors.UserError(f"extra loss '{term}' must return a scalar, got shape {value.shape}")
        parts = {**parts, term: value}
        total = total + weight * value
      parts["total"] = total
      return total, (parts, sr, gen_stats)

    _, (parts, sr, gen_stats), g_grads = loop.step_lib.value_and_grad_with_aux(
        gen_loss, state.params["gen"])
    return g_grads, gen_stats, {f"g_{k}": v for k, v in parts.items()}, sr

  def _disc_grads(self, state, hr, sr):
    """D's gradients on [HR; SR]: (grads, D's BN stats, loss)."""
    def disc_loss(disc_params):
      # One pass over [HR; SR] so BatchNorm sees real and fake together, as a single batch.
      logits, disc_stats = self._disc(disc_params, state.batch_stats["disc"],
                                      jnp.concatenate([hr, jax.lax.stop_gradient(sr)]))
      real, fake = jnp.split(logits, 2)
      return losses.discriminator_loss(real, fake), disc_stats

    d_loss, disc_stats, d_grads = loop.step_lib.value_and_grad_with_aux(disc_loss, state.params["disc"])
    return d_grads, disc_stats, d_loss

  def grads(self, state, batch, rng, frozen):
    """Both networks' gradients from the same state (`sr.gd_update="simultaneous"`); G's forward pass
    serves both losses."""
    hr, lr, feats_target = self._inputs(batch, rng, frozen)
    g_grads, gen_stats, metrics, sr = self._gen_grads(state, hr, lr, feats_target, frozen)
    if not self.adversarial:
      return {"gen": g_grads}, {"gen": gen_stats}, metrics
    d_grads, disc_stats, d_loss = self._disc_grads(state, hr, sr)
    return ({"gen": g_grads, "disc": d_grads}, {"gen": gen_stats, "disc": disc_stats},
            {**metrics, "d_loss": d_loss})

  def update(self, state, batch, rng, frozen, *, microbatches=1, mesh=None):
    order = self.cfg.gd_update
    if order not in ("simultaneous", "alternating"):
      raise errors.UserError(f"sr.gd_update must be 'simultaneous' or 'alternating', got {order!r}")
    if order == "simultaneous" or not self.adversarial:     # without D the two orders are one
      return super().update(state, batch, rng, frozen, microbatches=microbatches, mesh=mesh)
    # SRGAN's order: D steps on G's current output, then G's loss is taken against the updated D
    # (params and running statistics). Costs one more generator forward pass than "simultaneous".
    # Under accumulation D's update is complete (all microbatches) before G's gradients are taken;
    # microbatch i draws the same LR in both passes.
    accumulate = functools.partial(loop.step_lib.accumulate, batch=batch, rng=rng,
                                   microbatches=microbatches, mesh=mesh)

    def disc_part(st, part, key):
      hr, lr, _ = self._inputs(part, key, frozen, with_features=False)
      sr, _ = self._generate(st.params["gen"], st.batch_stats["gen"], lr.astype(self.dtype), train=True)
      d_grads, disc_stats, d_loss = self._disc_grads(st, hr, sr)
      return {"disc": d_grads}, {"disc": disc_stats}, {"d_loss": d_loss}

    def gen_part(st, part, key):
      hr, lr, feats_target = self._inputs(part, key, frozen)
      g_grads, gen_stats, metrics, _ = self._gen_grads(st, hr, lr, feats_target, frozen)
      return {"gen": g_grads}, {"gen": gen_stats}, metrics

    d_grads, stats, d_metrics = accumulate(disc_part, state)
    mid = state.apply_gradients(d_grads, batch_stats=stats)
    g_grads, stats, g_metrics = accumulate(gen_part, mid)
    new = mid.apply_gradients(g_grads, batch_stats=stats).replace(
        step=state.step + 1)        # one training step, whatever the number of optimiser calls
    return new, {**g_metrics, **d_metrics}

  def images(self, state, batch, rng, frozen):
    hr = batch["hr"][:4].astype(jnp.float32)
    lr = make_lr(self.config, hr)
    sr, _ = self._generate(state.params["gen"], state.batch_stats["gen"], lr.astype(self.dtype),
                           train=False)
    bic = degrade.upsample_bicubic(lr, self.config.scale)
    lr_big = jnp.repeat(jnp.repeat(lr, self.config.scale, 1), self.config.scale, 2)
    return {"lr": lr_big, "bicubic": bic, "sr": sr, "hr": hr, "abs_error_x4": 4 * jnp.abs(sr - hr)}


def restore_state(stage: loop.Stage, mesh) -> tuple[TrainState, int]:
  """The latest checkpointed state of `stage` (replicated on `mesh`) and its step."""
  _, abstract = loop.init_state(stage, mesh)
  mngr = checkpoints.manager(os.path.join(stage.dir, "checkpoints"))
  try:
    state, _, step = checkpoints.restore(mngr, abstract)
  finally:
    mngr.close()
  return state, step


def restore_params(stage: loop.Stage, mesh) -> dict:
  """Only the `params` of a finished earlier stage (replicated on `mesh`)."""
  directory = os.path.join(stage.dir, "checkpoints")
  if checkpoints.latest_step(directory) is None:
    raise FileNotFoundError(
        f"the SR stage needs the '{stage.name}' stage's checkpoint, but {directory} has none: "
        f"train it first (stages=('{stage.name}', ...)) or set sr.features_workdir to a workdir "
        f"that has it")
  state, step = restore_state(stage, mesh)
  logging.info("SR stage: frozen '%s' params from %s (step %d)", stage.name, directory, step)
  return state.params
