"""The tf.data reader of `mrsr_jax.data.pipeline`: TFRecord datasets, through TFDS and TensorFlow.

Imported only when a TFRecord dataset is read, so nothing else needs TensorFlow. The reader's
sub-split (`tfds.even_splits`) is read with `builder.as_dataset` and a `tfds.ReadConfig`:

  train: record files shuffled per epoch (`shuffle_seed`), interleaved, slices shuffled in a buffer,
         repeated, enumerated, the first `start_step * b` skipped, each slice randomly cropped from
         (seed, its index in the stream) with stateless ops, batched (remainder dropped)
  eval:  one pass in storage order, centre crop/pad, padding rows up to the common batch count,
         batched, the first `start_step` batches skipped

Every random choice is derived from `seed` and every map is deterministic, so the batches do not
depend on tf.data's parallelism.
"""

from __future__ import annotations

from typing import Any

from mrsr_jax._tensorflow import import_tensorflow

tf = import_tensorflow()  # the `tf` extra; a missing one raises with the install hint

# TF must never allocate accelerator memory: JAX owns the GPU. Guarded because it raises once TF
# has initialised its devices (e.g. when imported after other TF use).
try:
  tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):
  pass


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


def create(dataset_dir: str, subsplit: str, *, info: dict[str, Any], local_batch: int, crop_size: int,
           seed: int, train: bool, start_step: int, num_epochs: int | None, eval_pad: int,
           cache: bool, prefetch: int, shuffle_buffer_size: int) -> tf.data.Dataset:
  """The tf.data pipeline of `mrsr_jax.data.pipeline.create_dataset` (its arguments, resolved there)."""
  table = _label_table(info["labels"])
  ds = _records(dataset_dir, subsplit, seed, train)
  if train:
    ds = _train_batches(ds, table, local_batch, crop_size, seed, start_step, num_epochs, cache,
                        shuffle_buffer_size)
  else:
    ds = _eval_batches(ds, table, local_batch, crop_size, start_step, eval_pad)
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  ds = ds.with_options(options)
  return ds.prefetch(prefetch)


def _label_table(labels: list[str]) -> tf.lookup.StaticHashTable:
  """"dataset/contrast" -> its index in `labels` (-1 if absent)."""
  keys = tf.constant(labels)
  return tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(keys, tf.range(len(labels), dtype=tf.int32)), default_value=-1)


def _records(dataset_dir: str, subsplit: str, seed: int, train: bool) -> tf.data.Dataset:
  """The stored records of the reader's sub-split; training reads the files in a seeded order."""
  import tensorflow_datasets as tfds

  from mrsr_jax.data import records

  builder = records.builder(dataset_dir)
  read_config = tfds.ReadConfig(
      # File order per epoch from the seed; TFDS shuffles its file instructions with it.
      shuffle_seed=seed, shuffle_reshuffle_each_iteration=True,
      interleave_cycle_length=16, interleave_block_length=1,
      # No TFDS-side caching or prefetch: our own shuffle, repeat and prefetch follow.
      try_autocache=False, skip_prefetch=True, add_tfds_id=False)
  return builder.as_dataset(split=subsplit, shuffle_files=train, read_config=read_config)


def _row(ex: dict[str, tf.Tensor], image: tf.Tensor, table: tf.lookup.StaticHashTable) -> dict[str, tf.Tensor]:
  """A stored record with its cropped `image` -> one row of a batch (see `mrsr_jax.data.pipeline`)."""
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


def _pad_row(crop_size: int) -> dict[str, tf.Tensor]:
  """The row that pads the last evaluation batch (`mask` False)."""
  return {
      "hr": tf.zeros([crop_size, crop_size, 1], tf.float32),
      "label": tf.constant(0, tf.int32),
      "subject": tf.constant(""),
      "slice_index": tf.constant(-1, tf.int32),
      "intensity_scale": tf.constant(1.0, tf.float32),  # 1, not 0: safe to divide by
      "spacing": tf.zeros([3], tf.float32),
      "orientation": tf.constant(""),
      "mask": tf.constant(False),
  }


def _train_batches(ds: tf.data.Dataset, table, b: int, crop_size: int, seed: int, start_step: int,
                   num_epochs: int | None, cache: bool, shuffle_buffer_size: int) -> tf.data.Dataset:
  """Shuffled, repeated, from slice `start_step * b` on, each randomly cropped from (seed, its index)."""
  if cache:
    ds = ds.cache()
  ds = ds.shuffle(shuffle_buffer_size, seed=seed + 1, reshuffle_each_iteration=True)
  ds = ds.repeat(num_epochs)
  # Index before skipping so a resumed run crops its slices exactly as an uninterrupted one.
  ds = ds.enumerate().skip(start_step * b)

  def parse(index, ex):
    return _row(ex, _crop(ex["image"], crop_size, seed=tf.stack([tf.cast(seed, tf.int64), index])), table)

  ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(b, drop_remainder=True)


def _eval_batches(ds: tf.data.Dataset, table, b: int, crop_size: int, start_step: int, eval_pad: int
                  ) -> tf.data.Dataset:
  """One pass, centre-cropped, `eval_pad` padding rows, from batch `start_step` on."""
  ds = ds.map(lambda ex: _row(ex, _crop(ex["image"], crop_size), table),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(_pad_row(crop_size)).repeat(eval_pad))
  ds = ds.batch(b, drop_remainder=True)
  if start_step:
    ds = ds.skip(start_step)
  return ds
