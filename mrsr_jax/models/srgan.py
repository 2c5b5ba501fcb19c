"""The SR generator and discriminator of paper App. E / Fig. 6 (SRGAN's, Ledig et al. 2017), Flax Linen.

Generator (docs/design.md, "SR network"): 9x9 conv (64) + ReLU; `num_blocks` residual blocks (3x3 conv, BN,
ReLU, 3x3 conv, BN, skip); 3x3 conv + BN and the long skip from the first conv; log2(s) upsampling stages
(3x3 conv to 4 * 64 channels -> pixel shuffle x2 -> ReLU); a final 9x9 conv to 1 channel. ReLU where
SRGAN has PReLU, because App. E says ReLU. Output linear (SRGAN's tanh suits [-1, 1] images; ours are
[0, 1] intensities under an L1 term). Fully convolutional: any N x N (or N x M) input.

Discriminator: SRGAN's conv stack (n64s1 + LeakyReLU(0.2), then conv-BN-LeakyReLU n64s2, n128s1, n128s2,
n256s1, n256s2, n512s1, n512s2), then **global average pooling** (SRGAN flattens a fixed 96x96 map; pooling
lets any slice size through), dense 1024, LeakyReLU(0.2), dense 1 -> logits `[B]` in float32.

Convolutions that feed a BatchNorm have no bias (BN cancels it), as in ResNets.
BatchNorm uses `use_running_average=not train`, momentum 0.9 (torch's 0.1), eps 1e-5, collection
`batch_stats`; call `apply(..., mutable=["batch_stats"])` when `train=True`.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrsr_jax.data import degrade
from mrsr_jax.models import cpu_conv

Dtype = Any
SCALES = (2, 4)
BN_MOMENTUM = 0.9
BN_EPS = 1e-5
LEAKY_SLOPE = 0.2

# How a model's convolutions are computed (its `conv_impl` field): "xla" is XLA's own convolution on
# any backend; "cpu" takes cpu_conv.py's kernels (same values and param tree), built for XLA:CPU, where
# the SR train step spent a third of its time in XLA's kernel gradients (docs/benchmarks.md).
CONV_IMPLS = ("xla", "cpu")


def backend_conv_impl(platform: str | None = None) -> str:
  """The `conv_impl` for models that run on `platform` (a JAX backend name; default: JAX's default
  backend): "cpu" on XLA:CPU, "xla" on every accelerator."""
  return "cpu" if (platform or jax.default_backend()) == "cpu" else "xla"


def Conv(*args, impl: str = "xla", **kwargs) -> nn.Conv:
  """`nn.Conv(*args, **kwargs)` computed the `impl` way (one of CONV_IMPLS; a model passes its
  `conv_impl` field)."""
  if impl == "xla":
    return nn.Conv(*args, **kwargs)
  if impl == "cpu":
    return nn.Conv(*args, conv_general_dilated=cpu_conv.conv_general_dilated, **kwargs)
  raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {impl!r}")


def pixel_shuffle(x: jax.Array, r: int) -> jax.Array:
  """Channels-last `torch.nn.functional.pixel_shuffle`: `[B, H, W, C*r*r] -> [B, rH, rW, C]`.

  Channel `c*r*r + i*r + j` goes to output pixel `(r*h + i, r*w + j)`, channel `c`, as in torch, so
  weights trained either way mean the same thing.
  """
  b, h, w, crr = x.shape
  if crr % (r * r):
    raise ValueError(f"pixel_shuffle: channels {crr} not divisible by r^2 = {r * r}")
  c = crr // (r * r)
  x = x.reshape(b, h, w, c, r, r)
  x = x.transpose(0, 1, 4, 2, 5, 3)  # b, h, i, w, j, c
  return x.reshape(b, h * r, w * r, c)


def remat_block(cls, static_argnums=(2,)):
  """`cls` rematerialised: only the block's input is kept for the backward pass. `train` (argument 2,
  counting self) is static: it decides the graph. Flax's lifted remat keeps the parameter tree."""
  return nn.remat(cls, static_argnums=static_argnums, policy=jax.checkpoint_policies.nothing_saveable)


def _norm(kind: str, train: bool, name: str, kw: dict):
  """BatchNorm (SRGAN, the paper's App. E) or nothing (EDSR: BN costs SR accuracy, see docs)."""
  if kind == "batch":
    return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS, name=name, **kw)
  if kind == "none":
    return lambda x: x
  raise ValueError(f"SRGenerator: norm must be 'batch' or 'none', got {kind!r}")


class ResidualBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN plus identity (SRGAN's B residual blocks); norm="none" drops the BNs."""
  features: int = 64
  norm: str = "batch"
  conv_impl: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:   # `train` positional for nn.remat
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    ckw = dict(impl=self.conv_impl, **kw)
    # No conv bias before BatchNorm: BN's mean subtraction cancels it (its true gradient is 0, so it
    # would only drift on round-off).
    bias = self.norm != "batch"
    y = Conv(self.features, (3, 3), padding="SAME", use_bias=bias, name="conv1", **ckw)(x)
    y = nn.relu(_norm(self.norm, train, "bn1", kw)(y))
    y = Conv(self.features, (3, 3), padding="SAME", use_bias=bias, name="conv2", **ckw)(y)
    return x + _norm(self.norm, train, "bn2", kw)(y)


class SRGenerator(nn.Module):
  """`[B, N, M, 1]` low-resolution slice -> `[B, sN, sM, 1]` (float32), s = `scale` in {2, 4}."""
  scale: int
  num_blocks: int = 16
  features: int = 64
  # Learn the residual over bicubic upsampling of the input (VDSR's global skip): the output starts
  # at the bicubic baseline instead of at zero. False is SRGAN's plain output.
  residual: bool = False
  # "batch": SRGAN's BatchNorm in every block (App. E). "none": EDSR's blocks without it.
  norm: str = "batch"
  # Recompute each residual block's activations in the backward pass from its input (rematerialisation,
  # `nothing_saveable`): the blocks' stored activations drop from ~6 maps per block to 1, for about one
  # more forward pass of the blocks. Same parameters, same values.
  remat: bool = False
  # "xla" or "cpu" (CONV_IMPLS): set from the backend the model runs on when it is built
  # (`backend_conv_impl`, as stage_sr.generator does).
  conv_impl: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if self.scale not in SCALES:
      raise ValueError(f"SRGenerator: scale must be one of {SCALES}, got {self.scale!r}")
    if x.ndim != 4 or x.shape[-1] != 1:
      raise ValueError(f"SRGenerator: expected a channels-last single-channel batch [B, N, N, 1], got {tuple(x.shape)}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    ckw = dict(impl=self.conv_impl, **kw)
    f = self.features
    lr = x
    x = nn.relu(Conv(f, (9, 9), padding="SAME", name="conv_in", **ckw)(x))
    skip = x
    block = remat_block(ResidualBlock) if self.remat else ResidualBlock
    for i in range(self.num_blocks):
      x = block(f, norm=self.norm, conv_impl=self.conv_impl, name=f"res_{i}", **kw)(x, train)
    x = Conv(f, (3, 3), padding="SAME", use_bias=self.norm != "batch", name="conv_mid", **ckw)(x)
    x = _norm(self.norm, train, "bn_mid", kw)(x)
    x = x + skip  # the long skip of Fig. 6
    for i in range(int(math.log2(self.scale))):
      x = Conv(4 * f, (3, 3), padding="SAME", name=f"up_{i}", **ckw)(x)
      x = nn.relu(pixel_shuffle(x, 2))
    # Residual: the output conv starts at zero, so the untrained generator *is* the bicubic baseline
    # in train and eval mode alike (BatchNorm's train/eval difference never reaches the output until
    # the model has learnt something) and training can only move away from bicubic by improving the
    # loss. Its kernel still gets gradient from step 0 (the activations before it are not zero), and
    # the layers below it from step 1 on. (Zero-initialised last layers: Goyal et al. 2017, Fixup.)
    init = dict(kernel_init=nn.initializers.zeros) if self.residual else {}
    out = Conv(1, (9, 9), padding="SAME", name="conv_out", **init, **ckw)(x).astype(jnp.float32)
    if self.residual:
      out = out + degrade.upsample_bicubic(lr, self.scale)
    return out


class SRDiscriminator(nn.Module):
  """`[B, H, W, 1]` image (any size) -> real/fake logits `[B]` (float32)."""
  features: int = 64
  conv_impl: str = "xla"   # as SRGenerator's
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if x.ndim != 4 or x.shape[-1] != 1:
      raise ValueError(f"SRDiscriminator: expected a channels-last single-channel batch [B, H, W, 1], got "
                       f"{tuple(x.shape)}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    f = self.features
    x = nn.leaky_relu(Conv(f, (3, 3), padding="SAME", name="conv0", impl=self.conv_impl, **kw)(x),
                      LEAKY_SLOPE)
    # (width multiplier, stride): SRGAN's n64s2, n128s1, n128s2, n256s1, n256s2, n512s1, n512s2.
    for i, (m, s) in enumerate(((1, 2), (2, 1), (2, 2), (4, 1), (4, 2), (8, 1), (8, 2))):
      x = Conv(m * f, (3, 3), strides=(s, s), padding="SAME", use_bias=False, name=f"conv{i + 1}",
               impl=self.conv_impl, **kw)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS, name=f"bn{i + 1}",
                       **kw)(x)
      x = nn.leaky_relu(x, LEAKY_SLOPE)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.leaky_relu(nn.Dense(1024, name="dense1", **kw)(x), LEAKY_SLOPE)
    return nn.Dense(1, name="dense2", **kw)(x)[:, 0].astype(jnp.float32)
