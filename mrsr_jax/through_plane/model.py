"""Generators that upsample one image axis (rows) by an integer factor f and leave the other alone.

Both learn a residual over cubic B-spline interpolation along the rows (`spline_upsample_rows`, the
baseline the study scores against), with the last conv starting at zero so the untrained network *is*
that baseline (the `residual` contract of the project's generators, srgan.py / sr_common.py):
  * `OneAxisSRGenerator`: the project's SRGAN-style generator (srgan.py: 9x9 conv, residual blocks,
    long skip) at the thick slices' resolution, then one sub-pixel stage that turns f * features
    channels into f rows (`pixel_shuffle_rows`, ESPCN's shuffle along one axis), and the 9x9 output
    conv. Any integer f (3 included), where srgan.SRGenerator's stages of x2 take 2 and 4 only.
  * `OneAxisVDSR`: VDSR (vdsr.py) on the spline-upsampled image: a pre-upsampling network, so its
    cost is at the fine resolution.
Input `[B, m, W, 1]`, output `[B, f * m, W, 1]` float32: output row j sits (j - (f - 1) / 2) / f input
rows from input row 0 (`profile.Geometry`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mrsr_jax import errors
from mrsr_jax.models import sr_common, srgan
from mrsr_jax.through_plane import profile

Dtype = Any


def output_positions(m: int, factor: int) -> np.ndarray:
  """Input-row coordinates of the f * m output rows (grid-centred: f rows per input row)."""
  return (np.arange(factor * m) - (factor - 1) / 2) / factor


def spline_upsample_rows(x: jax.Array, factor: int) -> jax.Array:
  """`[B, m, W, C]` -> `[B, f * m, W, C]` by cubic B-spline interpolation along the rows (mirror
  boundary): scipy.ndimage.map_coordinates(order=3, mode="mirror") at `output_positions`."""
  m = x.shape[1]
  matrix = profile.spline_matrix(m, output_positions(m, factor)).astype(np.float32)
  return profile.apply_along_axis(matrix, x.astype(jnp.float32), 1)


def pixel_shuffle_rows(x: jax.Array, r: int) -> jax.Array:
  """`[B, H, W, C * r] -> [B, r * H, W, C]`: channel c * r + i goes to row r * h + i (srgan's
  pixel_shuffle along the rows only)."""
  b, h, w, cr = x.shape
  if cr % r:
    raise ValueError(f"pixel_shuffle_rows: channels {cr} not divisible by r = {r}")
  x = x.reshape(b, h, w, cr // r, r).transpose(0, 1, 4, 2, 3)
  return x.reshape(b, h * r, w, cr // r)


def _check(name: str, x: jax.Array, factor: int) -> None:
  if not isinstance(factor, int) or factor < 2:
    raise ValueError(f"{name}: factor must be an integer >= 2, got {factor!r}")
  if x.ndim != 4 or x.shape[-1] != 1:
    raise ValueError(f"{name}: expected a channels-last single-channel batch [B, m, W, 1], got "
                     f"{tuple(x.shape)}")


class OneAxisSRGenerator(nn.Module):
  """SRGAN-style generator upsampling the rows by `factor`."""
  factor: int
  num_blocks: int = 4
  features: int = 32
  # "none" (EDSR's blocks: the default here, where the batch is a few crops of one volume, BatchNorm's
  # statistics would be noisy) or "batch" (the paper's SRGAN blocks).
  norm: str = "none"
  conv_impl: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    _check("OneAxisSRGenerator", x, self.factor)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    ckw = dict(impl=self.conv_impl, **kw)
    f = self.features
    base = spline_upsample_rows(x, self.factor)
    h = nn.relu(srgan.Conv(f, (9, 9), padding="SAME", name="conv_in", **ckw)(x.astype(self.dtype)))
    skip = h
    for i in range(self.num_blocks):
      h = srgan.ResidualBlock(f, norm=self.norm, conv_impl=self.conv_impl, name=f"res_{i}", **kw)(h, train)
    h = srgan.Conv(f, (3, 3), padding="SAME", use_bias=self.norm != "batch", name="conv_mid", **ckw)(h)
    h = srgan._norm(self.norm, train, "bn_mid", kw)(h)
    h = h + skip
    h = srgan.Conv(self.factor * f, (3, 3), padding="SAME", name="up", **ckw)(h)
    h = nn.relu(pixel_shuffle_rows(h, self.factor))
    out = srgan.Conv(1, (9, 9), padding="SAME", name="conv_out", kernel_init=nn.initializers.zeros,
                     **ckw)(h).astype(jnp.float32)
    return out + base


class OneAxisVDSR(nn.Module):
  """VDSR over cubic-spline upsampling of the rows by `factor` (a comparison network)."""
  factor: int
  num_layers: int = 8
  features: int = 32
  conv_impl: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    del train
    _check("OneAxisVDSR", x, self.factor)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    base = spline_upsample_rows(x, self.factor)
    y = base.astype(self.dtype)
    for i in range(self.num_layers - 1):
      y = nn.relu(sr_common.conv(self.features, 3, f"conv_{i}", kw, self.conv_impl)(y))
    return sr_common.output(y, x, channels=1, kernel=3, scale=self.factor, residual=True, kw=kw,
                            impl=self.conv_impl, name=f"conv_{self.num_layers - 1}", bicubic=base)


# `config.through_plane.arch` -> generator class.
ARCHS = {"srgan": OneAxisSRGenerator, "vdsr": OneAxisVDSR}


def build(arch: str, factor: int, fields: dict, dtype: str = "float32") -> nn.Module:
  """The generator `arch` at `factor` with its `config.through_plane.model` fields, built for the
  backend's convolutions (srgan.backend_conv_impl)."""
  if arch not in ARCHS:
    raise errors.UserError(f"config.through_plane.arch = {arch!r}: expected one of {', '.join(ARCHS)}")
  cls = ARCHS[arch]
  valid = {f for f in cls.__dataclass_fields__ if f not in ("factor", "conv_impl", "dtype",
                                                             "param_dtype", "parent", "name")}
  unknown = sorted(set(fields) - valid)
  if unknown:
    raise errors.UserError(f"config.through_plane.model: the {arch!r} generator has no field(s) "
                           f"{', '.join(unknown)}; its fields are {', '.join(sorted(valid))}")
  return cls(factor=factor, conv_impl=srgan.backend_conv_impl(), dtype=jnp.dtype(dtype), **fields)
