"""Image-quality metrics of Tables 1-2: PSNR, SSIM and NMSE (docs/design.md, Evaluation).

Two layers:
  * Per-image JAX functions (`psnr`, `ssim`, `nmse`), jit-able, on `[H, W]`, batched `[..., H, W]` or
    channels-last `[..., H, W, 1]`, returning one float32 value per image. They reproduce
    `skimage.metrics.peak_signal_noise_ratio` and `skimage.metrics.structural_similarity` (7 x 7
    uniform window, sample covariance, K1 = 0.01, K2 = 0.03, mean over the region the window fits in)
    to 1e-4 (tests/test_metrics.py) without depending on scikit-image.
  * numpy-side aggregation in fastMRI's convention (fastMRI `evaluate.py`): per volume, data_range =
    the HR volume's maximum, PSNR and NMSE over the whole volume, SSIM averaged over its slices
    (`volume_metrics`); and `MetricsAccumulator`, which gathers per-slice values keyed by volume id and
    reports the mean over volumes of per-volume means as well as the plain per-slice mean.
"""

from __future__ import annotations

import collections
from typing import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

# skimage.metrics.structural_similarity defaults.
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _as_images(x: jax.Array, name: str) -> jax.Array:
  """float32 `[..., H, W]`; a trailing channel axis of size 1 (`[..., H, W, 1]`) is dropped."""
  x = jnp.asarray(x)
  if x.ndim >= 3 and x.shape[-1] == 1:
    x = x[..., 0]
  if x.ndim < 2:
    raise ValueError(f"{name}: expected images [..., H, W] (or [..., H, W, 1]), got shape {x.shape}")
  return x.astype(jnp.float32)


def _pair(pred, target, fn: str) -> tuple[jax.Array, jax.Array]:
  pred, target = _as_images(pred, f"{fn}(pred)"), _as_images(target, f"{fn}(target)")
  if pred.shape != target.shape:
    raise ValueError(f"{fn}: pred and target shapes differ: {pred.shape} vs {target.shape}")
  return pred, target


def _data_range(data_range, target: jax.Array) -> jax.Array:
  """Broadcastable to the per-image result `target.shape[:-2]`.

  None means each image's own maximum (a slice-level stand-in; fastMRI uses the volume maximum, which
  the caller passes explicitly).
  """
  if data_range is None:
    return jnp.max(target, axis=(-2, -1))
  return jnp.asarray(data_range, jnp.float32)


def psnr(pred: jax.Array, target: jax.Array, data_range=None) -> jax.Array:
  """Peak signal-to-noise ratio in dB per image: 10 log10(data_range^2 / MSE).

  Args:
    pred: reconstructed images `[..., H, W]` (or `[..., H, W, 1]`).
    target: ground-truth images, same shape.
    data_range: peak value, a scalar or an array broadcastable to the batch shape `[...]`; None uses
      each target image's maximum.

  Returns:
    float32 `[...]`; +inf where the images are equal.
  """
  pred, target = _pair(pred, target, "psnr")
  dr = _data_range(data_range, target)
  mse = jnp.mean(jnp.square(pred - target), axis=(-2, -1))
  return 10.0 * jnp.log10(jnp.square(dr) / mse)


def nmse(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Normalised MSE per image: ||pred - target||^2 / ||target||^2 (fastMRI's definition)."""
  pred, target = _pair(pred, target, "nmse")
  err = jnp.sum(jnp.square(pred - target), axis=(-2, -1))
  return err / jnp.sum(jnp.square(target), axis=(-2, -1))


def _box_mean(x: jax.Array, win: int) -> jax.Array:
  """Mean over every win x win window that fits inside the image ('valid'), `[N, H, W]` -> smaller.

  skimage filters with `uniform_filter` (reflect padding) and then crops (win - 1) // 2 pixels from
  each side, which leaves exactly the windows that fit; so a valid box filter is the same thing and
  never touches padding. Separable sums keep it cheap (2 * win adds per pixel instead of win^2).
  """
  x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, win, 1), (1, 1, 1), "VALID")
  x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 1, win), (1, 1, 1), "VALID")
  return x / float(win * win)


