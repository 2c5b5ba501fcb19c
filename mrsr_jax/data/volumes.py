"""Reading and checking MR volumes: one definition for predict (a user's file) and data_prep (datasets).

Everything here is numpy/nibabel-only and deterministic, so the training data, the tests and `predict`
see a volume the same way: the same validation, the same slice axis, the same normalisation.

Slice axis (`slice_axis`): MR volumes are acquired as a stack of 2D slices (or, for 3D sequences,
reconstructed with one coarse axis). We slice along the voxel axis that is closest to that
acquisition direction:
  1. the voxel axis with the largest spacing (read from the affine's column norms), if it is larger
     than the others by more than 1% (thick-slice 2D acquisitions: IXI T2/PD 0.94x0.94x1.2 mm, IXI T1
     0.94x0.94x1.2 mm sagittal, fastMRI-like stacks, dipy's b0 2x2x53 mm);
  2. otherwise (isotropic data, e.g. the 2 mm resampled IXI files or the 1 mm MNI template): the
     header's slice dimension (`dim_info`) when the writer set it, else the third voxel axis, which is
     where DICOM-to-NIfTI converters put the acquisition's slice index.
`plane_name` reports which anatomical plane that gives (via `nibabel.orientations`), so a summary
says e.g. "sagittal" for the 2 mm IXI files (P-S-R voxel order, slices along R).
"""

from __future__ import annotations

import gzip
import os
import zlib
from typing import Sequence

import nibabel as nib
import numpy as np
from nibabel import orientations

from mrsr_jax import errors

# The percentile a volume is divided by (then clipped to [0, 1]): training slices and predict's input.
ROBUST_PERCENTILE = 99.5


class BadInputError(errors.UserError):
  """An input file that cannot be used, with the file and the problem on one line.

  data_prep reports it and skips the file; predict stops with it.
  """

  def __init__(self, path: str, problem: str):
    self.path = str(path)
    # One line per bad file: library messages (nibabel's, h5py's) sometimes span several.
    self.problem = " ".join(str(problem).split())
    super().__init__(f"{path}: {self.problem}")


def _why(e: BaseException) -> str:
  return f"{type(e).__name__}: {e}"


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
    raise BadInputError(name, f"not a valid NIfTI file ({_why(e)})") from e


def load_nifti(source: str | bytes, name: str | None = None, *, frames: bool = False,
               frame: int | None = None) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
  """Loads a 3D NIfTI volume from a path or from the bytes of a file (e.g. a tar member).

  Returns (float32 data [X, Y, Z] in scanner units (scl_slope / scl_inter applied), affine 4x4,
  header). A 4D file with one frame (a 3D volume saved as 4D, like dipy's b0) is that volume. A 4D
  file with several frames is an error unless `frames=True`, when `frame` picks one (predict's
  `--frame`). Every problem is a `BadInputError` naming the file: missing, empty, not NIfTI,
  truncated, a voxel type that is not a real scalar (complex, RGB), wrong number of dimensions,
  NaN/Inf voxels, no signal.
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
    except Exception as e:  # nibabel raises many types for broken headers.
      raise BadInputError(name, f"not a readable NIfTI file ({_why(e)})") from e
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
      raise BadInputError(name, f"not a NIfTI file (nibabel read it as {type(img).__name__})")

  dtype = img.get_data_dtype()
  if dtype.kind not in "biuf" or dtype.fields is not None:
    # Casting complex data to float32 would drop the imaginary part; RGB would fail as "corrupt".
    raise BadInputError(name, f"unsupported voxel type {dtype} (a real-valued scalar image is needed)")
  shape = img.shape
  take = None                          # the 4D frame to read, sliced inside the try below
  if len(shape) == 4 and (shape[3] == 1 or frames):
    if shape[3] == 1:
      frame = 0
    elif frame is None:
      raise BadInputError(name, f"a 4D volume {shape}; choose a frame with --frame=N (0..{shape[3] - 1})")
    elif not 0 <= frame < shape[3]:
      raise BadInputError(name, f"--frame={frame} outside 0..{shape[3] - 1}")
    take = frame
  elif len(shape) != 3:
    what = "a 3D volume (or 4D with --frame)" if frames else "a 3D volume"
    raise BadInputError(name, f"wrong number of dimensions: expected {what}, got shape {tuple(shape)}")
  try:
    # The proxy applies scl_slope / scl_inter: integer scanner files come back in scanner units.
    # Slicing the proxy reads the file, so a 4D frame is taken here too.
    dataobj = img.dataobj if take is None else img.dataobj[..., take]
    data = np.asarray(dataobj, dtype=np.float32)
  except Exception as e:  # EOFError, zlib.error, ValueError("buffer too small") ...
    raise BadInputError(name, f"truncated or corrupt image data ({_why(e)})") from e
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
