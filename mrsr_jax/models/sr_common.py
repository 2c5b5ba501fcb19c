"""What the comparison generators (SRCNN, VDSR, EDSR, RDN) share: input checks, the sub-pixel
upsampler, and the output conv with the optional residual over bicubic.

Every convolution goes through `srgan.Conv` with the model's `conv_impl` (looked up at call time, so a
benchmark that swaps it swaps it for every generator): the comparison networks run the same
convolution code as the project's generator ("cpu": cpu_conv.py's kernels on XLA:CPU, set by
`stage_sr.generator` from the backend), so CPU timings compare like for like.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrsr_jax.data import degrade
from mrsr_jax.models import srgan

SCALES = srgan.SCALES


def check_input(name: str, x: jax.Array, scale: int, channels: int) -> None:
  """One clear error for a scale or an input shape the generator cannot take."""
  if scale not in SCALES:
    raise ValueError(f"{name}: scale must be one of {SCALES}, got {scale!r}")
  if x.ndim != 4 or x.shape[-1] != channels:
    raise ValueError(f"{name}: expected a channels-last batch [B, N, M, {channels}], got {tuple(x.shape)}")


def conv(features: int, kernel: int, name: str, kw: dict, impl: str, **extra) -> nn.Module:
  """A stride-1, SAME-padded square conv with bias (every conv of the four papers has one), computed
  the `impl` way (`srgan.CONV_IMPLS`)."""
  return srgan.Conv(features, (kernel, kernel), padding="SAME", name=name, impl=impl, **kw, **extra)


def upsample(x: jax.Array, scale: int, features: int, kw: dict, impl: str) -> jax.Array:
  """EDSR's / RDN's upsampler (ESPCN's sub-pixel conv, Shi et al. 2016): log2(s) stages of 3x3 conv to
  4 * features channels and pixel shuffle x2, no activation (EDSR `common.Upsampler(act=False)`,
  RDN `upsample_wo_act`). Parameters `up_0`, `up_1`."""
  for i in range(int(math.log2(scale))):
    x = srgan.pixel_shuffle(conv(4 * features, 3, f"up_{i}", kw, impl)(x), 2)
  return x


def output(x: jax.Array, lr: jax.Array, *, channels: int, kernel: int, scale: int, residual: bool,
           kw: dict, impl: str, name: str, bicubic: jax.Array | None = None) -> jax.Array:
  """The last conv to `channels` in float32, plus bicubic(lr) when `residual`.

  Residual: the last conv starts at zero, so the untrained network *is* the bicubic baseline and
  training moves away from it only by improving the loss (as `SRGenerator(residual=True)`, whose
  comment gives the reasoning). `bicubic`: the upsampled input when the caller already has it."""
  init = dict(kernel_init=nn.initializers.zeros) if residual else {}
  out = conv(channels, kernel, name, kw, impl, **init)(x).astype(jnp.float32)
  if residual:
    out = out + (degrade.upsample_bicubic(lr, scale) if bicubic is None else bicubic)
  return out