def ssim(pred: jax.Array, target: jax.Array, data_range=None, win_size: int = 7) -> jax.Array:
  """Mean structural similarity per image, as `skimage.metrics.structural_similarity`.

  Equals `structural_similarity(target, pred, data_range=data_range, win_size=win_size)` with its
  defaults: uniform win x win window, sample covariance (N / (N - 1), N = win^2), K1 = 0.01,
  K2 = 0.03, averaged over the pixels whose window lies inside the image.

  Args:
    pred: reconstructed images `[..., H, W]` (or `[..., H, W, 1]`); H, W >= win_size.
    target: ground-truth images, same shape.
    data_range: L of C1 = (K1 L)^2, C2 = (K2 L)^2; scalar or broadcastable to `[...]`; None uses
      each target image's maximum.
    win_size: odd window side.

  Returns:
    float32 `[...]`.
  """
  pred, target = _pair(pred, target, "ssim")
  if win_size < 3 or win_size % 2 == 0:
    raise ValueError(f"ssim(win_size): must be odd and >= 3, got {win_size}")
  h, w = target.shape[-2:]
  if h < win_size or w < win_size:
    raise ValueError(f"ssim: images {h}x{w} are smaller than the {win_size}x{win_size} window")
  batch_shape = target.shape[:-2]
  dr = jnp.broadcast_to(_data_range(data_range, target), batch_shape).reshape(-1, 1, 1)
  x = target.reshape(-1, h, w)
  y = pred.reshape(-1, h, w)
  # SSIM is invariant to scaling both images and L together, so work in units of L: values O(1) keep
  # the float32 moment differences (E[x^2] - E[x]^2) accurate. Subtracting the target's mean as well
  # shrinks the raw moments further; the means are shifted back for the luminance term, whose value
  # does depend on the offset.
  x = x / dr
  y = y / dr
  offset = jnp.mean(x, axis=(-2, -1), keepdims=True)
  x = x - offset
  y = y - offset
  c1 = SSIM_K1 ** 2
  c2 = SSIM_K2 ** 2
  cov_norm = win_size ** 2 / (win_size ** 2 - 1.0)
  ux, uy = _box_mean(x, win_size), _box_mean(y, win_size)
  vx = cov_norm * (_box_mean(x * x, win_size) - ux * ux)
  vy = cov_norm * (_box_mean(y * y, win_size) - uy * uy)
  vxy = cov_norm * (_box_mean(x * y, win_size) - ux * uy)
  ux, uy = ux + offset, uy + offset
  s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
  return jnp.mean(s, axis=(-2, -1)).reshape(batch_shape)


def volume_metrics(pred_vol: np.ndarray, target_vol: np.ndarray) -> dict[str, float]:
  """PSNR / SSIM / NMSE of one volume `[S, H, W]` in fastMRI's convention (`fastmri/evaluate.py`).

  data_range = the HR volume's maximum; PSNR and NMSE over the whole volume (one MSE over all voxels),
  SSIM the mean of per-slice SSIMs with that data_range. PSNR and NMSE in float64 numpy; SSIM through
  `ssim` above.
  """
  pred_vol = np.asarray(pred_vol)
  target_vol = np.asarray(target_vol)
  if pred_vol.ndim == 4 and pred_vol.shape[-1] == 1:
    pred_vol = pred_vol[..., 0]
  if target_vol.ndim == 4 and target_vol.shape[-1] == 1:
    target_vol = target_vol[..., 0]
  if target_vol.ndim != 3:
    raise ValueError(f"volume_metrics(target_vol): expected a volume [S, H, W], got shape {target_vol.shape}")
  if pred_vol.shape != target_vol.shape:
    raise ValueError(f"volume_metrics: pred_vol and target_vol shapes differ: {pred_vol.shape} vs "
                     f"{target_vol.shape}")
  gt = target_vol.astype(np.float64)
  pr = pred_vol.astype(np.float64)
  maxval = float(gt.max())
  if maxval <= 0:
    raise ValueError("volume_metrics(target_vol): the HR volume's maximum must be positive "
                     f"(it is the data_range), got {maxval}")
  mse = float(np.mean((gt - pr) ** 2))
  return {
      "psnr": float(10.0 * np.log10(maxval ** 2 / mse)) if mse > 0 else float("inf"),
      "ssim": float(np.mean(np.asarray(ssim(pred_vol, target_vol, data_range=maxval)))),
      "nmse": float(np.sum((gt - pr) ** 2) / np.sum(gt ** 2)),
  }


