"""Figures a radiologist reads without turning their head: the display orientation of a slice from its
volume's affine (checked against nibabel's own orientation machinery on every axis-aligned affine and on
real volumes), the padding cropped away, the detail box chosen from HR alone, and the evaluation report
drawing its Fig. 2 panels that way."""

import itertools
import os

import matplotlib
import nibabel as nib
import numpy as np
import pytest
from conftest import ROOT
from nibabel import orientations

from mrsr_jax import figures

# The planes' display codes (rows increase toward, columns increase toward), written out once more by
# hand from the radiological convention rather than read from `figures.DISPLAY`.
RADIOLOGICAL = {"sagittal": "IP", "coronal": "IL", "axial": "PL"}
NEUROLOGICAL = {"sagittal": "IP", "coronal": "IR", "axial": "PR"}
PLANE_OF_AXIS = {"L": "sagittal", "R": "sagittal", "A": "coronal", "P": "coronal", "S": "axial",
                 "I": "axial"}


def axis_aligned_affines():
  """All 48 axis-aligned affines: every permutation of the voxel axes onto the world axes, every sign."""
  for perm in itertools.permutations(range(3)):
    for signs in itertools.product((1, -1), repeat=3):
      affine = np.eye(4)
      affine[:3, :3] = 0
      for voxel_axis, (world_axis, sign) in enumerate(zip(perm, signs)):
        affine[world_axis, voxel_axis] = sign * (1.0 + 0.5 * voxel_axis)   # anisotropic voxels
      affine[:3, 3] = [-10.0, 20.0, -5.0]
      yield affine


def nibabel_display_slice(data, affine, slice_axis, index, convention_codes):
  """The slice of `data` at voxel `index` along `slice_axis`, as nibabel reorients it: the volume is
  transformed (`ornt_transform` / `apply_orientation`) to the axis codes (slice axis, display rows,
  display columns), and the slice holding the same voxels is found by a voxel value (all distinct)."""
  codes = nib.aff2axcodes(affine)
  plane = PLANE_OF_AXIS[codes[slice_axis]]
  target = (codes[slice_axis],) + tuple(convention_codes[plane])
  transform = orientations.ornt_transform(orientations.io_orientation(affine),
                                          orientations.axcodes2ornt(target))
  reoriented = orientations.apply_orientation(data, transform)
  probe = np.take(data, index, axis=slice_axis).flat[0]
  j = int(np.argwhere(reoriented == probe)[0][0])
  return reoriented[j]


@pytest.mark.parametrize("convention,table", [("radiological", RADIOLOGICAL),
                                              ("neurological", NEUROLOGICAL)])
def test_display_orientation_matches_nibabel_on_all_48_affines(convention, table):
  """Every axis-aligned affine x every slice axis x two slices: the displayed slice is exactly what
  nibabel's reorientation to the display codes gives (3 x 48 x 2 cases per convention)."""
  data = np.arange(4 * 5 * 6).reshape(4, 5, 6)      # distinct sizes and values: a wrong transpose shows
  cases = 0
  for affine in axis_aligned_affines():
    codes = nib.aff2axcodes(affine)
    for slice_axis in range(3):
      rows_axis, cols_axis = [a for a in range(3) if a != slice_axis]
      # The stored slice as data_prep stores it (slice axis moved to the front, in-plane order kept)
      # and its orientation as the data carry it: the codes of its row and column voxel axes.
      orientation = codes[rows_axis] + codes[cols_axis]
      assert figures.slice_plane(orientation) == PLANE_OF_AXIS[codes[slice_axis]]
      for index in (0, data.shape[slice_axis] - 1):
        stored = np.moveaxis(data, slice_axis, 0)[index]
        shown = figures.display_orientation(stored, orientation, convention)
        expected = nibabel_display_slice(data, affine, slice_axis, index, table)
        np.testing.assert_array_equal(shown, expected, err_msg=f"{codes} axis {slice_axis}")
        assert figures.displayed_orientation(orientation, convention) == table[
            PLANE_OF_AXIS[codes[slice_axis]]]
        cases += 1
  assert cases == 48 * 3 * 2


