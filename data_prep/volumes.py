"""What the offline conversion does to a volume on top of reading it: crop, drop empty slices, resample.

Reading and validating a NIfTI file, the slice axis, the spacing and the normalisation live in
`mrsr_jax.data.volumes` (predict reads a user's file the same way the training data was made);
this module adds what only dataset conversion needs. Everything is numpy-only and deterministic, so
the tests can recompute what the writer stored.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Sequence

import numpy as np

# BadInputError, check_volume and centre_crop_or_pad are also used as `volumes.X` by the dataset
# modules (ixi, sample, fastmri, writer).
from mrsr_jax.data.volumes import (BadInputError, centre_crop_or_pad, check_volume, load_nifti,  # noqa: F401
                                   plane_name, robust_normalise, slice_axis, to_slices_first,
                                   voxel_spacing)

# A slice is "near-empty" (background only, skipped) when fewer than this fraction of its pixels
# exceeds this normalised intensity. Measured on the image content before any zero padding so the
# decision does not depend on the target size.
EMPTY_SLICE_THRESHOLD = 0.05
EMPTY_SLICE_MIN_FRACTION = 0.05


@dataclasses.dataclass
class Volume:
  """A loaded, validated and normalised volume: slices ready for the shard writer."""
  slices: np.ndarray  # [n, H, W] float32 in [0, 1]
  slice_indices: Sequence[int]  # index of each slice in the source volume (along its slice axis)
  dataset: str
  contrast: str
  subject: str
  spacing: tuple[float, float, float]  # (row, col, slice) mm
  intensity_scale: float
  source: str
  plane: str = ""


def centre_range(n: int, size: int | None) -> range:
  """Indices of the centre `size` of `n` (all of them if `size` is None or >= n)."""
  if size is None or size >= n:
    return range(n)
  start = (n - size) // 2
  return range(start, start + size)


def centre_crop(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
  """Centre crop of the last two axes to at most `size` (never pads)."""
  h, w = x.shape[-2:]
  return centre_crop_or_pad(x, (min(h, size[0]), min(w, size[1])))


def foreground_fraction(image: np.ndarray) -> float:
  return float(np.mean(image > EMPTY_SLICE_THRESHOLD))


def block_downsample(vol: np.ndarray, factors: Sequence[int]) -> np.ndarray:
  """Box-filter downsampling by integer factors (mean over blocks; trailing partial blocks dropped).

  Used by the sample dataset to bring 1 mm volumes to ~2 mm: the box filter is an anti-aliasing
  low-pass, so no aliasing is baked into the HR slices.
  """
  vol = np.asarray(vol, dtype=np.float32)
  factors = [int(f) for f in factors]
  if all(f == 1 for f in factors):
    return vol
  crop = tuple(slice(0, (n // f) * f) for n, f in zip(vol.shape, factors))
  vol = vol[crop]
  shape = []
  for n, f in zip(vol.shape, factors):
    shape += [n // f, f]
  return vol.reshape(shape).mean(axis=tuple(range(1, 2 * vol.ndim, 2)), dtype=np.float64).astype(np.float32)


def prepare_slices(
    vol: np.ndarray,
    target_hw: Sequence[int],
    max_slices: int | None,
    name: str = "volume",
) -> tuple[np.ndarray, list[int], float]:
  """Slices-first volume -> (normalised [n, H, W] slices, their indices in `vol`, intensity scale).

  Normalises the whole volume (so the scale is a property of the volume, not of the crop), keeps the
  centre `max_slices` slices, centre crops/pads in-plane to `target_hw` and drops near-empty slices.
  The slice axis is not padded: padding slices would be empty and dropped anyway.
  """
  norm, scale = robust_normalise(vol, name)
  keep, out = [], []
  for i in centre_range(norm.shape[0], max_slices):
    content = centre_crop(norm[i], target_hw)
    if foreground_fraction(content) < EMPTY_SLICE_MIN_FRACTION:
      continue
    keep.append(i)
    out.append(centre_crop_or_pad(content, target_hw))
  slices = np.stack(out) if out else np.zeros((0, *target_hw), np.float32)
  return slices.astype(np.float32, copy=False), keep, scale


def read_bytes(fileobj: io.BufferedIOBase | None, name: str, expected_size: int | None = None) -> bytes:
  """Reads a whole (tar member) stream, reporting a short read as truncation."""
  if fileobj is None:
    raise BadInputError(name, "not a regular file")
  try:
    data = fileobj.read()
  except Exception as e:
    raise BadInputError(name, f"truncated or unreadable ({type(e).__name__}: {e})") from e
  if expected_size is not None and len(data) != expected_size:
    raise BadInputError(name, f"truncated: read {len(data)} of {expected_size} bytes")
  return data


def load_volume(
    source: str | bytes,
    name: str,
    *,
    dataset: str,
    contrast: str,
    subject: str,
    target_hw: Sequence[int],
    max_slices: int | None,
    resample_mm: float | None = None,
) -> Volume:
  """NIfTI path or bytes -> `Volume` of normalised slices along the acquisition slice axis.

  `resample_mm`: box-downsample each axis by round(resample_mm / spacing) when that is >= 2 (the
  sample dataset brings 1 mm data to ~2 mm); None keeps the native grid (IXI, the paper's protocol).
  """
  data, affine, header = load_nifti(source, name)
  axis = slice_axis(affine, header)
  plane = plane_name(affine, axis)
  if resample_mm:
    factors = [max(1, int(round(resample_mm / s))) for s in voxel_spacing(affine)]
    data = block_downsample(data, factors)
    affine = affine.copy()
    affine[:3, :3] = affine[:3, :3] * np.asarray(factors, dtype=np.float64)[None, :]
  vol, spacing = to_slices_first(data, affine, axis)
  slices, index, scale = prepare_slices(vol, target_hw, max_slices, name)
  if not index:
    raise BadInputError(name, "empty volume (no slice with signal in the centre crop)")
  return Volume(slices=slices, slice_indices=index, dataset=dataset, contrast=contrast, subject=subject,
                spacing=spacing, intensity_scale=scale, source=name, plane=plane)
