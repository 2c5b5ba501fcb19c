"""create_dataset(cache=True) (issue 13, the input pipeline keeping up): decoded slices kept in memory."""

import glob
import os
import shutil

import numpy as np

from mrsr_jax.data import pipeline


def test_cache_serves_later_epochs_from_memory(sample_data_dir, tmp_path):
  src = os.path.join(sample_data_dir, "sample")
  d = str(tmp_path / "sample")
  shutil.copytree(src, d)
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
  records = [f for f in glob.glob(os.path.join(d, "**", "*"), recursive=True) if "tfrecord" in f]
  assert records
  for f in records:              # later epochs must not need the files any more
    os.remove(f)
  for _ in range(2 * n // b):
    batch = next(cached)
    assert batch["hr"].shape == (b, 64, 64, 1) and np.isfinite(batch["hr"]).all()


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