class MetricsAccumulator:
  """Collects per-slice metric values keyed by volume id; reports volume- and slice-level means.

  `result()[name]` is the mean over volumes of each volume's mean (how Tables 1-2 style numbers are
  averaged: every volume counts once, whatever its slice count); `result()[name + "_slice"]` is the
  plain mean over all slices. Typical use in an eval loop:

    acc = MetricsAccumulator()
    for batch in batches:
      m = eval_step(...)  # {"psnr": [B], "ssim": [B], "nmse": [B]}
      acc.update(batch["subject"], m, mask=batch["valid"])
    acc.result()
  """

  def __init__(self):
    # volume id -> metric name -> list of per-slice values; insertion order kept for reports.
    self._values: dict[str, dict[str, list[float]]] = collections.defaultdict(
        lambda: collections.defaultdict(list))
    self._names: list[str] = []

  def update(self, volume_ids: Iterable, metrics: Mapping[str, np.ndarray], mask=None) -> None:
    """Adds one batch of per-slice values.

    Args:
      volume_ids: `[B]` ids (str, bytes or numbers) of the volume each slice comes from.
      metrics: name -> `[B]` per-slice values (numpy or jax arrays).
      mask: optional `[B]` booleans; False rows (padding of the last batch) are ignored.
    """
    ids = [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(volume_ids).reshape(-1)]
    n = len(ids)
    keep = np.ones(n, bool) if mask is None else np.asarray(mask, bool).reshape(-1)
    if keep.shape[0] != n:
      raise ValueError(f"MetricsAccumulator.update(mask): {keep.shape[0]} entries for {n} volume ids")
    values = {}
    for name, v in metrics.items():
      v = np.asarray(v, np.float64).reshape(-1)
      if v.shape[0] != n:
        raise ValueError(f"MetricsAccumulator.update(metrics[{name!r}]): {v.shape[0]} values for {n} volume ids")
      values[name] = v
      if name not in self._names:
        self._names.append(name)
    for i, vid in enumerate(ids):
      if keep[i]:
        for name, v in values.items():
          self._values[vid][name].append(float(v[i]))

  @property
  def num_volumes(self) -> int:
    return len(self._values)

  @property
  def num_slices(self) -> int:
    return sum(max((len(v) for v in d.values()), default=0) for d in self._values.values())

  def per_volume(self) -> dict[str, dict[str, float]]:
    """volume id -> metric name -> mean over that volume's slices."""
    return {vid: {name: float(np.mean(v)) for name, v in d.items()} for vid, d in self._values.items()}

  def result(self) -> dict[str, float]:
    """name -> mean of per-volume means; name + "_slice" -> mean over slices; plus the counts."""
    out: dict[str, float] = {}
    per_volume = self.per_volume()
    for name in self._names:
      vols = [m[name] for m in per_volume.values() if name in m]
      slices = [x for d in self._values.values() for x in d.get(name, [])]
      out[name] = float(np.mean(vols)) if vols else float("nan")
      out[name + "_slice"] = float(np.mean(slices)) if slices else float("nan")
    out["num_volumes"] = self.num_volumes
    out["num_slices"] = self.num_slices
    return out
