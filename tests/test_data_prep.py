"""data_prep on real MR volumes: IXI (archives and extracted), fastMRI (.h5), bad input, interrupted runs;
the TFDS ways in (`tfds build`, `tfds.load`) and the Beam path.

The volumes are real scans shipped by nibabel / nilearn / dipy, renamed and laid out the way the IXI and
fastMRI downloads are; the six real 2 mm IXI T1 files bundled in data_prep/sample_data/ixi_t1_2mm are
the IXI download's files as such.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import importlib.util
import os
import shutil
import sys
import tarfile

import h5py
import nibabel as nib
import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_prep import __main__ as cli
from data_prep import fastmri, ixi, sample, volumes
from data_prep.builder import Plan
from data_prep.datasets import Ixi
from mrsr_jax.data import records

# Real IXI T1 files as the IXI download names them (2 mm; see the README there).
IXI_FILES = sample.BUNDLED_IXI_DIR


def _pkg(package, *parts):
  return os.path.join(list(importlib.util.find_spec(package).submodule_search_locations)[0], *parts)


MNI = _pkg("nilearn", "datasets", "data", "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
ANATOMICAL = _pkg("nibabel", "tests", "data", "anatomical.nii")
EXAMPLE4D = _pkg("nibabel", "tests", "data", "example4d.nii.gz")
T1_SLICE = _pkg("dipy", "data", "files", "t1_coronal_slice.npy")


@pytest.fixture(scope="module")
def mni2mm():
  """The MNI152 T1 template at 2 mm (box-averaged), [98, 116, 94], RAS."""
  return volumes.block_downsample(np.asarray(nib.load(MNI).dataobj, np.float32), (2, 2, 2))


def _save(path, data, spacing=(2.0, 2.0, 2.0), dtype=np.int16):
  img = nib.Nifti1Image(np.asarray(data).astype(dtype), np.diag([*spacing, 1.0]))
  nib.save(img, path)
  return path


def _subject_volume(mni2mm, k):
  """A distinct real volume per fake subject: a shifted crop of the 2 mm MNI template."""
  return np.round(mni2mm[2 * k:2 * k + 84, k:k + 100, 20 + k:20 + k + 40])


def _records(dataset_dir, split):
  return list(records.examples(dataset_dir, split))


def _run(argv):
  return cli.main([*argv, "--no_progress"])


@pytest.fixture
def small_ixi(monkeypatch):
  monkeypatch.setattr(ixi, "TARGET_HW", (64, 64))
  monkeypatch.setattr(ixi, "MAX_SLICES", 12)


# ----------------------------------------------------------------------------------------------
# volumes


def test_slice_axis_from_affine_and_header():
  # Thick-slice axis wins wherever it is.
  assert volumes.slice_axis(np.diag([0.94, 0.94, 1.2, 1])) == 2
  assert volumes.slice_axis(np.diag([3.0, 1.0, 1.0, 1])) == 0
  # Isotropic: the header's slice dimension, else the third axis.
  hdr = nib.Nifti1Header()
  hdr.set_dim_info(slice=1)
  assert volumes.slice_axis(np.eye(4) * 2, hdr) == 1
  assert volumes.slice_axis(np.eye(4) * 2, nib.Nifti1Header()) == 2
  # MNI is RAS -> axial slices; anatomical.nii is LAS -> axial.
  img = nib.load(MNI)
  assert volumes.plane_name(img.affine, volumes.slice_axis(img.affine, img.header)) == "axial"


def test_slice_axis_of_real_ixi_is_sagittal():
  img = nib.load(os.path.join(IXI_FILES, "IXI012-HH-1211-T1.nii.gz"))
  axis = volumes.slice_axis(img.affine, img.header)
  assert axis == 2 and volumes.plane_name(img.affine, axis) == "sagittal"


def test_robust_normalise_real_volume():
  data, _, _ = volumes.load_nifti(ANATOMICAL)
  norm, scale = volumes.robust_normalise(data)
  assert scale == pytest.approx(np.percentile(data, 99.5))
  assert norm.dtype == np.float32 and norm.min() == 0.0 and norm.max() == 1.0
  assert np.mean(norm == 1.0) == pytest.approx(0.005, abs=0.004)  # only the top 0.5% clip
  np.testing.assert_allclose(norm * scale, np.clip(data, 0, scale), rtol=1e-6, atol=1e-3)


def test_centre_crop_or_pad():
  x = np.arange(5 * 6, dtype=np.float32).reshape(5, 6)
  y = volumes.centre_crop_or_pad(x, (8, 4))
  assert y.shape == (8, 4)
  np.testing.assert_array_equal(y[1:6], x[:, 1:5])
  assert not y[0].any() and not y[6:].any()


# ----------------------------------------------------------------------------------------------
# splits


def test_ixi_split_sizes_disjoint_deterministic():
  rng = np.random.default_rng(1)
  subjects = {f"IXI{i:03d}": [c for c in ("T1", "T2", "PD") if rng.random() < 0.97] or ["T1"] for i in range(620)}
  a = ixi.assign_splits(subjects, seed=0)
  assert a == ixi.assign_splits(subjects, seed=0)
  assert a != ixi.assign_splits(subjects, seed=1)
  for c in ("T1", "T2", "PD"):
    counts = collections.Counter(a[s, c] for s, cs in subjects.items() if c in cs)
    assert counts["train"] == 500 and counts["test"] == 70 and counts["val"] == 6, (c, counts)
  # Few subjects: proportional, with at least one test and one val subject.
  # No subject in two splits, across contrasts.
  for s, cs in subjects.items():
    assert len({a[s, c] for c in cs} - {None}) <= 1
  few = ixi.assign_splits({f"IXI{i:03d}": ["T1"] for i in range(6)})
  assert sorted(collections.Counter(few.values()).items()) == [("test", 1), ("train", 4), ("val", 1)]
  assert ixi.split_quota(2) == {"val": 0, "test": 0, "train": 2}
  assert ixi.split_quota(100) == {"val": 1, "test": 12, "train": 100}  # train: the rest


def test_stored_order_is_the_same_wherever_the_files_are(tmp_path, mni2mm, small_ixi):
  """TFDS orders the stored examples (the training order) by a hash of their keys; keys that held the
  absolute path gave each checkout or download folder its own order, and so its own trained numbers."""
  import shutil
  (tmp_path / "a").mkdir()
  first = _ixi_download(tmp_path / "a", mni2mm)
  second = tmp_path / "elsewhere" / "the download moved"
  shutil.copytree(first, second)
  orders = []
  for manual, out in ((first, tmp_path / "out_a"), (second, tmp_path / "out_b")):
    assert _run(["--dataset=ixi", f"--manual_dir={manual}", f"--data_dir={out}"]) == 0
    d = str(out / "ixi")
    orders.append({s: [(r["subject"], r["contrast"], r["slice_index"]) for r in _records(d, s)]
                   for s in records.SPLITS})
  assert all(orders[0][s] for s in records.SPLITS)
  assert orders[0] == orders[1]
  # Not the sorted order either: the hash still mixes subjects (what the builder relies on).
  train = orders[0]["train"]
  assert train != sorted(train)


def test_ixi_names():
  assert ixi.parse_name("IXI012-HH-1211-T1.nii.gz") == ("IXI012", "T1")
  assert ixi.parse_name("IXI002-Guys-0828-DTI-00.nii.gz") == ("IXI002", "DTI-00")
  assert ixi.parse_name("IXI002-Guys-0828-MRA.nii.gz") == ("IXI002", "MRA")
  assert ixi.parse_name("notes.nii.gz") is None


# ----------------------------------------------------------------------------------------------
# IXI end to end


def _ixi_download(tmp_path, mni2mm):
  """IXI-T1.tar (4 subjects, real volumes) + extracted T2 files + an MRA and a stray file."""
  staging = tmp_path / "staging"
  staging.mkdir()
  manual = tmp_path / "IXI"
  manual.mkdir()
  names = []
  for k, (subj, site) in enumerate([("IXI100", "Guys"), ("IXI101", "HH"), ("IXI102", "IOP"), ("IXI103", "Guys")]):
    names.append(_save(str(staging / f"{subj}-{site}-{1000 + k}-T1.nii.gz"), _subject_volume(mni2mm, k)))
  # anatomical.nii (a different real T1 scan) as a fifth subject, inside the archive too.
  anat = staging / "IXI104-HH-1004-T1.nii.gz"
  with open(ANATOMICAL, "rb") as f, gzip.open(anat, "wb") as g:
    g.write(f.read())
  names.append(str(anat))
  with tarfile.open(manual / "IXI-T1.tar", "w") as tar:
    for n in names:
      tar.add(n, arcname=os.path.basename(n))
  t2 = manual / "t2" / "extracted"
  t2.mkdir(parents=True)
  for k, subj in enumerate(["IXI100", "IXI101", "IXI105"]):
    _save(str(t2 / f"{subj}-Guys-{2000 + k}-T2.nii.gz"), _subject_volume(mni2mm, k + 3)[::-1])
  shutil.copy(names[0], t2 / "IXI100-Guys-1000-MRA.nii.gz")
  (manual / "README.txt").write_text("not an image")
  return manual


def test_ixi_from_archive_and_extracted(tmp_path, mni2mm, small_ixi):
  manual = _ixi_download(tmp_path, mni2mm)
  data_dir = tmp_path / "out"
  assert _run(["--dataset=ixi", f"--manual_dir={manual}", f"--data_dir={data_dir}", "--num_shards=2"]) == 0
  d = str(data_dir / "ixi")
  info = records.read_info(d)
  assert info["labels"] == ["ixi/T1", "ixi/T2"]
  assert info["slice_shapes"] == [[64, 64]]
  assert any("MRA" in n for n in info["notes"])

  by_split = {s: _records(d, s) for s in records.SPLITS}
  subjects = {s: {r["subject"] for r in recs} for s, recs in by_split.items()}
  # Per contrast one val and one test volume, the rest train; no subject in two splits.
  for c, n in (("T1", 5), ("T2", 3)):
    per = {s: len({r["subject"] for r in recs if r["contrast"] == c}) for s, recs in by_split.items()}
    assert per == {"train": n - 2, "test": 1, "val": 1}, (c, per)
  assert sum(len(v) for v in subjects.values()) == 6
  assert not (subjects["train"] & subjects["test"] or subjects["train"] & subjects["val"]
              or subjects["test"] & subjects["val"])
  for s, recs in by_split.items():
    assert info["splits"][s]["num_examples"] == len(recs)
    assert sorted(info["splits"][s]["subjects"]) == sorted(subjects[s])
    assert len(records.list_shards(d, s)) == 2 and sum(info["splits"][s]["shard_lengths"]) == len(recs)
  # One volume's slices, bit for bit against the volume helpers and close to plain numpy.
  recs = {(r["subject"], r["contrast"], r["slice_index"]): r for rs in by_split.values() for r in rs}
  vol = ixi.load_file(ixi.IxiFile("IXI102", "T1", "x", str(manual / "IXI-T1.tar"), "IXI102-IOP-1002-T1.nii.gz"),
                      target_hw=(64, 64), max_slices=12)
  assert len(vol.slice_indices) == 12
  raw = _subject_volume(mni2mm, 2)  # slices along the last (z) axis
  for image, k in zip(vol.slices, vol.slice_indices):
    r = recs["IXI102", "T1", k]
    np.testing.assert_array_equal(r["image"], image)
    expected = np.clip(raw[:, :, k] / np.percentile(raw, 99.5), 0, 1)[10:74, 18:82]
    np.testing.assert_allclose(r["image"], expected, atol=1e-6)
    assert r["intensity_scale"] == pytest.approx(np.percentile(raw, 99.5))
    np.testing.assert_allclose(r["spacing"], [2, 2, 2])
  assert recs["IXI104", "T1", 12]["image"].shape == (64, 64)  # 33x41 anatomical, zero padded

  # Orientation from each file's affine: diagonal (RAS, axial slices) -> "RA"; anatomical.nii is LAS.
  assert {(r["subject"] == "IXI104", r["orientation"]) for rs in by_split.values() for r in rs} == {
      (False, "RA"), (True, "LA")}
  # A rerun with the same inputs reuses the set untouched.
  v = info["path"]
  before = {p: os.path.getmtime(os.path.join(v, p)) for p in os.listdir(v)}
  assert _run(["--dataset=ixi", f"--manual_dir={manual}", f"--data_dir={data_dir}", "--num_shards=2"]) == 0
  assert before == {p: os.path.getmtime(os.path.join(v, p)) for p in os.listdir(v)}
  assert info["path"] == str(data_dir / "ixi" / "all" / "1.0.0")


def test_ixi_real_download_files(tmp_path):
  """The six real 2 mm IXI T1 volumes at the paper's 240x240x96 target (padded: they are 120x120x90)."""
  manual = tmp_path / "IXI-T1"   # the NIfTI files alone, as extracted from IXI-T1.tar
  manual.mkdir()
  for f in sorted(os.listdir(IXI_FILES)):
    if f.endswith(".nii.gz"):
      os.symlink(os.path.join(IXI_FILES, f), manual / f)
  assert _run(["--dataset=ixi", f"--manual_dir={manual}", f"--data_dir={tmp_path}"]) == 0
  info = records.read_info(str(tmp_path / "ixi"))
  assert info["slice_shapes"] == [[240, 240]] and info["labels"] == ["ixi/T1"]
  assert [info["splits"][s]["num_volumes"] for s in ("train", "test", "val")] == [4, 1, 1]
  assert all(0 < info["splits"][s]["num_examples"] <= 90 * info["splits"][s]["num_volumes"] for s in records.SPLITS)
  vol = next(records.examples(str(tmp_path / "ixi"), "val"))
  assert vol["orientation"] == "PS"  # the 2 mm files are P-S-R, sliced sagittally
  assert vol["image"].shape == (240, 240) and not vol["image"][:60].any()  # padding around 120x120


