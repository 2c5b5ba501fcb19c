"""The paper's figures for a run: Fig. 2-style comparison panels and Fig. 7-style loss curves.

Slices are drawn as a radiologist reads them, in the standard display orientation of MR viewers
(MR-TIP's "standard display orientation"; the radiological convention):
  axial     anterior up, the patient's right on the viewer's left (seen from the feet);
  coronal   superior up, the patient's right on the viewer's left (the viewer facing the patient);
  sagittal  superior up, anterior on the viewer's left (seen from the patient's left side).
`convention="neurological"` (nilearn's default, `radiological=False`) puts the patient's left on the
viewer's left instead; that changes axial and coronal views only.

A slice's orientation is two nibabel axis codes (`nibabel.aff2axcodes` of its volume's affine): the
anatomical direction toward which the stored image's row index (axis 0) and column index (axis 1)
increase, e.g. "PS" for a sagittal slice of the 2 mm IXI files (voxel order P-S-R, sliced along R).
`display_orientation` maps a slice to the display with a transpose and flips only, so no pixel is
interpolated. "" is unknown (fastMRI's .h5 files carry no affine): the slice is shown as stored and the
figure says so.

Comparison figures show the volume's extent only (evaluation zero-pads slices to a square frame; the
padding is cropped away) and, under every image, a zoomed detail: the box of most edge energy in the
HR slice. It is chosen from HR alone, so it favours no method, and it makes a difference of a dB or
two visible that a whole-slice thumbnail hides.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any, Mapping

import matplotlib

# Files only, no display on servers; but keep a backend the user chose (a notebook's inline one, which
# ipykernel and Colab announce in MPLBACKEND), or importing this module would stop plots showing there.
if not os.environ.get("MPLBACKEND"):
  matplotlib.use("Agg")
import matplotlib.patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


# nibabel's axis codes: the anatomical direction toward which a voxel index increases.
_WORLD_AXIS = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}
_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}
_NAMES = {"S": "superior", "I": "inferior", "A": "anterior", "P": "posterior", "L": "patient's left",
          "R": "patient's right"}
_PLANES = {frozenset((1, 2)): "sagittal", frozenset((0, 2)): "coronal", frozenset((0, 1)): "axial"}
# The displayed image's codes per plane: (rows increase toward, columns increase toward). Row 0 is the
# top of the screen and column 0 its left edge, so e.g. sagittal "IP" is superior up, anterior left.
DISPLAY = {
    "radiological": {"axial": "PL", "coronal": "IL", "sagittal": "IP"},
    "neurological": {"axial": "PR", "coronal": "IR", "sagittal": "IP"},
}


def check_orientation(orientation: Any) -> str:
  """`orientation` as a str: "" (unknown) or two axis codes of two different world axes, e.g. "PS".

  Accepts bytes (a string feature as tf.data yields it). Raises ValueError on anything else."""
  if isinstance(orientation, bytes):
    orientation = orientation.decode("utf-8", "replace")
  if not isinstance(orientation, str):
    raise ValueError(f"orientation {orientation!r}: expected a string of two nibabel axis codes "
                     f"(e.g. 'PS') or '' for unknown")
  orientation = str(orientation)
  if orientation and (len(orientation) != 2 or any(c not in _WORLD_AXIS for c in orientation)
                      or _WORLD_AXIS[orientation[0]] == _WORLD_AXIS[orientation[1]]):
    raise ValueError(f"orientation {orientation!r}: expected two nibabel axis codes of different "
                     f"axes (L/R, A/P, S/I; e.g. 'PS') or '' for unknown")
  return orientation


def slice_plane(orientation: Any) -> str:
  """The plane of a slice with these orientation codes: "axial", "coronal", "sagittal"; "" if unknown."""
  orientation = check_orientation(orientation)
  return _PLANES[frozenset(_WORLD_AXIS[c] for c in orientation)] if orientation else ""


def displayed_orientation(orientation: Any, convention: str = "radiological") -> str:
  """The axis codes (rows, columns) of the slice as `display_orientation` shows it; "" when unknown."""
  if convention not in DISPLAY:
    raise ValueError(f"convention {convention!r}: expected one of {sorted(DISPLAY)}")
  plane = slice_plane(orientation)
  return DISPLAY[convention][plane] if plane else ""


def display_orientation(image: Any, orientation: Any, convention: str = "radiological") -> np.ndarray:
  """A slice [H, W, ...] turned to the display orientation of its plane (see the module docstring).

  Args:
    image: the slice as stored, rows and columns first (trailing axes, e.g. channels, are kept).
    orientation: its two axis codes (rows, columns), e.g. "PS"; "" (unknown) returns it as stored.
    convention: "radiological" (the default) or "neurological".

  Returns:
    A view of `image`, transposed and/or flipped: no interpolation.
  """
  orientation = check_orientation(orientation)
  target = displayed_orientation(orientation, convention)
  image = np.asarray(image)
  if not orientation:
    return image
  if image.ndim < 2:
    raise ValueError(f"display_orientation: expected an image [H, W, ...], got shape {image.shape}")
  if _WORLD_AXIS[orientation[0]] != _WORLD_AXIS[target[0]]:
    image = np.swapaxes(image, 0, 1)
    orientation = orientation[::-1]
  if orientation[0] != target[0]:
    image = image[::-1]
  if orientation[1] != target[1]:
    image = image[:, ::-1]
  return image


def display_batch(images: Any, orientations: Any, convention: str = "radiological") -> np.ndarray:
  """A batch of slices [N, H, W, ...] (e.g. TensorBoard image summaries) each turned to display
  orientation by its own codes; `orientations` may be shorter than the batch (the rest: "", as
  stored). Stays as stored when the turned slices would not stack (non-square slices of mixed planes)."""
  images = np.asarray(images)
  codes = list(np.asarray(orientations, dtype=object).reshape(-1))[:len(images)]
  codes += [""] * (len(images) - len(codes))
  shown = [display_orientation(img, o, convention) for img, o in zip(images, codes)]
  if len({x.shape for x in shown}) > 1:
    return images
  return np.stack(shown) if shown else images


def orientation_caption(orientation: Any, convention: str = "radiological") -> str:
  """A figure caption saying how the slice is shown, e.g. "sagittal: superior up, anterior left"."""
  shown = displayed_orientation(orientation, convention)
  if not shown:
    return "orientation unknown (no affine): shown as stored"
  return (f"{slice_plane(orientation)}, {convention} display: {_NAMES[_OPPOSITE[shown[0]]]} up, "
          f"{_NAMES[_OPPOSITE[shown[1]]]} on the left")


def content_box(images: Any) -> tuple[int, int, int, int]:
  """(row0, row1, col0, col1), half-open: the smallest box holding every non-zero pixel of `images`
  ([H, W] or a stack [N, H, W]); the whole frame when everything is zero.

  Evaluation centre-pads slices with zeros to a square frame, so this is the stored slice's extent
  (or tighter, where the scan's own background border is exactly zero: nothing to show there)."""
  x = np.asarray(images)
  if x.ndim not in (2, 3):
    raise ValueError(f"content_box: expected [H, W] or [N, H, W], got shape {x.shape}")
  x = x.reshape((-1,) + x.shape[-2:]) != 0
  rows, cols = np.flatnonzero(x.any(axis=(0, 2))), np.flatnonzero(x.any(axis=(0, 1)))
  if rows.size == 0:
    return 0, x.shape[1], 0, x.shape[2]
  return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def detail_box(image: Any, size: int) -> tuple[int, int]:
  """(row, col) of the top-left corner of the `size` × `size` box of `image` with the most edge energy
  (the sum of squared finite differences inside it); the first such box in row-major order on ties.

  Call it with the HR slice only: a box chosen where a method does well (or badly) would flatter it."""
  img = np.asarray(image, np.float64)
  if img.ndim != 2:
    raise ValueError(f"detail_box: expected an image [H, W], got shape {img.shape}")
  size = int(min(size, *img.shape))
  if size < 1:
    raise ValueError(f"detail_box: size {size} must be at least 1")
  energy = np.zeros_like(img)
  energy[:-1] += np.diff(img, axis=0) ** 2
  energy[:, :-1] += np.diff(img, axis=1) ** 2
  # Box sums of every position at once from the summed-area table.
  sat = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
  sums = sat[size:, size:] - sat[:-size, size:] - sat[size:, :-size] + sat[:-size, :-size]
  r, c = np.unravel_index(np.argmax(sums), sums.shape)
  return int(r), int(c)


def _psnr(img: np.ndarray, ref: np.ndarray, data_range: float) -> float:
  mse = float(np.mean((img.astype(np.float64) - ref) ** 2))
  return 10 * np.log10(max(data_range, 1e-12) ** 2 / mse) if mse > 0 else float("inf")


def _to_frame(name: str, image: np.ndarray, frame: tuple[int, int]) -> np.ndarray:
  """`image` at the frame's size: as is, or an LR image an integer factor smaller with each pixel
  repeated (shown as the pixels the SR network sees, not interpolated)."""
  if image.shape == tuple(frame):
    return image
  k = frame[0] // image.shape[0]
  if k < 1 or (image.shape[0] * k, image.shape[1] * k) != tuple(frame):
    raise ValueError(f"comparison_figure: image '{name}' has shape {image.shape}, neither the frame's "
                     f"{tuple(frame)} nor an integer factor smaller")
  return np.repeat(np.repeat(image, k, axis=0), k, axis=1)


def comparison_figure(images: Mapping[str, Any], *, reference: Any = None, orientation: Any = "",
                      convention: str = "radiological", box: tuple[int, int, int, int] | None = None,
                      detail: float = 0.25, title: str = ""):
  """Slices side by side in display orientation, each with a zoomed detail below it; with a
  `reference`, each titled with its PSNR to it, and its absolute error (and the error's detail) below.

  Args:
    images: {title: [H, W] slice as stored}, all the reference's shape (e.g. the evaluation frame);
      an LR image an integer factor smaller is shown with its pixels repeated.
    reference: the ground truth [H, W] (HR). A column holding it is labelled "(reference)" and gets no
      error map. PSNR is over the whole frame with the reference's maximum as data range (the
      per-slice number of the evaluation); the detail's PSNR uses the same range.
    orientation: the slices' axis codes (see `display_orientation`); "" shows them as stored.
    box: (row0, row1, col0, col1) of the frame to show, in stored coordinates; default: the
      `content_box` of the reference (else of all images), i.e. the padding cropped away.
    detail: side of the zoomed box as a fraction of the shown image's shorter side (at least 8 px),
      placed by `detail_box` on the reference (else on the first image).

  Returns:
    The matplotlib Figure.
  """
  shown, ref = _framed(images, reference)
  data_range = float(ref.max()) if ref is not None else 1.0
  is_ref = {k: ref is not None and np.array_equal(v, ref) for k, v in shown.items()}
  psnr = {k: _psnr(v, ref, data_range) for k, v in shown.items() if ref is not None and not is_ref[k]}
  r0, r1, c0, c1 = box if box is not None else content_box(ref if ref is not None
                                                           else np.stack(list(shown.values())))
  view = lambda x: display_orientation(x[r0:r1, c0:c1], orientation, convention)
  disp = {k: view(v) for k, v in shown.items()}
  ref_disp = view(ref) if ref is not None else next(iter(disp.values()))
  zoom = _Detail(ref_disp, detail)
  errors = {k: np.abs(v - ref_disp) for k, v in disp.items() if k in psnr}
  vmax_err = _error_scale(errors)

  n = len(disp)
  nrows = 4 if errors else 2
  fig, axes = plt.subplots(nrows, n, figsize=(2.4 * n, 2.3 * nrows + 0.6), squeeze=False,
                           layout="constrained")
  im_err = None
  for j, (name, img) in enumerate(disp.items()):
    _draw_slice(axes[:2, j], name, img, zoom, is_ref[name],
                None if name not in psnr else (psnr[name], _psnr(zoom(img), zoom(ref_disp), data_range)))
    if errors:
      im = _draw_error(axes[2:, j], name, errors.get(name), zoom, vmax_err)
      im_err = im if im is not None else im_err   # the colour bar's: any map (one scale)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  _orientation_markers(axes[0, 0], displayed_orientation(orientation, convention))
  if im_err is not None:
    fig.colorbar(im_err, ax=axes[2:, :].ravel().tolist(), shrink=0.8, extend="max",
                 label="absolute error")
  caption = orientation_caption(orientation, convention)
  caption += f"; detail: the {zoom.size}×{zoom.size} px box of most HR edge energy"
  fig.supxlabel(caption, fontsize=8)
  if title:
    fig.suptitle(title)
  return fig


def _framed(images: Mapping[str, Any], reference: Any) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
  """`comparison_figure`'s images (float32, each at the frame's size) and reference, checked."""
  shown = {k: np.asarray(v, np.float32) for k, v in images.items()}
  if not shown:
    raise ValueError("comparison_figure: no images")
  ref = None if reference is None else np.asarray(reference, np.float32)
  if any(v.ndim != 2 for v in shown.values()) or (ref is not None and ref.ndim != 2):
    raise ValueError(f"comparison_figure: expected 2D images, got shapes "
                     f"{[v.shape for v in shown.values()]}")
  frame = ref.shape if ref is not None else max((v.shape for v in shown.values()), key=np.prod)
  return {k: _to_frame(k, v, frame) for k, v in shown.items()}, ref


class _Detail:
  """The zoomed box of a displayed slice: `size` px square at (row, col), placed by `detail_box` on
  `image` with a side of `fraction` of its shorter side (at least 8 px). Calling it crops an image."""

  def __init__(self, image: np.ndarray, fraction: float):
    h, w = image.shape
    size = max(8, int(round(fraction * min(h, w))))
    self.row, self.col = detail_box(image, size)
    self.size = min(size, h, w)

  def __call__(self, x: np.ndarray) -> np.ndarray:
    return x[self.row:self.row + self.size, self.col:self.col + self.size]

  def outline(self) -> matplotlib.patches.Rectangle:
    """The box drawn on the whole image."""
    return matplotlib.patches.Rectangle((self.col - 0.5, self.row - 0.5), self.size, self.size,
                                        fill=False, edgecolor="#00e5ff", linewidth=1.0)


def _error_scale(errors: Mapping[str, np.ndarray]) -> float:
  """The top of the error maps' one colour scale: the 99.5th percentile of all their pixels, not the
  maximum (one outlier pixel would leave every map near black)."""
  if not errors:
    return 1.0
  return float(np.percentile(np.concatenate([e.ravel() for e in errors.values()]), 99.5)) or 1.0


def _draw_slice(axes, name: str, img: np.ndarray, zoom: _Detail, is_ref: bool,
                psnr: tuple[float, float] | None) -> None:
  """A column's slice (with the detail's outline) and its detail; titled with their PSNRs (whole,
  detail) where it is scored, else with its name."""
  axes[0].imshow(np.clip(img, 0, 1), cmap="gray", vmin=0, vmax=1)
  axes[0].add_patch(zoom.outline())
  axes[1].imshow(np.clip(zoom(img), 0, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
  if psnr is not None:
    axes[0].set_title(f"{name}\n{psnr[0]:.2f} dB", fontsize=9)
    axes[1].set_title(f"detail {psnr[1]:.2f} dB", fontsize=8)
  else:
    axes[0].set_title(name + ("\n(reference)" if is_ref else ""), fontsize=9)
    axes[1].set_title(f"detail ({zoom.size}×{zoom.size} px)", fontsize=8)


def _draw_error(axes, name: str, error: np.ndarray | None, zoom: _Detail, vmax: float):
  """A column's |image − reference| and its detail (blank for the reference); returns the map's image
  (for the colour bar), None if blank."""
  if error is None:
    axes[0].axis("off")
    axes[1].axis("off")
    return None
  im = axes[0].imshow(error, cmap="inferno", vmin=0, vmax=vmax)
  axes[0].add_patch(zoom.outline())
  axes[0].set_title(f"|{name} − ref|", fontsize=8)
  axes[1].imshow(zoom(error), cmap="inferno", vmin=0, vmax=vmax, interpolation="nearest")
  axes[1].set_title("detail", fontsize=8)
  return im


def _orientation_markers(ax, shown: str) -> None:
  """Anatomical letters at the edges of `ax` (as on a viewer's screen): e.g. S above, A left."""
  if not shown:
    return
  style = dict(transform=ax.transAxes, color="#ffd400", fontsize=7, fontweight="bold")
  ax.text(0.5, 0.98, _OPPOSITE[shown[0]], ha="center", va="top", **style)
  ax.text(0.5, 0.02, shown[0], ha="center", va="bottom", **style)
  ax.text(0.02, 0.5, _OPPOSITE[shown[1]], ha="left", va="center", **style)
  ax.text(0.98, 0.5, shown[1], ha="right", va="center", **style)


def comparison_panel(images: dict[str, np.ndarray], rows: list[str], path: str, title: str = "", *,
                     orientation: Any = "", box: tuple[int, int, int, int] | None = None,
                     convention: str = "radiological") -> None:
  """Fig. 2: HR and each method's result in display orientation, cropped to the volume's extent, with
  a zoomed detail, |result − HR| and its detail below (one colour scale); written to `path` (PNG)."""
  hr = images["hr"]
  fig = comparison_figure({"HR": hr, **{n: images[n] for n in rows}}, reference=hr,
                          orientation=orientation, convention=convention, box=box, title=title)
  _save(fig, path)


def read_metrics(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """metrics.jsonl -> {name: (steps, values)}; a resumed run's repeated steps keep the last value."""
  series: dict[str, dict[int, float]] = collections.defaultdict(dict)
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError:
        continue  # a line cut by a kill; the rest of the file is still good
      step = rec.pop("step")
      for k, v in rec.items():
        series[k][step] = v
  return {k: (np.asarray(sorted(d)), np.asarray([d[s] for s in sorted(d)])) for k, d in series.items()}


def loss_curves(metrics_path: str, path: str, title: str = "") -> None:
  series = {k: v for k, v in read_metrics(metrics_path).items() if "steps_per_sec" not in k
            and "uptime" not in k}
  if not series:
    return
  n = len(series)
  cols = min(n, 4)
  rows = (n + cols - 1) // cols
  fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows), squeeze=False, layout="constrained")
  for ax, (name, (steps, values)) in zip(axes.ravel(), sorted(series.items())):
    ax.plot(steps, values)
    ax.set_title(name.split("/", 1)[-1], fontsize=9)
    ax.set_xlabel("step", fontsize=8)
  for ax in axes.ravel()[n:]:
    ax.axis("off")
  if title:
    fig.suptitle(f"training curves: {title}")
  _save(fig, path)


def _save(fig, path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=90)
  plt.close(fig)
  os.replace(tmp, path)