@pytest.mark.parametrize("orientation,expected,where", [
    ("PS", lambda a: np.rot90(a), "IXI 2 mm sagittal (P-S-R voxels): today drawn a quarter turn off"),
    ("AS", lambda a: a.T[::-1, ::-1], "sagittal slice of a RAS volume (nilearn's MNI template)"),
    ("RS", lambda a: a.T[::-1, ::-1], "coronal slice of a RAS volume"),
    ("RA", lambda a: a.T[::-1, ::-1], "axial slice of a RAS volume"),
    ("LA", lambda a: np.rot90(a), "axial slice of an LAS volume (FSL's radiological storage)"),
    ("PL", lambda a: a, "axial, already in display orientation"),
    ("IP", lambda a: a, "sagittal, already in display orientation"),
    ("SP", lambda a: a[::-1], "sagittal, upside down"),
    ("", lambda a: a, "unknown (fastMRI .h5): as stored"),
])
def test_display_orientation_realistic_table(orientation, expected, where):
  a = np.arange(12).reshape(3, 4)
  np.testing.assert_array_equal(figures.display_orientation(a, orientation), expected(a), err_msg=where)
  # Channels ride along (TensorBoard images are [H, W, 1]).
  np.testing.assert_array_equal(figures.display_orientation(a[..., None], orientation)[..., 0],
                                expected(a), err_msg=where)


def test_display_batch_turns_each_summary_image_by_its_own_codes():
  """TensorBoard summaries: each image of the batch by its own slice's codes; rows without codes (the
  batch's rows of other processes) as stored."""
  batch = np.arange(4 * 3 * 3).reshape(4, 3, 3, 1)
  shown = figures.display_batch(batch, np.asarray([b"PS", b"RA", b""], object))
  np.testing.assert_array_equal(shown[0], np.rot90(batch[0]))
  np.testing.assert_array_equal(shown[1], batch[1].transpose(1, 0, 2)[::-1, ::-1])
  np.testing.assert_array_equal(shown[2:], batch[2:])
  np.testing.assert_array_equal(figures.display_batch(batch, ()), batch)
  wide = np.zeros((2, 2, 3, 1))
  np.testing.assert_array_equal(figures.display_batch(wide, ["PS", ""]), wide)   # would not stack


def world_maps(affine, slice_axis, index, shape):
  """World coordinates (x, y, z in RAS+ mm) of every voxel of the slice at `index` along `slice_axis`,
  each [rows, cols] in the slice's stored layout."""
  rows_axis, cols_axis = [a for a in range(3) if a != slice_axis]
  vox = np.ones((shape[rows_axis], shape[cols_axis], 4))
  vox[..., rows_axis], vox[..., cols_axis] = np.indices(vox.shape[:2])
  vox[..., slice_axis] = index
  world = vox @ np.asarray(affine, float).T
  return world[..., 0], world[..., 1], world[..., 2]


def check_display_is_anatomical(affine, shape, slice_axis, index):
  """On screen, wherever the slice is: superior up (z falls down the rows) in sagittal and coronal,
  anterior up in axial; anterior on the left in sagittal (y falls along the columns); the patient's
  right on the left in axial and coronal (x, which grows toward the right in RAS+, falls along them)."""
  codes = nib.aff2axcodes(affine)
  rows_axis, cols_axis = [a for a in range(3) if a != slice_axis]
  orientation = codes[rows_axis] + codes[cols_axis]
  x, y, z = (figures.display_orientation(m, orientation)
             for m in world_maps(affine, slice_axis, index, shape))
  plane = figures.slice_plane(orientation)
  up, across = {"sagittal": (z, y), "coronal": (z, x), "axial": (y, x)}[plane]
  assert np.all(np.diff(up, axis=0) < 0), f"{plane} ({orientation}): not the right way up"
  assert np.all(np.diff(across, axis=1) < 0), f"{plane} ({orientation}): left and right swapped"
  return plane


