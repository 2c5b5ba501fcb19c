"""What a fastMRI `.h5` file means: one definition for data_prep (shards) and predict (one file).

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

import xml.etree.ElementTree as ET
from typing import Any

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
    raise ValueError(f"ismrmrd_header is not valid XML ({e})") from e
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
