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
  import tensorflow_datasets as tfds

  from mrsr_jax.data import records

  b = local_batch
  labels = tf.constant(info["labels"])
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(labels, tf.range(len(info["labels"]), dtype=tf.int32)), default_value=-1)

  builder = records.builder(dataset_dir)
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
    ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat(eval_pad))
    ds = ds.batch(b, drop_remainder=True)
    if start_step:
      ds = ds.skip(start_step)

  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  ds = ds.with_options(options)
  return ds.prefetch(prefetch)
