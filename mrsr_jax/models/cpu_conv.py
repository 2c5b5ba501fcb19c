"""`lax.conv_general_dilated` with a faster kernel gradient on CPU: same values, other arithmetic order.

Why (docs/benchmarks.md, "Where the time goes"): XLA:CPU computes a convolution's kernel gradient as
another convolution whose window is the whole image and whose contraction is over the batch, a shape
its convolution kernels handle at a few GFLOP/s when the channel counts differ (e.g. SRGAN's 64 -> 256
upsampling conv, the discriminator's widening convs, the 9x9 64 -> 1 output conv): in the SR train
step on CPU these few kernel gradients took about a third of the step. Written as one matrix product
over `batch * height * width` (im2col of whichever side has fewer channels) they run at GEMM speed.

Only for models that run on XLA:CPU, chosen when the model is built (`srgan.Conv(..., impl="cpu")`,
which `srgan.backend_conv_impl()` picks on a CPU backend): this file holds no accelerator path, and a
model built for a GPU never calls it. Only plain 2D NHWC convolutions (no dilation, one group, more
than one input channel) whose channel counts differ or that are strided take the kernels below;
everything else goes to `lax.conv_general_dilated` untouched. The price is compile time (the k*k
window slices) and the im2col buffer's memory. The parameter tree is nn.Conv's.

Which kernel gradient is fastest depends on which library runs XLA:CPU's convolutions (jaxlib 0.10
hands them to YNNPACK by default): under YNNPACK the im2col product wins where the channel counts
differ; with Eigen's convolutions, XLA's own kernel gradient is faster on every layer but the 9x9
one-output-channel conv, and the train step as a whole is faster too (docs/benchmarks.md, issue 13).
`compile_step` therefore compiles CPU train steps with `train_compiler_options()` (Eigen's
convolutions; YNNPACK's matrix products and reductions), and the kernel gradients are chosen for
that (`eigen=True`, the default whenever this jaxlib accepts the options; the 9x9 -> 1 channel output
conv's forward is then a matrix product + shifted sum, `_shift_sum_conv`). The choice is an argument,
fixed when the model is built, so every trace of a model (train step, eval, predict, api) is the same
code. Inference keeps YNNPACK's convolutions (its forward pass is faster there: 467 vs 609 ms per
512² slice at 2x).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")

# The XLA:CPU option that keeps convolutions off YNNPACK (Eigen's kernels) and matrix products and
# reductions on it: the list overwrites jaxlib 0.10's default (convolutions, dots, reductions).
TRAIN_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                          "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}

@functools.cache
def train_compiler_options() -> dict:
  """`TRAIN_COMPILER_OPTIONS` if this jaxlib's CPU compiler accepts them, else {} (checked once).

  The option is experimental: a jaxlib without it (or with another spelling) rejects the compile, and
  then steps compile with XLA's defaults and the kernel gradients chosen for them."""
  try:
    cpu = jax.devices("cpu")[0]
    x = jax.device_put(jnp.zeros((1, 4, 4, 2), jnp.float32), cpu)
    fn = jax.jit(lambda x: lax.conv_general_dilated(x, jnp.ones((3, 3, 2, 2), x.dtype), (1, 1), "SAME",
                                                    dimension_numbers=_NHWC),
                 compiler_options=TRAIN_COMPILER_OPTIONS)
    fn.lower(x).compile()
  except Exception:   # noqa: BLE001 -- any rejection means: not supported here
    return {}
  return dict(TRAIN_COMPILER_OPTIONS)


