"""The full UNETR (ViT encoder + CNN decoder, paper App. B) in Flax Linen, 2D or 3D.

Used for segmentation pre-training and to load MONAI UNETR checkpoints, so it mirrors MONAI 1.6's
`monai.networks.nets.UNETR` block for block and name for name (`monai_import.py` maps a state dict onto
it; `tests/test_monai_parity.py` checks hidden states and logits against MONAI to 1e-4):

  encoder1  UnetrBasicBlock  on the input image (full resolution)
  encoder2  UnetrPrUpBlock   on ViT block 3's tokens, 3 transposed convs up (x8)
  encoder3  UnetrPrUpBlock   on block 6, 2 up (x4)
  encoder4  UnetrPrUpBlock   on block 9, 1 up (x2)
  decoder5..decoder2  UnetrUpBlock: transposed conv x2, concatenate the skip, residual conv block
  out       UnetOutBlock: 1^d conv to the class logits (the softmax lives in the loss)

MONAI's conventions kept: convs have no bias except the output conv, transposed convs have kernel =
stride = 2 and no bias, 3^d convs pad by 1, InstanceNorm without affine parameters (eps 1e-5), LeakyReLU
with slope 0.01. MONAI's UNETR always has 12 transformer layers (it hard-codes them and taps 3/6/9/12).
Channels-last: MONAI's `[B, C, H, W(, D)]` is our `[B, H, W(, D), C]`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrsr_jax.models.vit import ViT

Dtype = Any

# MONAI's UNETR fixes these; they are not constructor arguments there either.
NUM_LAYERS = 12
PATCH_SIZE = 16
SKIP_LAYERS = (3, 6, 9)  # indices into the ViT's hidden states (blocks 4, 7, 10 in 1-based counting)
LEAKY_SLOPE = 0.01
NORM_EPS = 1e-5
NORM_NAMES = ("instance",)


class Convolution(nn.Module):
  """MONAI's `Convolution` with `conv_only=True`: a single (transposed) conv held as submodule `conv`.

  The extra level exists only so that MONAI's `<name>.conv.weight` keys map one-to-one.
  """
  features: int
  kernel_size: int
  spatial_dims: int
  strides: int = 1
  use_bias: bool = False
  transposed: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = (self.kernel_size,) * self.spatial_dims
    s = (self.strides,) * self.spatial_dims
    kw = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype, name="conv")
    if self.transposed:
      # MONAI only transposes with kernel == stride (2): no overlap, output exactly stride x input.
      return nn.ConvTranspose(self.features, k, strides=s, padding="VALID", **kw)(x)
    # MONAI's get_padding: (k - s + 1) // 2 per side, i.e. "same" for odd kernels at stride 1.
    pad = (self.kernel_size - self.strides + 1) // 2
    return nn.Conv(self.features, k, strides=s, padding=[(pad, pad)] * self.spatial_dims, **kw)(x)


def _instance_norm(x: jax.Array, dtype: Dtype) -> jax.Array:
  # torch InstanceNorm (affine=False, no running stats): per sample and channel over space, biased
  # variance; no parameters, so no name needed for the state-dict mapping.
  return nn.InstanceNorm(epsilon=NORM_EPS, use_scale=False, use_bias=False, use_fast_variance=False,
                         dtype=dtype)(x)


class UnetResBlock(nn.Module):
  """conv-norm-lrelu-conv-norm, plus a 1^d conv-norm projection of the input when channels change."""
  features: int
  spatial_dims: int
  kernel_size: int = 3
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(spatial_dims=self.spatial_dims, dtype=self.dtype, param_dtype=self.param_dtype)
    y = Convolution(self.features, self.kernel_size, name="conv1", **kw)(x)
    y = nn.leaky_relu(_instance_norm(y, self.dtype), LEAKY_SLOPE)
    y = Convolution(self.features, self.kernel_size, name="conv2", **kw)(y)
    y = _instance_norm(y, self.dtype)
    if x.shape[-1] != self.features:  # MONAI: downsample = in_channels != out_channels (stride is 1 here)
      x = _instance_norm(Convolution(self.features, 1, name="conv3", **kw)(x), self.dtype)
    return nn.leaky_relu(y + x, LEAKY_SLOPE)


class UnetBasicBlock(nn.Module):
  """conv-norm-lrelu twice (MONAI's block when `res_block=False`)."""
  features: int
  spatial_dims: int
  kernel_size: int = 3
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(spatial_dims=self.spatial_dims, dtype=self.dtype, param_dtype=self.param_dtype)
    for name in ("conv1", "conv2"):
      x = Convolution(self.features, self.kernel_size, name=name, **kw)(x)
      x = nn.leaky_relu(_instance_norm(x, self.dtype), LEAKY_SLOPE)
    return x


def _conv_block(res_block: bool, features: int, spatial_dims: int, name: str, dtype: Dtype,
                param_dtype: Dtype) -> nn.Module:
  cls = UnetResBlock if res_block else UnetBasicBlock
  return cls(features, spatial_dims, dtype=dtype, param_dtype=param_dtype, name=name)


class UnetrBasicBlock(nn.Module):
  """encoder1: one conv block on the image, held as `layer` (MONAI's name)."""
  features: int
  spatial_dims: int
  res_block: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return _conv_block(self.res_block, self.features, self.spatial_dims, "layer", self.dtype,
                       self.param_dtype)(x)


class _PrUpStage(nn.Module):
  """One element of MONAI's `UnetrPrUpBlock.blocks`: `Sequential(transposed conv, conv block)`.

  Submodules are named "0" and "1" as the Sequential's entries are.
  """
  features: int
  spatial_dims: int
  res_block: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = Convolution(self.features, 2, self.spatial_dims, strides=2, transposed=True, dtype=self.dtype,
                    param_dtype=self.param_dtype, name="0")(x)
    return _conv_block(self.res_block, self.features, self.spatial_dims, "1", self.dtype, self.param_dtype)(x)


class UnetrPrUpBlock(nn.Module):
  """encoder2-4: a transposed conv from the ViT tokens, then `num_layer` (up + conv block) stages."""
  features: int
  spatial_dims: int
  num_layer: int
  res_block: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = Convolution(self.features, 2, self.spatial_dims, strides=2, transposed=True, name="transp_conv_init",
                    **kw)(x)
    for i in range(self.num_layer):
      x = _PrUpStage(self.features, self.spatial_dims, self.res_block, name=f"blocks_{i}", **kw)(x)
    return x


class UnetrUpBlock(nn.Module):
  """decoder5-2: transposed conv x2, concatenate the skip (after the upsampled map), conv block."""
  features: int
  spatial_dims: int
  res_block: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, skip: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = Convolution(self.features, 2, self.spatial_dims, strides=2, transposed=True, name="transp_conv", **kw)(x)
    x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)  # torch.cat((out, skip), dim=1)
    return _conv_block(self.res_block, self.features, self.spatial_dims, "conv_block", **kw)(x)


