"""Fault suite for data_prep, driven as a user drives it (`python -m data_prep`'s `main(argv)`).

Each bad input is reported by file with its problem and skipped (fatal with --strict), exit codes are
asserted, usage and path errors are one line without a traceback, and nothing the user had (input
files, a complete dataset built before) is lost or changed; a killed build is never read as
complete. Real scanner data: the six IXI T1 volumes shipped with data_prep (uint8 with a scale
factor), copied under IXI download names.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
import time

import h5py
import nibabel as nib
import numpy as np
import pytest

from data_prep import __main__ as cli
from data_prep import builder as builder_lib
from data_prep import ixi, sample, volumes, writer
from mrsr_jax.data import pipeline, records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED = sorted(os.path.join(sample.BUNDLED_IXI_DIR, f) for f in os.listdir(sample.BUNDLED_IXI_DIR)
                 if f.endswith(".nii.gz"))
HW = (64, 64)


@pytest.fixture(autouse=True)
def small_ixi(monkeypatch):
  """The IXI conversion at a small size: 64x64 in-plane, the centre 8 slices (fast, same code path)."""
  monkeypatch.setattr(ixi, "TARGET_HW", HW)
  monkeypatch.setattr(ixi, "MAX_SLICES", 8)


def _run(argv, capsys=None):
  """main(argv) as the shell would see it: exit status (SystemExit included) and stderr."""
  try:
    rc = cli.main([*argv, "--no_progress"])
  except SystemExit as e:
    rc = e.code
  err = capsys.readouterr().err if capsys is not None else ""
  return rc, err


def _one_line_error(err: str) -> str:
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1 and "Traceback" not in err, err
  assert "error:" in lines[0]
  return lines[0]


def _digest(root) -> dict[str, str]:
  """Every file below `root`: relative path -> sha256 (what "nothing the user had is changed" means)."""
  out = {}
  for d, _, files in os.walk(root):
    for f in files:
      with open(os.path.join(d, f), "rb") as fh:
        out[os.path.relpath(os.path.join(d, f), root)] = hashlib.sha256(fh.read()).hexdigest()
  return out


def _copy_good(manual, which=range(6)):
  manual.mkdir(parents=True, exist_ok=True)
  for i in which:
    shutil.copy(BUNDLED[i], manual)
  return manual


def _real_volume(i=0):
  """A real IXI volume in scanner units (its scale factor applied), float32, and its affine."""
  img = nib.load(BUNDLED[i])
  return np.asarray(img.dataobj, np.float32), img.affine


def _records(d, split):
  return list(records.examples(d, split))


def _all_records(d):
  return {(r["subject"], int(r["slice_index"])): r["image"] for s in records.SPLITS for r in _records(d, s)}


# ----------------------------------------------------------------------------------------------
# bad NIfTI inputs among good ones


def _faulty_nifti_files(manual):
  """Writes one file per fault; returns {file name: expected problem}."""
  data, affine = _real_volume(0)
  good_bytes = open(BUNDLED[0], "rb").read()
  faults = {}

  def put(name, problem, payload=None, array=None, dtype=np.float32):
    path = manual / name
    if array is not None:
      nib.save(nib.Nifti1Image(np.asarray(array, dtype), affine), str(path))
    else:
      path.write_bytes(payload)
    faults[name] = problem

  put("IXI401-HH-0001-T1.nii.gz", "not a readable NIfTI file", gzip.compress(os.urandom(4000)))  # corrupt
  put("IXI402-HH-0002-T1.nii.gz", "truncated or corrupt", good_bytes[:len(good_bytes) // 2])  # truncated
  put("IXI403-HH-0003-T1.nii.gz", "empty file (0 bytes)", b"")
  put("IXI404-HH-0004-T1.nii.gz", "wrong number of dimensions", array=data[:, :, 45])  # 2D
  put("IXI405-HH-0005-T1.nii.gz", "wrong number of dimensions", array=np.stack([data, data], -1))  # 4D
  nan = data.copy()
  nan[60, 60, 40:43] = np.nan
  put("IXI406-HH-0006-T1.nii.gz", "3 NaN/Inf voxels", array=nan)
  put("IXI407-HH-0007-T1.nii.gz", "empty volume", array=np.zeros((30, 30, 20)))
  raw = nib.Nifti1Image(data.astype(np.int16), affine)
  raw.to_filename(str(manual / "tmp.nii"))
  blob = (manual / "tmp.nii").read_bytes()
  os.remove(manual / "tmp.nii")
  put("IXI408-HH-0008-T1.nii", "truncated or corrupt image data", blob[:400_000])  # header fine, data short
  return faults


def test_each_bad_nifti_is_reported_and_skipped_and_splits_use_the_good(tmp_path, capsys):
  manual = _copy_good(tmp_path / "IXI", range(4))
  faults = _faulty_nifti_files(manual)
  before = _digest(manual)
  out = tmp_path / "out"
  rc, err = _run(["--dataset=ixi", f"--manual_dir={manual}", f"--data_dir={out}"], capsys)
  assert rc == 0, err
  info = records.read_info(str(out / "ixi"))
  reported = {os.path.basename(b["path"]): b["problem"] for b in info["bad_files"]}
  assert set(reported) == set(faults)
  for name, problem in faults.items():
    assert problem in reported[name], (name, reported[name])
    # On stderr as one line per file: "bad input: <path>: <problem>".
    assert f"bad input: {manual / name}: {reported[name]}" in err.splitlines()
  # The split was dealt among the four good subjects only.
  assert {s: info["splits"][s]["num_volumes"] for s in records.SPLITS} == {"train": 2, "val": 1, "test": 1}
  assert _digest(manual) == before
  # --strict: fatal before anything is written (here: a fresh folder stays absent).
  rc, err = _run(["--dataset=ixi", f"--manual_dir={manual}", f"--data_dir={tmp_path / 'strict'}", "--strict"], capsys)
  assert rc == 1 and not (tmp_path / "strict").exists()
  assert f"--strict and {len(faults)} bad input file(s)" in err.splitlines()[-1]
  # ... and a complete set built before is left exactly as it was.
  complete = _digest(out)
  assert _run(["--dataset=ixi", f"--manual_dir={manual}", f"--data_dir={out}", "--strict"], capsys)[0] == 1
  assert _digest(out) == complete and _digest(manual) == before


def test_corrupt_files_never_empty_the_held_out_splits(tmp_path, capsys):
  """Six subjects whose val and test picks (IXI015, IXI014) are truncated: the split is dealt among
  the four good ones. (Before, the split was dealt by name first: val and test ended empty, rc 0.)"""
  manual = _copy_good(tmp_path / "IXI")
  for name in ("IXI014-HH-1236-T1.nii.gz", "IXI015-HH-1258-T1.nii.gz"):
    blob = (manual / name).read_bytes()
    (manual / name).write_bytes(blob[:len(blob) // 3])
  rc, err = _run(["--dataset=ixi", f"--manual_dir={manual}", f"--data_dir={tmp_path / 'out'}"], capsys)
  assert rc == 0, err
  info = records.read_info(str(tmp_path / "out" / "ixi"))
  assert all(info["splits"][s]["num_examples"] > 0 for s in records.SPLITS), info["splits"]
  used = set().union(*(info["splits"][s]["subjects"] for s in records.SPLITS))
  assert used == {"IXI012", "IXI013", "IXI033", "IXI034"}
  assert sum("truncated" in b["problem"] for b in info["bad_files"]) == 2


def test_a_split_that_would_be_empty_fails_in_one_line(tmp_path, capsys):
  manual = _copy_good(tmp_path / "IXI", range(2))
  (manual / "IXI499-HH-0001-T1.nii.gz").write_bytes(b"junk")
  out = tmp_path / "out"
  rc, err = _run(["--dataset=ixi", f"--manual_dir={manual}", f"--data_dir={out}"], capsys)
  lines = err.splitlines()
  assert rc == 1 and lines[0].startswith("bad input: ") and len(lines) == 2 and "Traceback" not in err
  assert lines[1].startswith("error: split(s) 'val', 'test' would be empty (volumes per split: train: 2, val: 0, test: 0)")
  assert "--allow_empty_splits" in lines[1]
  assert not out.exists()  # checked before anything is written
  rc, err = _run(["--dataset=ixi", f"--manual_dir={manual}", f"--data_dir={out}", "--allow_empty_splits"], capsys)
  assert rc == 0 and "WARNING: split(s) 'val', 'test'" in err and "EMPTY" in err
  assert records.read_info(str(out / "ixi"))["splits"]["val"]["num_examples"] == 0


def test_a_split_emptied_while_converting_is_not_marked_complete(tmp_path, capsys):
  """A file that passes the check but has no signal where slices are taken (found only when converted)
  empties its split: exit 1, the new set is not marked complete, the complete old set is kept."""
  manual = _copy_good(tmp_path / "IXI", range(4))
  out = tmp_path / "out"
  assert _run(["--dataset=ixi", f"--manual_dir={manual}", f"--data_dir={out}"], capsys)[0] == 0
  d = str(out / "ixi")
  val_subject = records.read_info(d)["splits"]["val"]["subjects"][0]
  before = _all_records(d)
  # Signal only in the corners, outside the centre 64x64 crop of every slice.
  data, affine = _real_volume(1)
  rim = np.zeros_like(data)
  rim[:20, :20] = data[:20, :20] + 100
  val_file = next(manual.glob(f"{val_subject}-*"))
  nib.save(nib.Nifti1Image(rim, affine), str(val_file))
  rc, err = _run(["--dataset=ixi", f"--manual_dir={manual}", f"--data_dir={out}"], capsys)
  last = err.splitlines()[-1]
  assert rc == 1 and last.startswith("error: split 'val' got no slice") and "not marked complete" in last
  assert "the complete set there before is unchanged" in last
  assert records.read_info(d)["splits"]["val"]["subjects"] == [val_subject]
  assert _all_records(d).keys() == before.keys()


def test_scaled_integer_nifti_is_read_with_its_scale_factor(tmp_path, capsys):
  """uint8 + scl_slope (the IXI files; many scanner exports): stored slices are the scaled values."""
  manual = _copy_good(tmp_path / "IXI", range(3))
  img = nib.load(BUNDLED[0])
  assert img.get_data_dtype() == np.uint8 and img.dataobj.slope > 10
  assert _run(["--dataset=ixi", f"--manual_dir={manual}", f"--data_dir={tmp_path / 'out'}"], capsys)[0] == 0
  d = str(tmp_path / "out" / "ixi")
  scaled = img.get_fdata()  # slope and intercept applied
  assert scaled.max() > 3000  # scanner units: the raw uint8 would stop at 255
  recs = [r for s in records.SPLITS for r in _records(d, s) if r["subject"] == "IXI012"]
  assert len(recs) == 8
  scale = np.percentile(scaled, 99.5)
  for r in recs:
    assert r["intensity_scale"] == pytest.approx(scale, rel=1e-5)
    expected = np.clip(scaled[28:92, 28:92, r["slice_index"]] / scale, 0, 1)  # sagittal, centre crop
    np.testing.assert_allclose(r["image"], expected, atol=1e-5)


def test_oblique_and_anisotropic_volumes_are_converted_along_the_right_axis(tmp_path, capsys):
  data, _ = _real_volume(0)
  manual = _copy_good(tmp_path / "IXI", range(3))
  # Oblique: 2 mm voxels rotated 20 degrees about the first axis. Spacing is read from the affine's
  # column norms, so it stays 2 mm; isotropic, no slice info -> the third voxel axis.
  a = np.deg2rad(20)
  rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
  oblique = np.eye(4)
  oblique[:3, :3] = rot @ np.diag([2.0, 2.0, 2.0])
  nib.save(nib.Nifti1Image(data, oblique), str(manual / "IXI501-HH-0001-T1.nii.gz"))
  # Anisotropic: 1 x 3 x 1 mm, the thick axis is the second: slices along it.
  aniso = data[:, ::3, :]
  nib.save(nib.Nifti1Image(aniso, np.diag([1.0, 3.0, 1.0, 1.0])), str(manual / "IXI502-HH-0002-T1.nii.gz"))
  rc, err = _run(["--dataset=ixi", f"--manual_dir={manual}", f"--data_dir={tmp_path / 'out'}", "--strict"], capsys)
  assert rc == 0, err
  d = str(tmp_path / "out" / "ixi")
  recs = {}
  for s in records.SPLITS:
    for r in _records(d, s):
      recs.setdefault(r["subject"], []).append(r)
  r = recs["IXI501"][0]
  np.testing.assert_allclose(r["spacing"], [2, 2, 2], rtol=1e-6)
  np.testing.assert_allclose(r["image"], np.clip(data[28:92, 28:92, r["slice_index"]] / np.percentile(data, 99.5), 0, 1),
                             atol=1e-5)
  assert r["orientation"] == "RA"  # rotated 20 degrees about x: still closest to R, A (axial slices)
  r = recs["IXI502"][0]
  np.testing.assert_allclose(r["spacing"], [1, 1, 3])  # (row, col, slice)
  assert r["orientation"] == "RS"  # coronal slices (along the 3 mm A axis): rows go right, columns superior
  assert {x["slice_index"] for x in recs["IXI502"]} <= set(range(aniso.shape[1]))
  expected = volumes.centre_crop_or_pad(np.clip(aniso[:, r["slice_index"], :] / np.percentile(aniso, 99.5), 0, 1), HW)
  np.testing.assert_allclose(r["image"], expected, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# malformed fastMRI files


def _h5(path, acquisition="CORPD_FBK", **datasets):
  with h5py.File(path, "w") as f:
    if acquisition is not None:
      f.attrs["acquisition"] = acquisition
    for k, v in datasets.items():
      f.create_dataset(k, data=v)
  return path


def test_each_malformed_fastmri_file_is_reported_and_skipped(tmp_path, capsys):
  data, _ = _real_volume(0)
  imgs = volumes.centre_crop_or_pad(np.moveaxis(data[:, :, 40:44], 2, 0), (320, 320)) * 1e-4
  manual = tmp_path / "knee"
  train, val = manual / "singlecoil_train", manual / "singlecoil_val"
  train.mkdir(parents=True)
  val.mkdir()
  for i in range(3):
    _h5(train / f"file100000{i}.h5", reconstruction_esc=imgs[:, ::1 if i % 2 else -1])
  _h5(val / "file1000100.h5", reconstruction_esc=imgs)
  good = (train / "file1000000.h5").read_bytes()
  faults = {
      "file2000001.h5": "not a readable HDF5 file, truncated",
      "file2000002.h5": "empty file (0 bytes)",
      "file2000003.h5": "no 'acquisition' attribute",
      "file2000004.h5": "unknown acquisition 'AXFLAIR'",
      "file2000005.h5": "'kspace' must be a complex [slices, (coils,) H, W] dataset",
      "file2000006.h5": "'reconstruction_esc' must be a real [slices, H, W] dataset",
      "file2000007.h5": "'reconstruction_esc' is empty (shape (0, 320, 320))",
      "file2000008.h5": "no 'reconstruction_esc', 'reconstruction_rss' or 'kspace' dataset",
      "file2000009.h5": "NaN/Inf voxels",  # found when converted, not by the structural check
  }
  (train / "file2000001.h5").write_bytes(good[:len(good) // 2])
  (train / "file2000002.h5").write_bytes(b"")
  _h5(train / "file2000003.h5", None, reconstruction_esc=imgs)
  _h5(train / "file2000004.h5", "AXFLAIR", reconstruction_esc=imgs)
  _h5(train / "file2000005.h5", kspace=imgs)
  _h5(train / "file2000006.h5", reconstruction_esc=imgs[0])
  _h5(train / "file2000007.h5", reconstruction_esc=np.zeros((0, 320, 320), np.float32))
  _h5(train / "file2000008.h5", ismrmrd_header=np.bytes_(b"<x/>"))
  nan = imgs.copy()
  nan[1, 100, 100] = np.nan
  _h5(train / "file2000009.h5", reconstruction_esc=nan)
  before = _digest(manual)
  out = tmp_path / "out"
  rc, err = _run(["--dataset=fastmri", f"--manual_dir={manual}", f"--data_dir={out}"], capsys)
  assert rc == 0, err
  info = records.read_info(str(out / "fastmri"))
  reported = {os.path.basename(b["path"]): b["problem"] for b in info["bad_files"]}
  assert set(reported) == set(faults)
  for name, problem in faults.items():
    assert problem in reported[name], (name, reported[name])
  assert {s: info["splits"][s]["num_volumes"] for s in records.SPLITS} == {"train": 2, "val": 1, "test": 1}
  # The structurally bad ones were found before the split: the NaN file held a train place.
  assert info["splits"]["test"]["subjects"] == ["file1000100"]
  assert _digest(manual) == before
  # --strict: the eight found by the check are fatal before writing.
  rc, err = _run(["--dataset=fastmri", f"--manual_dir={manual}", f"--data_dir={tmp_path / 'o2'}", "--strict"], capsys)
  assert rc == 1 and "--strict and 8 bad input file(s)" in err and not (tmp_path / "o2").exists()
  # Only the NaN file left: found while converting; --strict then refuses to mark the set complete.
  for name in list(faults)[:-1]:
    os.remove(train / name)
  rc, err = _run(["--dataset=fastmri", f"--manual_dir={manual}", f"--data_dir={tmp_path / 'o3'}", "--strict"], capsys)
  last = err.splitlines()[-1]
  assert rc == 1 and last.startswith("error: strict: ") and "file2000009.h5: 1 NaN/Inf voxels" in last
  assert "not marked complete" in last
  with pytest.raises(FileNotFoundError):
    records.read_info(str(tmp_path / "o3" / "fastmri"))


# ----------------------------------------------------------------------------------------------
# paths and usage: one line, no traceback, exit != 0


def test_bad_paths_and_usage_are_one_line_errors(tmp_path, capsys):
  manual = _copy_good(tmp_path / "IXI", range(3))
  a_file = tmp_path / "notes.txt"
  a_file.write_text("the user's file")
  (tmp_path / "data").mkdir()
  (tmp_path / "data" / "ixi").write_text("a file where the dataset folder goes")
  cases = [
      ([f"--data_dir={a_file}"], 1, "is a file, not a folder"),
      ([f"--data_dir={a_file}/sub"], 1, "is a file, not a folder"),
      ([f"--data_dir={tmp_path / 'data'}"], 1, "ixi is a file, not a folder"),
      ([f"--data_dir={tmp_path / 'o'}", f"--manual_dir={tmp_path / 'missing'}"], 1, "no such folder"),
      ([f"--data_dir={tmp_path / 'o'}", f"--manual_dir={a_file}"], 1, "is a file, not a folder"),
      ([f"--data_dir={tmp_path / 'o'}", "--num_shards=0"], 2, "--num_shards must be >= 1"),
      ([f"--data_dir={tmp_path / 'o'}", "--nonexistent=1"], 2, "unrecognized arguments: --nonexistent=1"),
  ]
  if os.path.isdir("/sys/kernel"):  # sysfs: no new files, even for root
    cases.append((["--data_dir=/sys/kernel/mrsr_jax_data"], 1, "cannot write in /sys/kernel"))
  for extra, code, message in cases:
    argv = ["--dataset=ixi", f"--manual_dir={manual}", *extra]
    rc, err = _run(argv, capsys)
    assert rc == code and message in _one_line_error(err), (extra, rc, err)
  rc, err = _run(["--dataset=ixi", f"--data_dir={tmp_path / 'o'}"], capsys)
  assert rc == 2 and "needs --manual_dir" in _one_line_error(err)
  assert a_file.read_text() == "the user's file" and not (tmp_path / "o").exists()
  assert (tmp_path / "data" / "ixi").read_text() == "a file where the dataset folder goes"


# ----------------------------------------------------------------------------------------------
# changed inputs never remove the complete set before the new one exists


def _subject(path):
  return os.path.basename(path)[:6]


def _dataset_files(d):
  return _digest(records.read_info(d)["path"])


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_changed_inputs_replace_the_old_set_only_once_complete(tmp_path, monkeypatch, capsys, exchange):
  """TFDS's own overwrite deletes the complete set first; the front door builds the new one beside it
  (`.ixi.staging`) and swaps it in when complete. An interrupted rebuild leaves the old set as it was."""
  if not exchange:
    monkeypatch.setattr(writer, "_exchange", lambda a, b: False)
  manual = _copy_good(tmp_path / "IXI", range(4))
  out = tmp_path / "data"
  argv = ["--dataset=ixi", f"--manual_dir={manual}", f"--data_dir={out}"]
  assert _run(argv, capsys)[0] == 0
  d = str(out / "ixi")
  (out / "ixi" / "NOTES.md").write_text("the user's notes")
  old = _all_records(d)
  old_files = _dataset_files(d)
  shutil.copy(BUNDLED[4], manual)  # a new subject: the inputs changed
  real, calls = builder_lib.volume_examples, []

  def failing(src):
    calls.append(src.key)
    if len(calls) == 3:
      raise KeyboardInterrupt
    return real(src)

  monkeypatch.setattr(builder_lib, "volume_examples", failing)
  with pytest.raises(KeyboardInterrupt):
    _run(argv, capsys)
  assert _dataset_files(d) == old_files  # the complete set, untouched and readable
  assert _all_records(d).keys() == old.keys()
  monkeypatch.setattr(builder_lib, "volume_examples", real)
  rc, err = _run(argv, capsys)
  assert rc == 0, err
  new = _all_records(d)
  assert {s for s, _ in new} == {s for s, _ in old} | {_subject(BUNDLED[4])}
  assert all(np.array_equal(new[k], old[k]) for k in old)
  assert (out / "ixi" / "NOTES.md").read_text() == "the user's notes"
  assert sorted(os.listdir(out)) == ["ixi"]  # no staging or download folder left


def test_a_swap_killed_between_its_two_renames_is_finished_by_the_next_run(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(writer, "_exchange", lambda a, b: False)
  manual = _copy_good(tmp_path / "IXI", range(4))
  out = tmp_path / "data"
  argv = ["--dataset=ixi", f"--manual_dir={manual}", f"--data_dir={out}"]
  assert _run(argv, capsys)[0] == 0
  shutil.copy(BUNDLED[4], manual)
  real_rename, renames = os.rename, []

  def rename(a, b):
    renames.append((a, b))
    if ".staging" in str(a) and "incomplete." not in str(a) and not str(a).endswith(".old"):
      raise KeyboardInterrupt  # killed after moving the old set away, before moving the new one in
    return real_rename(a, b)

  monkeypatch.setattr(writer.os, "rename", rename)
  with pytest.raises(KeyboardInterrupt):
    _run(argv, capsys)
  monkeypatch.setattr(writer.os, "rename", real_rename)
  with pytest.raises(FileNotFoundError, match="no prepared dataset"):  # refused, never half-read
    pipeline.dataset_info(str(out / "ixi"))
  rc, err = _run(argv, capsys)
  assert rc == 0, err
  assert _subject(BUNDLED[4]) in {s for s, _ in _all_records(str(out / "ixi"))}
  assert sorted(os.listdir(out)) == ["ixi"]


# ----------------------------------------------------------------------------------------------
# kill -9


_KILLABLE = textwrap.dedent("""
    import os, sys, time
    from data_prep import __main__ as cli, builder, ixi
    marker, nth, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    ixi.TARGET_HW, ixi.MAX_SLICES = (64, 64), 8  # as the in-process runs (small_ixi)
    real, volumes = builder.volume_examples, []
    def volume_examples(src):
      volumes.append(src.key)
      if len(volumes) == nth:  # block inside the build, after nth - 1 volumes were converted
        open(marker, "w").close()
        time.sleep(600)
      return real(src)
    builder.volume_examples = volume_examples
    sys.exit(cli.main(argv))