def _plain_2d(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count) -> bool:
  if lhs.ndim != 4 or rhs.ndim != 4 or feature_group_count != 1:
    return False
  if any(d != 1 for d in (lhs_dilation or (1, 1))) or any(d != 1 for d in (rhs_dilation or (1, 1))):
    return False
  want = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
  got = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) if dimension_numbers else None
  return got == want


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision=None,
                         preferred_element_type=None, *, eigen: bool | None = None) -> jax.Array:
  """Drop-in for `lax.conv_general_dilated` (the signature Flax's `nn.Conv` calls).

  `eigen`: the kernels are for an executable compiled with `train_compiler_options()` (Eigen's
  convolutions); None: whenever this jaxlib accepts those options, as `compile_step` then uses them."""
  ci, co = (rhs.shape[-2], rhs.shape[-1]) if rhs.ndim == 4 else (None, None)
  strides = tuple(int(s) for s in window_strides)
  if (batch_group_count != 1 or preferred_element_type is not None
      or not _plain_2d(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count)
      or (ci == co and strides == (1, 1)) or ci == 1):
    # Same channel count at stride 1, or one input channel: XLA's own kernel gradient is as fast
    # there (measured), and the im2col below would only add compile time.
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                    rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                    feature_group_count=feature_group_count,
                                    batch_group_count=batch_group_count, precision=precision,
                                    preferred_element_type=preferred_element_type)
  if isinstance(padding, str):
    pads = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
  else:
    pads = padding
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)
  if eigen is None:
    eigen = bool(train_compiler_options())
  # The named scope marks these kernels in profiles and in lowered text (tests/test_platform_code.py).
  with jax.named_scope("cpu_conv"):
    return _conv(lhs, rhs, strides, pads, precision, bool(eigen))


def _plain_conv(x, w, strides, pads, precision):
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC, precision=precision)


def _few_outputs(w, strides) -> bool:
  """A stride-1 conv whose k*k*C_out products per pixel are few next to C_in (the 9x9 -> 1 output
  conv: 81 against 64 input channels)."""
  kh, kw, ci, co = w.shape
  return strides == (1, 1) and kh * kw > 1 and co < ci and kh * kw * co <= 2 * ci


def _shift_sum_conv(x, w, strides, pads, precision):
  """y[p] = sum_{i,j} (x_pad[p + (i, j)] . w[i, j]): one matrix product of every pixel with all k*k
  taps' weights (k*k*C_out columns), then the k*k shifted column blocks summed. Same products, other
  order. Eigen runs the 9x9 -> 1 channel conv at a few GFLOP/s (the 4x train step's output conv: 99
  ms wall on 2 cores, this 57; YNNPACK's own convolution, used outside train steps, 48)."""
  del strides   # stride 1 (`_few_outputs`)
  kh, kw, ci, co = w.shape
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  ho, wo = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
  taps = jnp.einsum("bhwc,ctk->bhwtk", xp, w.reshape(kh * kw, ci, co).transpose(1, 0, 2),
                    precision=precision)                              # [b, H, W, kh*kw, co]
  out = None
  for i in range(kh):
    for j in range(kw):
      part = taps[:, i:i + ho, j:j + wo, i * kw + j]
      out = part if out is None else out + part
  return out.astype(x.dtype)


