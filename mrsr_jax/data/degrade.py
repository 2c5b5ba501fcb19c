"""Low-resolution inputs made on the fly from HR slices (docs/design.md, Data: "Low-resolution input").

One implementation serves training, evaluation and prediction, so the LR a model is trained on is made
exactly as the LR it is scored on. Everything here is a pure JAX function of a channels-last float
batch `[B, H, W, C]` and is jit-able (`scale`, `method` and `hamming` are static Python values).

Three degradations (the LR models a trained network is scored on, one report column each):
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

  * `gaussian`: Gaussian anti-aliasing (sigma = (s - 1) / 2 HR pixels, as scikit-image sets it) followed by cubic B-spline resampling at the LR pixel centres: what scikit-image's
    `resize(order=3, anti_aliasing=True)` (scipy.ndimage `gaussian_filter` + `zoom(grid_mode=True)`,
    mirror boundaries) does, and how many papers and users make LR from their own scans. It keeps more
    aliasing than `bicubic` at 2x (sigma 0.5); a model trained on bicubic alone over-sharpens it.
    Measured on the dipy T1 slice: max abs difference to scikit-image 0.26 of 4e-7 at 2x and 7e-6 at
    4x (our kernel is truncated at twice scipy's radius, so that it also serves wider random kernels).

A network trained on one of these only learns to invert that one blur; `random_downsample` draws a
different LR model per training example (family, kernel width, Hamming window, noise level) so the
model learns what a real low-resolution scan may look like (Real-ESRGAN / BSRGAN-style degradation
randomisation, kept to MR's own LR models).

`upsample_bicubic` is the bicubic baseline of Tables 1-2 and how the LR input is brought to M x M
before the feature extractors (Eqs. 7-8); `upsample_kspace` (zero-filled k-space) is its k-space
counterpart and the exact inverse of `downsample(..., method="kspace")` on band-limited images.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from mrsr_jax import errors

METHODS = ("bicubic", "gaussian", "kspace")


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


def gaussian_kernel1d(sigma: jax.Array, radius: int) -> jax.Array:
  """Normalised sampled Gaussian `[2 * radius + 1]` (scipy.ndimage's: truncated, sums to 1).

  `sigma` may be traced (a per-example width); sigma -> 0 gives the identity tap [.., 0, 1, 0, ..].
  """
  x = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  sigma = jnp.maximum(jnp.asarray(sigma, jnp.float32), 1e-3)
  w = jnp.exp(-0.5 * (x / sigma) ** 2)
  return w / jnp.sum(w)


def _mirror_pad(x: jax.Array, pad: int, axis: int) -> jax.Array:
  """scipy.ndimage's "mirror" boundary (numpy's "reflect"): d c b | a b c d | c b a."""
  widths = [(0, 0)] * x.ndim
  widths[axis] = (pad, pad)
  return jnp.pad(x, widths, mode="reflect")


def _blur_axis(x: jax.Array, kernels: jax.Array, axis: int) -> jax.Array:
  """Filters `[B, H, W, C]` along `axis` (1 or 2) with one 1D kernel per example (`kernels [B, K]`)."""
  k = kernels.shape[-1]
  r = k // 2
  xp = _mirror_pad(x, r, axis)
  n = x.shape[axis]
  # A sum of K shifted copies: K <= 13 taps on small images; cheaper than a grouped convolution's
  # layout shuffles on CPU and exactly what a per-example kernel needs.
  out = jnp.zeros_like(x)
  for t in range(k):
    window = jax.lax.slice_in_dim(xp, t, t + n, axis=axis)
    out = out + kernels[:, t][:, None, None, None] * window
  return out


def _bspline3(t: float) -> float:
  """The cubic B-spline beta_3(t), in Python: the taps are constants of the traced computation."""
  t = abs(t)
  return 2.0 / 3.0 - t ** 2 + 0.5 * t ** 3 if t < 1 else ((2.0 - t) ** 3 / 6.0 if t < 2 else 0.0)


def _spline_prefilter_axis(x: jax.Array, axis: int) -> jax.Array:
  """Cubic B-spline coefficients along `axis` with mirror boundaries (scipy's `spline_filter1d`).

  The mirror extension of length 2n - 2 is periodic, so the recursive prefilter is an exact division
  by the B-spline's frequency response (4 + 2 cos w) / 6 in the DFT domain.
  """
  n = x.shape[axis]
  if n < 2:
    return x
  inner = jax.lax.slice_in_dim(x, 1, n - 1, axis=axis)
  ext = jnp.concatenate([x, jnp.flip(inner, axis=axis)], axis=axis)
  m = ext.shape[axis]
  w = 2.0 * jnp.pi * jnp.arange(m, dtype=jnp.float32) / m
  response = (4.0 + 2.0 * jnp.cos(w)) / 6.0
  shape = [1] * x.ndim
  shape[axis] = m
  coeff = jnp.fft.ifft(jnp.fft.fft(ext, axis=axis) / response.reshape(shape), axis=axis).real
  return jax.lax.slice_in_dim(coeff, 0, n, axis=axis).astype(jnp.float32)


def _spline_decimate_axis(x: jax.Array, scale: int, axis: int) -> jax.Array:
  """Cubic-spline samples of `x` at the LR pixel centres s*i + (s - 1)/2 along `axis` (grid mode)."""
  c = _spline_prefilter_axis(x, axis)
  n = x.shape[axis]
  offset = (scale - 1) / 2.0
  base = int(offset // 1)
  frac = offset - base
  # Taps at base-1 .. base+2 around each sample point: weights beta_3(frac + 1), beta_3(frac), ...
  taps = [_bspline3(frac - d) for d in (-1, 0, 1, 2)]
  cp = _mirror_pad(c, 2, axis)
  out = 0.0
  m = n // scale
  for d, w in zip((-1, 0, 1, 2), taps):
    start = base + d + 2
    out = out + w * jax.lax.slice_in_dim(cp, start, start + scale * (m - 1) + 1, stride=scale, axis=axis)
  return out


def _gaussian_spline_downsample(hr: jax.Array, scale: int, sigma: jax.Array | None = None) -> jax.Array:
  """Gaussian blur (per-example `sigma [B]`, default (s - 1) / 2) then cubic-spline decimation."""
  b = hr.shape[0]
  if sigma is None:
    sigma = jnp.full((b,), (scale - 1) / 2.0, jnp.float32)
  radius = max(1, int(4.0 * 2.0 * (scale - 1) / 2.0 + 0.5))  # scipy's truncate=4 at twice the nominal sigma
  kernels = jax.vmap(lambda s: gaussian_kernel1d(s, radius))(sigma)
  x = _blur_axis(_blur_axis(hr, kernels, 1), kernels, 2)
  return _spline_decimate_axis(_spline_decimate_axis(x, scale, 1), scale, 2)


def downsample(hr: jax.Array, scale: int, method: str = "bicubic", hamming: bool = False) -> jax.Array:
  """Makes the LR image `[B, H/s, W/s, C]` from an HR batch `[B, H, W, C]` (float32 out).

  Args:
    hr: HR magnitude images, channels-last.
    scale: integer factor s; H and W must be divisible by it.
    method: `bicubic` (anti-aliased bicubic, the paper's protocol; matches PyTorch's antialiased
      bicubic to ~2e-7 on [0, 1] images), `gaussian` (Gaussian sigma = (s - 1) / 2 then cubic
      spline, scikit-image's `resize(order=3, anti_aliasing=True)`) or `kspace` (central 1/s of
      k-space, magnitude).
    hamming: only for `kspace`: apply a 2D Hamming window over the kept band (less ringing).

  Returns:
    The LR batch, float32.
  """
  _check_batch(hr, scale, "downsample(hr)", divisible=True)
  scale = int(scale)
  if method not in METHODS:
    raise errors.UserError(f"downsample(method): unknown degradation {method!r}; expected one of {METHODS}")
  if hamming and method != "kspace":
    raise errors.UserError(f"downsample(hamming): the Hamming window applies to method='kspace' only, got {method!r}")
  hr = hr.astype(jnp.float32)
  if scale == 1:
    return hr
  b, h, w, c = hr.shape
  if method == "bicubic":
    return jax.image.resize(hr, (b, h // scale, w // scale, c), method="bicubic", antialias=True)
  if method == "gaussian":
    return _gaussian_spline_downsample(hr, scale)
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


def random_downsample(hr: jax.Array, scale: int, rng: jax.Array, *, weights: dict[str, float],
                      sigma_jitter: float = 0.0, hamming_prob: float = 0.0,
                      noise_std: float = 0.0) -> jax.Array:
  """LR `[B, H/s, W/s, C]` made by a different, randomly drawn LR model for each example.

  For each example: a family from `weights` ({method: relative weight}, methods of `METHODS`; `kspace`
  of the mirror-extended crop, see below); for `gaussian`, a kernel width sigma = (s - 1) / 2 * U(1 - j, 1 + j), j = `sigma_jitter`; for `kspace`, a
  Hamming window with probability `hamming_prob`; then, with `noise_std` > 0, Gaussian noise of a
  standard deviation drawn from U(0, noise_std) (on the [0, 1]-normalised image), the LR magnitude
  kept non-negative. Every family is computed for the whole batch and one is kept per example: at
  training crop sizes this costs a few per cent of the generator's step and keeps shapes static.

  Args:
    hr: HR batch, channels-last.
    scale: integer factor s.
    rng: a PRNG key; the draw is a pure function of it (reproducible, and independent per device when
      the caller folds in the step).
    weights: relative probabilities of the families; zero-weight families are not computed.
  """
  _check_batch(hr, scale, "random_downsample(hr)", divisible=True)
  unknown = sorted(set(weights) - set(METHODS))
  if unknown:
    raise errors.UserError(f"random_downsample(weights): unknown degradations {unknown}; expected some of {METHODS}")
  names = [m for m in METHODS if float(weights.get(m, 0.0)) > 0.0]
  if not names or any(float(w) < 0 for w in weights.values()):
    raise errors.UserError(f"random_downsample(weights): need non-negative weights, at least one > 0; got {dict(weights)}")
  if not 0.0 <= sigma_jitter < 1.0:
    raise errors.UserError(f"random_downsample(sigma_jitter): must be in [0, 1), got {sigma_jitter}")
  scale = int(scale)
  hr = hr.astype(jnp.float32)
  b = hr.shape[0]
  k_family, k_sigma, k_ham, k_level, k_noise = jax.random.split(rng, 5)
  candidates = []
  for name in names:
    if name == "bicubic":
      candidates.append(downsample(hr, scale, "bicubic"))
    elif name == "gaussian":
      jitter = jax.random.uniform(k_sigma, (b,), minval=1.0 - sigma_jitter, maxval=1.0 + sigma_jitter)
      candidates.append(_gaussian_spline_downsample(hr, scale, (scale - 1) / 2.0 * jitter))
    else:
      # A training crop is a window into a larger field of view: its DFT would wrap the crop's left
      # edge onto its right one and put ringing along every border that a scanner's LR never has.
      # The mirror-extended crop is continuous across its borders, so truncating *its* spectrum
      # rings only at the anatomy's own edges; its top-left block is the crop's LR.
      ext = jnp.concatenate([hr, jnp.flip(hr, axis=1)], axis=1)
      ext = jnp.concatenate([ext, jnp.flip(ext, axis=2)], axis=2)
      lh, lw = hr.shape[1] // scale, hr.shape[2] // scale
      plain = _kspace_downsample(ext, scale, hamming=False)[:, :lh, :lw]
      if hamming_prob > 0:
        windowed = _kspace_downsample(ext, scale, hamming=True)[:, :lh, :lw]
        use = jax.random.bernoulli(k_ham, hamming_prob, (b, 1, 1, 1))
        plain = jnp.where(use, windowed, plain)
      candidates.append(plain)
  logits = jnp.log(jnp.asarray([float(weights[n]) for n in names], jnp.float32))
  family = jax.random.categorical(k_family, logits, shape=(b,))
  lr = candidates[0]
  for i in range(1, len(candidates)):
    lr = jnp.where((family == i)[:, None, None, None], candidates[i], lr)
  if noise_std > 0:
    level = jax.random.uniform(k_level, (b, 1, 1, 1), maxval=noise_std)
    lr = jnp.abs(lr + level * jax.random.normal(k_noise, lr.shape))
  return lr