def test_display_orientation_on_the_mni_template():
  """nilearn's MNI template (a real volume shipped with the package, RAS): each plane through the
  anterior commissure (the world origin) is shown the right way up and the right way round, and in
  the sagittal view the frontal lobe is on the left: the AC lies ~70 mm behind the frontal pole and
  ~105 mm in front of the occipital pole."""
  datasets = pytest.importorskip("nilearn.datasets")
  img = datasets.load_mni152_template(resolution=1)
  data = np.asarray(img.dataobj, np.float32)
  origin = np.round(np.linalg.solve(img.affine, [0, 0, 0, 1])[:3]).astype(int)
  planes = {check_display_is_anatomical(img.affine, data.shape, k, origin[k]) for k in range(3)}
  assert planes == {"sagittal", "coronal", "axial"}

  orientation = "".join(nib.aff2axcodes(img.affine)[1:])        # sagittal: rows along y, cols along z
  shown = figures.display_orientation(data[origin[0]], orientation)
  marker = np.zeros(data.shape[1:])
  marker[origin[1], origin[2]] = 1                                # the AC, followed through the display
  ac_row, ac_col = np.argwhere(figures.display_orientation(marker, orientation))[0]
  brain_cols = np.flatnonzero((shown > 0.2 * shown.max()).any(axis=0))
  assert ac_col - brain_cols[0] < brain_cols[-1] - ac_col, "the face is not on the left"
  brain_rows = np.flatnonzero((shown > 0.2 * shown.max()).any(axis=1))
  assert brain_rows[0] < ac_row < brain_rows[-1]


