"""create_dataset(cache=True) (issue 13, the input pipeline keeping up): decoded slices kept in memory,
for both readers (ArrayRecord / Grain: the sample as data_prep builds it; TFRecord / tf.data)."""

import glob
import os
import shutil

import numpy as np

from mrsr_jax.data import pipeline, records


def test_cache_serves_later_epochs_from_memory_tfrecord(sample_data_dir, tmp_path):
  from data_prep import __main__ as data_prep_main

  data_dir = str(tmp_path / "data")
  assert data_prep_main.main(["--dataset=sample", f"--data_dir={data_dir}", "--no_progress",
                              "--file_format=tfrecord"]) == 0
  d = os.path.join(data_dir, "sample")
  n = pipeline.dataset_info(d)["splits"]["train"]["num_examples"]
  b = 4
  kw = dict(global_batch_size=b, crop_size=64, seed=3, train=True, process_index=0, process_count=1)
  plain = pipeline.iterate(pipeline.create_dataset(d, "train", **kw))
  cached = pipeline.iterate(pipeline.create_dataset(d, "train", cache=True, **kw))
  first_epoch = n // b - 2      # whole batches inside the first pass (the shuffle buffer spans it)
  for _ in range(first_epoch):   # the first pass reads the files: the same batches either way
    np.testing.assert_array_equal(next(cached)["hr"], next(plain)["hr"])
  for _ in range(4):             # finish the first pass so the cache is complete
    next(cached)
  files = [f for f in glob.glob(os.path.join(d, "**", "*"), recursive=True) if ".tfrecord-" in f]
  assert files
  for f in files:                # later epochs must not need the files any more
    os.remove(f)
  for _ in range(2 * n // b):
    batch = next(cached)
    assert batch["hr"].shape == (b, 64, 64, 1) and np.isfinite(batch["hr"]).all()


def test_cache_serves_later_epochs_from_memory_with_the_same_batches_arrayrecord(sample_data_dir, monkeypatch):
  """Grain: the cache sits below the shuffle, so every epoch's batches are those of cache=False; once
  every record was read, no record is read from the files again."""
  d = os.path.join(sample_data_dir, "sample")
  assert pipeline.dataset_info(d)["file_format"] == "array_record"
  n = pipeline.dataset_info(d)["splits"]["train"]["num_examples"]
  b = 4
  kw = dict(global_batch_size=b, crop_size=64, seed=3, train=True, process_index=0, process_count=1)
  plain = pipeline.iterate(pipeline.create_dataset(d, "train", **kw))
  reads = {"allowed": True, "count": 0}
  real = records.data_source

  class Counting:
    def __init__(self, source):
      self.source = source
    def __len__(self):
      return len(self.source)
    def __getitem__(self, i):
      assert reads["allowed"], f"record {i} read from the files after every record was cached"
      reads["count"] += 1
      return self.source[i]

  monkeypatch.setattr(records, "data_source", lambda *a: Counting(real(*a)))
  cached = pipeline.iterate(pipeline.create_dataset(d, "train", cache=True, **kw))
  epoch = -(-n // b)
  for _ in range(2 * epoch):     # two passes: every record read (the threads read ahead; each once)
    np.testing.assert_array_equal(next(cached)["hr"], next(plain)["hr"])
  assert reads["count"] >= n     # each record once, bar two threads racing for one at an epoch's edge
  reads["allowed"] = False
  for _ in range(2 * epoch):
    x, y = next(cached), next(plain)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_training_reads_through_the_cache_when_config_asks(monkeypatch):
  """config.input_cache reaches every reader of the training loop (and only when asked)."""
  import types

  import ml_collections
  from mrsr_jax.train import loop

  seen = []

  def fake_create_dataset(*args, **kwargs):
    seen.append(kwargs["cache"])
    raise StopIteration          # stop the iterator at its first read: only the call matters

  monkeypatch.setattr(pipeline, "create_dataset", fake_create_dataset)
  stage = types.SimpleNamespace(batch_size=4, crop_size=16)
  for cache in (False, True):
    config = ml_collections.ConfigDict(dict(
        data_dir="d", dataset="sample", contrast="", seed=0, input_readers=1, input_cache=cache))
    try:
      next(loop.train_iterator(stage, config, 0, mesh=None))
    except (StopIteration, RuntimeError):
      pass
  assert seen == [False, True]
