"""The bundled sample: a small real-MR dataset that needs no download (the demo's default).

Build:  python -m data_prep --dataset=sample --data_dir=DATA [--manual_dir=/more/IXI/files]
        (or `tfds build data_prep/datasets/sample --data_dir=DATA`)

Sources, all real MR, all inside the installed packages:
  * six IXI T1 volumes shipped with data_prep (`data_prep/sample_data/ixi_t1_2mm/`, 2 mm, 120x120x90,
    sagittal; IXI data, CC BY-SA 3.0, see the README there): subject the IXI id, the centre 64
    sagittal slices of each (of 90; the outer ones are mostly background and dropped anyway).
    IXI files under `--manual_dir`, if given, join them (a subject found twice keeps the bundled file).
  * nilearn  `mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz`: MNI152 2009a T1 template (an average
    of many scans), 1 mm -> 2 mm, the centre 48 axial slices; subject "mni152_2009a".
  * nibabel  `tests/data/anatomical.nii`: a T1 volume, 33x41x25 at 2 mm; subject "nibabel_anatomical".
  * dipy     `data/files/S0_10slices.nii.gz`: a b0 diffusion (EPI) volume, 128x128x10 at 2 mm in-plane;
    contrast "B0", subject "dipy_S0_10slices".
  * dipy     `data/files/t1_coronal_slice.npy`: one T1 coronal slice 256x256, spacing not recorded
    (taken as 1 mm), 2x box-downsampled; subject "dipy_t1_coronal_slice".
Every slice: dataset "sample", normalised per volume by its 99.5th percentile, centre crop / zero pad
to 128x128 in-plane after box-downsampling to ~2 mm (1 mm data), near-empty slices dropped. About 450
slices in all, so the demo trains on 2 CPU cores in minutes.

Held-out data: the IXI subjects are split by subject with `ixi.assign_splits` (six subjects: 4 train,
1 val, 1 test, deterministic for a seed), so val and test are whole real scans the model never saw.
The package volumes are train only: each is a single volume (the MNI one a template averaged over
many brains), and held-out slices cut from a volume that is also trained on are neighbours of
training slices, which flatters any model.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np

from data_prep import ixi, volumes
from data_prep.writer import VolumeSource, file_stamp

NAME = "sample"
TARGET_HW = (128, 128)
RESAMPLE_MM = 2.0
MNI_SLICES = 48
IXI_SLICES = 64
# The six IXI T1 volumes that ship with data_prep (package data, see pyproject.toml).
BUNDLED_IXI_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample_data", "ixi_t1_2mm")


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


def _load_package_volume(path: str, subject: str, contrast: str, max_slices: int | None
                         ) -> tuple[volumes.Volume, str]:
  from data_prep.builder import nifti_orientation

  vol = volumes.load_volume(path, path, dataset=NAME, contrast=contrast, subject=subject,
                            target_hw=TARGET_HW, max_slices=max_slices, resample_mm=RESAMPLE_MM)
  return vol, nifti_orientation(path, path)


def load_dipy_slice(path: str) -> tuple[volumes.Volume, str]:
  """The slice, and "" for its orientation (a bare .npy array: no affine)."""
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
                        source=path, plane="coronal"), ""


def ixi_files(manual_dir: str | None) -> tuple[list[ixi.IxiFile], list[tuple[str, str]], list[str]]:
  """The bundled IXI files plus those under `manual_dir`: (files, bad, notes).

  A subject and contrast found in both keeps the bundled file (so pointing --manual_dir at another
  copy of the same six files changes nothing).
  """
  files, bad, notes = ixi.discover(BUNDLED_IXI_DIR) if os.path.isdir(BUNDLED_IXI_DIR) else ([], [], [])
  if not files:
    notes.append(f"no bundled IXI files in {BUNDLED_IXI_DIR} (an install without package data?)")
  if manual_dir:
    more, more_bad, more_notes = ixi.discover(manual_dir)
    bad += more_bad
    notes += more_notes
    have = {(f.subject, f.contrast): f for f in files}
    for f in more:
      if (f.subject, f.contrast) in have:
        notes.append(f"duplicate {f.subject} {f.contrast}: using the bundled file, ignoring {f.key}")
      else:
        files.append(f)
    if not more:
      notes.append(f"--manual_dir={manual_dir}: no IXI T1/T2/PD files found")
  return files, bad, notes


def build(manual_dir: str | None = None, *, seed: int = ixi.SPLIT_SEED, progress: bool = False) -> tuple[list[VolumeSource], list[tuple[str, str]], list[str], dict]:
  sources: list[VolumeSource] = []
  files, bad, notes = ixi_files(manual_dir)
  files, more_bad = ixi.check_files(files, progress=progress)  # before the split: see ixi's docstring
  bad += more_bad
  ixi_sources, more = ixi.make_sources(files, seed=seed, dataset=NAME, target_hw=TARGET_HW,
                                       max_slices=IXI_SLICES, resample_mm=RESAMPLE_MM)
  sources += ixi_sources
  notes += more
  for subject, package, parts, contrast, max_slices in PACKAGE_VOLUMES:
    path = _package_file(package, *parts)
    if path is None:
      notes.append(f"{package} has no {'/'.join(parts)}; {subject} skipped")
      continue
    load = functools.partial(_load_package_volume, path, subject, contrast, max_slices)  # picklable (Beam)
    sources.append(VolumeSource(key=path, split="train", load=load, stamp=file_stamp(path), subject=subject,
                                contrast=contrast))
  path = _package_file(DIPY_SLICE[1], *DIPY_SLICE[2])
  if path is None:
    notes.append(f"dipy has no {'/'.join(DIPY_SLICE[2])}; {DIPY_SLICE[0]} skipped")
  else:
    sources.append(VolumeSource(key=path, split="train", load=functools.partial(load_dipy_slice, path),
                                stamp=file_stamp(path), subject=DIPY_SLICE[0], contrast=DIPY_SLICE[3]))
  config = {"dataset": NAME, "target_hw": list(TARGET_HW), "resample_mm": RESAMPLE_MM,
            "mni_slices": MNI_SLICES, "ixi_slices": IXI_SLICES, "ixi_volumes": len(ixi_sources),
            "package_volumes": "train"}
  return sources, bad, notes, config
