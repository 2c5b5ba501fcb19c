"""The swapping autoencoder of paper 3.3 / App. A (Park et al. 2020), in Flax Linen, 2D, channels-last.

docs/design.md, "Swapping autoencoder", fixes the sizes; what the paper leaves open is chosen here:

  * `SwapEncoder`: 4 conv blocks (3x3 conv + LeakyReLU(0.2), filters 64, 64, 32, 32), each followed by
    2x2 max pooling. The structure code z_s branches off after block 2 (resolution H/4, i.e. 64x64 for a
    256x256 slice) through a 1x1 conv to `structure_channels` (default 8); the texture code z_t comes from
    block 4 (H/16) by global average pooling and a dense layer (256). Spatial z_s, vector z_t: the
    asymmetry the paper asks for (Fig. 1b).
  * `SwapGenerator`: mirrors the encoder from z_s upwards: blocks with filters 32, 32, 64, 64, the first two
    at z_s's resolution (where the encoder's deep blocks 3-4 sit), the last two each upsampling x2
    (nearest, then conv) back to H. z_t enters **every** block by *modulated convolution with weight
    demodulation* (StyleGAN2, as Park et al. use it): a per-block dense layer maps z_t to a per-input-channel
    style s; the conv sees `x * s` and its output is divided by `sqrt(sum_{k,in} (w * s)^2 + 1e-8)`
    per sample and output channel. This is exactly the per-sample modulated kernel of StyleGAN2, computed
    with one shared-kernel conv instead of a grouped conv. A final 1x1 conv gives the image (linear, so the
    [0, 1] intensities and the L1 loss need no squashing).
  * `SwapDiscriminator`: 3x3 conv stride 2 + LeakyReLU(0.2) stages (64, 128, 256, 256), global average
    pooling, dense to one logit; any input size >= 16.

No BatchNorm anywhere: the encoder is frozen in the SR stage and every module stays params-only.

`remat=True` (each module) recomputes a block's activations in the backward pass from its input
instead of storing them (`_blocks`); the parameter tree and the values are the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
LEAKY_SLOPE = 0.2
DEMOD_EPS = 1e-8


def _blocks(mdl: nn.Module, block, remat: bool):
  """`block(mdl, x, i) -> x`, rematerialised when `remat` (only its input is stored; `i` static).
  Flax's lifted remat of a function creates the block's layers in `mdl`, under their own names."""
  return nn.remat(block, static_argnums=(2,), policy=jax.checkpoint_policies.nothing_saveable) if remat \
      else block


def _check_image(x: jax.Array, owner: str, multiple: int) -> None:
  if x.ndim != 4 or x.shape[-1] != 1:
    raise ValueError(f"{owner}: expected a channels-last single-channel batch [B, H, W, 1], got {tuple(x.shape)}")
  if x.shape[1] % multiple or x.shape[2] % multiple:
    raise ValueError(f"{owner}: H and W must be multiples of {multiple}, got {tuple(x.shape[1:3])}")


class SwapEncoder(nn.Module):
  """E(x) = (z_s, z_t): x `[B, H, W, 1]` (H, W multiples of 16) -> z_s `[B, H/4, W/4, C_s]`, z_t `[B, D_t]`."""
  features: Sequence[int] = (64, 64, 32, 32)
  structure_channels: int = 8
  texture_dim: int = 256
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    if len(self.features) != 4:
      raise ValueError(f"SwapEncoder: features must list 4 block widths, got {tuple(self.features)}")
    _check_image(x, "SwapEncoder", 16)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

    def block(mdl, x, i):
      x = nn.Conv(self.features[i], (3, 3), padding="SAME", name=f"conv{i + 1}", parent=mdl, **kw)(x)
      return nn.max_pool(nn.leaky_relu(x, LEAKY_SLOPE), (2, 2), strides=(2, 2))

    block = _blocks(self, block, self.remat)
    z_s = None
    for i in range(len(self.features)):
      x = block(self, x, i)
      if i == 1:  # the shallow branch: structure keeps the spatial layout at H/4
        z_s = nn.Conv(self.structure_channels, (1, 1), name="structure", **kw)(x)
    x = jnp.mean(x, axis=(1, 2))  # global average pooling: texture is position-free
    z_t = nn.Dense(self.texture_dim, name="texture", **kw)(x)
    return z_s.astype(jnp.float32), z_t.astype(jnp.float32)


class ModulatedConv(nn.Module):
  """3x3 conv modulated by a style vector, with StyleGAN2 weight demodulation (Park et al. 2020)."""
  features: int
  kernel_size: int = 3
  demodulate: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, z_t: jax.Array) -> jax.Array:
    in_ch = x.shape[-1]
    k = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, in_ch, self.features), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    # Style starts at 1 (bias init 1) so an untrained generator is an ordinary conv net.
    s = nn.Dense(in_ch, bias_init=nn.initializers.ones, dtype=self.dtype, param_dtype=self.param_dtype,
                 name="style")(z_t)  # [B, in]
    x, kernel_c, s = (a.astype(self.dtype) for a in (x, kernel, s))
    y = jax.lax.conv_general_dilated(
        x * s[:, None, None, :], kernel_c, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.demodulate:
      # ||w * s||_2 over (kh, kw, in) for each sample and output channel, in float32.
      w2 = jnp.sum(jnp.square(kernel.astype(jnp.float32)), axis=(0, 1))  # [in, out]
      d = jax.lax.rsqrt(jnp.square(s.astype(jnp.float32)) @ w2 + DEMOD_EPS)  # [B, out]
      y = y * d[:, None, None, :].astype(self.dtype)
    return y + bias.astype(self.dtype)


class SwapGenerator(nn.Module):
  """G(z_s, z_t): `[B, h, w, C_s]`, `[B, D_t]` -> image `[B, 4h, 4w, out_channels]` (float32)."""
  features: Sequence[int] = (32, 32, 64, 64)
  texture_dim: int = 256
  out_channels: int = 1
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z_s: jax.Array, z_t: jax.Array) -> jax.Array:
    if len(self.features) != 4:
      raise ValueError(f"SwapGenerator: features must list 4 block widths, got {tuple(self.features)}")
    if z_s.ndim != 4 or z_t.ndim != 2 or z_s.shape[0] != z_t.shape[0] or z_t.shape[1] != self.texture_dim:
      raise ValueError(f"SwapGenerator: expected z_s [B, h, w, C] and z_t [B, {self.texture_dim}], got "
                       f"{tuple(z_s.shape)} and {tuple(z_t.shape)}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = z_s.astype(self.dtype)

    def block(mdl, x, i, z_t):
      if i >= 2:  # the mirror of the encoder's first two poolings
        b, h, w, c = x.shape
        x = jax.image.resize(x, (b, 2 * h, 2 * w, c), method="nearest")
      x = ModulatedConv(self.features[i], name=f"block{i + 1}", parent=mdl, **kw)(x, z_t)
      return nn.leaky_relu(x, LEAKY_SLOPE)

    block = _blocks(self, block, self.remat)
    for i in range(len(self.features)):
      x = block(self, x, i, z_t)
    return nn.Conv(self.out_channels, (1, 1), name="to_image", **kw)(x).astype(jnp.float32)


class SwapDiscriminator(nn.Module):
  """D(x): image `[B, H, W, 1]` -> logits `[B]` (float32); the logistic GAN loss is applied outside."""
  features: Sequence[int] = (64, 128, 256, 256)
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _check_image(x, "SwapDiscriminator", 1)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

    def block(mdl, x, i):   # i = 0: the stride-1 input conv; i >= 1: the stride-2 stages
      conv = (nn.Conv(self.features[0], (3, 3), padding="SAME", name="conv0", parent=mdl, **kw) if i == 0
              else nn.Conv(self.features[i - 1], (3, 3), strides=(2, 2), padding="SAME", name=f"down{i}",
                           parent=mdl, **kw))
      return nn.leaky_relu(conv(x), LEAKY_SLOPE)

    block = _blocks(self, block, self.remat)
    for i in range(len(self.features) + 1):
      x = block(self, x, i)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(1, name="logit", **kw)(x)[:, 0].astype(jnp.float32)