# ----------------------------------------------------------------------------------------------
# the bundled sample


def test_sample_holds_out_whole_real_subjects(sample_data_dir):
  """The demo's sample: 4 IXI subjects + the package volumes train, one whole IXI subject each val/test."""
  d = os.path.join(sample_data_dir, "sample")
  info = records.read_info(d)
  package_subjects = ["dipy_S0_10slices", "dipy_t1_coronal_slice", "mni152_2009a", "nibabel_anatomical"]
  assert info["splits"]["val"]["subjects"] == ["IXI015"]
  assert info["splits"]["test"]["subjects"] == ["IXI014"]
  assert info["splits"]["train"]["subjects"] == ["IXI012", "IXI013", "IXI033", "IXI034", *package_subjects]
  by_split = {s: _records(d, s) for s in records.SPLITS}
  for split in ("val", "test"):
    recs = by_split[split]
    # The centre 64 of the 90 sagittal slices, every one with signal, all in scanner units x scale.
    assert sorted(r["slice_index"] for r in recs) == list(range(13, 77))
    assert {r["contrast"] for r in recs} == {"T1"} and {r["image"].shape for r in recs} == {(128, 128)}
    np.testing.assert_allclose(recs[0]["spacing"], [2, 2, 2])
  per_subject = collections.Counter(r["subject"] for r in by_split["train"])
  assert all(per_subject[s] == 64 for s in ("IXI012", "IXI013", "IXI033", "IXI034"))
  assert per_subject["mni152_2009a"] == 48 and per_subject["dipy_S0_10slices"] == 10
  # The uint8 files' scale factor is applied: the stored scale is the 99.5th percentile in scanner
  # units (~1,800; without the factor it would be at most 255).
  from data_prep import sample
  scaled = nib.load(os.path.join(sample.BUNDLED_IXI_DIR, "IXI015-HH-1258-T1.nii.gz")).get_fdata()
  assert by_split["val"][0]["intensity_scale"] == pytest.approx(np.percentile(scaled, 99.5), rel=1e-5)
  assert by_split["val"][0]["intensity_scale"] > 1000