""")


def _kill_mid_write(argv, marker, nth):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT)
  proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, str(marker), str(nth), *argv, "--no_progress"], cwd=ROOT,
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.time() + 120
  while not marker.exists():
    assert proc.poll() is None, proc.stderr.read().decode()
    assert time.time() < deadline, "data_prep never reached the volume to be killed in"
    time.sleep(0.05)
  proc.kill()  # SIGKILL: no cleanup of any kind runs
  proc.wait()
  proc.stderr.close()


@pytest.mark.slow
def test_kill_9_during_data_prep(tmp_path, capsys):
  """Slow (two killed interpreters, four builds); in the default suite an interrupted build is never
  marked complete (test_a_split_emptied_while_converting_is_not_marked_complete) and an interrupted
  swap is finished by the next run (test_a_swap_killed_between_its_two_renames_is_finished_by_the_next_run).
  Killed mid-build: a fresh build is never read as complete, a rebuild leaves the old set complete
  and unchanged; each rerun builds the set correctly (same slices as an uninterrupted build)."""
  manual = _copy_good(tmp_path / "IXI", range(4))
  out = tmp_path / "out"
  d = str(out / "ixi")
  argv = ["--dataset=ixi", f"--manual_dir={manual}", f"--data_dir={out}"]
  _kill_mid_write(argv, tmp_path / "m1", nth=3)
  assert any(n.startswith("incomplete.") for n in os.listdir(out / "ixi" / "all"))  # TFDS's temp folder
  with pytest.raises(FileNotFoundError, match=r"only an incomplete \(interrupted\) build"):
    pipeline.dataset_info(d)
  assert _run(argv, capsys)[0] == 0
  assert not any(n.startswith("incomplete.") for n in os.listdir(out / "ixi" / "all"))
  reference = tmp_path / "reference"
  assert _run(["--dataset=ixi", f"--manual_dir={manual}", f"--data_dir={reference}"], capsys)[0] == 0
  ref = _all_records(str(reference / "ixi"))
  got = _all_records(d)
  assert got.keys() == ref.keys() and all(np.array_equal(got[k], ref[k]) for k in ref)

  # A rebuild with changed inputs, killed mid-build: the complete set is untouched.
  complete = _dataset_files(d)
  shutil.copy(BUNDLED[4], manual)
  _kill_mid_write(argv, tmp_path / "m2", nth=2)
  assert _dataset_files(d) == complete and _all_records(d).keys() == ref.keys()
  assert os.path.isdir(out / ".ixi.staging")
  assert _run(argv, capsys)[0] == 0
  got = _all_records(d)
  assert {s for s, _ in got} == {s for s, _ in ref} | {_subject(BUNDLED[4])}
  assert all(np.array_equal(got[k], ref[k]) for k in ref)
  assert sorted(os.listdir(out)) == ["ixi"]
