"""The record of an HR slice and where a prepared dataset lives, defined once.

Datasets are TFDS datasets (`data_prep/datasets/`, built by `python -m data_prep` or `tfds build`);
`FEATURES` below is their feature schema, which the builders use and `mrsr_jax.data.pipeline` reads.
Nothing else should know the feature names. A prepared dataset is TFDS's layout:

  <data_dir>/<dataset>/<config>/<version>/   ixi, fastmri (builder configs: contrasts)
  <data_dir>/<dataset>/<version>/            sample (no configs)

each with TFDS's `dataset_info.json`, `features.json`, the record files (`<name>-<split>.<format>-
NNNNN-of-NNNNN`, `<format>` one of `FILE_FORMATS`) and our `metadata.json` (labels, subjects per split,
bad files, notes). TFDS renames
a version folder into place only once the whole build finished, so a folder named like a version is
complete; readers never look at TFDS's `incomplete.*` folders.

A slice is stored losslessly (float32, zlib-compressed bytes), already normalised per volume to
[0, 1] by a robust maximum; `intensity_scale` is that maximum, so `image * intensity_scale` is back in
scanner units. `orientation` is two nibabel axis codes: the anatomical directions toward which the
stored image's row index (axis 0) and column index (axis 1) increase (e.g. "AS": rows go anterior,
columns superior), from the source's affine; "" where the source has no affine (fastMRI .h5).

The library reads prepared datasets from their files (`tfds.builder_from_directory`); it never
imports `data_prep`. ArrayRecord files are read without TensorFlow (`data_source`: TFDS's random-access
reader); TFRecord files only through tf.data (`builder(...).as_dataset`), so they need TensorFlow.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

from mrsr_jax import errors

SPLITS = ("train", "test", "val")
# The record file formats a dataset may be built in (TFDS's names); the first is data_prep's default:
# ArrayRecord is read with and without TensorFlow, TFRecord only by tf.data (docs/data.md).
FILE_FORMATS = ("array_record", "tfrecord")
VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
# The pre-TFDS shard format (mrsr_jax <= 0.1): `<split>-00000-of-00003.tfrecord` + `dataset_info.json`.
_OLD_SHARD_RE = re.compile(r"^[a-z]+-\d{5}-of-\d{5}\.tfrecord$")
# The builder configs (contrasts) of data_prep's datasets (data_prep/__main__.py CONFIGS; a test keeps
# the two equal): `config.contrast` names one of them, or is "" for the dataset's default.
BUILDER_CONFIGS = {"ixi": ("all", "t1", "t2", "pd"), "fastmri": ("both", "pd", "fspd"), "sample": ()}

# Feature name -> (what it is). The TFDS FeaturesDict is built from `features()` below.
FEATURE_DOCS = {
    "image": "HR slice [H, W] float32 in [0, 1] (normalised per volume), stored losslessly",
    "dataset": "dataset name (ixi, fastmri, sample)",
    "contrast": "contrast (T1, T2, PD, FSPD, B0)",
    "subject": "subject id (IXI id; fastMRI file stem; package volume name)",
    "slice_index": "index of the slice along the source volume's slice axis",
    "spacing": "(row, col, slice) voxel size in mm",
    "intensity_scale": "the volume's 99.5th percentile: image * intensity_scale is in scanner units",
    "source": "the file (or archive::member) the slice was read from",
    "orientation": "nibabel axis codes toward which row and column index increase ('AS'); '' unknown",
}


def features(height: int, width: int):
  """The TFDS feature schema of a dataset whose slices are `height` x `width`."""
  import numpy as np
  import tensorflow_datasets as tfds

  text = lambda name: tfds.features.Text(doc=FEATURE_DOCS[name])
  return tfds.features.FeaturesDict({
      "image": tfds.features.Tensor(shape=(height, width), dtype=np.float32,
                                    encoding=tfds.features.Encoding.ZLIB, doc=FEATURE_DOCS["image"]),
      "dataset": text("dataset"),
      "contrast": text("contrast"),
      "subject": text("subject"),
      "slice_index": tfds.features.Scalar(dtype=np.int32, doc=FEATURE_DOCS["slice_index"]),
      "spacing": tfds.features.Tensor(shape=(3,), dtype=np.float32, doc=FEATURE_DOCS["spacing"]),
      "intensity_scale": tfds.features.Scalar(dtype=np.float32, doc=FEATURE_DOCS["intensity_scale"]),
      "source": text("source"),
      "orientation": text("orientation"),
  })


def example(*, image, dataset: str, contrast: str, subject: str, slice_index: int, spacing,
            intensity_scale: float, source: str = "", orientation: str = "") -> dict[str, Any]:
  """One slice as the builders yield it (checked: one finite 2D slice, a valid orientation)."""
  import numpy as np

  image = np.asarray(image, np.float32)
  if image.ndim != 2:
    raise errors.UserError(f"a record holds one 2D slice, got shape {image.shape}")
  if not np.all(np.isfinite(image)):
    raise errors.UserError(f"{source}: slice {slice_index} has NaN or Inf values")
  if orientation and (len(orientation) != 2 or not set(orientation) <= set("LRAPSI")):
    raise errors.UserError(f"{source}: orientation must be two of L/R/A/P/S/I or '', got {orientation!r}")
  return {"image": image, "dataset": dataset, "contrast": contrast, "subject": subject,
          "slice_index": int(slice_index), "spacing": np.asarray(spacing, np.float32).reshape(3),
          "intensity_scale": np.float32(intensity_scale), "source": source, "orientation": orientation}


class DatasetNotPreparedError(FileNotFoundError):
  """No complete prepared dataset where the config points; the message says how to build it."""


def _build_hint(dataset_dir: str) -> str:
  parent, name = os.path.split(os.path.normpath(dataset_dir))
  if VERSION_RE.match(name):
    parent, name = os.path.split(parent)
  data_dir, dataset = parent, name
  if os.path.basename(parent) in ("ixi", "fastmri", "sample"):  # <data_dir>/<dataset>/<config>
    data_dir, dataset = os.path.dirname(parent), f"{os.path.basename(parent)}/{name}"
  return f"`python -m data_prep --dataset={dataset} --data_dir={data_dir or '.'}`"


def _versions(directory: str) -> list[str]:
  """Complete version folders below `directory`, newest first (TFDS writes `dataset_info.json` last)."""
  if not os.path.isdir(directory):
    return []
  found = [n for n in os.listdir(directory) if VERSION_RE.match(n)
           and os.path.isfile(os.path.join(directory, n, "dataset_info.json"))]
  return sorted(found, key=lambda v: tuple(int(x) for x in v.split(".")), reverse=True)


def _is_old_format(directory: str) -> bool:
  """Whether `directory` holds shards of the pre-TFDS format (files directly in the dataset folder)."""
  if not os.path.isdir(directory):
    return False
  names = os.listdir(directory)
  return any(_OLD_SHARD_RE.match(n) for n in names) or (
      "dataset_info.json" in names and not os.path.isfile(os.path.join(directory, "features.json")))


def prepared_dir(dataset_dir: str) -> str:
  """The complete TFDS version folder a dataset path stands for; clear errors otherwise.

  `dataset_dir` is `<data_dir>/<dataset>` (the dataset's default config: the one its builder marked
  default, e.g. ixi/all), `<data_dir>/<dataset>/<config>` (a builder config: ixi/t1), or a version
  folder itself. The newest complete version wins.
  """
  d = os.path.normpath(os.path.expanduser(dataset_dir))
  if os.path.isfile(os.path.join(d, "dataset_info.json")) and os.path.isfile(os.path.join(d, "features.json")):
    return d  # a version folder
  versions = _versions(d)
  if versions:
    return os.path.join(d, versions[0])
  if os.path.isdir(d):
    configs = sorted(n for n in os.listdir(d) if os.path.isdir(os.path.join(d, n)) and _versions(os.path.join(d, n)))
    default = _default_config(d)
    if default in configs:
      return os.path.join(d, default, _versions(os.path.join(d, default))[0])
    if len(configs) == 1:
      return os.path.join(d, configs[0], _versions(os.path.join(d, configs[0]))[0])
    if configs:
      raise DatasetNotPreparedError(
          f"{d}: several builder configs prepared ({', '.join(configs)}) and none marked default; "
          f"choose one with config.contrast (one of {', '.join(configs)})")
  if _is_old_format(d):
    raise DatasetNotPreparedError(
        f"{d}: shards of the old mrsr_jax format (before the TFDS datasets); rebuild them with "
        f"{_build_hint(d)} (then the old *.tfrecord files, .meta/ and dataset_info.json there can be deleted)")
  _check_config_name(d)
  parent = os.path.dirname(d)
  built = [n for n in os.listdir(parent) if _versions(os.path.join(parent, n))] if os.path.isdir(parent) else []
  other = f" (prepared there: {', '.join(sorted(built))})" if built and not VERSION_RE.match(os.path.basename(d)) else ""
  # TFDS's `incomplete.XXXXXX_<version>` folders (a build running, or killed), here or in a config.
  places = [d] + ([os.path.join(d, n) for n in os.listdir(d)] if os.path.isdir(d) else [])
  incomplete = any(os.path.isdir(p) and any(n.startswith("incomplete.") for n in os.listdir(p)) for p in places)
  state = "only an incomplete (interrupted) build" if incomplete else "no prepared dataset"
  raise DatasetNotPreparedError(f"{d}: {state}{other}; build it first with {_build_hint(d)}")


def _check_config_name(d: str) -> None:
  """`d` (`<data_dir>/<dataset>/<name>`, not prepared) asks for a builder config `name`
  (config.contrast) that its dataset does not have: says so, instead of "not prepared, build it with"
  a command data_prep would refuse. Only where `<data_dir>/<dataset>` is a prepared TFDS dataset root."""
  root, name = os.path.split(d)
  if VERSION_RE.match(name) or name in BUILDER_CONFIGS or not os.path.isdir(root):
    return     # a version folder, or `<data_dir>/<dataset>` itself
  if _versions(root):    # prepared as one set, without builder configs (the sample)
    raise DatasetNotPreparedError(
        f"{d}: config.contrast={name!r}, but {os.path.basename(root)} has no builder configs (contrasts): "
        f"it is one set, prepared in {root}; read it with config.contrast=''")
  dataset, known = os.path.basename(root), BUILDER_CONFIGS.get(os.path.basename(root))
  is_root = _default_config(root) is not None or any(
      _versions(os.path.join(root, n)) for n in os.listdir(root))
  if is_root and known is not None and name not in known:
    choices = f"one of {', '.join(known)}" if known else "it has none"
    raise DatasetNotPreparedError(
        f"{d}: config.contrast={name!r} is not a builder config of {dataset} ({choices}; '' reads "
        f"its default)")


def _default_config(dataset_root: str) -> str | None:
  """The default builder config TFDS recorded for a dataset (`.config/metadata.json`)."""
  path = os.path.join(dataset_root, ".config", "metadata.json")
  try:
    with open(path) as f:
      return json.load(f).get("default_config_name")
  except (OSError, ValueError):
    return None


def builder(dataset_dir: str):
  """The TFDS builder of a prepared dataset, from its files (no builder code needed)."""
  import tensorflow_datasets as tfds

  return tfds.builder_from_directory(prepared_dir(dataset_dir))


def data_source(dataset_dir: str, split: str):
  """TFDS's random-access reader of `split` of an ArrayRecord dataset (`split` as TFDS takes it:
  "train", or a sub-split of `tfds.even_splits`): `len()`, and `[i]` / `__getitems__` give decoded
  records (numpy arrays, Python scalars, text as bytes). Needs no TensorFlow."""
  info = read_info(dataset_dir)
  if info["file_format"] != "array_record":
    raise errors.UserError(f"{info['path']}: its records are {info['file_format']} files, which only tf.data "
                     f"reads; read it through mrsr_jax.data.pipeline, or rebuild it as ArrayRecord with "
                     f"{_build_hint(info['path'])}")
  return builder(dataset_dir).as_data_source(split=split)


def _metadata(path: str) -> dict[str, Any]:
  try:
    with open(os.path.join(path, "metadata.json")) as f:
      return json.load(f)
  except FileNotFoundError:
    return {}
  except ValueError as e:
    raise errors.UserError(f"{path}/metadata.json: corrupt dataset metadata ({e})") from e


def read_info(dataset_dir: str) -> dict[str, Any]:
  """What training and evaluation need to know about a prepared dataset, as a plain dict.

  From TFDS's dataset info (exact slice counts per split) and our metadata: `labels` ("dataset/
  contrast", the index space of the `label` batch field), `contrasts`, `slice_shapes`, per split
  `num_examples`, `num_shards`, `shard_lengths`, `subjects`, `num_volumes`, `examples_per_contrast`
  (None under Beam, which counts on its workers), and the build's `bad_files` and `notes`.
  """
  path = prepared_dir(dataset_dir)
  try:
    with open(os.path.join(path, "dataset_info.json")) as f:
      tfds_info = json.load(f)
    with open(os.path.join(path, "features.json")) as f:
      feats = json.load(f)
  except (OSError, ValueError) as e:
    raise errors.UserError(f"{path}: unreadable TFDS dataset info ({e}); rebuild with {_build_hint(path)}") from e
  meta = _metadata(path)
  splits = {}
  for s in tfds_info.get("splits", []):
    lengths = [int(x) for x in s.get("shardLengths", [])]
    m = meta.get("splits", {}).get(s["name"], {})
    splits[s["name"]] = {
        "num_examples": int(sum(lengths)), "num_shards": len(lengths), "shard_lengths": lengths,
        "subjects": m.get("subjects", []), "num_volumes": m.get("num_volumes", 0),
        "examples_per_contrast": m.get("examples_per_contrast"),
    }
  for name, m in meta.get("splits", {}).items():  # planned but left out (--allow_empty_splits)
    splits.setdefault(name, {"num_examples": 0, "num_shards": 0, "shard_lengths": [], "subjects": [],
                             "num_volumes": 0, "examples_per_contrast": {}})
  image = feats["featuresDict"]["features"]["image"]["tensor"]
  shape = [int(x) for x in image["shape"]["dimensions"]]
  # TFDS records the format; sets it wrote before it did so are TFRecord (its only format then).
  file_format = tfds_info.get("fileFormat") or "tfrecord"
  if file_format not in FILE_FORMATS:
    raise errors.UserError(f"{path}/dataset_info.json: fileFormat {file_format!r} is not one this project "
                     f"reads ({', '.join(FILE_FORMATS)}); rebuild with {_build_hint(path)}")
  return {
      "name": tfds_info.get("name", ""), "config": tfds_info.get("configName", ""),
      "version": tfds_info.get("version", ""), "path": path, "file_format": file_format, "splits": splits,
      "labels": meta.get("labels", []), "contrasts": meta.get("contrasts", []),
      "slice_shapes": [shape], "bad_files": meta.get("bad_files", []), "notes": meta.get("notes", []),
      "settings": meta.get("settings", {}),
  }


def check_split(dataset_dir: str, split: str) -> dict[str, Any]:
  """The dataset info, after checking that `split` exists and has slices, and that this environment
  can read its records (TFRecord needs TensorFlow); one clear error if not."""
  info = read_info(dataset_dir)
  counts = {k: v["num_examples"] for k, v in info["splits"].items()}
  if not counts.get(split):
    state = "is empty" if split in counts else "does not exist"
    raise errors.UserError(f"{info['path']}: split '{split}' {state} (slices per split: {counts})")
  if info["file_format"] == "tfrecord":
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
      raise tensorflow_missing(info)
  return info


def tensorflow_missing(info: Mapping[str, Any]):
  """The error for a TFRecord dataset where TensorFlow is not installed: both ways out."""
  from mrsr_jax._tensorflow import INSTALL_HINT, TensorFlowMissingError

  return TensorFlowMissingError(
      f"{info['path']}: its records are TFRecord files, which only tf.data reads. {INSTALL_HINT}; or "
      f"rebuild the dataset as ArrayRecord, read without TensorFlow: {_build_hint(info['path'])}",
      name="tensorflow")


def list_shards(dataset_dir: str, split: str) -> list[str]:
  """The record files of a split of a prepared dataset, sorted; raises (clearly) when the dataset is
  not prepared or the split is missing or empty."""
  info = check_split(dataset_dir, split)
  files = [f for f in sorted(os.listdir(info["path"])) if re.match(rf"^{re.escape(info['name'])}-{split}\.", f)]
  if len(files) != info["splits"][split]["num_shards"]:
    raise errors.UserError(f"{info['path']}: split '{split}' should have {info['splits'][split]['num_shards']} "
                     f"record file(s), found {len(files)}; rebuild with {_build_hint(info['path'])}")
  return [os.path.join(info["path"], f) for f in files]


def examples(dataset_dir: str, split: str):
  """Every stored record of a split as numpy (strings as str), in storage order: for tests and
  inspection. ArrayRecord: `data_source(d, split)[i]`, no TensorFlow; TFRecord: through tf.data
  (`tfds.as_numpy(records.builder(d).as_dataset(split))` is the same, with bytes)."""
  import tensorflow_datasets as tfds

  if read_info(dataset_dir)["file_format"] == "array_record":
    source = data_source(dataset_dir, split)
    stored = (source[i] for i in range(len(source)))
  else:
    stored = tfds.as_numpy(builder(dataset_dir).as_dataset(
        split=split, shuffle_files=False, read_config=tfds.ReadConfig(interleave_cycle_length=1)))
  for ex in stored:
    yield {k: v.decode() if isinstance(v, bytes) else v for k, v in ex.items()}


def split_size(info: Mapping[str, Any], split: str) -> int:
  """Number of slices in `split` according to `read_info`'s record."""
  try:
    return int(info["splits"][split]["num_examples"])
  except (KeyError, TypeError):
    raise errors.UserError(f"dataset info has no slice count for split '{split}' "
                   f"(expected info['splits']['{split}']['num_examples'])") from None