def test_display_orientation_on_a_bundled_ixi_volume():
  """A real IXI T1 (2 mm, voxels P-S-R, shipped in data_prep/sample_data): its sagittal slices, as the
  sample data stores them, are shown superior up and anterior left, and so are the other planes."""
  path = ROOT / "data_prep" / "sample_data" / "ixi_t1_2mm" / "IXI014-HH-1236-T1.nii.gz"
  img = nib.load(path)
  assert nib.aff2axcodes(img.affine) == ("P", "S", "R")
  for k in range(3):
    check_display_is_anatomical(img.affine, img.shape, k, img.shape[k] // 2)


def test_orientation_strings_are_checked():
  assert figures.check_orientation(b"PS") == "PS" and figures.check_orientation(np.str_("AS")) == "AS"
  for bad in ("P", "PSR", "PA", "XY", "ps", 3):
    with pytest.raises(ValueError, match="orientation"):
      figures.display_orientation(np.zeros((2, 2)), bad)
  with pytest.raises(ValueError, match="convention"):
    figures.display_orientation(np.zeros((2, 2)), "PS", convention="upside-down")
  assert figures.orientation_caption("PS") == ("sagittal, radiological display: superior up, "
                                               "anterior on the left")
  assert "unknown" in figures.orientation_caption("")


def test_content_box_and_detail_box():
  img = np.zeros((20, 24), np.float32)
  img[3:15, 5:21] = 0.5                           # the stored slice inside its zero padding
  assert figures.content_box(img) == (3, 15, 5, 21)
  stack = np.stack([img, np.zeros_like(img)])
  stack[1, 16, 2] = 1.0                           # another slice of the volume reaches further
  assert figures.content_box(stack) == (3, 17, 2, 21)
  assert figures.content_box(np.zeros((4, 6))) == (0, 4, 0, 6)
  # The box of most edge energy: a checkerboard patch among flat tissue.
  img[8:12, 14:18] = np.indices((4, 4)).sum(0) % 2
  assert figures.detail_box(img, 4) == (8, 14)
  assert figures.detail_box(img[:, 2:22], 100) == (0, 0)   # larger than the image: the whole image


def test_comparison_panel_crops_orients_and_zooms_from_hr_alone(tmp_path):
  """The report's panel: each image cropped to the volume's extent and turned to display orientation;
  the detail box placed from HR only, so swapping the method's image leaves it where it was."""
  rng = np.random.default_rng(0)
  hr = np.zeros((40, 40), np.float32)
  hr[4:36, 8:32] = rng.uniform(0.2, 0.8, (32, 24))
  hr[10:18, 20:28] = np.indices((8, 8)).sum(0) % 2          # the HR detail
  noisy = np.clip(hr + rng.normal(0, 0.05, hr.shape), 0, 1).astype(np.float32)
  noisy[30:34, 10:14] += 0.5                                  # the method's own error elsewhere
  box = (4, 36, 8, 32)
  figs = []
  for other in (hr * 0.9, noisy):
    fig = figures.comparison_figure({"HR": hr, "ours": other}, reference=hr, orientation="PS", box=box)
    figs.append(fig)
  for fig in figs:
    full = fig.axes[0].get_images()[0].get_array()
    np.testing.assert_array_equal(full, np.rot90(hr[4:36, 8:32]))   # PS: a quarter turn, cropped
  rects = [[p.get_xy() + (p.get_width(),) for p in fig.axes[0].patches] for fig in figs]
  assert rects[0] == rects[1], "the detail box moved with the method's image"
  (x, y, size), = rects[0]
  shown = np.rot90(hr[4:36, 8:32])
  assert (int(y + 0.5), int(x + 0.5), size) == (*figures.detail_box(shown, 8), 8)
  zoom = figs[1].axes[2].get_images()[0].get_array()          # row 1 (details), column 0 (HR)
  np.testing.assert_array_equal(zoom, shown[int(y + 0.5):int(y + 0.5) + 8, int(x + 0.5):int(x + 0.5) + 8])
  assert "sagittal" in figs[1]._supxlabel.get_text()
  matplotlib.pyplot.close("all")

  path = tmp_path / "fig2.png"
  figures.comparison_panel({"hr": hr, "bicubic": noisy, "ours": hr}, ["bicubic", "ours"], str(path),
                           title="t", orientation="", box=box)
  assert path.stat().st_size > 1000 and not os.path.exists(str(path) + ".tmp.png")


def test_eval_report_panels_use_the_volume_orientation_and_extent(trained, monkeypatch):
  """evaluate() hands each Fig. 2 panel its volume's `orientation` as the data carry it (the held-out
  IXI subject's sagittal slices: "PS", from its affine) and the non-zero extent of the whole volume;
  a malformed orientation stops the evaluation in its first pass, naming the volume."""
  from mrsr_jax import evaluate
  config, workdir, _ = trained
  real = evaluate._test_batches
  extent: dict[str, list] = {}

  def spy(replace=None):
    def batches(cfg, split):
      for b in real(cfg, split):
        if replace is not None:
          b["orientation"] = np.asarray([replace if m else b"" for m in b["mask"]], object)
        for img, subj, m in zip(b["hr"], b["subject"], b["mask"]):
          if m:
            extent.setdefault(subj.decode() if isinstance(subj, bytes) else str(subj), []).append(img[..., 0])
        yield b
    return batches

  calls = []
  monkeypatch.setattr(figures, "comparison_panel", lambda *a, **k: calls.append((a[2], k)))
  monkeypatch.setattr(evaluate, "_test_batches", spy())
  evaluate.evaluate(config, workdir)
  assert calls and all(k["orientation"] == "PS" for _, k in calls), [k["orientation"] for _, k in calls]
  for path, k in calls:
    subject, = [s for s in extent if f"_{s}_slice" in os.path.basename(path)]
    assert k["box"] == figures.content_box(np.stack(extent[subject])), subject

  def no_compute(*a, **k):
    raise AssertionError("evaluation computed before checking the orientation")

  monkeypatch.setattr(evaluate, "_test_batches", spy(b"PX"))
  monkeypatch.setattr(evaluate, "make_eval_step", no_compute)
  with pytest.raises(ValueError, match=r"volume sample/.*orientation 'PX'"):
    evaluate.evaluate(config, workdir)
