"""EDSR (Lim, Son, Kim, Nah, Lee, "Enhanced Deep Residual Networks for Single Image Super-Resolution",
CVPRW 2017), Flax Linen: a comparison row of the paper's Tables 1-2.

Published shape (Sec. 3.1-3.2, Fig. 3; the authors' code, sanghyun-son/EDSR-PyTorch `model/edsr.py`
and `model/common.py`): post-upsampling, all convs 3x3 with bias and zero padding,
  head    conv channels -> F
  body    B residual blocks without BatchNorm: conv, ReLU, conv, times `res_scale`, plus the input;
          then one conv F -> F, plus the head's output (the long skip)
  tail    upsampler: log2(s) x (conv F -> 4F, pixel shuffle x2), no activation; conv F -> channels
trained with the L1 loss. EDSR: B = 32, F = 256, res_scale = 0.1 (43,089,923 parameters at 4x for
RGB); EDSR-baseline: B = 16, F = 64, res_scale = 1 (1,517,571 at 4x for RGB).

Deviations: no RGB mean shift (the code's `MeanShift` layers, fixed, not counted above): MR
intensities are single-channel in [0, 1] and there is no dataset mean to subtract. `residual=True`
(off by default, not the paper's form) adds bicubic(LR) and starts the tail conv at zero
(`sr_common.output`). No BatchNorm, so `train` changes nothing.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrsr_jax.models import sr_common, srgan

Dtype = Any

# "paper": the EDSR of the paper's Table 1 row (the large model; "baseline" is EDSR-baseline).
# "reduced": the demo generator's 6 x 32 without its BatchNorm, res_scale 1 (as EDSR-baseline), for
# CPU runs: forward GFLOP per 256^2 HR slice 5.1 at 2x, 2.5 at 4x (the demo's generator: 5.6, 2.8).
PRESETS = {
    "paper": dict(num_blocks=32, features=256, res_scale=0.1, residual=False),
    "baseline": dict(num_blocks=16, features=64, res_scale=1.0, residual=False),
    "reduced": dict(num_blocks=6, features=32, res_scale=1.0, residual=False),
}


class ResBlock(nn.Module):
  """EDSR's residual block: x + res_scale * conv(relu(conv(x)))."""
  features: int
  res_scale: float
  conv_impl: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = nn.relu(sr_common.conv(self.features, 3, "conv1", kw, self.conv_impl)(x))
    y = sr_common.conv(self.features, 3, "conv2", kw, self.conv_impl)(y)
    return x + self.res_scale * y


class EDSR(nn.Module):
  """`[B, N, M, channels]` LR slice -> `[B, sN, sM, channels]` (float32), s = `scale` in {2, 4}."""
  scale: int
  num_blocks: int = 32
  features: int = 256
  res_scale: float = 0.1
  residual: bool = False
  channels: int = 1
  # Recompute each residual block's activations in the backward pass from its input (as
  # `SRGenerator.remat`): same parameters and values, less memory, one more forward of the blocks.
  remat: bool = False
  # How the convolutions are computed (`srgan.CONV_IMPLS`; `stage_sr.generator` sets the backend's).
  conv_impl: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    del train
    sr_common.check_input("EDSR", x, self.scale, self.channels)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    f = self.features
    lr = x
    impl = self.conv_impl
    head = sr_common.conv(f, 3, "head", kw, impl)(x)
    block = srgan.remat_block(ResBlock, static_argnums=()) if self.remat else ResBlock
    y = head
    for i in range(self.num_blocks):
      y = block(f, self.res_scale, conv_impl=impl, name=f"res_{i}", **kw)(y)
    y = sr_common.conv(f, 3, "body_end", kw, impl)(y) + head
    y = sr_common.upsample(y, self.scale, f, kw, impl)
    return sr_common.output(y, lr, channels=self.channels, kernel=3, scale=self.scale,
                            residual=self.residual, kw=kw, impl=impl, name="tail")
