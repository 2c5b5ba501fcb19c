"""What a fastMRI `.h5` file means and how it is read: one definition for data_prep and predict.

fastMRI stores a volume as `kspace` (complex [slices, (coils,) kx, ky]) and, for the fully sampled
files, a magnitude reconstruction: `reconstruction_esc` (single-coil, emulated) or
`reconstruction_rss` (multi-coil, root-sum-of-squares), [slices, x, y]. Its geometry is only in the
ISMRMRD XML header (`ismrmrd_header`): `encoding/encodedSpace` describes the acquired k-space grid
(the image an inverse FFT of `kspace` gives, readout oversampling included), `encoding/reconSpace`
the reconstruction grid (the stored reconstructions, and the centre crop fastMRI takes of the
k-space image). Each has `matrixSize` and `fieldOfView_mm` with `x` (readout), `y` (phase) and `z`
(slice; matrix 1 for 2D acquisitions, so the field of view is the slice thickness). fastMRI's arrays
put x before y (`kspace` [..., 640, 368] for an encoded matrix x = 640, y = 368), i.e. x is the row.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Any

import h5py
import numpy as np

from mrsr_jax import errors
from mrsr_jax.data.volumes import BadInputError

# Which reconstruction stands for the image when a file has several, in this order; `kspace` (RSS of
# the centred inverse FFT) only when none is stored. Training data and predict must agree.
RECON_KEYS = ("reconstruction_esc", "reconstruction_rss")
# fastMRI's reconstruction grid when a header does not say (knee and brain: 320 x 320).
DEFAULT_RECON_HW = (320, 320)


def _child(node, tag):
  # Namespace-agnostic: fastMRI headers use the ISMRMRD namespace, hand-written ones may not.
  for c in node:
    if c.tag.split("}")[-1] == tag:
      return c
  raise KeyError(tag)


def header_spaces(xml: bytes | str) -> dict[str, dict[str, tuple[float, float, float]]]:
  """{"encodedSpace" | "reconSpace": {"matrix": (x, y, z), "fov_mm": (x, y, z)}} from an ISMRMRD header.

  Spaces that are absent or incomplete are left out; raises ValueError if the XML does not parse.
  """
  try:
    root = ET.fromstring(xml)
  except ET.ParseError as e:
    raise errors.UserError(f"ismrmrd_header is not valid XML ({e})") from e
  out: dict[str, dict[str, Any]] = {}
  try:
    encoding = _child(root, "encoding")
  except KeyError:
    return out
  for space in ("encodedSpace", "reconSpace"):
    try:
      node = _child(encoding, space)
      vals = {}
      for name, tag in (("matrix", "matrixSize"), ("fov_mm", "fieldOfView_mm")):
        sub = _child(node, tag)
        vals[name] = tuple(float(_child(sub, a).text) for a in ("x", "y", "z"))
    except (KeyError, TypeError, ValueError):
      continue
    if all(v > 0 for v in vals["matrix"] + vals["fov_mm"]):
      out[space] = vals
  return out


def rows_are_x(space: dict[str, tuple[float, float, float]], image_hw: tuple[int, int]) -> bool:
  """Whether an image [H, W] on the grid `space` has x along its rows (fastMRI's order).

  True unless the image's shape says otherwise: (H, W) equal to the matrix's (y, x) but not its (x, y).
  """
  mx, my, _ = space["matrix"]
  hw = tuple(image_hw)
  return not (hw == (my, mx) and hw != (mx, my))


def voxel_size(space: dict[str, tuple[float, float, float]], image_hw: tuple[int, int]) -> tuple[float, float, float]:
  """(row, col, slice) mm of an image [H, W] on the grid `space`: field of view / matrix per axis."""
  (mx, my, mz), (fx, fy, fz) = space["matrix"], space["fov_mm"]
  dx, dy, dz = fx / mx, fy / my, fz / mz
  return (dx, dy, dz) if rows_are_x(space, image_hw) else (dy, dx, dz)


def open_file(path: str) -> h5py.File:
  """The file open for reading; `BadInputError` if it is missing, empty or not HDF5."""
  if not os.path.isfile(path):
    raise BadInputError(path, "no such file")
  if os.path.getsize(path) == 0:
    raise BadInputError(path, "empty file (0 bytes)")
  try:
    return h5py.File(path, "r")
  except Exception as e:  # HDF5 also detects a truncated file here (its end-of-file address)
    raise BadInputError(path, f"not a readable HDF5 file, truncated or not .h5 ({type(e).__name__}: {e})") from e


def _describe(node) -> str:
  return f"{node.dtype} {node.shape}" if isinstance(node, h5py.Dataset) else type(node).__name__


def image_dataset(f: h5py.File, path: str) -> tuple[str, h5py.Dataset]:
  """(key, dataset) of the image an open file stands for: the first of RECON_KEYS, else `kspace`.

  Checks the structure only (multi-coil k-space is too big to read twice): a reconstruction must be
  a real [slices, H, W] dataset, k-space a complex [slices, (coils,) H, W] one, neither empty.
  """
  key = None
  try:
    key = next((k for k in RECON_KEYS if k in f), None)
    if key is not None:
      ds = f[key]
      if not isinstance(ds, h5py.Dataset) or ds.ndim != 3 or ds.dtype.kind not in "biuf":
        raise BadInputError(path, f"'{key}' must be a real [slices, H, W] dataset, got {_describe(ds)}")
    elif "kspace" in f:
      key = "kspace"
      ds = f[key]
      if not isinstance(ds, h5py.Dataset) or ds.ndim not in (3, 4) or ds.dtype.kind != "c":
        raise BadInputError(
            path, f"'kspace' must be a complex [slices, (coils,) H, W] dataset, got {_describe(ds)}")
    else:
      raise BadInputError(
          path, f"no {', '.join(repr(k) for k in RECON_KEYS)} or 'kspace' dataset (has {sorted(f.keys())})")
  except BadInputError:
    raise
  except Exception as e:  # a corrupt object header
    raise BadInputError(path, f"cannot read the file's structure, corrupt ({type(e).__name__}: {e})") from e
  if 0 in ds.shape:
    raise BadInputError(path, f"'{key}' is empty (shape {ds.shape})")
  return key, ds


def file_spaces(f: h5py.File) -> dict[str, dict[str, tuple[float, float, float]]]:
  """`header_spaces` of the file's `ismrmrd_header`; ValueError if it is there but unreadable, {} if absent."""
  if "ismrmrd_header" not in f:
    return {}
  try:
    raw = f["ismrmrd_header"][()]
    raw = raw.encode() if isinstance(raw, str) else bytes(raw)
  except Exception as e:
    raise errors.UserError(f"ismrmrd_header is unreadable ({type(e).__name__}: {e})") from e
  return header_spaces(raw)


def image_space(spaces: dict[str, dict[str, tuple[float, float, float]]], key: str):
  """The grid the image read from `key` lies on (None if the header lacks it): reconSpace for a stored
  reconstruction, encodedSpace for the inverse FFT of `kspace` (readout oversampling included)."""
  return spaces.get("encodedSpace" if key == "kspace" else "reconSpace")


def kspace_to_image(kspace: np.ndarray, coil_axis: int | None) -> np.ndarray:
  """Magnitude image of one slice's k-space [(coils,) H, W]: centred orthonormal 2D inverse FFT, then
  root-sum-of-squares over `coil_axis` (None: single-coil). fastMRI's own reconstruction."""
  axes = (-2, -1)
  image = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace, axes=axes), axes=axes, norm="ortho"), axes=axes)
  if coil_axis is None:
    return np.abs(image).astype(np.float32)
  return np.sqrt(np.sum(np.abs(image) ** 2, axis=coil_axis)).astype(np.float32)


def image_to_kspace(image: np.ndarray) -> np.ndarray:
  """The inverse of `kspace_to_image`'s transform (centred orthonormal 2D FFT); the tests make k-space with it."""
  axes = (-2, -1)
  return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image, axes=axes), axes=axes, norm="ortho"), axes=axes)