def test_sample_split_is_deterministic_and_takes_more_ixi_files(tmp_path, mni2mm):
  from data_prep import sample

  def splits(manual_dir=None):
    sources, _, notes, _ = sample.build(manual_dir)
    return {os.path.basename(s.key): s.split for s in sources}, notes

  a, _ = splits()
  assert a == splits()[0]
  assert collections.Counter(v for k, v in a.items() if k.startswith("IXI")) == {"train": 4, "val": 1, "test": 1}
  assert {v for k, v in a.items() if not k.startswith("IXI")} == {"train"}
  # More IXI files join the subject split; a copy of a bundled subject is ignored, with a note.
  manual = tmp_path / "more"
  manual.mkdir()
  _save(str(manual / "IXI900-HH-0001-T1.nii.gz"), _subject_volume(mni2mm, 0))
  shutil.copy(os.path.join(sample.BUNDLED_IXI_DIR, "IXI012-HH-1211-T1.nii.gz"), manual)
  b, notes = splits(str(manual))
  ixi_b = {k: v for k, v in b.items() if k.startswith("IXI")}
  assert len(ixi_b) == 7 and collections.Counter(ixi_b.values()) == {"train": 5, "val": 1, "test": 1}
  assert any("duplicate IXI012 T1: using the bundled file" in n for n in notes)
  assert [s.key for s in sample.build(str(manual))[0] if "IXI012" in s.key] == [
      os.path.join(sample.BUNDLED_IXI_DIR, "IXI012-HH-1211-T1.nii.gz")]


