"""The Grain reader of `mrsr_jax.data.pipeline`: ArrayRecord datasets, no TensorFlow.

TFDS's random-access reader (`records.data_source`) serves the decoded records of this reader's
sub-split (`tfds.even_splits`, as the tf.data reader reads it) to a Grain `MapDataset`, whose every
transformation is a function of the element index:

  train: shuffle the whole range (Grain's index shuffle, reseeded every epoch from the seed) ->
         repeat -> random crop of the i-th slice of the stream from a generator seeded by (seed, i)
         -> batches (remainder dropped) -> the batches from `start_step` on
  eval:  the range in storage order -> centre crop/pad -> padding rows up to the common batch count
         -> batches -> the batches from `start_step` on

So batch k is a function of (seed, k) alone: a resumed run starts at batch `start_step` without
reading what comes before it, and the threads that prefetch batches (`to_iter_dataset`) cannot
change what a batch holds. The shuffle is uniform over the reader's whole range (not a buffer).
"""

from __future__ import annotations

import os
import threading
from typing import Any, Iterator

import numpy as np

# Seed stream of the crop generator, apart from the shuffle's (both are derived from `seed`).
_CROP_STREAM = 0x6372


def crop(image: np.ndarray, crop_size: int, rng: np.random.Generator | None) -> np.ndarray:
  """[H, W] -> [crop, crop]: zero pad to at least crop (centred, the smaller half first), then a
  random (`rng`) or centre crop; the tf.data reader's `_crop` in numpy."""
  h, w = image.shape
  ph, pw = max(crop_size - h, 0), max(crop_size - w, 0)
  if ph or pw:
    image = np.pad(image, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))
    h, w = image.shape
  if rng is None:
    top, left = (h - crop_size) // 2, (w - crop_size) // 2
  else:
    top, left = int(rng.integers(h - crop_size + 1)), int(rng.integers(w - crop_size + 1))
  return image[top:top + crop_size, left:left + crop_size]


def _text(v) -> str:
  return v.decode() if isinstance(v, bytes) else str(v)


class _Row:
  """A stored record -> one row of a batch (see `mrsr_jax.data.pipeline`)."""

  def __init__(self, labels: list[str], crop_size: int, seed: int | None):
    self.index = {label: i for i, label in enumerate(labels)}
    self.crop_size, self.seed = crop_size, seed

  def __call__(self, i: int, ex: dict[str, Any]) -> dict[str, Any]:
    rng = None if self.seed is None else np.random.default_rng([_CROP_STREAM, self.seed % 2**64, i])
    return {
        "hr": crop(np.asarray(ex["image"], np.float32), self.crop_size, rng)[..., None],
        "label": np.int32(self.index.get(f"{_text(ex['dataset'])}/{_text(ex['contrast'])}", -1)),
        "subject": _text(ex["subject"]),
        "slice_index": np.int32(ex["slice_index"]),
        "intensity_scale": np.float32(ex["intensity_scale"]),
        "spacing": np.asarray(ex["spacing"], np.float32).reshape(3),
        "orientation": _text(ex["orientation"]),
        "mask": np.bool_(True),
    }


def _stack(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
  """Rows -> a batch: numpy arrays with a leading batch axis, strings as str arrays."""
  return {k: np.asarray([r[k] for r in rows]) if isinstance(rows[0][k], str) else np.stack([r[k] for r in rows])
          for k in rows[0]}


class _Cached:
  """A data source whose decoded records are kept after their first read (`cache=True`).

  Below the shuffle, so the batches are those of the uncached reader in every epoch. Two threads
  reading one record at once both decode it; either result is the same record.
  """

  def __init__(self, source):
    self._source = source
    self._records: list[Any] = [None] * len(source)
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, i: int):
    ex = self._records[i]
    if ex is None:
      ex = self._source[i]
      with self._lock:
        self._records[i] = ex
    return ex


class GrainBatches:
  """Per-host batches of a Grain pipeline; iterating yields numpy dicts (strings as str).

  `as_numpy_iterator()` is the same iteration, the name tf.data's datasets have, so that code
  written against either reader reads both.
  """

  def __init__(self, batches, num_threads: int, prefetch: int):
    import grain

    self._batches = batches
    # The buffer holds batches; fewer than the threads would leave threads idle.
    self._options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(prefetch, num_threads))

  def __len__(self) -> int:
    return len(self._batches)

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    if self._options.num_threads == 0:
      return (self._batches[i] for i in range(len(self._batches)))
    return iter(self._batches.to_iter_dataset(self._options))

  def as_numpy_iterator(self) -> Iterator[dict[str, np.ndarray]]:
    return iter(self)


def default_threads() -> int:
  """Threads that decode batches: one per core this process may use, at most 16 (Grain's default)."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
  return max(1, min(16, cores))


def create(dataset_dir: str, subsplit: str, *, info: dict[str, Any], local_batch: int, crop_size: int,
           seed: int, train: bool, start_step: int, num_epochs: int | None, eval_pad: int,
           cache: bool, prefetch: int, num_threads: int | None) -> GrainBatches:
  """The Grain pipeline of `mrsr_jax.data.pipeline.create_dataset` (its arguments, resolved there)."""
  import grain

  from mrsr_jax.data import records

  source = records.data_source(dataset_dir, subsplit)
  if cache and train:
    source = _Cached(source)
  ds = grain.MapDataset.source(source)
  if train:
    # Grain's shuffle seed is 32 bits; the seed's high bits still change it through the crop stream.
    ds = ds.shuffle(seed=(seed + 1) % 2**32).repeat(num_epochs)
    ds = ds.map_with_index(_Row(info["labels"], crop_size, seed))
  else:
    ds = ds.map_with_index(_Row(info["labels"], crop_size, None))
    if eval_pad:
      pad = {"hr": np.zeros([crop_size, crop_size, 1], np.float32), "label": np.int32(0), "subject": "",
             "slice_index": np.int32(-1),
             "intensity_scale": np.float32(1.0),  # 1, not 0: safe to divide by
             "spacing": np.zeros([3], np.float32), "orientation": "", "mask": np.bool_(False)}
      ds = grain.MapDataset.concatenate([ds, grain.MapDataset.range(eval_pad).map(lambda _: pad)])
  ds = ds.batch(local_batch, drop_remainder=True, batch_fn=_stack)
  if start_step:
    ds = ds[start_step:]
  return GrainBatches(ds, default_threads() if num_threads is None else num_threads, prefetch)
