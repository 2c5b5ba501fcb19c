"""VDSR (Kim, Lee, Lee, "Accurate Image Super-Resolution Using Very Deep Convolutional Networks",
CVPR 2016), Flax Linen: a comparison row of the paper's Tables 1-2.

Published shape (Sec. 3.1, Fig. 2): the LR image is bicubic-upsampled to the HR grid (pre-upsampling);
d = 20 conv layers, all 3x3 with zero padding, 64 filters, ReLU after each but the last, which maps
to one channel (the Y channel); the output is the input plus that residual (the global skip); trained
with the mean squared error. With biases (the authors' Caffe nets have them, e.g.
huangzehao/caffe-vdsr's VDSR_net.prototxt) that is 3*3*64 + 64 + 18 * (3*3*64*64 + 64) + 3*3*64 + 1
= 665,921 parameters (the "~665k" usually quoted).

Deviations:
  * The last conv starts at zero when `residual` (the default, the published form), so the untrained
    network is exactly bicubic (VDSR initialises every layer with He et al.'s scheme); the
    `residual` contract of every generator here (`sr_common.output`).
  * Bicubic by `degrade.upsample_bicubic` (the project's baseline) instead of MATLAB's imresize.
No BatchNorm, so `train` changes nothing.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrsr_jax.data import degrade
from mrsr_jax.models import sr_common

Dtype = Any

# "reduced": 6 layers x 32 for CPU runs, the demo generator's cost at 2x. A pre-upsampling network
# computes at the HR size, so its cost per HR pixel does not fall with the scale: forward GFLOP per
# 256^2 HR slice (XLA's cost analysis) 4.9 at 2x and 4x, against the demo's 6 x 32 generator's 5.6 at
# 2x and 2.8 at 4x (10 x 32: 9.7; the paper's 20 x 64: 87).
PRESETS = {
    "paper": dict(num_layers=20, features=64, residual=True),
    "reduced": dict(num_layers=6, features=32, residual=True),
}


class VDSR(nn.Module):
  """`[B, N, M, channels]` LR slice -> `[B, sN, sM, channels]` (float32), s = `scale` in {2, 4}."""
  scale: int
  num_layers: int = 20      # d: every conv layer, the first (channels -> features) and last included
  features: int = 64
  residual: bool = True
  channels: int = 1
  # How the convolutions are computed (`srgan.CONV_IMPLS`; `stage_sr.generator` sets the backend's).
  conv_impl: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    del train
    sr_common.check_input("VDSR", x, self.scale, self.channels)
    if self.num_layers < 2:
      raise ValueError(f"VDSR: num_layers counts the first and the last conv, so it must be >= 2, got "
                       f"{self.num_layers}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    bicubic = degrade.upsample_bicubic(x, self.scale)
    y = bicubic
    for i in range(self.num_layers - 1):
      y = nn.relu(sr_common.conv(self.features, 3, f"conv_{i}", kw, self.conv_impl)(y))
    return sr_common.output(y, x, channels=self.channels, kernel=3, scale=self.scale,
                            residual=self.residual, kw=kw, impl=self.conv_impl,
                            name=f"conv_{self.num_layers - 1}",
                            bicubic=bicubic)
