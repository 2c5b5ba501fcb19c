"""Volume helpers shared by every dataset: safe NIfTI loading, slice axis, normalisation, cropping.

Everything here is numpy-only and deterministic, so the tests can recompute what the writer stored.

Slice axis (`slice_axis`): MR volumes are acquired as a stack of 2D slices (or, for 3D sequences,
reconstructed with one coarse axis). We slice along the voxel axis that is closest to that
acquisition direction:
  1. the voxel axis with the largest spacing (read from the affine's column norms), if it is larger
     than the others by more than 1% (thick-slice 2D acquisitions: IXI T2/PD 0.94x0.94x1.2 mm, IXI T1
     0.94x0.94x1.2 mm sagittal, fastMRI-like stacks, dipy's b0 2x2x53 mm);
  2. otherwise (isotropic data, e.g. the 2 mm resampled IXI files or the 1 mm MNI template): the
     header's slice dimension (`dim_info`) when the writer set it, else the third voxel axis, which is
     where DICOM-to-NIfTI converters put the acquisition's slice index.
`plane_name` reports which anatomical plane that gives (via `nibabel.orientations`), so the summary
says e.g. "sagittal" for the 2 mm IXI files (P-S-R voxel order, slices along R).
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import zlib
from typing import Sequence

import nibabel as nib
import numpy as np
from nibabel import orientations

# A slice is "near-empty" (background only, skipped) when fewer than this fraction of its pixels
# exceeds this normalised intensity. Measured on the image content before any zero padding so the
# decision does not depend on the target size.
EMPTY_SLICE_THRESHOLD = 0.05
EMPTY_SLICE_MIN_FRACTION = 0.05
ROBUST_PERCENTILE = 99.5


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


class BadInputError(ValueError):
  """An input file that cannot be converted; the writer reports it and skips it."""

  def __init__(self, path: str, problem: str):
    self.path = str(path)
    # One line per bad file: library messages (nibabel's, h5py's) sometimes span several.
    self.problem = " ".join(str(problem).split())
    super().__init__(f"{path}: {problem}")


def _nifti_from_bytes(data: bytes, name: str) -> nib.Nifti1Image:
  if data[:2] == b"\x1f\x8b":
    try:
      data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
      raise BadInputError(name, f"truncated or corrupt gzip data ({e})") from e
  if len(data) < 4:
    raise BadInputError(name, "not a NIfTI file (empty or too short)")
  sizeof_hdr = {int.from_bytes(data[:4], "little"), int.from_bytes(data[:4], "big")}
  if 348 in sizeof_hdr:
    cls = nib.Nifti1Image
  elif 540 in sizeof_hdr:
    cls = nib.Nifti2Image
  else:
    raise BadInputError(name, "not a NIfTI file (no NIfTI-1/2 header)")
  try:
    return cls.from_bytes(data)
  except Exception as e:  # nibabel raises many types for broken headers.
    raise BadInputError(name, f"not a valid NIfTI file ({type(e).__name__}: {e})") from e


def load_nifti(source: str | bytes, name: str | None = None) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
  """Loads a 3D NIfTI volume from a path or from the bytes of a file (e.g. a tar member).

  Returns (float32 data [X, Y, Z], affine 4x4, header). A trailing singleton 4th axis (a 3D volume
  saved as 4D with one frame, like dipy's b0) is dropped. Every problem is a `BadInputError` naming
  the file: not NIfTI, truncated, wrong number of dimensions, NaN/Inf voxels, empty.
  """
  if isinstance(source, (bytes, bytearray)):
    name = name or "<bytes>"
    img = _nifti_from_bytes(bytes(source), name)
  else:
    name = name or str(source)
    if not os.path.isfile(source):
      raise BadInputError(name, "no such file")
    if os.path.getsize(source) == 0:
      raise BadInputError(name, "empty file (0 bytes)")
    try:
      img = nib.load(source)
    except Exception as e:
      raise BadInputError(name, f"not a readable NIfTI file ({type(e).__name__}: {e})") from e
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
      raise BadInputError(name, f"not a NIfTI file (nibabel read it as {type(img).__name__})")

  shape = img.shape
  if len(shape) == 4 and shape[3] == 1:
    shape = shape[:3]
  if len(shape) != 3:
    raise BadInputError(name, f"wrong number of dimensions: expected a 3D volume, got shape {tuple(img.shape)}")
  try:
    data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
  except Exception as e:  # EOFError, zlib.error, ValueError("buffer too small") ...
    raise BadInputError(name, f"truncated or corrupt image data ({type(e).__name__}: {e})") from e
  check_volume(data, name)
  return data, np.asarray(img.affine, dtype=np.float64), img.header


def check_volume(data: np.ndarray, name: str) -> None:
  """Raises `BadInputError` for NaN/Inf voxels, zero-size or empty (constant, no signal) volumes."""
  if data.size == 0:
    raise BadInputError(name, f"empty volume (shape {data.shape})")
  bad = np.count_nonzero(~np.isfinite(data))
  if bad:
    raise BadInputError(name, f"{bad} NaN/Inf voxels")
  if not np.any(data > 0):
    raise BadInputError(name, "empty volume (no voxel above 0)")
  if float(data.max()) == float(data.min()):
    raise BadInputError(name, f"empty volume (constant value {float(data.max())})")


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
  """Voxel sizes in mm per voxel axis, from the affine (robust to headers with stale pixdim)."""
  return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def slice_axis(affine: np.ndarray, header=None) -> int:
  """The voxel axis to slice along (see the module docstring for the rule)."""
  spacing = voxel_spacing(affine)
  order = np.argsort(spacing)
  if spacing[order[-1]] > 1.01 * spacing[order[-2]]:
    return int(order[-1])
  if header is not None and hasattr(header, "get_dim_info"):
    slice_dim = header.get_dim_info()[2]
    if slice_dim is not None and 0 <= slice_dim < 3:
      return int(slice_dim)
  return 2


_PLANES = {"L": "sagittal", "R": "sagittal", "A": "coronal", "P": "coronal", "S": "axial", "I": "axial"}


def plane_name(affine: np.ndarray, axis: int) -> str:
  """Anatomical plane of slices taken along voxel `axis` ("sagittal", "coronal", "axial")."""
  codes = orientations.ornt2axcodes(orientations.io_orientation(affine))
  code = codes[axis]
  return _PLANES.get(code, "unknown") if code else "unknown"


def to_slices_first(data: np.ndarray, affine: np.ndarray, axis: int) -> tuple[np.ndarray, tuple[float, float, float]]:
  """Moves `axis` to the front: [n_slices, H, W], and the spacing as (row, col, slice) in mm.

  In-plane voxel order is kept as stored (a transpose, no interpolation).
  """
  spacing = voxel_spacing(affine)
  in_plane = [a for a in range(3) if a != axis]
  vol = np.moveaxis(data, axis, 0)
  return vol, (float(spacing[in_plane[0]]), float(spacing[in_plane[1]]), float(spacing[axis]))


def robust_normalise(vol: np.ndarray, name: str = "volume") -> tuple[np.ndarray, float]:
  """Scales to [0, 1] by the 99.5th percentile and clips; returns (float32 image, scale).

  The percentile is over all voxels; if the object is so small that it is 0 (more than 99.5%
  background), over the positive voxels. Negative values (interpolation ringing in resampled
  magnitude data) clip to 0. `image * scale` is back in the input's units below the percentile.
  """
  vol = np.asarray(vol, dtype=np.float32)
  scale = float(np.percentile(vol, ROBUST_PERCENTILE))
  if scale <= 0:
    positive = vol[vol > 0]
    if positive.size == 0:
      raise BadInputError(name, "empty volume (no voxel above 0)")
    scale = float(np.percentile(positive, ROBUST_PERCENTILE))
  out = np.clip(vol / np.float32(scale), 0.0, 1.0).astype(np.float32)
  return out, scale


def centre_crop_or_pad(x: np.ndarray, size: Sequence[int], axes: Sequence[int] = (-2, -1)) -> np.ndarray:
  """Centre crop and/or zero pad `x` along `axes` to `size` (crop offset floor((n - s) / 2))."""
  x = np.asarray(x)
  for ax, s in zip(axes, size):
    n = x.shape[ax]
    if n > s:
      start = (n - s) // 2
      x = np.take(x, np.arange(start, start + s), axis=ax)
    elif n < s:
      before = (s - n) // 2
      pad = [(0, 0)] * x.ndim
      pad[ax] = (before, s - n - before)
      x = np.pad(x, pad)
  return x


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
