"""fastMRI knee (.h5): reading, checking and splitting the files.

Build:  python -m data_prep --dataset=fastmri[/pd|/fspd] --manual_dir=DIR --data_dir=DATA
        (or `tfds build data_prep/datasets/fastmri --manual_dir=DIR --data_dir=DATA`)
DIR holds fastMRI knee `.h5` files (singlecoil or multicoil), anywhere below it. Per file:
  * image: `reconstruction_esc` (singlecoil) if present, else `reconstruction_rss` (multicoil), else
    reconstructed from `kspace` (complex [slices, (coils,) H, W]): centred orthonormal 2D inverse FFT
    (ifftshift, ifft2, fftshift), root-sum-of-squares over coils, centre crop 320x320. Slices are
    the first axis; k-space is reconstructed one slice at a time to bound memory.
  * attribute `acquisition`: `CORPD_FBK` -> contrast "PD", `CORPDFS_FBK` -> "FSPD"; any other value is
    reported as bad input and skipped (fastMRI knee has only these two).
  * spacing from `ismrmrd_header` as predict reads it (reconSpace for a stored reconstruction,
    encodedSpace for k-space; x is the row), else 1 mm.
Split: fastMRI ships `..._train` and `..._val` folders; when DIR has subfolders with `train` and `val`
in their names, train files are our train split (a few carved off deterministically as our small
`val` monitoring split, as for IXI) and fastMRI's val files are our `test` split (the paper reports on
them). Otherwise files are split deterministically by file like IXI subjects. A file is a volume and
its stem the subject id (fastMRI does not publish patient ids). Each file's structure (readable,
acquisition, image dataset, dtype, shape) is checked before the split is dealt, so a bad file is
reported and never takes a place in a split.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from data_prep import ixi, volumes
from data_prep.writer import VolumeSource, file_stamp
# Opening, the structure checks, the key order and the k-space reconstruction are predict's too.
# image_to_kspace: the tests make k-space with it.
from mrsr_jax.data.fastmri import (RECON_KEYS, file_spaces, image_dataset, image_space,  # noqa: F401
                                   image_to_kspace, kspace_to_image, open_file, voxel_size)

NAME = "fastmri"
ACQUISITIONS = {"CORPD_FBK": "PD", "CORPDFS_FBK": "FSPD"}
TARGET_HW = (320, 320)


def _spacing(f, key: str, hw: tuple[int, int]) -> tuple[float, float, float]:
  """(row, col, slice) mm of the image read from `key` (on grid `hw`), by the ISMRMRD header as predict
  reads it; 1 mm where the header is absent or unreadable (it only costs the spacing metadata)."""
  try:
    space = image_space(file_spaces(f), key)
  except ValueError:
    space = None
  return voxel_size(space, hw) if space else (1.0, 1.0, 1.0)


def _image_dataset(f, path: str):
  """(contrast, key, h5py dataset) of the image an open file stands for; BadInputError if unusable."""
  acq = f.attrs.get("acquisition")
  if acq is None:
    raise volumes.BadInputError(path, "no 'acquisition' attribute (expected CORPD_FBK or CORPDFS_FBK)")
  acq = acq.decode() if isinstance(acq, bytes) else str(acq)
  if acq not in ACQUISITIONS:
    raise volumes.BadInputError(
        path, f"unknown acquisition {acq!r}: only CORPD_FBK (PD) and CORPDFS_FBK (FS-PD) are used; skipped")
  key, data = image_dataset(f, path)
  return ACQUISITIONS[acq], key, data


def check_file(path: str) -> str:
  """The file's contrast; raises BadInputError unless `path` opens and has a usable image (its
  structure, not every voxel: multi-coil k-space is too big to read twice; data problems are caught
  when it is converted)."""
  with open_file(path) as f:
    return _image_dataset(f, path)[0]


def read_image(path: str) -> tuple[np.ndarray, str, tuple[float, float, float], str]:
  """(magnitude volume [slices, 320, 320] float32, contrast, spacing, which data was used)."""
  with open_file(path) as f:
    contrast, key, data = _image_dataset(f, path)
    try:
      if key != "kspace":
        vol = volumes.centre_crop_or_pad(np.asarray(data[()], dtype=np.float32), TARGET_HW)
      else:
        coil_axis = 0 if data.ndim == 4 else None
        vol = np.stack([volumes.centre_crop_or_pad(kspace_to_image(data[i], coil_axis), TARGET_HW)
                        for i in range(data.shape[0])])
    except Exception as e:  # h5py raises OSError for truncated chunks
      raise volumes.BadInputError(path, f"cannot read image data, truncated or corrupt ({type(e).__name__}: {e})") from e
    spacing = _spacing(f, key, tuple(data.shape[-2:]))
  volumes.check_volume(vol, path)
  return vol, contrast, spacing, key


def load_file(path: str) -> volumes.Volume:
  return load_with_orientation(path)[0]


def load_with_orientation(path: str) -> tuple[volumes.Volume, str]:
  """The volume, and "" for its orientation: a fastMRI file has no affine (only matrix sizes and
  fields of view in its header), so the anatomical direction of rows and columns is unknown."""
  vol, contrast, spacing, _ = read_image(path)
  slices, index, scale = volumes.prepare_slices(vol, TARGET_HW, None, path)
  if not index:
    raise volumes.BadInputError(path, "empty volume (no slice with signal)")
  return volumes.Volume(slices=slices, slice_indices=index, dataset=NAME, contrast=contrast,
                        subject=os.path.splitext(os.path.basename(path))[0], spacing=spacing,
                        intensity_scale=scale, source=path, plane="coronal"), ""


def _h5_files(root: str) -> list[str]:
  out = []
  for d, dirs, files in os.walk(root):
    dirs.sort()
    out += [os.path.join(d, f) for f in sorted(files) if f.endswith(".h5")]
  return out


_CONTRAST: dict[str, str] = {}  # path -> contrast, from the check (the split needs no second read)


def check_files(paths: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
  """(good paths, [(path, problem)]) by `check_file`."""
  good, bad = [], []
  for p in paths:
    try:
      _CONTRAST[p] = check_file(p)
    except volumes.BadInputError as e:
      bad.append((e.path, e.problem))
    else:
      good.append(p)
  return good, bad


def split_files(manual_dir: str, seed: int = ixi.SPLIT_SEED) -> tuple[dict[str, str], list[tuple[str, str]], list[str]]:
  """File path -> split, bad files [(path, problem)], and notes. See the module docstring.

  Files are checked (`check_file`) before the split is dealt, so bad ones never take a place in it.
  """
  if not os.path.isdir(manual_dir):
    raise FileNotFoundError(f"--manual_dir={manual_dir}: no such directory")
  subdirs = sorted(d for d in os.listdir(manual_dir) if os.path.isdir(os.path.join(manual_dir, d)))
  train_dirs = [d for d in subdirs if "train" in d.lower()]
  val_dirs = [d for d in subdirs if "val" in d.lower() and "train" not in d.lower()]
  notes, bad = [], []
  if train_dirs and val_dirs:
    train, bad_train = check_files([p for d in train_dirs for p in _h5_files(os.path.join(manual_dir, d))])
    test, bad_test = check_files([p for d in val_dirs for p in _h5_files(os.path.join(manual_dir, d))])
    bad = bad_train + bad_test
    n_val = ixi.split_quota(len(train))["val"]
    carve = set(np.random.default_rng(seed).permutation(len(train))[:n_val].tolist())
    split = {p: ("val" if i in carve else "train") for i, p in enumerate(train)}
    split.update({p: "test" for p in test})
    notes.append(f"fastMRI folders: train {train_dirs} -> train (+{n_val} file(s) as val), val {val_dirs} -> test")
    others = [d for d in subdirs if d not in train_dirs and d not in val_dirs]
    if others:
      notes.append(f"ignored folders {others} (only *train* and *val* are used)")
  else:
    files, bad = check_files(_h5_files(manual_dir))
    stems = {os.path.splitext(os.path.basename(p))[0]: p for p in files}
    if len(stems) != len(files):
      raise ValueError(f"--manual_dir={manual_dir}: two .h5 files share a name; use *train*/*val* folders")
    split_of = ixi.assign_splits({s: ["all"] for s in stems}, seed)
    split = {p: split_of[s, "all"] for s, p in stems.items() if split_of[s, "all"] is not None}
  return split, bad, notes


def build(manual_dir: str, *, seed: int = ixi.SPLIT_SEED, progress: bool = False,
          contrasts=tuple(ACQUISITIONS.values())) -> tuple[list[VolumeSource], list[tuple[str, str]], list[str], dict]:
  """(sources, bad, notes, settings) for the builder. The split is dealt among every good file, then
  `contrasts` are kept, so a file is in the same split in every builder config."""
  split, bad, notes = split_files(manual_dir, seed)
  sources = [VolumeSource(key=p, split=s, load=functools.partial(load_with_orientation, p), stamp=file_stamp(p),
                          subject=os.path.splitext(os.path.basename(p))[0], contrast=_CONTRAST[p])
             for p, s in sorted(split.items())]
  kept = [s for s in sources if s.contrast in contrasts]
  if len(kept) < len(sources):
    notes.append(f"contrasts {', '.join(contrasts)}: {len(kept)} of {len(sources)} volumes")
  settings = {"dataset": NAME, "target_hw": list(TARGET_HW), "acquisitions": ACQUISITIONS,
              "contrasts": list(contrasts)}
  return kept, bad, notes, settings