class UnetOutBlock(nn.Module):
  """The 1^d output conv (with bias), held as `conv` like MONAI's."""
  features: int
  spatial_dims: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return Convolution(self.features, 1, self.spatial_dims, use_bias=True, dtype=self.dtype,
                       param_dtype=self.param_dtype, name="conv")(x)


class UNETR(nn.Module):
  """MONAI's UNETR (12-layer ViT with P=16, CNN decoder), 2D or 3D by `len(img_size)`.

  `__call__(x, *, train=False)` with x `[B, *img_size, in_channels]` returns float32 logits
  `[B, *img_size, out_channels]`. The default `out_channels=14` is the configuration whose size the paper
  quotes (App. D; 1 input channel, 96^3).
  """
  img_size: tuple[int, ...]
  in_channels: int = 1
  out_channels: int = 14
  feature_size: int = 16
  hidden_size: int = 768
  mlp_dim: int = 3072
  num_heads: int = 12
  norm_name: str = "instance"
  res_block: bool = True
  dropout_rate: float = 0.0
  qkv_bias: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _check(self) -> tuple[int, ...]:
    img_size = tuple(int(s) for s in self.img_size)
    if len(img_size) not in (2, 3):
      raise ValueError(f"UNETR: img_size must have 2 or 3 entries, got {img_size}")
    if any(s % PATCH_SIZE for s in img_size):
      # MONAI accepts other sizes in the ViT but its decoder then cannot meet the encoder1 skip.
      raise ValueError(f"UNETR: every img_size entry must be a multiple of {PATCH_SIZE}, got {img_size}")
    if self.norm_name not in NORM_NAMES:
      raise ValueError(f"UNETR: norm_name must be one of {NORM_NAMES} (MONAI's default), got {self.norm_name!r}")
    return img_size

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    img_size = self._check()
    nd = len(img_size)
    grid = tuple(s // PATCH_SIZE for s in img_size)
    f = self.feature_size
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    out, hidden = ViT(img_size, self.in_channels, PATCH_SIZE, self.hidden_size, self.mlp_dim, NUM_LAYERS,
                      self.num_heads, self.dropout_rate, self.qkv_bias, name="vit", **kw)(x, train=train)

    def proj_feat(t: jax.Array) -> jax.Array:
      # Tokens are row-major over the patch grid, so channels-last needs no permute (MONAI's does).
      return t.reshape((t.shape[0],) + grid + (self.hidden_size,))

    enc1 = UnetrBasicBlock(f, nd, self.res_block, name="encoder1", **kw)(x)
    enc2 = UnetrPrUpBlock(2 * f, nd, 2, self.res_block, name="encoder2", **kw)(proj_feat(hidden[SKIP_LAYERS[0]]))
    enc3 = UnetrPrUpBlock(4 * f, nd, 1, self.res_block, name="encoder3", **kw)(proj_feat(hidden[SKIP_LAYERS[1]]))
    enc4 = UnetrPrUpBlock(8 * f, nd, 0, self.res_block, name="encoder4", **kw)(proj_feat(hidden[SKIP_LAYERS[2]]))
    dec3 = UnetrUpBlock(8 * f, nd, self.res_block, name="decoder5", **kw)(proj_feat(out), enc4)
    dec2 = UnetrUpBlock(4 * f, nd, self.res_block, name="decoder4", **kw)(dec3, enc3)
    dec1 = UnetrUpBlock(2 * f, nd, self.res_block, name="decoder3", **kw)(dec2, enc2)
    y = UnetrUpBlock(f, nd, self.res_block, name="decoder2", **kw)(dec1, enc1)
    return UnetOutBlock(self.out_channels, nd, name="out", **kw)(y).astype(jnp.float32)
