"""Stage 1: self-supervised fine-tuning of UNETR's ViT on the run's own slices (paper 3.2, 4.1).

The pretrained prediction head is replaced by a zero-initialised dense layer. Two pretext tasks:
  masked_patch  (ViT paper, Dosovitskiy et al. 2020; the paper found it more stable): corrupt a
                fraction of the patches (80% blanked, 10% replaced by another patch, 10% kept) and
                predict each corrupted patch's mean intensity quantised to `num_bins` classes;
  classify      predict which dataset/contrast a slice comes from (K = number of labels).
The 2D ViT starts from a MONAI UNETR checkpoint when `vit.init_checkpoint` is set (3D weights made 2D,
see models/vit.py), else from scratch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from absl import logging

from mrsr_jax import errors
from mrsr_jax import features
from mrsr_jax.data import records
from mrsr_jax.models import vit as vit_lib
from mrsr_jax.train import loop
from mrsr_jax.train.state import TrainState, make_optimizer


def patchify(images: jax.Array, p: int) -> jax.Array:
  """[B, H, W, 1] -> [B, N, p*p] in the ViT's token order (row-major over the patch grid)."""
  b, h, w, c = images.shape
  x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: jax.Array, h: int, w: int, p: int) -> jax.Array:
  b = patches.shape[0]
  x = patches.reshape(b, h // p, w // p, p, p, 1).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, w, 1)


def corrupt_patches(images: jax.Array, rng: jax.Array, *, patch: int, ratio: float, bins: int):
  """Masked patch prediction inputs: (corrupted images, per-token targets, per-token mask)."""
  b, h, w, _ = images.shape
  patches = patchify(images, patch)
  targets = jnp.clip(jnp.floor(patches.mean(-1) * bins), 0, bins - 1).astype(jnp.int32)
  k_mask, k_kind, k_perm = jax.random.split(rng, 3)
  mask = jax.random.uniform(k_mask, targets.shape) < ratio
  kind = jax.random.uniform(k_kind, targets.shape)
  # Another patch from anywhere in the batch, as in BERT's random-token replacement.
  flat = patches.reshape(-1, patches.shape[-1])
  other = flat[jax.random.permutation(k_perm, flat.shape[0])].reshape(patches.shape)
  corrupted = jnp.where((mask & (kind < 0.8))[..., None], 0.0, patches)
  corrupted = jnp.where((mask & (kind >= 0.8) & (kind < 0.9))[..., None], other, corrupted)
  return unpatchify(corrupted, h, w, patch), targets, mask


def num_pretext_classes(config) -> int:
  """The pretext head's classes: `num_bins`, or for "classify" the prepared set's labels (dataset/
  contrast), of which there must be two or more: with one the cross-entropy is 0 whatever the ViT
  does, and it would not train at all (e.g. one IXI contrast, `config.contrast="t1"`)."""
  if config.vit.pretext != "classify":
    return config.vit.num_bins
  info = records.read_info(loop.dataset_dir(config))
  if len(info["labels"]) < 2:
    raise errors.UserError(
        f"vit.pretext='classify' needs slices of at least two labels (dataset/contrast) to tell apart; "
        f"{info['path']} has {info['labels']} (config.contrast={config.contrast!r}): use "
        f"vit.pretext='masked_patch' or a set with several contrasts")
  return len(info["labels"])


class ViTStage(loop.Stage):
  name = "vit"

  def __init__(self, config, workdir):
    super().__init__(config, workdir)
    if self.cfg.pretext not in ("masked_patch", "classify"):
      raise errors.UserError(f"unknown vit.pretext '{self.cfg.pretext}' (masked_patch or classify)")
    self.num_classes = num_pretext_classes(config)
    self.vit = features.vit_module(config, self.crop_size, remat=self.remat)
    self.model = vit_lib.PretextViT(vit=_vit_kwargs(self.vit),
                                    num_classes=self.num_classes,
                                    per_token=self.cfg.pretext == "masked_patch")
    self.tx = make_optimizer(self.cfg.learning_rate, weight_decay=self.cfg.weight_decay,
                             grad_clip_norm=config.grad_clip_norm)

  @property
  def crop_size(self) -> int:
    # The ViT is fine-tuned at the SR crop size: the SR loss then uses its position grid unchanged.
    return self.config.crop_size

  def init(self, rng):
    x = jnp.zeros((1, self.crop_size, self.crop_size, 1), jnp.float32)
    params = self.model.init(rng, x)["params"]
    if self.cfg.init_checkpoint:
      params = dict(params)
      params["vit"] = self._pretrained_vit()
    return TrainState.create({"vit": params}, {"vit": self.tx})

  def _pretrained_vit(self):
    from mrsr_jax.models import monai_import
    logging.info("ViT initialised from MONAI checkpoint %s", self.cfg.init_checkpoint)
    params3d = monai_import.convert_vit_state_dict(self.cfg.init_checkpoint)
    return vit_lib.vit2d_params_from_3d(params3d, (self.crop_size, self.crop_size),
                                        patch_size=self.config.vit.model.patch_size)

  def grads(self, state, batch, rng, frozen):
    images = batch["hr"]
    if self.cfg.pretext == "masked_patch":
      inputs, targets, weights = corrupt_patches(
          images, rng, patch=self.config.vit.model.patch_size, ratio=self.cfg.mask_ratio,
          bins=self.cfg.num_bins)
      weights = weights.astype(jnp.float32)
    else:
      inputs, targets = images, batch["label"]
      weights = jnp.ones(targets.shape, jnp.float32)
    dropout_rng = jax.random.fold_in(rng, 1)

    def loss_fn(params):
      logits = self.model.apply({"params": params}, inputs.astype(self.dtype), train=True,
                                rngs={"dropout": dropout_rng}).astype(jnp.float32)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
      denom = jnp.maximum(weights.sum(), 1.0)
      loss = (ce * weights).sum() / denom
      acc = ((logits.argmax(-1) == targets) * weights).sum() / denom
      return loss, {"loss": loss, "accuracy": acc}

    _, metrics, grads = loop.step_lib.value_and_grad_with_aux(loss_fn, state.params["vit"])
    return {"vit": grads}, {}, metrics

  def images(self, state, batch, rng, frozen):
    if self.cfg.pretext != "masked_patch":
      return {}
    inputs, _, _ = corrupt_patches(batch["hr"][:4], rng, patch=self.config.vit.model.patch_size,
                                   ratio=self.cfg.mask_ratio, bins=self.cfg.num_bins)
    return {"input": inputs, "original": batch["hr"][:4]}


def _vit_kwargs(vit: vit_lib.ViT) -> dict:
  """The constructor fields of a ViT module (so PretextViT builds the very same network)."""
  import dataclasses
  return {f.name: getattr(vit, f.name) for f in dataclasses.fields(vit)
          if f.name not in ("parent", "name")}