# SHA-256 of the bundled files as taken from CBICA/CCL_NMF_Prediction (test/input/IXI/nifti/, contents
# unchanged, README there): every number measured on the sample assumes these exact bytes.
BUNDLED_IXI_SHA256 = {
    "IXI012-HH-1211-T1.nii.gz": "d4d595a3d2ea2a0b597be64054193bf52cbea37dfdea8424459154991fc8eba3",
    "IXI013-HH-1212-T1.nii.gz": "3d9f39cc7ce649573361494da47708a19d40b230fc40660296281f1bcee26be7",
    "IXI014-HH-1236-T1.nii.gz": "74c815403bde182fe762bf8f63288fa06891546f899e55e33b68f1a9146240c2",
    "IXI015-HH-1258-T1.nii.gz": "0ef3b676a5fd76583d76edf9176cdac89732e5663b44680764ad3908644d223a",
    "IXI033-HH-1259-T1.nii.gz": "1a668062b42c2a64737a0375cbe457187a63e756aaa3d9602eb9a05c4b169bc5",
    "IXI034-HH-1260-T1.nii.gz": "c2c52c9d50fee114e494af194b79887df8c5b6b9d5cd0f554507b0ce8a838395",
}


def test_bundled_ixi_files_are_unchanged():
  import hashlib
  bundled = sorted(f for f in os.listdir(sample.BUNDLED_IXI_DIR) if f.endswith(".nii.gz"))
  assert bundled == sorted(BUNDLED_IXI_SHA256)
  for f in bundled:
    with open(os.path.join(sample.BUNDLED_IXI_DIR, f), "rb") as fh:
      assert hashlib.sha256(fh.read()).hexdigest() == BUNDLED_IXI_SHA256[f], f
  assert "CC BY-SA 3.0" in open(os.path.join(sample.BUNDLED_IXI_DIR, "README.md")).read()


# ----------------------------------------------------------------------------------------------
# bad input


