"""RDN (Zhang, Tian, Kong, Zhong, Fu, "Residual Dense Network for Image Super-Resolution", CVPR 2018),
Flax Linen: a comparison row of the paper's Tables 1-2.

Published shape (Sec. 3, Figs. 2-3; the authors' Torch code, yulunzhang/RDN
`RDN_TrainCode/code/model/RDN.lua` and `opts.lua`): post-upsampling, convs with bias and zero padding,
  SFE1    3x3 conv channels -> G0 (its output is the global residual F_{-1})
  SFE2    3x3 conv G0 -> G0
  D residual dense blocks (RDB), each: C layers of 3x3 conv (G0 + c*G -> G) + ReLU whose output is
          concatenated to the block's running features; local feature fusion, a 1x1 conv
          (G0 + C*G -> G0); plus the block's input (local residual)
  GFF     the D block outputs concatenated, 1x1 conv (D*G0 -> G0), 3x3 conv G0 -> G0; plus F_{-1}
  UPNet   log2(s) x (3x3 conv G0 -> 4*G0, pixel shuffle x2), no activation (the code's
          `upsample_wo_act`, as EDSR); 3x3 conv G0 -> channels
trained with the L1 loss. Published: D = 16, C = 8, G = 64, G0 = 64: 22,271,107 parameters at 4x for
RGB (21,831,171 + the 4x upsampler; "about 22M").

Deviations: no RGB mean subtraction (the code's `subMean`): MR intensities are single-channel in
[0, 1]. `residual=True` (off by default, not the paper's form) adds bicubic(LR) and starts the last
conv at zero (`sr_common.output`). No BatchNorm, so `train` changes nothing.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrsr_jax.models import sr_common, srgan

Dtype = Any

# "reduced": D = 3 blocks of C = 4 layers, G = 16, G0 = 32, for CPU runs (each such block costs about
# as much as two of the demo generator's residual blocks): forward GFLOP per 256^2 HR slice 5.4 at
# 2x, 2.6 at 4x (the demo's 6 x 32 generator: 5.6, 2.8).
PRESETS = {
    "paper": dict(num_blocks=16, num_layers=8, growth=64, features=64, residual=False),
    "reduced": dict(num_blocks=3, num_layers=4, growth=16, features=32, residual=False),
}


class ResidualDenseBlock(nn.Module):
  """C densely connected conv + ReLU layers, 1x1 local feature fusion, local residual."""
  features: int         # G0
  growth: int           # G
  num_layers: int       # C
  conv_impl: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    feats = x
    for c in range(self.num_layers):
      y = nn.relu(sr_common.conv(self.growth, 3, f"conv_{c}", kw, self.conv_impl)(feats))
      feats = jnp.concatenate([feats, y], axis=-1)
    return x + sr_common.conv(self.features, 1, "lff", kw, self.conv_impl)(feats)


class RDN(nn.Module):
  """`[B, N, M, channels]` LR slice -> `[B, sN, sM, channels]` (float32), s = `scale` in {2, 4}."""
  scale: int
  num_blocks: int = 16      # D
  num_layers: int = 8       # C
  growth: int = 64          # G
  features: int = 64        # G0
  residual: bool = False
  channels: int = 1
  # Recompute each dense block's activations in the backward pass from its input (as
  # `SRGenerator.remat`): same parameters and values, less memory, one more forward of the blocks.
  remat: bool = False
  # How the convolutions are computed (`srgan.CONV_IMPLS`; `stage_sr.generator` sets the backend's).
  conv_impl: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    del train
    sr_common.check_input("RDN", x, self.scale, self.channels)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    g0 = self.features
    lr = x
    impl = self.conv_impl
    f_minus1 = sr_common.conv(g0, 3, "sfe1", kw, impl)(x)
    y = sr_common.conv(g0, 3, "sfe2", kw, impl)(f_minus1)
    block = srgan.remat_block(ResidualDenseBlock, static_argnums=()) if self.remat else ResidualDenseBlock
    outs = []
    for d in range(self.num_blocks):
      y = block(g0, self.growth, self.num_layers, conv_impl=impl, name=f"rdb_{d}", **kw)(y)
      outs.append(y)
    y = sr_common.conv(g0, 1, "gff_1x1", kw, impl)(jnp.concatenate(outs, axis=-1))
    y = sr_common.conv(g0, 3, "gff_3x3", kw, impl)(y) + f_minus1
    y = sr_common.upsample(y, self.scale, g0, kw, impl)
    return sr_common.output(y, lr, channels=self.channels, kernel=3, scale=self.scale,
                            residual=self.residual, kw=kw, impl=impl, name="tail")
