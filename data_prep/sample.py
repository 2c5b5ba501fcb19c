"""The bundled sample: a small real-MR dataset that needs no download (the demo's default).

Build:  python -m data_prep --dataset=sample --data_dir=DATA [--manual_dir=/path/to/ixi_t1_2mm]

Sources, all real MR, all shipped inside installed PyPI packages:
  * nilearn  `mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz`: MNI152 2009a T1 template (an average
    of many scans), 1 mm -> 2 mm, axial; contrast T1, subject "mni152_2009a".
  * nibabel  `tests/data/anatomical.nii`: a T1 volume, 33x41x25 at 2 mm; subject "nibabel_anatomical".
  * dipy     `data/files/S0_10slices.nii.gz`: a b0 diffusion (EPI) volume, 128x128x10 at 2 mm in-plane;
    contrast "B0", subject "dipy_S0_10slices".
  * dipy     `data/files/t1_coronal_slice.npy`: one T1 coronal slice 256x256, spacing not recorded
    (taken as 1 mm), 2x box-downsampled; subject "dipy_t1_coronal_slice".
  * optionally IXI files under `--manual_dir` (e.g. the six 2 mm IXI T1 volumes of shared/data):
    contrast from the file name, subject the IXI id, centre 32 slices per volume.
Every slice: dataset "sample", normalised per volume by its 99.5th percentile, centre crop / zero pad
to 128x128 in-plane after box-downsampling to ~2 mm (1 mm data), near-empty slices dropped. A few
hundred slices in all, so the demo trains on 2 CPU cores in minutes.

Held-out data: the package volumes are one volume each, so each is split by disjoint slabs of
slices: [train | gap | test | gap | val] along its slice axis (~75/15/10%, one slice dropped at each
boundary when the volume has >= 12 slices, so neighbouring, strongly correlated slices never straddle
train and held-out). These subjects thus appear in every split, on different slices. The single dipy
slice is train only. IXI files, when given, are split by subject (`ixi.assign_splits`).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from data_prep import ixi, volumes
from data_prep.writer import VolumeSource, file_stamp

NAME = "sample"
TARGET_HW = (128, 128)
RESAMPLE_MM = 2.0
MNI_SLICES = 48
IXI_SLICES = 32


def _package_file(package: str, *parts: str) -> str | None:
  """Path of a data file inside an installed package, without importing it (nilearn is slow to import)."""
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    return None
  path = os.path.join(list(spec.submodule_search_locations)[0], *parts)
  return path if os.path.exists(path) else None


# (subject, package, path parts, contrast, max slices)
PACKAGE_VOLUMES = (
    ("mni152_2009a", "nilearn", ("datasets", "data", "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"),
     "T1", MNI_SLICES),
    ("nibabel_anatomical", "nibabel", ("tests", "data", "anatomical.nii"), "T1", None),
    ("dipy_S0_10slices", "dipy", ("data", "files", "S0_10slices.nii.gz"), "B0", None),
)
DIPY_SLICE = ("dipy_t1_coronal_slice", "dipy", ("data", "files", "t1_coronal_slice.npy"), "T1")


def slab_split(n: int) -> dict[str, range]:
  """Positions 0..n-1 of a volume's slices -> disjoint slabs {split: range} (see module docstring)."""
  if n < 3:
    return {"train": range(n)}
  n_test = max(1, round(0.15 * n))
  n_val = max(1, round(0.10 * n))
  gap = 1 if n >= 12 else 0
  n_train = n - n_test - n_val - 2 * gap
  test0 = n_train + gap
  val0 = test0 + n_test + gap
  return {"train": range(0, n_train), "test": range(test0, test0 + n_test), "val": range(val0, n)}


def _slab(vol: volumes.Volume, split: str) -> volumes.Volume:
  positions = slab_split(len(vol.slice_indices)).get(split, range(0))
  vol.slices = vol.slices[positions.start:positions.stop]
  vol.slice_indices = list(vol.slice_indices)[positions.start:positions.stop]
  return vol


def _load_package_volume(path: str, subject: str, contrast: str, max_slices: int | None, split: str) -> volumes.Volume:
  vol = volumes.load_volume(path, path, dataset=NAME, contrast=contrast, subject=subject,
                            target_hw=TARGET_HW, max_slices=max_slices, resample_mm=RESAMPLE_MM)
  return _slab(vol, split)


def load_dipy_slice(path: str) -> volumes.Volume:
  try:
    image = np.load(path)
  except Exception as e:
    raise volumes.BadInputError(path, f"not a readable .npy file ({type(e).__name__}: {e})") from e
  if image.ndim != 2:
    raise volumes.BadInputError(path, f"expected one 2D slice, got shape {image.shape}")
  image = np.asarray(image, np.float32)
  volumes.check_volume(image, path)
  vol = volumes.block_downsample(image, (2, 2))[None]  # 1 mm (assumed) -> 2 mm
  slices, index, scale = volumes.prepare_slices(vol, TARGET_HW, None, path)
  if not index:
    raise volumes.BadInputError(path, "empty slice")
  return volumes.Volume(slices=slices, slice_indices=index, dataset=NAME, contrast=DIPY_SLICE[3],
                        subject=DIPY_SLICE[0], spacing=(2.0, 2.0, 2.0), intensity_scale=scale,
                        source=path, plane="coronal")


def build(manual_dir: str | None = None, *, seed: int = ixi.SPLIT_SEED) -> tuple[list[VolumeSource], list[tuple[str, str]], list[str], dict]:
  sources: list[VolumeSource] = []
  bad: list[tuple[str, str]] = []
  notes: list[str] = []
  nbytes = 4 * TARGET_HW[0] * TARGET_HW[1] * 16
  for subject, package, parts, contrast, max_slices in PACKAGE_VOLUMES:
    path = _package_file(package, *parts)
    if path is None:
      notes.append(f"{package} has no {'/'.join(parts)}; {subject} skipped")
      continue
    for split in ("train", "test", "val"):
      load = lambda p=path, s=subject, c=contrast, m=max_slices, sp=split: _load_package_volume(p, s, c, m, sp)
      sources.append(VolumeSource(key=f"{path}#{split}", split=split, load=load, stamp=file_stamp(path),
                                  nbytes=nbytes))
  path = _package_file(DIPY_SLICE[1], *DIPY_SLICE[2])
  if path is None:
    notes.append(f"dipy has no {'/'.join(DIPY_SLICE[2])}; {DIPY_SLICE[0]} skipped")
  else:
    sources.append(VolumeSource(key=path, split="train", load=lambda p=path: load_dipy_slice(p),
                                stamp=file_stamp(path), nbytes=nbytes))
  n_ixi = 0
  if manual_dir:
    files, bad, ixi_notes = ixi.discover(manual_dir)
    notes += ixi_notes
    ixi_sources, more = ixi.make_sources(files, seed=seed, dataset=NAME, target_hw=TARGET_HW,
                                         max_slices=IXI_SLICES, resample_mm=RESAMPLE_MM)
    sources += ixi_sources
    notes += more
    n_ixi = len(ixi_sources)
    if not files:
      notes.append(f"--manual_dir={manual_dir}: no IXI T1/T2/PD files found")
  config = {"dataset": NAME, "target_hw": list(TARGET_HW), "resample_mm": RESAMPLE_MM, "seed": seed,
            "mni_slices": MNI_SLICES, "ixi_slices": IXI_SLICES, "ixi_volumes": n_ixi}
  return sources, bad, notes, config
