"""The TFRecord schema of an HR slice, defined once.

`data_prep` writes it and `mrsr_jax.data.pipeline` reads it; nothing else should know the feature names.

A shard set lives in `<data_dir>/<dataset>/`:
  `<split>-<index:05d>-of-<count:05d>.tfrecord`  one tf.train.Example per 2D slice
  `dataset_info.json`                            counts per split, shapes, contrasts, provenance

Slices are stored losslessly as float32 bytes, already normalised per volume to [0, 1] by a robust
maximum; `intensity_scale` is that maximum, so `image * intensity_scale` is back in scanner units.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

import numpy as np

INFO_FILE = "dataset_info.json"
SHARD_RE = re.compile(r"^(?P<split>[a-z]+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.tfrecord$")
SPLITS = ("train", "test", "val")


def shard_name(split: str, index: int, count: int) -> str:
  return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def encode_example(
    *,
    image: np.ndarray,
    dataset: str,
    contrast: str,
    subject: str,
    slice_index: int,
    spacing: tuple[float, float, float],
    intensity_scale: float,
    source: str = "",
) -> bytes:
  """Serialises one HR slice (2D float array, values in [0, 1]) to a tf.train.Example."""
  import tensorflow as tf

  image = np.asarray(image)
  if image.ndim != 2:
    raise ValueError(f"a record holds one 2D slice, got shape {image.shape}")
  if not np.all(np.isfinite(image)):
    raise ValueError("slice has NaN or Inf values")
  image = image.astype("<f4", copy=False)

  def _bytes(v: bytes):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

  def _int(v: int):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))

  def _floats(v):
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(x) for x in v]))

  feature = {
      "image": _bytes(image.tobytes()),
      "height": _int(image.shape[0]),
      "width": _int(image.shape[1]),
      "dataset": _bytes(dataset.encode()),
      "contrast": _bytes(contrast.encode()),
      "subject": _bytes(subject.encode()),
      "slice_index": _int(slice_index),
      "spacing": _floats(spacing),
      "intensity_scale": _floats([intensity_scale]),
      "source": _bytes(source.encode()),
  }
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def feature_spec():
  import tensorflow as tf

  return {
      "image": tf.io.FixedLenFeature([], tf.string),
      "height": tf.io.FixedLenFeature([], tf.int64),
      "width": tf.io.FixedLenFeature([], tf.int64),
      "dataset": tf.io.FixedLenFeature([], tf.string),
      "contrast": tf.io.FixedLenFeature([], tf.string),
      "subject": tf.io.FixedLenFeature([], tf.string),
      "slice_index": tf.io.FixedLenFeature([], tf.int64),
      "spacing": tf.io.FixedLenFeature([3], tf.float32),
      "intensity_scale": tf.io.FixedLenFeature([1], tf.float32),
      "source": tf.io.FixedLenFeature([], tf.string, default_value=b""),
  }


def parse_example(serialized):
  """tf graph function: serialized Example -> dict of tensors; `image` is float32 [H, W]."""
  import tensorflow as tf

  ex = tf.io.parse_single_example(serialized, feature_spec())
  image = tf.io.decode_raw(ex["image"], tf.float32, little_endian=True)
  ex["image"] = tf.reshape(image, tf.stack([ex["height"], ex["width"]]))
  ex["intensity_scale"] = ex["intensity_scale"][0]
  return ex


def decode_example_numpy(serialized: bytes) -> dict[str, Any]:
  """The same as `parse_example`, eagerly, to numpy (tests, inspection)."""
  ex = parse_example(serialized)
  out = {}
  for k, v in ex.items():
    v = v.numpy()
    out[k] = v.decode() if isinstance(v, bytes) else v
  return out


def read_info(dataset_dir: str) -> dict[str, Any]:
  path = os.path.join(dataset_dir, INFO_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path}: no dataset info; build the shards first with "
        f"`python -m data_prep --dataset=... --data_dir=...`")
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: corrupt dataset info ({e})") from e


def write_info(dataset_dir: str, info: Mapping[str, Any]) -> None:
  """Atomic: a reader never sees a half-written info file."""
  path = os.path.join(dataset_dir, INFO_FILE)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(info, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def list_shards(dataset_dir: str, split: str) -> list[str]:
  """Complete shard files of a split, sorted; raises if none or if the set is incomplete."""
  if not os.path.isdir(dataset_dir):
    raise FileNotFoundError(f"{dataset_dir}: no such shard directory")
  found = {}
  for name in os.listdir(dataset_dir):
    m = SHARD_RE.match(name)
    if m and m["split"] == split:
      found[int(m["index"])] = (int(m["count"]), os.path.join(dataset_dir, name))
  if not found:
    raise FileNotFoundError(f"{dataset_dir}: no '{split}' shards (expected {split}-00000-of-NNNNN.tfrecord)")
  counts = {c for c, _ in found.values()}
  count = counts.pop()
  if counts or sorted(found) != list(range(count)):
    raise ValueError(f"{dataset_dir}: incomplete '{split}' shard set: have {sorted(found)} of {count}")
  return [found[i][1] for i in range(count)]


def split_size(info: Mapping[str, Any], split: str) -> int:
  """Number of slices in `split` according to the dataset info record."""
  try:
    return int(info["splits"][split]["num_examples"])
  except (KeyError, TypeError):
    raise KeyError(f"dataset info has no slice count for split '{split}' "
                   f"(expected info['splits']['{split}']['num_examples'])") from None
