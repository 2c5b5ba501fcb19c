"""Low-resolution inputs made on the fly from HR slices (DESIGN.md, Data: "Low-resolution input").

One implementation serves training, evaluation and prediction, so the LR a model is trained on is made
exactly as the LR it is scored on. Everything here is a pure JAX function of a channels-last float
batch `[B, H, W, C]` and is jit-able (`scale`, `method` and `hamming` are static Python values).

Two degradations:
  * `bicubic`: anti-aliased bicubic downsampling of the magnitude image, the paper's protocol
    ("we first downsample the original image by that factor", section 4.2). `jax.image.resize` with
    `antialias=True` uses the Keys cubic kernel (a = -0.5) stretched by the scale, as PyTorch
    `interpolate(mode="bicubic", antialias=True, align_corners=False)` and PIL's BICUBIC do. Measured on
    the dipy T1 slice (256 x 256, values in [0, 1]), 2x and 4x, border included: max abs difference to
    PyTorch 2.4e-7 and to PIL's float ("F" mode) BICUBIC 1.8e-7, i.e. float32 round-off;
    tests/test_degrade.py asserts 1e-6. (PyTorch *without* antialias uses a = -0.75 and no low-pass:
    it differs by ~0.04 and is not what this is.)
  * `kspace`: the MRI-realistic one (as T2Net / MTrans make LR): centred orthonormal 2D FFT, keep the
    central (H/s) x (W/s) block of k-space (optionally under a 2D Hamming window), inverse FFT at the
    small size, magnitude. The orthonormal transforms change the DC value by sqrt(HW / hw) = s, so the
    result is divided by s: a constant image stays the same constant, and an image band-limited to the
    kept block comes back as its exact decimation `hr[::s, ::s]` (tested).

`upsample_bicubic` is the bicubic baseline of Tables 1-2 and how the LR input is brought to M x M
before the feature extractors (Eqs. 7-8); `upsample_kspace` (zero-filled k-space) is its k-space
counterpart and the exact inverse of `downsample(..., method="kspace")` on band-limited images.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

METHODS = ("bicubic", "kspace")


def _check_batch(x: jax.Array, scale: int, name: str, *, divisible: bool) -> None:
  """Shape and scale checks shared by every entry point (static, so free under jit)."""
  if x.ndim != 4:
    raise ValueError(f"{name}: expected a channels-last batch [B, H, W, C], got shape {tuple(x.shape)}")
  if not isinstance(scale, numbers.Integral) or isinstance(scale, bool) or scale < 1:
    raise ValueError(f"{name}: scale must be a positive integer, got {scale!r}")
  if divisible:
    h, w = x.shape[1], x.shape[2]
    if h % scale or w % scale:
      raise ValueError(
          f"{name}: image size {h}x{w} is not divisible by scale {scale}; crop or pad the HR slice to a"
          f" multiple of {scale} first")


def _centred_fft2(x: jax.Array) -> jax.Array:
  """Orthonormal 2D FFT over axes (1, 2) of [B, H, W, C], DC moved to index (H // 2, W // 2).

  Only k-space is shifted (so the kept band is a centred block); the image itself is not, which keeps
  LR pixel m aligned with HR pixel s*m for any (even or odd) size.
  """
  k = jnp.fft.fft2(x, axes=(1, 2), norm="ortho")
  return jnp.fft.fftshift(k, axes=(1, 2))


def _centred_ifft2(k: jax.Array) -> jax.Array:
  return jnp.fft.ifft2(jnp.fft.ifftshift(k, axes=(1, 2)), axes=(1, 2), norm="ortho")


def _hamming_1d(n: int) -> jax.Array:
  """Periodic Hamming window of length n whose peak (1.0) sits on the DC bin of a centred spectrum.

  np.hamming(n) is symmetric and, for even n, peaks *between* two bins, which would scale the DC term
  by < 1 and change the image's mean intensity. The periodic form evaluated at the centred frequency
  index f = -n//2 .. n - n//2 - 1 keeps weight 1 at f = 0, so a constant image stays constant.
  """
  f = jnp.arange(n, dtype=jnp.float32) - n // 2
  return 0.54 + 0.46 * jnp.cos(2.0 * jnp.pi * f / n)


def _kspace_downsample(hr: jax.Array, scale: int, hamming: bool) -> jax.Array:
  b, h, w, c = hr.shape
  lh, lw = h // scale, w // scale
  k = _centred_fft2(hr.astype(jnp.complex64))
  # DC is at (h // 2, w // 2); the kept block puts it at (lh // 2, lw // 2), the centred convention of
  # the small grid, so the inverse transform below sees a consistent spectrum.
  top, left = h // 2 - lh // 2, w // 2 - lw // 2
  k = k[:, top:top + lh, left:left + lw, :]
  if hamming:
    window = _hamming_1d(lh)[:, None] * _hamming_1d(lw)[None, :]
    k = k * window[None, :, :, None]
  lr = jnp.abs(_centred_ifft2(k))
  # Orthonormal transforms at two sizes: DC of the result is sqrt(h*w / (lh*lw)) = scale times the mean.
  return (lr / scale).astype(jnp.float32)


def downsample(hr: jax.Array, scale: int, method: str = "bicubic", hamming: bool = False) -> jax.Array:
  """Makes the LR image `[B, H/s, W/s, C]` from an HR batch `[B, H, W, C]` (float32 out).

  Args:
    hr: HR magnitude images, channels-last.
    scale: integer factor s; H and W must be divisible by it.
    method: `bicubic` (anti-aliased bicubic, the paper's protocol; matches PyTorch's antialiased
      bicubic to ~2e-7 on [0, 1] images) or `kspace` (central 1/s of k-space, magnitude).
    hamming: only for `kspace`: apply a 2D Hamming window over the kept band (less ringing).

  Returns:
    The LR batch, float32.
  """
  _check_batch(hr, scale, "downsample(hr)", divisible=True)
  scale = int(scale)
  if method not in METHODS:
    raise ValueError(f"downsample(method): unknown degradation {method!r}; expected one of {METHODS}")
  if hamming and method != "kspace":
    raise ValueError(f"downsample(hamming): the Hamming window applies to method='kspace' only, got {method!r}")
  hr = hr.astype(jnp.float32)
  if scale == 1:
    return hr
  b, h, w, c = hr.shape
  if method == "bicubic":
    return jax.image.resize(hr, (b, h // scale, w // scale, c), method="bicubic", antialias=True)
  return _kspace_downsample(hr, scale, hamming)


def upsample_bicubic(lr: jax.Array, scale: int) -> jax.Array:
  """Bicubic upsampling `[B, N, N, C]` -> `[B, sN, sN, C]` (Keys a = -0.5, half-pixel centres).

  The bicubic baseline of Tables 1-2, and how the LR input x is brought to the HR grid before the ViT
  and the autoencoder see it (Eqs. 7-8). Equals PyTorch `interpolate(mode="bicubic", antialias=True,
  align_corners=False)` and PIL's BICUBIC to float32 round-off (measured 2.4e-7 on [0, 1] slices,
  border included: all three renormalise the kernel over in-image taps).
  """
  _check_batch(lr, scale, "upsample_bicubic(lr)", divisible=False)
  scale = int(scale)
  lr = lr.astype(jnp.float32)
  b, h, w, c = lr.shape
  return jax.image.resize(lr, (b, h * scale, w * scale, c), method="bicubic", antialias=True)


def upsample_kspace(lr: jax.Array, scale: int) -> jax.Array:
  """Zero-filled k-space upsampling `[B, N, N, C]` -> `[B, sN, sN, C]`, magnitude.

  The inverse of `downsample(method="kspace", hamming=False)` for images whose spectrum lies in the
  kept band: the LR spectrum is placed at the centre of an otherwise zero HR spectrum (at the same
  offsets `downsample` cropped from) and multiplied by s to undo that function's 1/s.
  """
  _check_batch(lr, scale, "upsample_kspace(lr)", divisible=False)
  scale = int(scale)
  b, lh, lw, c = lr.shape
  h, w = lh * scale, lw * scale
  k = _centred_fft2(lr.astype(jnp.complex64))
  top, left = h // 2 - lh // 2, w // 2 - lw // 2
  k = jnp.pad(k, ((0, 0), (top, h - top - lh), (left, w - left - lw), (0, 0)))
  return (jnp.abs(_centred_ifft2(k)) * scale).astype(jnp.float32)


def make_pair(hr: jax.Array, scale: int, method: str = "bicubic",
              hamming: bool = False) -> tuple[jax.Array, jax.Array]:
  """The (LR N x N, HR M x M) training / evaluation pair, M = s * N, both float32."""
  hr = hr.astype(jnp.float32)
  return downsample(hr, scale, method=method, hamming=hamming), hr
