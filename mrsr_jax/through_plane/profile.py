"""The slice profile of a 2D multi-slice acquisition, as a linear operator along one image axis.

A thick slice k of a 2D acquisition records the object weighted by the slice profile h centred on the
slice position c_k = o + k * spacing: lr_k = integral f(x) h(x - c_k) dx. Two profiles:
  * "gaussian": h a Gaussian whose FWHM is the slice thickness (the usual model of a selective RF
    pulse's profile; SMORE and ECLARE's default);
  * "rect": h a box of width = thickness (an ideal profile).
The spacing between slice centres may exceed the thickness (a gap) and need not be a whole number
of fine pixels.

Everything here works in units of the fine grid's pixels: an image row i covers [i, i + 1) and is the
mean of the object over that pixel, so a fine image is a piecewise-constant function and the profile
integral is exact per pixel (`erf` differences for the Gaussian, overlap lengths for the box). The
image is extended past its ends by half-sample reflection (the continuous function mirrored about the
edge), so a profile reaching over the edge sees what is there rather than zeros.

The whole acquisition along one axis is then a matrix `[m, n]` (m thick slices from n fine rows),
built once in numpy and applied on device by a contraction (`apply_along_axis`): the same operator makes
the training pairs and describes the geometry the network is applied to.

Networks here upsample by an integer factor f. When the spacing in fine pixels is not within
`INTEGER_TOLERANCE` of an integer, the thick slices are first resampled with a cubic B-spline from
their spacing to f fine pixels (`resample_matrix`), f = the largest integer <= spacing, so the network
always sees slices f pixels apart; the same resampling is applied to the training pairs and to the
volume (`Geometry`).
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
from scipy import special

from mrsr_jax import errors

PROFILES = ("gaussian", "rect")
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))   # 2.3548
# A spacing within this fraction of an integer counts as that integer (no resampling): 2% of a slice
# is far below what a header's rounded pixdim can promise.
INTEGER_TOLERANCE = 0.02


def _check(thickness: float, spacing: float, profile: str) -> None:
  if profile not in PROFILES:
    raise errors.UserError(f"slice profile must be one of {PROFILES}, got {profile!r}")
  if not (thickness > 0 and math.isfinite(thickness)):
    raise errors.UserError(f"slice thickness must be positive, got {thickness}")
  if not (spacing > 0 and math.isfinite(spacing)):
    raise errors.UserError(f"slice spacing must be positive, got {spacing}")


def pixel_weights(centre: float, thickness: float, n: int, profile: str) -> np.ndarray:
  """Weights `[n]` of fine pixels [i, i+1) in a slice of `thickness` centred at `centre` (pixel units),
  the part of the profile beyond the ends folded back by half-sample reflection; sums to 1."""
  if profile == "gaussian":
    sigma = thickness / FWHM_PER_SIGMA
    reach = int(math.ceil(6 * sigma)) + 1
  else:
    reach = int(math.ceil(thickness / 2)) + 1
  lo, hi = int(math.floor(centre)) - reach, int(math.floor(centre)) + reach + 1
  edges = np.arange(lo, hi + 1, dtype=np.float64)
  if profile == "gaussian":
    cdf = special.ndtr((edges - centre) / sigma)
    w = np.diff(cdf)
  else:
    a, b = centre - thickness / 2, centre + thickness / 2
    w = np.clip(np.minimum(edges[1:], b) - np.maximum(edges[:-1], a), 0.0, None) / thickness
  idx = np.arange(lo, hi)
  # Half-sample reflection, repeated for profiles wider than the image: ... 1 0 | 0 1 ... n-1 | n-1 ...
  period = 2 * n
  idx = np.mod(idx, period)
  idx = np.where(idx >= n, period - 1 - idx, idx)
  out = np.zeros(n, np.float64)
  np.add.at(out, idx, w)
  return out / out.sum()


def profile_matrix(n: int, *, thickness: float, spacing: float, profile: str = "gaussian",
                   first_centre: float | None = None, count: int | None = None) -> np.ndarray:
  """`[m, n]` float64: thick slices of `thickness`, `spacing` apart, from n fine pixels (pixel units).

  Slice k is centred at `first_centre + k * spacing` (default: `spacing / 2`, so for a whole-number
  spacing s the first slice covers pixels 0 .. s-1); `count` slices (default: as many as fit, m =
  floor(n / spacing))."""
  _check(thickness, spacing, profile)
  first = spacing / 2 if first_centre is None else float(first_centre)
  m = int(math.floor(n / spacing + 1e-9)) if count is None else int(count)
  if m < 1:
    raise errors.UserError(f"{n} pixels hold no slice {spacing} pixels apart")
  return np.stack([pixel_weights(first + k * spacing, thickness, n, profile) for k in range(m)])


def integer_factor(spacing: float) -> int:
  """The network's upsampling factor f for slices `spacing` fine pixels apart: the nearest integer
  when within INTEGER_TOLERANCE of it, else the largest integer below (the slices are resampled to f
  pixels apart, which interpolates between them and never discards any)."""
  r = round(spacing)
  if r >= 1 and abs(spacing - r) <= INTEGER_TOLERANCE * spacing:
    return int(r)
  return int(math.floor(spacing))


def _bspline3(t: np.ndarray) -> np.ndarray:
  t = np.abs(t)
  return np.where(t < 1, 2 / 3 - t ** 2 + t ** 3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))


def spline_matrix(m: int, positions: np.ndarray) -> np.ndarray:
  """`[len(positions), m]` float64: cubic B-spline interpolation of m samples (at 0 .. m-1) at
  `positions`, mirror boundary (scipy.ndimage's mode="mirror": ... 2 1 | 0 1 2 ... m-1 | m-2 ...).

  The interpolating spline's coefficients are c = P^-1 y with P the B-spline's sampling matrix on the
  mirrored samples (exact, one solve); the result is B(positions) P^-1."""
  positions = np.asarray(positions, np.float64)
  if m == 1:
    return np.ones((len(positions), 1))

  def mirror(i):
    period = 2 * m - 2
    i = np.mod(i, period)
    return np.where(i >= m, period - i, i)

  def sample_matrix(pos):
    base = np.floor(pos).astype(int)
    out = np.zeros((len(pos), m))
    for d in range(-1, 3):
      j = base + d
      np.add.at(out, (np.arange(len(pos)), mirror(j)), _bspline3(pos - j))
    return out

  p = sample_matrix(np.arange(m, dtype=np.float64))
  return sample_matrix(positions) @ np.linalg.inv(p)


def resample_matrix(m: int, spacing: float, factor: int) -> np.ndarray:
  """`[m', m]`: m slices `spacing` pixels apart -> m' slices `factor` pixels apart (same first slice,
  none beyond the last), by cubic B-spline; the identity when spacing is (close to) factor."""
  if abs(spacing - factor) <= INTEGER_TOLERANCE * spacing:
    return np.eye(m)
  count = int(math.floor((m - 1) * spacing / factor + 1e-9)) + 1
  return spline_matrix(m, np.arange(count) * factor / spacing)


@dataclasses.dataclass(frozen=True)
class Geometry:
  """A thick-slice acquisition in units of the output grid's pixels.

  thickness, spacing: of the thick slices (spacing >= 1); profile: PROFILES. The network sees the thick
  slices resampled to `factor` pixels apart and writes `factor` output rows per input row, output row
  j sitting at `(j - (factor - 1) / 2)` pixels from the first (resampled) slice's centre.
  """
  thickness: float
  spacing: float
  profile: str = "gaussian"

  def __post_init__(self):
    _check(self.thickness, self.spacing, self.profile)
    if self.factor < 2:
      raise errors.UserError(f"slices {self.spacing:.3g} output pixels apart: nothing to upsample "
                             f"(needs a spacing of at least 2 pixels)")

  @property
  def factor(self) -> int:
    return integer_factor(self.spacing)

  def training_matrix(self, n: int) -> tuple[np.ndarray, int]:
    """(`[m', n]` float32 operator from n fine rows to the network's input rows, the number of fine
    rows f * m' the network's output covers, starting at row 0).

    The first thick slice is centred at f / 2, so output row j of the network sits on fine row j."""
    f = self.factor
    # Thick slices centred at f/2, f/2 + spacing, ... while the centre is inside the image.
    count = int(math.floor((n - 0.5 - f / 2) / self.spacing)) + 1
    if count < 2:
      raise errors.UserError(f"{n} rows hold fewer than two slices {self.spacing:.3g} pixels apart")
    d = profile_matrix(n, thickness=self.thickness, spacing=self.spacing, profile=self.profile,
                       first_centre=f / 2, count=count)
    s = resample_matrix(count, self.spacing, f)
    # Output row j of the last resampled slice may run past the image by up to f/2 rows: drop that
    # slice then (the output must not cover rows that are not there to learn from).
    while s.shape[0] * f > n:
      s = s[:-1]
    return (s @ d).astype(np.float32), s.shape[0] * f


def apply_along_axis(matrix: jnp.ndarray, x: jnp.ndarray, axis: int) -> jnp.ndarray:
  """`matrix [m, n]` applied along `axis` of `x` (size n there): that axis becomes m long."""
  x = jnp.moveaxis(x, axis, 0)
  y = jnp.tensordot(jnp.asarray(matrix, x.dtype), x, axes=(1, 0),
                    precision="highest")
  return jnp.moveaxis(y, 0, axis)