def test_bad_nifti_inputs_each_reported(tmp_path, mni2mm, small_ixi, capsys):
  manual = tmp_path / "IXI"
  manual.mkdir()
  good = _save(str(manual / "IXI200-HH-0001-T1.nii.gz"), _subject_volume(mni2mm, 0))
  data = open(good, "rb").read()
  (manual / "IXI201-HH-0002-T1.nii.gz").write_bytes(data[:len(data) // 2])
  (manual / "IXI202-HH-0003-T1.nii.gz").write_text("this is not a NIfTI file")
  shutil.copy(EXAMPLE4D, manual / "IXI203-HH-0004-T1.nii.gz")
  nan = _subject_volume(mni2mm, 1).astype(np.float32)
  nan[10, 10, 10] = np.nan
  _save(str(manual / "IXI204-HH-0005-T1.nii.gz"), nan, dtype=np.float32)
  _save(str(manual / "IXI205-HH-0006-T1.nii.gz"), np.zeros((20, 20, 10)))
  _save(str(manual / "IXI206-HH-0007-T1.nii.gz"), np.load(T1_SLICE)[None] * 100)  # 1x256x256: fine (3D)
  with tarfile.open(manual / "IXI-PD.tar", "w") as tar:
    tar.add(good, arcname="IXI207-HH-0008-PD.nii.gz")
  tar_bytes = (manual / "IXI-PD.tar").read_bytes()
  (manual / "IXI-PD.tar").write_bytes(tar_bytes[:len(tar_bytes) // 2])
  expected = {
      "IXI201": "truncated or corrupt",
      "IXI202": "not a readable NIfTI",
      "IXI203": "wrong number of dimensions",
      "IXI204": "1 NaN/Inf voxels",
      "IXI205": "empty volume",
      "IXI-PD.tar": "truncated",
  }
  argv = ["--dataset=ixi", f"--manual_dir={manual}", f"--data_dir={tmp_path / 'out'}"]
  # Two good subjects cannot fill val and test: refused without the flag (see test_faults_data.py).
  assert _run(argv) == 1 and not (tmp_path / "out" / "ixi").exists()
  argv.append("--allow_empty_splits")
  assert _run(argv) == 0
  info = records.read_info(str(tmp_path / "out" / "ixi"))
  problems = {os.path.basename(b["path"]).split("-")[0].split("::")[-1]: b for b in info["bad_files"]}
  for path_key, message in expected.items():
    hit = [b for b in info["bad_files"] if path_key in b["path"]]
    assert len(hit) == 1 and message in hit[0]["problem"], (path_key, info["bad_files"])
  assert len(info["bad_files"]) == len(expected), problems
  out = capsys.readouterr()
  assert "IXI203-HH-0004-T1.nii.gz: wrong number of dimensions" in out.out
  assert "WARNING: split(s) 'val', 'test' of" in out.err and "are EMPTY" in out.err
  assert sum(s["num_volumes"] for s in info["splits"].values()) == 2  # IXI200 and IXI206
  # --strict fails but still never leaves partial shards; all-bad input fails too.
  assert _run([*argv, "--strict"]) == 1
  assert not [f for f in os.listdir(tmp_path / "out" / "ixi") if ".tmp" in f]
  for f in ("IXI200-HH-0001-T1.nii.gz", "IXI206-HH-0007-T1.nii.gz"):
    os.remove(manual / f)
  assert _run(["--dataset=ixi", f"--manual_dir={manual}", f"--data_dir={tmp_path / 'out2'}"]) == 1


def test_load_volume_messages_name_the_file(tmp_path):
  p = _save(str(tmp_path / "flat.nii.gz"), np.full((8, 8, 4), 7))
  with pytest.raises(volumes.BadInputError, match=r"flat\.nii\.gz: empty volume \(constant value 7"):
    volumes.load_nifti(p)
  with pytest.raises(volumes.BadInputError, match="no such file"):
    volumes.load_nifti(str(tmp_path / "missing.nii.gz"))


# ----------------------------------------------------------------------------------------------
# interrupted runs


def _ixi_manual(tmp_path, mni2mm, n=8):
  manual = tmp_path / "IXI"
  manual.mkdir()
  for k in range(n):
    _save(str(manual / f"IXI{300 + k}-HH-{k:04d}-T1.nii.gz"), _subject_volume(mni2mm, k))
  return manual


def test_interrupted_build_is_never_read_and_a_rerun_completes(tmp_path, mni2mm, small_ixi):
  """A build that dies mid-split (any exception) leaves no version folder: TFDS deletes its
  `incomplete.*` folder, readers say so, and a rerun builds the whole set (TFDS starts over)."""
  manual = _ixi_manual(tmp_path, mni2mm)
  out = tmp_path / "out"
  builder = Ixi(data_dir=str(out))
  plan = builder.plan(str(manual))
  crash = [s for s in plan.sources if s.split == "train"][3]

  def boom():
    raise RuntimeError("simulated crash")

  plan.sources = [dataclasses.replace(s, load=boom) if s is crash else s for s in plan.sources]
  with pytest.raises(RuntimeError, match="simulated crash"):
    cli.prepare(builder, plan)
  left = [str(p.relative_to(out)) for p in out.rglob("*")]
  assert not [p for p in left if "1.0.0" in p], left
  with pytest.raises(FileNotFoundError, match="no prepared dataset"):
    records.read_info(str(out / "ixi"))
  assert _run(["--dataset=ixi", f"--manual_dir={manual}", f"--data_dir={out}"]) == 0
  info = records.read_info(str(out / "ixi"))
  for split in records.SPLITS:
    keys = [(r["subject"], r["slice_index"]) for r in _records(str(out / "ixi"), split)]
    assert len(keys) == len(set(keys)) == info["splits"][split]["num_examples"] > 0
  assert sorted(info["splits"]["train"]["subjects"] + info["splits"]["val"]["subjects"]
                + info["splits"]["test"]["subjects"]) == [f"IXI{300 + k}" for k in range(8)]


def test_contrast_configs_share_the_subject_split(tmp_path, mni2mm, small_ixi):
  """ixi/t1 and ixi/t2 hold only their contrast, with every subject in the split ixi/all gives it."""
  manual = _ixi_download(tmp_path, mni2mm)
  out = tmp_path / "out"
  for config in ("", "/t1", "/t2"):
    assert _run([f"--dataset=ixi{config}", f"--manual_dir={manual}", f"--data_dir={out}"]) == 0
  split_of = {}
  for config, contrasts in (("all", {"T1", "T2"}), ("t1", {"T1"}), ("t2", {"T2"})):
    d = str(out / "ixi" / config)
    info = records.read_info(d)
    assert info["config"] == config and set(info["contrasts"]) == contrasts
    for s in records.SPLITS:
      for r in _records(d, s):
        assert r["contrast"] in contrasts
        assert split_of.setdefault(r["subject"], s) == s, (config, r["subject"])
  # The dataset's own folder reads as its default config (all), as config.contrast="" does; training
  # and evaluation read `loop.dataset_dir(config)`, so config.contrast picks the builder config.
  assert records.read_info(str(out / "ixi"))["config"] == "all"
  import ml_collections
  from mrsr_jax.data import pipeline
  from mrsr_jax.train import loop
  for contrast, labels in (("", ["ixi/T1", "ixi/T2"]), ("t2", ["ixi/T2"])):
    d = loop.dataset_dir(ml_collections.ConfigDict({"data_dir": str(out), "dataset": "ixi", "contrast": contrast}))
    assert pipeline.dataset_info(d)["labels"] == labels
    batch = next(pipeline.iterate(pipeline.create_dataset(d, "test", global_batch_size=64, crop_size=None, seed=0,
                                                          train=False, process_index=0, process_count=1)))
    assert {labels[i] for i in batch["label"][batch["mask"]]} == set(labels)
  with pytest.raises(SystemExit) as e:
    _run(["--dataset=ixi/t9", f"--manual_dir={manual}", f"--data_dir={out}"])
  assert e.value.code == 2


# ----------------------------------------------------------------------------------------------
# fastMRI


def _real_slices(mni2mm, n, hw):
  """n real axial MR slices centred in an hw field (float32)."""
  vol = np.moveaxis(mni2mm, 2, 0)[30:30 + n].astype(np.float32)
  return volumes.centre_crop_or_pad(np.kron(vol, np.ones((1, 2, 2), np.float32)), hw)  # back to ~1 mm


def _coil_maps(n_coils, hw):
  """Smooth complex coil sensitivities with sum_c |S_c|^2 = 1, so RSS recovers the image exactly."""
  yy, xx = np.meshgrid(np.linspace(-1, 1, hw[0]), np.linspace(-1, 1, hw[1]), indexing="ij")
  maps = []
  for c in range(n_coils):
    a = 2 * np.pi * c / n_coils
    mag = np.exp(-((yy - 0.8 * np.cos(a)) ** 2 + (xx - 0.8 * np.sin(a)) ** 2))
    maps.append(mag * np.exp(1j * (np.pi * (yy * np.cos(a) + xx * np.sin(a)))))
  maps = np.stack(maps)
  return maps / np.sqrt(np.sum(np.abs(maps) ** 2, axis=0, keepdims=True))


HEADER = (b'<?xml version="1.0"?><ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding>'
          b'<encodedSpace><matrixSize><x>640</x><y>368</y><z>1</z></matrixSize><fieldOfView_mm><x>280</x>'
          b'<y>140</y><z>4.5</z></fieldOfView_mm></encodedSpace><reconSpace><matrixSize><x>320</x><y>320</y>'
          b'<z>1</z></matrixSize><fieldOfView_mm><x>140</x><y>140</y><z>3</z></fieldOfView_mm></reconSpace>'
          b'</encoding></ismrmrdHeader>')


def _h5(path, acquisition="CORPD_FBK", **datasets):
  with h5py.File(path, "w") as f:
    if acquisition is not None:
      f.attrs["acquisition"] = acquisition
    for k, v in datasets.items():
      f.create_dataset(k, data=v)
  return path


def test_fastmri_kspace_reconstruction_is_exact(mni2mm):
  img = _real_slices(mni2mm, 1, (352, 336))[0]
  k = fastmri.image_to_kspace(img.astype(np.complex64))
  np.testing.assert_allclose(fastmri.kspace_to_image(k, None), img, atol=1e-3)
  maps = _coil_maps(4, img.shape)
  np.testing.assert_allclose(fastmri.kspace_to_image(fastmri.image_to_kspace(maps * img), 0), img, atol=1e-3)


def test_fastmri_files(tmp_path, mni2mm):
  imgs = _real_slices(mni2mm, 4, (320, 320)) * 3e-4  # fastMRI-like magnitude units
  big = _real_slices(mni2mm, 4, (400, 368)) * 3e-4  # oversampled readout: recon crops to 320x320
  maps = _coil_maps(4, big.shape[1:])
  manual = tmp_path / "knee"
  train, val = manual / "singlecoil_train", manual / "multicoil_val"
  train.mkdir(parents=True)
  val.mkdir()
  (manual / "singlecoil_test").mkdir()  # fastMRI's test set has no references: ignored
  kspace_1 = fastmri.image_to_kspace(big.astype(np.complex64)).astype(np.complex64)
  kspace_n = fastmri.image_to_kspace(maps[None] * big[:, None]).astype(np.complex64)
  _h5(train / "file1000001.h5", kspace=kspace_1, reconstruction_esc=imgs, reconstruction_rss=imgs * 2,
      ismrmrd_header=np.bytes_(HEADER))
  _h5(train / "file1000002.h5", "CORPDFS_FBK", kspace=kspace_1)  # singlecoil, kspace only
  _h5(train / "file1000003.h5", kspace=kspace_n)  # multicoil, kspace only
  _h5(train / "file1000004.h5", "AXT2", reconstruction_esc=imgs)  # a brain acquisition
  _h5(train / "file1000005.h5", None, reconstruction_esc=imgs)
  _h5(train / "file1000006.h5", mask=np.ones(3))
  (train / "file1000007.h5").write_bytes(b"not hdf5")
  _h5(val / "file1000010.h5", "CORPDFS_FBK", kspace=kspace_n, reconstruction_rss=imgs)
  out = tmp_path / "out"
  assert _run(["--dataset=fastmri", f"--manual_dir={manual}", f"--data_dir={out}"]) == 0
  d = str(out / "fastmri")
  info = records.read_info(d)
  bad = {os.path.basename(b["path"]): b["problem"] for b in info["bad_files"]}
  assert "unknown acquisition 'AXT2'" in bad["file1000004.h5"]
  assert "no 'acquisition' attribute" in bad["file1000005.h5"]
  assert "no 'reconstruction_esc', 'reconstruction_rss' or 'kspace'" in bad["file1000006.h5"]
  assert "not a readable HDF5 file" in bad["file1000007.h5"]
  assert len(bad) == 4
  assert info["labels"] == ["fastmri/FSPD", "fastmri/PD"]
  assert info["splits"]["test"]["subjects"] == ["file1000010"]
  assert sorted(info["splits"]["train"]["subjects"] + info["splits"]["val"]["subjects"]) == [
      "file1000001", "file1000002", "file1000003"]
  assert info["splits"]["val"]["num_volumes"] == 1
  assert _run(["--dataset=fastmri", f"--manual_dir={manual}", f"--data_dir={out}", "--strict"]) == 1

  recs = {(r["subject"], r["slice_index"]): r for s in records.SPLITS for r in _records(d, s)}
  expected_from = {
      "file1000001": (imgs, "PD"),  # reconstruction_esc preferred
      "file1000002": (volumes.centre_crop_or_pad(big, (320, 320)), "FSPD"),
      "file1000003": (volumes.centre_crop_or_pad(big, (320, 320)), "PD"),
      "file1000010": (imgs, "FSPD"),  # reconstruction_rss preferred over kspace
  }
  for subject, (vol, contrast) in expected_from.items():
    slices, index, scale = volumes.prepare_slices(vol, (320, 320), None)
    assert len(index) == 4
    for image, i in zip(slices, index):
      r = recs[subject, i]
      assert r["contrast"] == contrast and r["dataset"] == "fastmri" and r["image"].shape == (320, 320)
      np.testing.assert_allclose(r["image"], image, atol=2e-5)
      assert r["intensity_scale"] == pytest.approx(scale, rel=1e-4)
  np.testing.assert_allclose(recs["file1000001", 0]["spacing"], [140 / 320, 140 / 320, 3])
  np.testing.assert_allclose(recs["file1000002", 0]["spacing"], [1, 1, 1])


def test_fastmri_split_by_file_without_folders(tmp_path, mni2mm):
  imgs = _real_slices(mni2mm, 2, (320, 320))
  for i in range(5):
    _h5(tmp_path / f"file{i}.h5", reconstruction_esc=imgs[:, ::-1] if i % 2 else imgs)
  split, bad, _ = fastmri.split_files(str(tmp_path))
  assert sorted(collections.Counter(split.values()).items()) == [("test", 1), ("train", 3), ("val", 1)]
  assert bad == []
  assert split == fastmri.split_files(str(tmp_path))[0]


# ----------------------------------------------------------------------------------------------
# the TFDS ways in: tfds.load, `tfds build`, Apache Beam


def _three_subjects(tmp_path, mni2mm):
  manual = tmp_path / "IXI"
  manual.mkdir()
  for k in range(3):
    _save(str(manual / f"IXI{400 + k}-HH-{k:04d}-T1.nii.gz"), _subject_volume(mni2mm, k))
  return manual


def _keyed(d, split):
  return {(r["subject"], int(r["slice_index"])): r for r in _records(d, split)}


def _same_records(a, b):
  for split in records.SPLITS:
    ra, rb = _keyed(a, split), _keyed(b, split)
    assert ra.keys() == rb.keys() and ra, split
    for k in ra:
      for f in ("image", "spacing", "intensity_scale", "contrast", "source", "orientation"):
        np.testing.assert_array_equal(ra[k][f], rb[k][f])


def test_tfds_load_builds_and_slices(tmp_path, mni2mm, small_ixi):
  """TFDS's own front doors after importing the builders: `tfds.data_source("ixi/t1", ...)` builds the
  default ArrayRecord set and reads it (no TensorFlow); `tfds.load` (tf.data) builds and reads a
  TFRecord set. Split slicing and the records are TFDS's own, the layout the library reads."""
  import data_prep.datasets  # noqa: F401  (registers ixi, fastmri, sample with TFDS)

  manual = _three_subjects(tmp_path, mni2mm)
  prepare = {"download_config": tfds.download.DownloadConfig(manual_dir=str(manual))}
  for fmt in records.FILE_FORMATS:
    out = str(tmp_path / fmt)
    if fmt == "array_record":
      half = tfds.data_source("ixi/t1", data_dir=out, split="train[:50%]", download_and_prepare_kwargs=prepare)
      half = [half[i] for i in range(len(half))]
    else:
      ds = tfds.load("ixi/t1", data_dir=out, split="train[:50%]", builder_kwargs={"file_format": fmt},
                     download_and_prepare_kwargs=prepare)
      half = list(tfds.as_numpy(ds))
    assert len(half) == 6 and all(ex["image"].dtype == np.float32 and ex["orientation"] == b"RA" for ex in half)
    lib = records.read_info(os.path.join(out, "ixi", "t1"))
    assert lib["file_format"] == fmt and lib["labels"] == ["ixi/T1"] and lib["splits"]["train"]["num_examples"] == 12


def _has(module):
  """Installed; or required (MRSR_REQUIRE_BEAM=1, .ci/beam_tests.sh): then the test runs and fails
  without it instead of skipping."""
  return os.environ.get("MRSR_REQUIRE_BEAM") == "1" or importlib.util.find_spec(module) is not None


@pytest.mark.skipif(not (_has("apache_beam") and _has("mlcroissant") and _has("tensorflow")),
                    reason="`tfds build` needs apache-beam, mlcroissant and TensorFlow (TFDS 4.9's CLI imports "
                           "all three): pip install 'mrsr_jax[beam,tf]' (.ci/beam_tests.sh)")
def test_tfds_build_cli_gives_the_front_doors_records(tmp_path, mni2mm, small_ixi):
  from tensorflow_datasets.scripts.cli import main as tfds_cli

  manual = _three_subjects(tmp_path, mni2mm)
  builder_dir = os.path.join(os.path.dirname(__file__), "..", "data_prep", "datasets", "ixi")
  tfds_cli.main(tfds_cli._parse_flags(["tfds", "build", builder_dir, "--config=t1", f"--manual_dir={manual}",
                                       f"--data_dir={tmp_path / 'cli'}"]))
  assert _run(["--dataset=ixi/t1", f"--manual_dir={manual}", f"--data_dir={tmp_path / 'door'}"]) == 0
  _same_records(str(tmp_path / "cli" / "ixi" / "t1"), str(tmp_path / "door" / "ixi" / "t1"))


@pytest.mark.skipif(not _has("apache_beam"), reason="the Beam path needs apache-beam: pip install 'mrsr_jax[beam]' (.ci/beam_tests.sh)")
def test_beam_direct_runner_gives_the_plain_records(tmp_path, sample_data_dir):
  """--beam_pipeline_options: the same per-volume conversion as a Beam FlatMap (the DirectRunner
  here, Dataflow / Spark / Flink at scale) gives the sample's records of the plain build."""
  assert _run(["--dataset=sample", f"--data_dir={tmp_path}", "--beam_pipeline_options=runner=DirectRunner"]) == 0
  _same_records(os.path.join(sample_data_dir, "sample"), str(tmp_path / "sample"))
  info = records.read_info(str(tmp_path / "sample"))
  assert any("Apache Beam" in n for n in info["notes"])
  assert info["splits"]["test"]["subjects"] == ["IXI014"] and info["labels"] == ["sample/B0", "sample/T1"]


def test_beam_options_without_beam_is_one_line(tmp_path, monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, "apache_beam", None)  # as if not installed
  rc = cli.main(["--dataset=sample", f"--data_dir={tmp_path}", "--beam_pipeline_options=runner=DirectRunner"])
  err = capsys.readouterr().err.strip()
  assert rc == 1 and err == "error: --beam_pipeline_options needs Apache Beam: pip install 'mrsr_jax[beam]' (or apache-beam)"
  assert not os.listdir(tmp_path)
