"""Stage 2: the swapping autoencoder that splits a slice into structure z_s and texture z_t
(paper 3.3, App. A; Park et al. 2020).

One compiled step updates the encoder+generator (L_disent, Eq. 6) and the discriminator (Eq. 13's
logistic loss) from the same forward pass. The swap partner x² of each x¹ is the other slice of its
pair (2j, 2j+1) of the batch (`swap_partners`): all slices of a run come from one dataset, and a
shuffled batch makes x¹ ≠ x². Pairs, not a roll over the whole batch, so that a step accumulated over
microbatches of even size swaps the very same textures as one batch (step.accumulate).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mrsr_jax import losses
from mrsr_jax.models import swap_ae
from mrsr_jax.train import loop
from mrsr_jax.train.state import TrainState, make_optimizer


def swap_partners(z: jax.Array) -> jax.Array:
  """Row 2j+1 of `z` for row 2j and row 2j for row 2j+1 (textures swapped within pairs); with an odd
  batch the last row takes the row before it."""
  n = z.shape[0]
  idx = jnp.arange(n) ^ 1
  return z[jnp.where(idx < n, idx, n - 2) if n > 1 else idx * 0]


class AEStage(loop.Stage):
  name = "ae"

  def __init__(self, config, workdir):
    super().__init__(config, workdir)
    m = self.cfg.model
    self.enc = swap_ae.SwapEncoder(features=tuple(m.features), structure_channels=m.structure_channels,
                                   texture_dim=m.texture_dim, remat=self.remat, dtype=self.dtype)
    self.gen = swap_ae.SwapGenerator(features=tuple(reversed(m.features)), texture_dim=m.texture_dim,
                                     remat=self.remat, dtype=self.dtype)
    self.disc = swap_ae.SwapDiscriminator(remat=self.remat, dtype=self.dtype)
    tx = make_optimizer(self.cfg.learning_rate, b1=self.cfg.b1, b2=self.cfg.b2,
                        grad_clip_norm=config.grad_clip_norm)
    self.txs = {"enc": tx, "gen": tx, "disc": tx}

  @property
  def crop_size(self) -> int:
    # The AE trains in its own frame (ae.crop_size; 0: the SR crop), slices padded to it.
    return self.cfg.crop_size or self.config.crop_size

  def init(self, rng):
    k_e, k_g, k_d = jax.random.split(rng, 3)
    x = jnp.zeros((1, self.crop_size, self.crop_size, 1), jnp.float32)
    enc = self.enc.init(k_e, x)["params"]
    z_s, z_t = self.enc.apply({"params": enc}, x)
    gen = self.gen.init(k_g, z_s, z_t)["params"]
    disc = self.disc.init(k_d, x)["params"]
    return TrainState.create({"enc": enc, "gen": gen, "disc": disc}, self.txs)

  def _forward(self, params, x1):
    z_s, z_t = self.enc.apply({"params": params["enc"]}, x1)
    recon = self.gen.apply({"params": params["gen"]}, z_s, z_t)
    swap = self.gen.apply({"params": params["gen"]}, z_s, swap_partners(z_t))  # (z_s¹, z_t²)
    return recon.astype(jnp.float32), swap.astype(jnp.float32)

  def grads(self, state, batch, rng, frozen):
    x1 = batch["hr"].astype(self.dtype)
    disc_params = state.params["disc"]

    def disc_logits(p, x):
      return self.disc.apply({"params": p}, x.astype(self.dtype)).astype(jnp.float32)

    def gen_loss(ae_params):
      recon, swap = self._forward({**ae_params}, x1)
      total, parts = losses.disentangle_loss(
          x1.astype(jnp.float32), recon, disc_logits(disc_params, recon),
          disc_logits(disc_params, swap), w_adv=self.cfg.w_adv, w_swap=self.cfg.w_swap)
      return total, (parts, recon, swap)

    ae_params = {"enc": state.params["enc"], "gen": state.params["gen"]}
    _, (parts, recon, swap), ae_grads = loop.step_lib.value_and_grad_with_aux(gen_loss, ae_params)

    fakes = jax.lax.stop_gradient(jnp.concatenate([recon, swap]))

    def disc_loss(p):
      real = disc_logits(p, x1)
      fake = disc_logits(p, fakes)
      return losses.discriminator_loss(real, fake), None

    d_loss, _, d_grads = loop.step_lib.value_and_grad_with_aux(disc_loss, disc_params)
    metrics = {f"g_{k}": v for k, v in parts.items()}
    metrics["d_loss"] = d_loss
    return {**ae_grads, "disc": d_grads}, {}, metrics

  def images(self, state, batch, rng, frozen):
    x1 = batch["hr"][:4]
    recon, swap = self._forward(state.params, x1.astype(self.dtype))
    return {"input": x1, "reconstruction": recon, "swap_texture": swap}
