"""SRCNN (Dong, Loy, He, Tang, "Image Super-Resolution Using Deep Convolutional Networks", TPAMI 2016),
Flax Linen: a comparison row of the paper's Tables 1-2.

Published shape (the paper's 9-1-5 network, Sec. 3 and 4.3): the LR image is first upsampled to the
HR grid by bicubic interpolation (pre-upsampling), then
  conv f1 x f1, n1 = 64 filters, ReLU  (patch extraction and representation)
  conv f2 x f2, n2 = 32 filters, ReLU  (non-linear mapping)
  conv f3 x f3, 1 filter               (reconstruction)
with f1-f2-f3 = 9-1-5, one channel (the Y channel), trained with the mean squared error. The paper
counts 8,032 parameters for 9-1-5 (weights only: 9*9*64 + 64*32 + 5*5*32); with the 97 biases the
network has 8,129.

Deviations, each for a reason:
  * SAME (zero) padding: the paper's convolutions are 'valid' (its output is 12 pixels smaller than
    its input at 9-1-5, and the loss is taken on the centre); the pipeline here scores full slices, so
    every conv keeps the size and the border pixels are produced from zero-padded neighbourhoods.
  * Bicubic inside the model: `degrade.upsample_bicubic`, the project's bicubic baseline (the paper
    uses MATLAB's imresize), so the model takes the LR slice like every other generator here.
  * `residual=True` (not the paper's form, off by default) adds bicubic(LR) to the output and starts
    the last conv at zero (see `sr_common.output`).
No BatchNorm, so `train` changes nothing; it is accepted for the common generator signature.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrsr_jax.data import degrade
from mrsr_jax.models import sr_common

Dtype = Any

# "paper": the 9-1-5 network of the paper. "reduced": the same network, because SRCNN already costs
# less than the demo's 6 x 32 generator: forward GFLOP per 256^2 HR slice 1.1 at 2x and 4x, against
# its 5.6 and 2.8.
PRESETS = {
    "paper": dict(n1=64, n2=32, f1=9, f2=1, f3=5, residual=False),
    "reduced": dict(n1=64, n2=32, f1=9, f2=1, f3=5, residual=False),
}


class SRCNN(nn.Module):
  """`[B, N, M, channels]` LR slice -> `[B, sN, sM, channels]` (float32), s = `scale` in {2, 4}."""
  scale: int
  n1: int = 64
  n2: int = 32
  f1: int = 9
  f2: int = 1
  f3: int = 5
  residual: bool = False
  channels: int = 1
  # How the convolutions are computed (`srgan.CONV_IMPLS`; `stage_sr.generator` sets the backend's).
  conv_impl: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    del train
    sr_common.check_input("SRCNN", x, self.scale, self.channels)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    bicubic = degrade.upsample_bicubic(x, self.scale)
    impl = self.conv_impl
    y = nn.relu(sr_common.conv(self.n1, self.f1, "conv1", kw, impl)(bicubic))
    y = nn.relu(sr_common.conv(self.n2, self.f2, "conv2", kw, impl)(y))
    return sr_common.output(y, x, channels=self.channels, kernel=self.f3, scale=self.scale,
                            residual=self.residual, kw=kw, impl=impl, name="conv3", bicubic=bicubic)
