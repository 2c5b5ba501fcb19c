"""The input pipeline over a real MR TFDS dataset (the bundled sample), in both record formats
(ArrayRecord read by Grain, TFRecord by tf.data): round trip, determinism, resume, eval coverage,
per-host sharding, orientation, and the errors for what is not prepared or cannot be read."""

from __future__ import annotations

import collections
import dataclasses

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_prep import __main__ as cli
from data_prep import sample
from data_prep.builder import Plan
from data_prep.datasets import Sample
from mrsr_jax.data import pipeline, records


def _pipeline_sources():
  """The sample's real volumes, laid out for these pipeline tests rather than for training.

  The centre 12 slices of each bundled IXI subject (so that a dozen train batches cross an epoch),
  and the package volumes (MNI, nibabel, dipy b0) moved from train to test beside the test subject,
  so that test has four volumes in three shards for the per-host sharding tests.
  """
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(sample, "IXI_SLICES", 12)
    sources, bad, notes, config = sample.build(None)
  moved = ("mni_icbm152", "anatomical.nii", "S0_10slices")
  sources = [dataclasses.replace(s, split="test") if any(m in s.key for m in moved) else s for s in sources]
  return sources, bad, notes, config


@pytest.fixture(scope="module", params=records.FILE_FORMATS)
def shards(tmp_path_factory, request):
  """The sample's TFDS builder on the sources of `_pipeline_sources`, 3 record files per split, in
  each record format (every test using it runs on both readers)."""
  data_dir = str(tmp_path_factory.mktemp("data"))
  tfds.disable_progress_bar()
  builder = Sample(data_dir=data_dir, file_format=request.param)
  builder._plan = Plan(*_pipeline_sources())
  cli.prepare(builder, builder._plan, num_shards=3)
  return os.path.join(data_dir, "sample")


def _stored(d, split):
  """Every record of a split, read straight from the dataset's files: key -> record."""
  out = {}
  for r in records.examples(d, split):
    key = (r["subject"], int(r["slice_index"]))
    assert key not in out
    out[key] = r
  return out


def _eval_rows(d, split, **kw):
  kw = {"global_batch_size": 8, "crop_size": None, "seed": 0, "train": False, **kw}
  batches = list(pipeline.iterate(pipeline.create_dataset(d, split, **kw)))
  rows = [{k: v[i] for k, v in b.items()} for b in batches for i in range(len(b["mask"]))]
  return batches, rows


