"""The input pipeline: a prepared TFDS dataset -> per-host batches of HR slices.

Only HR slices come out of here. Low-resolution inputs are made from HR on the device
(`mrsr_jax.data.degrade`), so training, evaluation and prediction share one implementation.

Batches are dicts of numpy-convertible arrays, `b = global_batch_size // process_count` rows each:
  hr               float32 [b, crop, crop, 1]  in [0, 1]
  label            int32 [b]     index into `dataset_info(dir)["labels"]` ("dataset/contrast")
  subject          string [b]    (host-side only: drop it before `sharding.to_global`)
  slice_index      int32 [b]
  intensity_scale  float32 [b]   hr * intensity_scale is in scanner units
  spacing          float32 [b, 3] (row, col, slice) mm
  orientation      string [b]    axis codes of the slice's rows and columns ("AS"; "" unknown, and
                                 meaningless after a random crop's zero padding only in position)
  mask             bool [b]      False on padding rows (eval's last batch); all True in training

Two readers, chosen by the dataset's record format (`records.read_info(d)["file_format"]`):
ArrayRecord (data_prep's default) is read by Grain over TFDS's random-access data source, with no
TensorFlow (`grain_reader`); TFRecord by tf.data (`tf_reader`), which needs TensorFlow (the `tf`
extra). Both give the guarantees below; for one seed they give different batches (different
shuffles and crop generators), so a run resumes on the format it started with.

Per-host sharding: reader `process_index` of `process_count` reads `tfds.even_splits(split,
process_count)[process_index]`, a contiguous range of the split's examples (TFDS stores them in a
seeded random order, so every range mixes subjects); the ranges are disjoint and cover the split. The
range depends only on the reader count, so a fixed `config.input_readers` gives the same batches
whatever the number of processes.

Training: the reader's slices shuffled per epoch (ArrayRecord: uniformly over the whole range;
TFRecord: file order, then a buffer), repeated (`num_epochs`, None = forever), randomly cropped
(zero padded first if smaller), batched with the remainder dropped. Every random choice is derived
from `seed`, and the crop of the i-th slice from (seed, i), so the same seed gives the same batches
whatever the parallelism. `start_step` resumes the data position: batch k of a resumed run is batch
`start_step + k` of an uninterrupted one (ArrayRecord starts there directly; tf.data reads and drops
the first `start_step * b` slices).

Evaluation (`train=False`): no shuffle, one pass, centre crop/pad, and the last batch padded with
`mask=False` rows. Every host yields the same number of batches (needed because each step is a
collective): `eval_num_batches` from the split's size in the dataset info. Each slice is seen
exactly once across hosts.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np

from mrsr_jax import errors
from mrsr_jax.data import records

DEFAULT_SHUFFLE_BUFFER = 1024


def dataset_info(dataset_dir: str) -> dict[str, Any]:
  return records.read_info(dataset_dir)


def _host(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # only for the defaults, so the pipeline stays usable without initialising JAX

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise errors.UserError(f"process_index={process_index} not in [0, process_count={process_count})")
  return process_index, process_count


def _split_size(info: dict[str, Any], split: str) -> int:
  s = info["splits"].get(split)
  if not s or not s.get("num_examples"):
    raise errors.UserError(f"{info['path']}: split '{split}' has no slices (splits: "
                     f"{ {k: v.get('num_examples', 0) for k, v in info['splits'].items()} })")
  return int(s["num_examples"])


def host_num_examples(dataset_dir: str, split: str, process_index: int, process_count: int) -> int:
  """Slices reader `process_index` of `process_count` reads: `tfds.even_splits`' arithmetic (the
  remainder goes one each to the first readers), checked against TFDS in the tests."""
  n = _split_size(dataset_info(dataset_dir), split)
  return n // process_count + (process_index < n % process_count)


def eval_num_batches(dataset_dir: str, split: str, global_batch_size: int, process_count: int = 1) -> int:
  """Batches of an eval pass: the same on every host (the busiest host's count, rounded up)."""
  b = _local_batch(global_batch_size, process_count)
  return max(math.ceil(host_num_examples(dataset_dir, split, i, process_count) / b) for i in range(process_count))


def _local_batch(global_batch_size: int, process_count: int) -> int:
  if global_batch_size < 1 or global_batch_size % process_count:
    raise errors.UserError(f"global_batch_size={global_batch_size} must be a positive multiple of "
                     f"process_count={process_count}")
  return global_batch_size // process_count


def create_dataset(
    dataset_dir: str,
    split: str,
    *,
    global_batch_size: int,
    crop_size: int | None,
    seed: int,
    train: bool,
    start_step: int = 0,
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    shuffle_buffer_size: int = DEFAULT_SHUFFLE_BUFFER,
    prefetch: int = 2,
    cache: bool = False,
    num_threads: int | None = None,
):
  """The per-host batched dataset of `split` (see the module docstring): a `tf.data.Dataset`
  (TFRecord) or a `grain_reader.GrainBatches` (ArrayRecord). Both have `as_numpy_iterator()`;
  `iterate()` gives either's batches with the strings as str.

  `crop_size=None` keeps the stored slice size (all slices of a shard set share it).
  `cache=True` keeps this reader's decoded slices in host memory after the first read (training):
  decoding the zlib-compressed slices is ~90% of the pipeline's CPU time (0.5 of 0.55 ms per 240²
  slice, docs/benchmarks.md "Input pipeline"), so from the second epoch on a core delivers ~10x more
  slices. Costs the reader's range in RAM (4 bytes per pixel: ~0.23 MB per 240² slice). ArrayRecord:
  the batches are those of `cache=False` in every epoch. TFRecord: epochs after the first replay the
  first epoch's file order (the shuffle buffer still reshuffles), so the batches are those of
  `cache=False` for the first epoch only: resume with the same setting.
  `shuffle_buffer_size` is tf.data's (ArrayRecord shuffles the whole range); `num_threads` is Grain's
  decoding threads (default: one per usable core, at most 16; 0 decodes in the calling thread).
  """
  process_index, process_count = _host(process_index, process_count)
  b = _local_batch(global_batch_size, process_count)
  if start_step < 0:
    raise errors.UserError(f"start_step must be >= 0, got {start_step}")
  info = dataset_info(dataset_dir)
  _split_size(info, split)
  if crop_size is None:
    crop_size = _stored_slice_size(info)

  n = host_num_examples(dataset_dir, split, process_index, process_count)
  eval_pad = 0 if train else eval_num_batches(dataset_dir, split, global_batch_size, process_count) * b - n

  import tensorflow_datasets as tfds  # no TensorFlow: TFDS imports it only for tf.data

  subsplit = tfds.even_splits(split, process_count)[process_index]
  return _reader(dataset_dir, subsplit, info=info, local_batch=b, crop_size=crop_size, seed=seed,
                 train=train, start_step=start_step, num_epochs=num_epochs, eval_pad=eval_pad,
                 cache=cache, prefetch=prefetch, shuffle_buffer_size=shuffle_buffer_size,
                 num_threads=num_threads)


def _stored_slice_size(info: dict[str, Any]) -> int:
  """The side of the dataset's slices (`crop_size=None`): they must all be one square shape."""
  shapes = info["slice_shapes"]
  if len(shapes) != 1 or shapes[0][0] != shapes[0][1]:
    raise errors.UserError(f"{info['path']}: crop_size=None needs one square slice shape, have {shapes}")
  return int(shapes[0][0])


def _reader(dataset_dir: str, subsplit: str, *, info: dict[str, Any], shuffle_buffer_size: int,
            num_threads: int | None, **common):
  """The reader of the dataset's record format, on the resolved arguments of `create_dataset`."""
  if info["file_format"] == "array_record":
    from mrsr_jax.data import grain_reader

    return grain_reader.create(dataset_dir, subsplit, info=info, num_threads=num_threads, **common)
  try:
    from mrsr_jax.data import tf_reader
  except ModuleNotFoundError as e:
    if e.name != "tensorflow":
      raise
    raise records.tensorflow_missing(info) from None
  return tf_reader.create(dataset_dir, subsplit, info=info, shuffle_buffer_size=shuffle_buffer_size, **common)


def _to_numpy(batch: dict[str, Any]) -> dict[str, np.ndarray]:
  out = {k: np.asarray(v) for k, v in batch.items()}
  for key in ("subject", "orientation"):
    if key in out:
      out[key] = np.asarray([s.decode() if isinstance(s, bytes) else str(s)
                             for s in out[key].reshape(-1)]).reshape(out[key].shape)
  return out


def iterate(ds) -> Iterator[dict[str, np.ndarray]]:
  """numpy batches of a `create_dataset` result (either reader), with `subject` and `orientation` as str."""
  for batch in ds.as_numpy_iterator():
    yield _to_numpy(batch)
