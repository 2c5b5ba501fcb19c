"""The one shard writer every dataset uses: volumes in, TFRecord slice shards and dataset info out.

A dataset module describes *what* to write as a list of `VolumeSource`s (a split, a stable key and a
`load()` that returns a validated `Volume`); this module decides *how*:

* Volumes are dealt round-robin to `num_shards` shards per split, so every shard mixes subjects and
  contrasts; one volume's slices always stay in one shard.
* A shard is written to `<name>.tmp-<pid>`, its metadata to `.meta/<name>.json`, then the shard is
  renamed into place. A file with a final shard name is therefore always complete.
* A rerun removes stale temporary files and shards of a different shard count, skips every shard
  whose metadata fingerprint (the keys of its volumes and the conversion settings) matches, and redoes
  the rest. Redone shards replace old ones by rename, so no slice is ever written twice.
* `dataset_info.json` is removed when a run starts and written when it ends, so a half-updated shard
  set is never mistaken for a complete one.
* One volume is in memory at a time, its slices are serialised and written one by one.
* A `BadInputError` from `load()` is reported (path and problem) and the volume is skipped; any other
  exception aborts the run and deletes the shard being written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from typing import Any, Callable, Iterable, Mapping, Sequence


from data_prep.volumes import BadInputError, Volume
from mrsr_jax.data import records

META_DIR = ".meta"
# Shards are sized to about this many bytes of slices when --num_shards is not given.
TARGET_SHARD_BYTES = 128 * 2**20


@dataclasses.dataclass(frozen=True)
class VolumeSource:
  """One volume to convert. `load` raises `BadInputError` for bad input."""
  key: str  # stable identity (path, or archive::member), used in messages and fingerprints
  split: str
  load: Callable[[], Volume]
  stamp: str = ""  # changes when the file changes (size, mtime), so a rerun redoes its shard
  nbytes: int = 0  # expected bytes of slices, for automatic shard counts


@dataclasses.dataclass
class WriteResult:
  dataset_dir: str
  info: dict[str, Any]
  bad: list[tuple[str, str]]
  shards_written: int
  shards_reused: int

  @property
  def num_slices(self) -> int:
    return sum(s["num_examples"] for s in self.info["splits"].values())


def file_stamp(path: str) -> str:
  st = os.stat(path)
  return f"{st.st_size}:{st.st_mtime_ns}"


def plan_shards(sources: Sequence[VolumeSource], num_shards: int | None) -> dict[str, list[list[VolumeSource]]]:
  """Split -> list of shards -> volumes in it. Deterministic for a given source order."""
  by_split: dict[str, list[VolumeSource]] = {}
  for s in sources:
    if s.split not in records.SPLITS:
      raise ValueError(f"{s.key}: unknown split {s.split!r}, expected one of {records.SPLITS}")
    by_split.setdefault(s.split, []).append(s)
  plan = {}
  for split, items in by_split.items():
    if num_shards is None:
      total = sum(max(s.nbytes, 1) for s in items)
      count = math.ceil(total / TARGET_SHARD_BYTES)
    else:
      count = num_shards
    count = max(1, min(count, len(items)))
    plan[split] = [items[i::count] for i in range(count)]
  return plan


def _fingerprint(shard: Sequence[VolumeSource], config: Mapping[str, Any]) -> str:
  blob = json.dumps({"config": config, "volumes": [[s.key, s.stamp] for s in shard]}, sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()


def _write_json_atomic(path: str, obj: Any) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def _read_meta(path: str) -> dict[str, Any] | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


def _clean_stale(dataset_dir: str, plan: Mapping[str, list[list[VolumeSource]]]) -> None:
  """Removes temp files, the info file, and shards not part of this plan (other shard counts)."""
  meta_dir = os.path.join(dataset_dir, META_DIR)
  for directory in (dataset_dir, meta_dir):
    for name in os.listdir(directory):
      if ".tmp-" in name or name.endswith(".tmp"):
        os.remove(os.path.join(directory, name))
  info = os.path.join(dataset_dir, records.INFO_FILE)
  if os.path.exists(info):
    os.remove(info)
  for name in os.listdir(dataset_dir):
    m = records.SHARD_RE.match(name)
    if not m:
      continue
    shards = plan.get(m["split"])
    if shards is None or int(m["count"]) != len(shards):
      os.remove(os.path.join(dataset_dir, name))
      meta = os.path.join(meta_dir, name + ".json")
      if os.path.exists(meta):
        os.remove(meta)


def _write_shard(path: str, shard: Sequence[VolumeSource], on_volume: Callable[[str, int], None]) -> dict[str, Any]:
  """Writes one shard to a temporary file, returns its metadata; the caller renames it into place."""
  import tensorflow as tf

  volumes, bad = [], []
  num_examples = 0
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with tf.io.TFRecordWriter(tmp) as writer:
      for src in shard:
        try:
          vol = src.load()
        except BadInputError as e:
          bad.append([e.path, e.problem])
          on_volume(f"{e.path}: {e.problem}", 0)
          continue
        if len(vol.slice_indices) != vol.slices.shape[0]:
          raise ValueError(f"{src.key}: {vol.slices.shape[0]} slices but {len(vol.slice_indices)} indices")
        for image, index in zip(vol.slices, vol.slice_indices):
          writer.write(records.encode_example(
              image=image, dataset=vol.dataset, contrast=vol.contrast, subject=vol.subject,
              slice_index=int(index), spacing=vol.spacing, intensity_scale=vol.intensity_scale,
              source=vol.source))
        n = int(vol.slices.shape[0])
        num_examples += n
        volumes.append({
            "key": src.key, "subject": vol.subject, "contrast": vol.contrast, "dataset": vol.dataset,
            "num_slices": n, "shape": list(vol.slices.shape[1:]), "spacing": list(vol.spacing),
            "intensity_scale": vol.intensity_scale, "plane": vol.plane,
        })
        on_volume("", n)
        del vol  # memory-bounded: only one volume alive
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return {"tmp": tmp, "num_examples": num_examples, "volumes": volumes, "bad": bad}


def write_dataset(
    dataset_dir: str,
    sources: Sequence[VolumeSource],
    *,
    name: str,
    num_shards: int | None = None,
    config: Mapping[str, Any] | None = None,
    bad: Iterable[tuple[str, str]] = (),
    notes: Iterable[str] = (),
    extra_info: Mapping[str, Any] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> WriteResult:
  """Writes (or completes) the shard set of `sources` in `dataset_dir`; returns the info and problems.

  `bad` are problems found before loading (during discovery), reported with the others. `config`
  are the conversion settings; a change in them makes a rerun redo every shard.
  """
  log = log or (lambda msg: print(msg, file=sys.stderr))
  config = dict(config or {})
  os.makedirs(os.path.join(dataset_dir, META_DIR), exist_ok=True)
  plan = plan_shards(sources, num_shards)
  _clean_stale(dataset_dir, plan)

  todo, metas = [], {}
  for split, shards in plan.items():
    for i, shard in enumerate(shards):
      fname = records.shard_name(split, i, len(shards))
      fp = _fingerprint(shard, config)
      meta = _read_meta(os.path.join(dataset_dir, META_DIR, fname + ".json"))
      if meta is not None and meta.get("fingerprint") == fp and os.path.exists(os.path.join(dataset_dir, fname)):
        metas[fname] = meta
      else:
        todo.append((split, fname, shard, fp))

  from tqdm.auto import tqdm

  reused = len(metas)
  bar = tqdm(total=sum(len(t[2]) for t in todo), unit="vol", desc=f"{name} shards",
             disable=not progress or not todo, file=sys.stderr, dynamic_ncols=True)
  counters = {"slices": 0}

  def on_volume(problem: str, n: int):
    if problem:
      bar.write(f"skipped {problem}", file=sys.stderr)
    counters["slices"] += n
    bar.set_postfix(slices=counters["slices"], refresh=False)
    bar.update(1)

  t0 = time.time()
  try:
    for split, fname, shard, fp in todo:
      path = os.path.join(dataset_dir, fname)
      bar.set_description(f"{name} {fname}")
      meta = _write_shard(path, shard, on_volume)
      tmp = meta.pop("tmp")
      meta.update(fingerprint=fp, split=split)
      _write_json_atomic(os.path.join(dataset_dir, META_DIR, fname + ".json"), meta)
      os.replace(tmp, path)
      metas[fname] = meta
  finally:
    bar.close()

  all_bad = [tuple(b) for b in bad]
  for fname in sorted(metas):
    all_bad += [tuple(b) for b in metas[fname]["bad"]]
  info = _make_info(name, plan, metas, config, all_bad, list(notes), extra_info)
  records.write_info(dataset_dir, info)
  result = WriteResult(dataset_dir, info, all_bad, len(todo), reused)
  log(summary_table(result, seconds=time.time() - t0))
  return result


def _make_info(name, plan, metas, config, bad, notes, extra_info) -> dict[str, Any]:
  splits, contrasts, labels, shapes = {}, set(), set(), set()
  for split in records.SPLITS:
    shards = plan.get(split, [])
    lengths, subjects, per_contrast, n_vol = [], set(), {}, 0
    for i in range(len(shards)):
      meta = metas[records.shard_name(split, i, len(shards))]
      lengths.append(meta["num_examples"])
      for v in meta["volumes"]:
        n_vol += 1
        subjects.add(v["subject"])
        contrasts.add(v["contrast"])
        labels.add(f"{v['dataset']}/{v['contrast']}")
        shapes.add(tuple(v["shape"]))
        per_contrast[v["contrast"]] = per_contrast.get(v["contrast"], 0) + v["num_slices"]
    splits[split] = {
        "num_examples": int(sum(lengths)),
        "num_volumes": n_vol,
        "num_shards": len(shards),
        "shard_lengths": lengths,
        "subjects": sorted(subjects),
        "examples_per_contrast": dict(sorted(per_contrast.items())),
    }
  info = {
      "name": name,
      "format_version": 1,
      "splits": splits,
      "labels": sorted(labels),
      "contrasts": sorted(contrasts),
      "slice_shapes": sorted(list(s) for s in shapes),
      "config": config,
      "bad_files": [{"path": p, "problem": q} for p, q in bad],
      "notes": notes,
  }
  info.update(extra_info or {})
  return info


def summary_table(result: WriteResult, seconds: float | None = None) -> str:
  info = result.info
  rows = [("split", "volumes", "subjects", "slices", "shards", "per contrast")]
  for split in records.SPLITS:
    s = info["splits"].get(split)
    if s is None:
      continue
    per = ", ".join(f"{c}:{n}" for c, n in s["examples_per_contrast"].items())
    rows.append((split, str(s["num_volumes"]), str(len(s["subjects"])), str(s["num_examples"]),
                 str(s["num_shards"]), per))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = [f"== {info['name']} -> {result.dataset_dir}"]
  for j, r in enumerate(rows):
    lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if j == 0:
      lines.append("  ".join("-" * w for w in widths))
  lines.append(f"slice shapes {info['slice_shapes']}, labels {info['labels']}")
  took = f" in {seconds:.1f}s" if seconds is not None else ""
  lines.append(f"shards written {result.shards_written}, reused {result.shards_reused}{took}")
  for note in info["notes"]:
    lines.append(f"note: {note}")
  if result.bad:
    lines.append(f"{len(result.bad)} bad file(s) skipped:")
    lines += [f"  {p}: {q}" for p, q in result.bad]
  return "\n".join(lines)
