"""The frozen feature extractors of the SR loss: f_ViT (Eq. 8) and the AE codes z_s, z_t (Eq. 7).

Both come from earlier stages' checkpoints and are used with their params closed over as constants of
the SR step: they are not in the optimiser, and nothing differentiates with respect to them.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from mrsr_jax import errors
from mrsr_jax.models import swap_ae, vit as vit_lib


def vit_module(config: ml_collections.ConfigDict, size: int, remat: bool = False) -> vit_lib.ViT:
  """The 2D ViT the pipeline fine-tunes and uses, for square slices of `size` (`remat`: its blocks
  rematerialised, for a pass that is differentiated; the same values)."""
  if size % config.vit.model.patch_size:
    raise errors.UserError(f"crop_size {size} is not a multiple of the ViT patch size "
                     f"{config.vit.model.patch_size}")
  return vit_lib.ViT(img_size=(size, size), in_channels=1, dtype=jnp.dtype(config.dtype), remat=remat,
                     **config.vit.model)


def ae_encoder(config: ml_collections.ConfigDict, remat: bool = False) -> swap_ae.SwapEncoder:
  m = config.ae.model
  return swap_ae.SwapEncoder(features=tuple(m.features), structure_channels=m.structure_channels,
                             texture_dim=m.texture_dim, remat=remat, dtype=jnp.dtype(config.dtype))


def ae_frame(config: ml_collections.ConfigDict, images: jax.Array) -> jax.Array:
  """`images` [B, H, W, C] framed as the AE encoder is to see them in the SR loss (`sr.loss.ae_frame`).

  "ae": centre zero-padded up to `ae.crop_size`, exactly as the data pipeline pads a slice smaller
  than the AE's training crop (IXI: 240² slices trained in a 256² frame), so z_t pools over the grid
  the AE was trained on; a frame at least that large is left whole (cropping would drop part of the
  SR output from L_str / L_tex, and the AE's random crops of such slices have seen all of it).
  "sr": the SR crop as it is."""
  mode = config.sr.loss.ae_frame
  if mode == "sr":
    return images
  if mode != "ae":
    raise errors.UserError(f"sr.loss.ae_frame must be 'ae' or 'sr', got {mode!r}")
  size = config.ae.crop_size or config.crop_size
  ph, pw = max(size - images.shape[1], 0), max(size - images.shape[2], 0)
  if not (ph or pw):
    return images
  # The split of an odd pad matches pipeline._crop (the smaller half first).
  return jnp.pad(images, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))


def needed(loss_cfg: Mapping[str, Any]) -> set[str]:
  """Which features the loss weights ask for: a zero weight means the extractor never runs."""
  out = set()
  if loss_cfg["lambda_vit"]:
    out.add("vit")
  if loss_cfg["lambda_str"]:
    out.add("z_s")
  if loss_cfg["lambda_tex"]:
    out.add("z_t")
  return out


def extract(config: ml_collections.ConfigDict, frozen: Mapping[str, Any], images: jax.Array,
            which: set[str], remat: bool = False) -> dict[str, jax.Array]:
  """Features of `images` [B, M, M, 1] from the frozen params {'vit': ..., 'ae_enc': ...}; `remat`
  recomputes the extractors' block activations when the SR step differentiates through them."""
  feats = {}
  if "vit" in which:
    out, _ = vit_module(config, images.shape[1], remat).apply({"params": frozen["vit"]}, images)
    feats["vit"] = vit_lib.vit_feature(out).astype(jnp.float32)
  if which & {"z_s", "z_t"}:
    z_s, z_t = ae_encoder(config, remat).apply({"params": frozen["ae_enc"]}, ae_frame(config, images))
    if "z_s" in which:
      feats["z_s"] = z_s.astype(jnp.float32)
    if "z_t" in which:
      feats["z_t"] = z_t.astype(jnp.float32)
  return feats
