"""What a TFDS build of IXI / fastMRI costs per volume, and so what restarting an interrupted one costs.

  python bench/data_prep_cost.py [--ixi_volumes=4] [--fastmri_files=3]

TFDS restarts an interrupted build from the start (its `incomplete.*` folder is deleted), so the work
an interruption loses is the work done so far: on average half a build, at worst all of it. This
times the per-volume cost of `python -m data_prep` on inputs of the real sizes, made from real data:

* IXI: the bundled 2 mm IXI T1 volumes resampled (linear) to the native IXI T1 grid, 256 x 256 x 150
  at 0.94 x 0.94 x 1.2 mm, int16, gzipped like the download; the paper's 240 x 240 x 96 conversion.
* fastMRI knee single-coil: files of fastMRI's layout and size (kspace complex64 [36, 640, 368] and
  reconstruction_esc float32 [36, 320, 320], ~83 MB), the images from the same real volumes.

It reports process CPU seconds (user + sys of this process and its children) next to wall seconds:
on a shared machine the wall time is inflated by other load, the CPU time is what an idle core
needs. The extrapolation to the full datasets (IXI 577 subjects x 3 contrasts; fastMRI knee
single-coil, 973 train + 199 val files, ~90 GB) is printed last.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

import h5py  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from data_prep import __main__ as cli  # noqa: E402
from data_prep import fastmri, sample  # noqa: E402

IXI_VOLUMES = 577 * 3
FASTMRI_FILES = 973 + 199


def _cpu() -> float:
  own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _real_volumes(n):
  files = sorted(f for f in os.listdir(sample.BUNDLED_IXI_DIR) if f.endswith(".nii.gz"))
  return [np.asarray(nib.load(os.path.join(sample.BUNDLED_IXI_DIR, files[i % len(files)])).dataobj, np.float32)
          for i in range(n)]


def make_ixi(folder, n):
  """n IXI-T1-sized files: [256, 256, 150] int16 at 0.94 x 0.94 x 1.2 mm (slices along the last axis)."""
  os.makedirs(folder)
  for i, vol in enumerate(_real_volumes(n)):
    big = ndimage.zoom(vol, np.array([256, 256, 150]) / np.array(vol.shape), order=1)
    nib.save(nib.Nifti1Image(np.clip(big, 0, 32767).astype(np.int16), np.diag([0.94, 0.94, 1.2, 1])),
             os.path.join(folder, f"IXI{600 + i:03d}-HH-{i:04d}-T1.nii.gz"))


def make_fastmri(folder, n):
  """n fastMRI single-coil knee files of the real layout and size (train/ and val/ folders)."""
  vols = _real_volumes(n)
  for i, vol in enumerate(vols):
    sub = os.path.join(folder, "singlecoil_val" if i == n - 1 else "singlecoil_train")
    os.makedirs(sub, exist_ok=True)
    slices = np.moveaxis(ndimage.zoom(vol, np.array([320, 320, 36]) / np.array(vol.shape), order=1), 2, 0)
    img = (slices * 1e-4).astype(np.float32)
    kspace = fastmri.image_to_kspace(np.pad(img, ((0, 0), (160, 160), (24, 24))).astype(np.complex64))
    with h5py.File(os.path.join(sub, f"file{1000000 + i}.h5"), "w") as f:
      f.attrs["acquisition"] = "CORPD_FBK"
      f.create_dataset("kspace", data=kspace.astype(np.complex64))
      f.create_dataset("reconstruction_esc", data=img)


def timed_build(argv):
  wall, cpu = time.perf_counter(), _cpu()
  rc = cli.main([*argv, "--no_progress"])
  assert rc == 0, rc
  return time.perf_counter() - wall, _cpu() - cpu


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--ixi_volumes", type=int, default=4)
  p.add_argument("--fastmri_files", type=int, default=3)
  args = p.parse_args()
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    make_ixi(os.path.join(tmp, "ixi"), args.ixi_volumes)
    make_fastmri(os.path.join(tmp, "knee"), args.fastmri_files)
    mb = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(tmp, "knee")) for f in fs) / 2**20
    timed_build(["--dataset=sample", f"--data_dir={tmp}/warm"])  # imports and TFDS set-up, not per volume
    for name, manual, n, total in (("ixi", "ixi", args.ixi_volumes, IXI_VOLUMES),
                                   ("fastmri", "knee", args.fastmri_files, FASTMRI_FILES)):
      # (a handful of fastMRI files leaves no file for our val split: allowed here)
      wall, cpu = timed_build([f"--dataset={name}", f"--manual_dir={tmp}/{manual}", f"--data_dir={tmp}/out",
                               "--allow_empty_splits"])
      rows.append((name, n, wall / n, cpu / n, total))
  print(f"\nfastMRI test files: {mb / args.fastmri_files:.0f} MB each")
  print("dataset   volumes  wall s/vol  CPU s/vol  full dataset  full build (CPU, 1 core)  lost on a restart (mean / worst)")
  for name, n, w, c, total in rows:
    hours = c * total / 3600
    print(f"{name:8s}  {n:7d}  {w:10.2f}  {c:9.2f}  {total:12d}  {hours:20.1f} h  {hours / 2:10.1f} h / {hours:.1f} h")


if __name__ == "__main__":
  main()