def test_round_trip_bit_for_bit_and_eval_sees_every_slice_once(shards):
  info = pipeline.dataset_info(shards)
  for split in ("train", "test"):
    stored = _stored(shards, split)
    batches, rows = _eval_rows(shards, split)
    real = [r for r in rows if r["mask"]]
    assert len(real) == len(stored) == info["splits"][split]["num_examples"]
    assert len(batches) == pipeline.eval_num_batches(shards, split, 8) == -(-len(stored) // 8)
    seen = collections.Counter((r["subject"], int(r["slice_index"])) for r in real)
    assert set(seen) == set(stored) and max(seen.values()) == 1
    for r in real:
      s = stored[r["subject"], int(r["slice_index"])]
      np.testing.assert_array_equal(r["hr"][..., 0], s["image"])
      assert info["labels"][r["label"]] == f"sample/{s['contrast']}"
      assert r["intensity_scale"] == s["intensity_scale"]
      np.testing.assert_array_equal(r["spacing"], s["spacing"])
    pad = [r for r in rows if not r["mask"]]
    assert len(pad) == 8 * len(batches) - len(stored)
    assert all(not r["hr"].any() for r in pad)


def test_volume_to_pipeline_bit_for_bit(shards):
  """The slices data_prep computes from the real MNI volume come back unchanged from the pipeline."""
  src = next(s for s in _pipeline_sources()[0] if s.key.endswith("mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))
  assert src.split == "test"
  vol, orientation = src.load()
  assert orientation == "RA"
  _, rows = _eval_rows(shards, "test")
  got = {int(r["slice_index"]): r["hr"][..., 0] for r in rows if r["mask"] and r["subject"] == "mni152_2009a"}
  assert sorted(got) == list(vol.slice_indices)
  for image, k in zip(vol.slices, vol.slice_indices):
    np.testing.assert_array_equal(got[k], image)


def test_splits_are_disjoint_by_subject(shards):
  keys = {s: set(_stored(shards, s)) for s in records.SPLITS}
  subjects = {s: {subj for subj, _ in keys[s]} for s in records.SPLITS}
  assert not (subjects["train"] & subjects["test"] or subjects["train"] & subjects["val"]
              or subjects["test"] & subjects["val"])
  info = pipeline.dataset_info(shards)
  assert info["labels"] == ["sample/B0", "sample/T1"]
  assert {s: len(v) for s, v in subjects.items()} == {"train": 5, "test": 4, "val": 1}


def _take(ds, n):
  return [b for _, b in zip(range(n), pipeline.iterate(ds))]


def test_train_batches_shapes_and_determinism(shards):
  kw = dict(global_batch_size=6, crop_size=48, train=True)
  a = _take(pipeline.create_dataset(shards, "train", seed=3, **kw), 12)
  # Decoded in the calling thread (Grain's num_threads=0; tf.data ignores it): the same batches.
  b = _take(pipeline.create_dataset(shards, "train", seed=3, num_threads=0, **kw), 12)
  c = _take(pipeline.create_dataset(shards, "train", seed=4, **kw), 12)
  n_train = pipeline.dataset_info(shards)["splits"]["train"]["num_examples"]
  assert 12 * 6 > n_train  # crosses an epoch boundary: repeat works
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert any(not np.array_equal(x["hr"], z["hr"]) for x, z in zip(a, c))
  first = a[0]
  assert first["hr"].shape == (6, 48, 48, 1) and first["hr"].dtype == np.float32
  assert first["label"].dtype == np.int32 and first["slice_index"].dtype == np.int32
  assert first["spacing"].shape == (6, 3) and first["intensity_scale"].shape == (6,)
  assert first["mask"].all() and first["subject"].dtype.kind == "U"
  hr = np.concatenate([x["hr"] for x in a])
  assert hr.min() >= 0 and hr.max() <= 1 and hr.max() > 0.5
  # Shuffled: the first batch is not the file order of the first shard.
  stored_first = list(_stored(shards, "train"))[:6]
  assert [(s, int(k)) for s, k in zip(first["subject"], first["slice_index"])] != stored_first


def test_each_epoch_is_a_new_order_of_all_the_slices(shards):
  n = pipeline.dataset_info(shards)["splits"]["train"]["num_examples"]
  ds = pipeline.create_dataset(shards, "train", global_batch_size=1, crop_size=16, seed=5, train=True,
                               num_epochs=2)
  keys = [(str(b["subject"][0]), int(b["slice_index"][0])) for b in pipeline.iterate(ds)]
  assert len(keys) == 2 * n
  first, second = keys[:n], keys[n:]
  assert set(first) == set(second) == set(_stored(shards, "train"))
  assert first != second


def test_the_reader_follows_the_record_format(shards):
  """ArrayRecord is read by Grain (no TensorFlow), TFRecord by tf.data; both iterate alike."""
  from mrsr_jax.data import grain_reader

  info = pipeline.dataset_info(shards)
  files = records.list_shards(shards, "train")
  assert len(files) == 3 and all(f".{info['file_format']}-" in os.path.basename(f) for f in files)
  ds = pipeline.create_dataset(shards, "train", global_batch_size=2, crop_size=16, seed=0, train=True)
  if info["file_format"] == "array_record":
    assert isinstance(ds, grain_reader.GrainBatches)
  else:
    import tensorflow as tf
    assert isinstance(ds, tf.data.Dataset)
  batch = next(ds.as_numpy_iterator())
  assert batch["hr"].shape == (2, 16, 16, 1)


def test_tfrecord_without_tensorflow_is_one_error_with_both_fixes(shards, monkeypatch):
  """Without TensorFlow a TFRecord set cannot be read: the error says so, how to install it, and how
  to rebuild the set as ArrayRecord."""
  import sys

  from mrsr_jax._tensorflow import TensorFlowMissingError

  if pipeline.dataset_info(shards)["file_format"] == "array_record":
    # TFDS caches whether TensorFlow is installed: hiding it in this process would not be faithful.
    pytest.skip("ArrayRecord without TensorFlow runs in a fresh interpreter: tests/test_no_tensorflow.py")
  monkeypatch.setitem(sys.modules, "tensorflow", None)   # `import tensorflow` fails as if not installed
  # As if never imported (a `from mrsr_jax.data import tf_reader` finds the package attribute first).
  monkeypatch.delitem(sys.modules, "mrsr_jax.data.tf_reader", raising=False)
  monkeypatch.delattr(sys.modules["mrsr_jax.data"], "tf_reader", raising=False)
  kw = dict(global_batch_size=2, crop_size=16, seed=0, train=True)
  with pytest.raises(TensorFlowMissingError) as e:
    pipeline.create_dataset(shards, "train", **kw)
  message = str(e.value)
  assert message.startswith(f"{records.prepared_dir(shards)}: its records are TFRecord files, which only tf.data reads")
  assert 'pip install -e ".[tf]"' in message
  assert "rebuild the dataset as ArrayRecord" in message and "`python -m data_prep --dataset=sample" in message


def test_data_prep_file_format_flag_and_fingerprint():
  assert cli.parse_args(["--dataset=sample"]).file_format == "array_record"
  assert cli.parse_args(["--dataset=sample", "--file_format=tfrecord"]).file_format == "tfrecord"
  with pytest.raises(SystemExit) as e:
    cli.parse_args(["--dataset=sample", "--file_format=parquet"])
  assert e.value.code == 2
  # The format is part of the input fingerprint: a rerun in the other format rebuilds the set.
  plans = {}
  for fmt in records.FILE_FORMATS:
    builder = Sample(data_dir="/nonexistent-data-dir", file_format=fmt)
    builder._plan = None
    builder._find_sources = lambda manual_dir: ([], [], [], {})
    plans[fmt] = builder.plan(None)
    assert plans[fmt].settings["file_format"] == fmt
  assert len({p.settings["fingerprint"] for p in plans.values()}) == 2
  with pytest.raises(ValueError, match="file_format='parquet': expected one of array_record, tfrecord"):
    Sample(data_dir="/nonexistent-data-dir", file_format="parquet")


def test_random_crop_is_a_crop_of_the_stored_slice(shards):
  stored = _stored(shards, "train")
  for batch in _take(pipeline.create_dataset(shards, "train", global_batch_size=4, crop_size=40, seed=0,
                                             train=True), 3):
    for hr, subj, k in zip(batch["hr"][..., 0], batch["subject"], batch["slice_index"]):
      full = stored[subj, int(k)]["image"]
      windows = np.lib.stride_tricks.sliding_window_view(full, (40, 40))
      assert np.any(np.all(windows == hr, axis=(-2, -1)))
  # Larger than the slice: zero padded, the whole slice inside.
  batch = _take(pipeline.create_dataset(shards, "train", global_batch_size=2, crop_size=160, seed=0,
                                        train=True), 1)[0]
  hr = batch["hr"][0, ..., 0]
  full = stored[batch["subject"][0], int(batch["slice_index"][0])]["image"]
  assert hr.shape == (160, 160) and np.isclose(hr.sum(), full.sum(), rtol=1e-5)


def test_start_step_resumes_the_data_position(shards):
  kw = dict(global_batch_size=4, crop_size=32, seed=7, train=True)
  full = _take(pipeline.create_dataset(shards, "train", **kw), 9)
  resumed = _take(pipeline.create_dataset(shards, "train", start_step=5, **kw), 4)
  for x, y in zip(full[5:], resumed):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_arrayrecord_resume_reads_only_the_batches_it_yields(shards, monkeypatch):
  """Grain starts a resumed run at its batch: the slices before it are never read (tf.data reads and
  drops them), so a resume deep into a run costs no more than its first batch."""
  if pipeline.dataset_info(shards)["file_format"] != "array_record":
    pytest.skip("tf.data skips by reading: only ArrayRecord starts at the batch")
  reads = []
  real = records.data_source

  class Counting:
    def __init__(self, source):
      self.source = source
    def __len__(self):
      return len(self.source)
    def __getitem__(self, i):
      reads.append(i)
      return self.source[i]

  monkeypatch.setattr(records, "data_source", lambda *a: Counting(real(*a)))
  kw = dict(global_batch_size=4, crop_size=32, seed=7, train=True, num_threads=0)
  far = 10**9                     # millions of epochs in: reading up to it would never finish
  batch = next(pipeline.iterate(pipeline.create_dataset(shards, "train", start_step=far, **kw)))
  assert batch["hr"].shape == (4, 32, 32, 1) and len(reads) == 4
  monkeypatch.setattr(records, "data_source", real)
  again = _take(pipeline.create_dataset(shards, "train", start_step=far - 1, **kw), 2)[1]
  for k in batch:
    np.testing.assert_array_equal(batch[k], again[k])


def test_per_host_sharding_partitions_the_data(shards):
  info = pipeline.dataset_info(shards)
  stored = set(_stored(shards, "test"))
  assert info["splits"]["test"]["num_shards"] == 3
  builder = records.builder(shards)
  for count in (2, 5):  # fewer hosts than record files, and more (an uneven split)
    per_host, n_batches = [], set()
    for index in range(count):
      # Our count of a host's slices is TFDS's own count of its even split.
      sub = tfds.even_splits("test", count)[index]
      if info["file_format"] == "array_record":
        stored_count = len(records.data_source(shards, sub))
      else:
        stored_count = len(list(builder.as_dataset(split=sub)))
      assert pipeline.host_num_examples(shards, "test", index, count) == stored_count
      batches, rows = _eval_rows(shards, "test", global_batch_size=4 * count, process_index=index,
                                 process_count=count)
      n_batches.add(len(batches))
      assert all(b["hr"].shape[0] == 4 for b in batches)
      per_host.append({(r["subject"], int(r["slice_index"])) for r in rows if r["mask"]})
    assert len(n_batches) == 1  # every host runs the same number of eval steps
    assert set().union(*per_host) == stored
    assert sum(len(h) for h in per_host) == len(stored)
  # Training: hosts see disjoint slices in an epoch.
  hosts = []
  for index in range(2):
    ds = pipeline.create_dataset(shards, "train", global_batch_size=2, crop_size=32, seed=0, train=True,
                                 num_epochs=1, process_index=index, process_count=2)
    hosts.append({(s, int(k)) for b in pipeline.iterate(ds) for s, k in zip(b["subject"], b["slice_index"])})
  assert not hosts[0] & hosts[1]
  assert len(hosts[0] | hosts[1]) >= info["splits"]["train"]["num_examples"] - 2  # remainders dropped


def test_orientation_comes_with_every_slice(shards):
  """The axis codes of each stored slice's rows and columns, from its file's affine: the 2 mm IXI
  files are P-S-R (sagittal slices: rows go posterior, columns superior), the MNI template RAS
  (axial: R, A), nibabel's anatomical.nii LAS; dipy's bare .npy slice has no affine ("")."""
  _, rows = _eval_rows(shards, "test")
  got = {}
  for r in rows:
    if r["mask"]:
      got.setdefault(str(r["subject"]), set()).add(str(r["orientation"]))
  assert got == {"IXI014": {"PS"}, "mni152_2009a": {"RA"}, "nibabel_anatomical": {"LA"}, "dipy_S0_10slices": {"RA"}}
  train = {(str(s), str(o)) for b in _take(pipeline.create_dataset(shards, "train", global_batch_size=8, crop_size=32,
                                                                   seed=0, train=True), 20)
           for s, o in zip(b["subject"], b["orientation"])}
  assert ("dipy_t1_coronal_slice", "") in train and ("IXI012", "PS") in train


def test_errors_name_the_problem(shards, tmp_path):
  with pytest.raises(FileNotFoundError, match="no prepared dataset; build it first with "
                                              "`python -m data_prep --dataset=.* --data_dir="):
    pipeline.create_dataset(str(tmp_path), "train", global_batch_size=2, crop_size=32, seed=0, train=True,
                            process_index=0, process_count=1)
  with pytest.raises(ValueError, match="split 'validation' does not exist"):
    records.check_split(shards, "validation")
  with pytest.raises(ValueError, match="not .*multiple of process_count=2|multiple of process_count=2"):
    pipeline.create_dataset(shards, "train", global_batch_size=3, crop_size=32, seed=0, train=True,
                            process_index=0, process_count=2)


def test_a_builder_config_the_dataset_does_not_have_is_named(tmp_path):
  """config.contrast naming no builder config of a prepared dataset is said so, with the choices (not
  "build it with --dataset=ixi/t9", which data_prep refuses); a real config not built yet keeps the
  build hint. The names are data_prep's."""
  assert records.BUILDER_CONFIGS == cli.CONFIGS

  def version(path):
    path.mkdir(parents=True)
    for name in ("dataset_info.json", "features.json"):
      (path / name).write_text("{}")

  data = tmp_path / "data"
  version(data / "sample" / "1.0.0")
  with pytest.raises(FileNotFoundError, match=r"sample/0: config.contrast='0', but sample has no builder "
                                              r"configs \(contrasts\): it is one set, prepared in "):
    records.prepared_dir(str(data / "sample" / "0"))
  version(data / "ixi" / "t1" / "1.0.0")
  (data / "ixi" / ".config").mkdir()
  (data / "ixi" / ".config" / "metadata.json").write_text(json.dumps({"default_config_name": "all"}))
  with pytest.raises(FileNotFoundError, match=r"ixi/t9: config.contrast='t9' is not a builder config of "
                                              r"ixi \(one of all, t1, t2, pd; '' reads its default\)"):
    records.prepared_dir(str(data / "ixi" / "t9"))
  with pytest.raises(FileNotFoundError, match=r"ixi/t2: no prepared dataset \(prepared there: t1\); build "
                                              r"it first with `python -m data_prep --dataset=ixi/t2 "):
    records.prepared_dir(str(data / "ixi" / "t2"))
  assert records.prepared_dir(str(data / "ixi" / "t1")) == str(data / "ixi" / "t1" / "1.0.0")


def test_old_shard_format_and_interrupted_builds_are_refused_with_how_to_rebuild(tmp_path):
  """A folder of the pre-TFDS shards (mrsr_jax 0.1) is named as such, with the command that rebuilds
  it; a folder holding only TFDS's `incomplete.*` leftovers of a killed build is never read."""
  old = tmp_path / "data" / "sample"
  old.mkdir(parents=True)
  (old / "train-00000-of-00001.tfrecord").write_bytes(b"")
  (old / "dataset_info.json").write_text(json.dumps({"name": "sample", "format_version": 1, "splits": {}}))
  with pytest.raises(FileNotFoundError, match=r"old mrsr_jax format .*rebuild them with "
                                              r"`python -m data_prep --dataset=sample --data_dir=.*data`"):
    pipeline.dataset_info(str(old))
  killed = tmp_path / "data" / "ixi" / "all" / "incomplete.AB12CD_1.0.0"
  killed.mkdir(parents=True)
  (killed / "ixi-train.tfrecord-00000-of-00001").write_bytes(b"partial")
  with pytest.raises(FileNotFoundError, match=r"only an incomplete \(interrupted\) build; build it first with "
                                              r"`python -m data_prep --dataset=ixi/all"):
    pipeline.dataset_info(str(tmp_path / "data" / "ixi" / "all"))
