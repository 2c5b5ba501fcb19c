"""tf.data input pipeline: a prepared TFDS dataset -> per-host batches of HR slices.

Only HR slices come out of here. Low-resolution inputs are made from HR on the device
(`mrsr_jax.data.degrade`), so training, evaluation and prediction share one implementation.

Batches are dicts of numpy-convertible tensors, `b = global_batch_size // process_count` rows each:
  hr               float32 [b, crop, crop, 1]  in [0, 1]
  label            int32 [b]     index into `dataset_info(dir)["labels"]` ("dataset/contrast")
  subject          string [b]    (host-side only: drop it before `sharding.to_global`)
  slice_index      int32 [b]
  intensity_scale  float32 [b]   hr * intensity_scale is in scanner units
  spacing          float32 [b, 3] (row, col, slice) mm
  orientation      string [b]    axis codes of the slice's rows and columns ("AS"; "" unknown, and
                                 meaningless after a random crop's zero padding only in position)
  mask             bool [b]      False on padding rows (eval's last batch); all True in training

The dataset is read through TFDS (`builder.as_dataset` with a `tfds.ReadConfig`), from its files
(`records.builder`: no builder code needed). Per-host sharding: reader `process_index` of
`process_count` reads `tfds.even_splits(split, process_count)[process_index]`, a contiguous range of
the split's examples (TFDS stores them in a seeded random order, so every range mixes subjects);
the ranges are disjoint and cover the split. The range depends only on the reader count, so a fixed
`config.input_readers` gives the same batches whatever the number of processes.

Training: the reader's record files shuffled per epoch (`shuffle_seed` from `seed`), interleaved,
slices shuffled in a buffer, repeated (`num_epochs`, None = forever), randomly cropped (zero padded
first if smaller), batched with the remainder dropped. Every random choice is derived from `seed`,
and the crop of the i-th slice from (seed, i) with stateless ops, so the same seed gives the same
batches whatever the parallelism. `start_step` resumes the data position: the first
`start_step * b` slices are skipped and the crop index keeps counting from there, so batch k of a
resumed run is batch `start_step + k` of an uninterrupted one.

Evaluation (`train=False`): no shuffle, one pass, centre crop/pad, and the last batch padded with
`mask=False` rows. Every host yields the same number of batches (needed because each step is a
collective): `eval_num_batches` from the split's size in the dataset info. Each slice is seen
exactly once across hosts.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np

from mrsr_jax._tensorflow import import_tensorflow
from mrsr_jax.data import records

tf = import_tensorflow()  # the `tf` extra; a missing one raises with the install hint

# TF must never allocate accelerator memory: JAX owns the GPU. Guarded because it raises once TF
# has initialised its devices (e.g. when imported after other TF use).
try:
  tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):
  pass

DEFAULT_SHUFFLE_BUFFER = 1024


def dataset_info(dataset_dir: str) -> dict[str, Any]:
  return records.read_info(dataset_dir)


def _host(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # only for the defaults, so the pipeline stays usable without initialising JAX

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, process_count={process_count})")
  return process_index, process_count


def _split_size(info: dict[str, Any], split: str) -> int:
  s = info["splits"].get(split)
  if not s or not s.get("num_examples"):
    raise ValueError(f"{info['path']}: split '{split}' has no slices (splits: "
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


def steps_per_epoch(dataset_dir: str, split: str, global_batch_size: int) -> int:
  """Training steps per pass over a split (remainder dropped)."""
  return _split_size(dataset_info(dataset_dir), split) // global_batch_size


def _local_batch(global_batch_size: int, process_count: int) -> int:
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple of "
                     f"process_count={process_count}")
  return global_batch_size // process_count


def _crop(image, crop_size: int, seed=None):
  """[H, W] -> [crop, crop]: zero pad to at least crop (centred), then random or centre crop."""
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  ph, pw = tf.maximum(crop_size - h, 0), tf.maximum(crop_size - w, 0)
  image = tf.pad(image, [[ph // 2, ph - ph // 2], [pw // 2, pw - pw // 2]])
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  if seed is None:
    top, left = (h - crop_size) // 2, (w - crop_size) // 2
  else:
    top = tf.random.stateless_uniform([], seed=seed, maxval=h - crop_size + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], seed=seed + [0, 1], maxval=w - crop_size + 1, dtype=tf.int32)
  return tf.ensure_shape(image[top:top + crop_size, left:left + crop_size], [crop_size, crop_size])


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
) -> tf.data.Dataset:
  """The per-host batched dataset of `split` (see the module docstring).

  `crop_size=None` keeps the stored slice size (all slices of a shard set share it).
  `cache=True` keeps this reader's decoded slices in host memory after the first pass (training):
  decoding the zlib-compressed slices is ~90% of the pipeline's CPU time (0.5 of 0.55 ms per 240²
  slice, docs/benchmarks.md "Input pipeline"), so from the second epoch on a core delivers ~10x more
  slices. Costs the reader's range in RAM (4 bytes per pixel: ~0.23 MB per 240² slice), and epochs
  after the first replay the first epoch's file order (the shuffle buffer still reshuffles). The
  batches are those of `cache=False` for the first epoch, not after: resume with the same setting.
  """
  process_index, process_count = _host(process_index, process_count)
  b = _local_batch(global_batch_size, process_count)
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}")
  info = dataset_info(dataset_dir)
  _split_size(info, split)
  if crop_size is None:
    shapes = info["slice_shapes"]
    if len(shapes) != 1 or shapes[0][0] != shapes[0][1]:
      raise ValueError(f"{info['path']}: crop_size=None needs one square slice shape, have {shapes}")
    crop_size = int(shapes[0][0])

  labels = tf.constant(info["labels"])
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(labels, tf.range(len(info["labels"]), dtype=tf.int32)), default_value=-1)

  import tensorflow_datasets as tfds

  builder = records.builder(dataset_dir)
  subsplit = tfds.even_splits(split, process_count)[process_index]
  read_config = tfds.ReadConfig(
      # File order per epoch from the seed; TFDS shuffles its file instructions with it.
      shuffle_seed=seed, shuffle_reshuffle_each_iteration=True,
      interleave_cycle_length=16, interleave_block_length=1,
      # No TFDS-side caching or prefetch: our own shuffle, repeat and prefetch follow.
      try_autocache=False, skip_prefetch=True, add_tfds_id=False)
  ds = builder.as_dataset(split=subsplit, shuffle_files=train, read_config=read_config)
  if cache and train:
    ds = ds.cache()
  if train:
    ds = ds.shuffle(shuffle_buffer_size, seed=seed + 1, reshuffle_each_iteration=True)
    ds = ds.repeat(num_epochs)
    # Index before skipping so a resumed run crops its slices exactly as an uninterrupted one.
    ds = ds.enumerate().skip(start_step * b)

  def parse(index, ex):
    if train:
      image = _crop(ex["image"], crop_size, seed=tf.stack([tf.cast(seed, tf.int64), index]))
    else:
      image = _crop(ex["image"], crop_size)
    return {
        "hr": image[..., None],
        "label": table.lookup(ex["dataset"] + "/" + ex["contrast"]),
        "subject": ex["subject"],
        "slice_index": tf.cast(ex["slice_index"], tf.int32),
        "intensity_scale": ex["intensity_scale"],
        "spacing": ex["spacing"],
        "orientation": ex["orientation"],
        "mask": tf.constant(True),
    }

  if train:
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(b, drop_remainder=True)
  else:
    ds = ds.map(lambda s: parse(None, s), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    n = host_num_examples(dataset_dir, split, process_index, process_count)
    total = eval_num_batches(dataset_dir, split, global_batch_size, process_count) * b
    pad = {
        "hr": tf.zeros([crop_size, crop_size, 1], tf.float32),
        "label": tf.constant(0, tf.int32),
        "subject": tf.constant(""),
        "slice_index": tf.constant(-1, tf.int32),
        "intensity_scale": tf.constant(1.0, tf.float32),  # 1, not 0: safe to divide by
        "spacing": tf.zeros([3], tf.float32),
        "orientation": tf.constant(""),
        "mask": tf.constant(False),
    }
    ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat(total - n))
    ds = ds.batch(b, drop_remainder=True)
    if start_step:
      ds = ds.skip(start_step)

  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  ds = ds.with_options(options)
  return ds.prefetch(prefetch)


def _to_numpy(batch: dict[str, Any]) -> dict[str, np.ndarray]:
  out = {k: np.asarray(v) for k, v in batch.items()}
  for key in ("subject", "orientation"):
    if key in out:
      out[key] = np.asarray([s.decode() for s in out[key].reshape(-1)]).reshape(out[key].shape)
  return out


def iterate(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
  """numpy batches of `ds`, with `subject` and `orientation` as str."""
  for batch in ds.as_numpy_iterator():
    yield _to_numpy(batch)