def _forward(x, w, strides, pads, precision, eigen):
  if eigen and _few_outputs(w, strides):
    return _shift_sum_conv(x, w, strides, pads, precision)
  return _plain_conv(x, w, strides, pads, precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(x, w, strides, pads, precision, eigen):
  return _forward(x, w, strides, pads, precision, eigen)


def _conv_fwd(x, w, strides, pads, precision, eigen):
  return _forward(x, w, strides, pads, precision, eigen), (x, w)


def _taps(x: jax.Array, k: tuple[int, int], out_hw: tuple[int, int], strides, offset=(0, 0)):
  """The k_h * k_w strided windows of the (already padded) `x`, stacked on a new axis 3."""
  b, c = x.shape[0], x.shape[-1]
  (sh, sw), (ho, wo) = strides, out_hw
  cols = [lax.slice(x, (0, offset[0] + i, offset[1] + j, 0),
                    (b, offset[0] + i + (ho - 1) * sh + 1, offset[1] + j + (wo - 1) * sw + 1, c),
                    (1, sh, sw, 1))
          for i in range(k[0]) for j in range(k[1])]
  return jnp.stack(cols, axis=3)


def _kernel_grad_matmul(x, w, dy, strides, pads, precision):
  """dW[i, j, c, o] = sum_{b, p} x_pad[b, s * p + (i, j), c] * dy[b, p, o], as one matrix product."""
  kh, kw, ci, co = w.shape
  b, ho, wo, _ = dy.shape
  acc = jnp.float32
  if strides == (1, 1) and co < ci and (ho, wo) == tuple(x.shape[1:3]):
    # Few output channels (the 9x9 -> 1 channel output conv): im2col of dy, not of x. Shifting dy
    # by -(i, j) over the grid of x gives the same sums: dW[i, j] = sum_q x[q] * dy_pad[q - (i, j)].
    h, w_ = x.shape[1:3]
    dyp = jnp.pad(dy, ((0, 0), (pads[0][1], pads[0][0]), (pads[1][1], pads[1][0]), (0, 0)))
    cols = _taps(dyp, (kh, kw), (h, w_), (1, 1))[:, :, :, ::-1]      # [b, h, w, kh*kw, co], taps reversed
    # The reversal pairs tap t = i*kw + j with dy shifted by (kh-1-i, kw-1-j) in the padded frame.
    g = jnp.einsum("bhwc,bhwto->tco", x, cols, precision=precision, preferred_element_type=acc)
  else:
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    cols = _taps(xp, (kh, kw), (ho, wo), strides)                    # [b, ho, wo, kh*kw, ci]
    g = jnp.einsum("bhwtc,bhwo->tco", cols, dy, precision=precision, preferred_element_type=acc)
  return g.reshape(kh, kw, ci, co).astype(w.dtype)


def _phase_conv(x, w, strides, pads, precision):
  """The strided convolution as a sum of stride-1 VALID convolutions over the input's phases.

  Output pixel o reads padded input s*o + i for taps i; the taps i = r, r + s, r + 2s, ... all read
  the phase x_pad[r::s] at o, o + 1, o + 2, ..., i.e. a stride-1 convolution of that phase with the
  kernel's taps w[r::s]. Summed over the s*s phases (r, q): the same products, regrouped. Only its
  input gradient is used (`_conv_bwd`): XLA:CPU differentiates a strided convolution into an
  input-dilated one, which runs 1.3-1.9x slower there than these stride-1 gradients
  (bench/op_bench.py shapes of D's stride-2 layers, one core; their forward pass is not faster
  this way and stays XLA's).
  """
  (sh, sw), (kh, kw) = strides, w.shape[:2]
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  ho, wo = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
  out = None
  for r in range(min(sh, kh)):
    mr = len(range(r, kh, sh))
    for q in range(min(sw, kw)):
      mq = len(range(q, kw, sw))
      phase = lax.slice(xp, (0, r, q, 0),
                        (xp.shape[0], r + sh * (ho + mr - 2) + 1, q + sw * (wo + mq - 2) + 1, xp.shape[3]),
                        (1, sh, sw, 1))
      y = _plain_conv(phase, w[r::sh, q::sw], (1, 1), ((0, 0), (0, 0)), precision)
      out = y if out is None else out + y
  return out


def _kernel_grad_xla(x, w, dy, strides, pads, precision):
  _, vjp = jax.vjp(lambda w_: _plain_conv(x, w_, strides, pads, precision), w)
  return vjp(dy)[0]


def _input_grad(fwd, x, w, dy, strides, pads, precision):
  _, vjp_x = jax.vjp(lambda x_: fwd(x_, w, strides, pads, precision), x)
  return vjp_x(dy)[0]


def _conv_bwd(strides, pads, precision, eigen, res, dy):
  x, w = res
  dx = _input_grad(_plain_conv if strides == (1, 1) else _phase_conv, x, w, dy, strides, pads, precision)
  ci, co = w.shape[2:]
  # Under Eigen's convolutions XLA's own kernel gradient is the faster one except for few output
  # channels at stride 1 (the 9x9 -> 1 channel conv: 2.2x slower than dy's im2col there).
  cpu_grad = (_kernel_grad_xla if eigen and not (co < ci and strides == (1, 1))
              else _kernel_grad_matmul)
  return dx, cpu_grad(x, w, dy, strides, pads, precision)


_conv.defvjp(_conv_fwd, _conv_bwd)
