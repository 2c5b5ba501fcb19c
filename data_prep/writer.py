"""The one shard writer every dataset uses: volumes in, TFRecord slice shards and dataset info out.

A dataset module describes *what* to write as a list of `VolumeSource`s (a split, a stable key and a
`load()` that returns a validated `Volume`); this module decides *how*:

* Volumes are dealt round-robin to `num_shards` shards per split, so every shard mixes subjects and
  contrasts; one volume's slices always stay in one shard.
* A shard is written to `<name>.tmp-<pid>`, its metadata to `.meta/<name>.json`, then the shard is
  renamed into place. A file with a final shard name is therefore always complete.
* `dataset_info.json` is written last: a folder without it is incomplete, and readers refuse it.
* A run on a folder without a complete set (first run, or a rerun after an interruption) writes in
  place: it removes stale temporary files and shards of a different shard count, keeps every shard
  whose metadata fingerprint (the keys and stamps of its volumes and the conversion settings)
  matches, and redoes the rest.
* A run on a complete set that would change it (other inputs, settings or --num_shards) never
  touches it until the new set is complete: the new set is built in a sibling staging folder
  (`.<name>.staging`; unchanged shards are hard-linked from the old set, not rewritten), completed
  with its info file, then swapped in by one atomic directory exchange (`renameat2(RENAME_EXCHANGE)`;
  where the system lacks it, two renames, and the next run finishes a swap interrupted between
  them). An interrupted rebuild leaves the old set complete and readable, and its staging folder
  is reused by the next run. Files in the old folder that are not the writer's own are carried over.
* A split that `required_splits` names but ends up without slices, or any bad input under
  `fail_on_bad`, raises before the info file is written, so such a set is never marked complete.
* One volume is in memory at a time, its slices are serialised and written one by one.
* A `BadInputError` from `load()` is reported (path and problem) and the volume is skipped; any other
  exception aborts the run and deletes the shard being written.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import hashlib
import json
import math
import os
import shutil
import sys
import time
from typing import Any, Callable, Iterable, Mapping, Sequence


from data_prep.volumes import BadInputError, Volume
from mrsr_jax.data import records

META_DIR = ".meta"
STAGING_SUFFIX = ".staging"
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


class IncompleteDatasetError(ValueError):
  """The shards were written but the set is not marked complete (an empty split, or bad input
  under `fail_on_bad`). A complete set that was there before is left as it was."""


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
  """Removes temp files, the info file, and shards not part of this plan (other shard counts).

  Only for a folder being written in place, i.e. one that holds no complete set to protect.
  """
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


def staging_dir(dataset_dir: str) -> str:
  """Where a replacement for the complete set in `dataset_dir` is built: a hidden sibling."""
  parent, name = os.path.split(os.path.normpath(dataset_dir))
  return os.path.join(parent, f".{name}{STAGING_SUFFIX}")


def _is_complete(directory: str) -> bool:
  return os.path.isfile(os.path.join(directory, records.INFO_FILE))


def _ours(name: str) -> bool:
  """Names the writer owns in a dataset folder (everything else there is the user's)."""
  return (records.SHARD_RE.match(name) is not None or name in (META_DIR, records.INFO_FILE)
          or ".tmp-" in name or name.endswith(".tmp"))


def _exchange(a: str, b: str) -> bool:
  """Atomically swaps two directories (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
  try:
    renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
  except (AttributeError, OSError, TypeError):  # not glibc >= 2.28 (macOS, musl, Windows)
    return False
  at_fdcwd, rename_exchange = -100, 2
  if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
    return True
  err = ctypes.get_errno()
  if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
    return False  # kernel or file system without exchange: fall back to two renames
  raise OSError(err, f"cannot swap {b} into {a}: {os.strerror(err)}")


def _swap_in(dataset_dir: str, staging: str) -> None:
  """Replaces the set in `dataset_dir` by the complete one in `staging`, then deletes the old one."""
  if _exchange(dataset_dir, staging):
    old = staging  # now holds the old set
  else:
    # Two renames: between them `dataset_dir` does not exist (readers get "no dataset info"), and a
    # run killed there is finished by the next run's `_recover`.
    old = f"{staging}.old-{os.getpid()}"
    os.rename(dataset_dir, old)
    os.rename(staging, dataset_dir)
  _discard_old(old, dataset_dir)


def _discard_old(old: str, dataset_dir: str) -> None:
  """Deletes a replaced set, moving any file that is not the writer's own into `dataset_dir`."""
  for name in os.listdir(old):
    if not _ours(name) and not os.path.lexists(os.path.join(dataset_dir, name)):
      os.rename(os.path.join(old, name), os.path.join(dataset_dir, name))
  shutil.rmtree(old)


def _recover(dataset_dir: str) -> None:
  """Finishes a swap that a kill interrupted between its two renames (see `_swap_in`)."""
  staging = staging_dir(dataset_dir)
  parent, base = os.path.split(staging)
  olds = [os.path.join(parent, n) for n in os.listdir(parent or ".") if n.startswith(base + ".old-")]
  if _is_complete(staging) and not _is_complete(dataset_dir):
    if os.path.isdir(dataset_dir):
      # Not complete, yet a complete replacement is staged: only possible if someone removed the
      # info file by hand; keep their files, the staged set wins.
      _swap_in(dataset_dir, staging)
    else:
      os.rename(staging, dataset_dir)
  for old in olds:
    if os.path.isdir(dataset_dir):
      _discard_old(old, dataset_dir)


def _link_or_copy(src: str, dst: str) -> None:
  if os.path.lexists(dst):
    os.remove(dst)
  try:
    os.link(src, dst)
  except OSError:
    shutil.copy2(src, dst)


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
    required_splits: Sequence[str] = (),
    fail_on_bad: bool = False,
) -> WriteResult:
  """Writes (or completes) the shard set of `sources` in `dataset_dir`; returns the info and problems.

  `bad` are problems found before loading (during discovery), reported with the others. `config`
  are the conversion settings; a change in them makes a rerun redo every shard. Raises
  `IncompleteDatasetError` (after writing the shards, before marking the set complete) when a split
  in `required_splits` has no slice, or, with `fail_on_bad`, when any volume failed to load.
  """
  log = log or (lambda msg: print(msg, file=sys.stderr))
  config = dict(config or {})
  plan = plan_shards(sources, num_shards)
  fingerprints = {}
  for split, shards in plan.items():
    for i, shard in enumerate(shards):
      fingerprints[records.shard_name(split, i, len(shards))] = (split, shard, _fingerprint(shard, config))

  def matching(directory: str, fname: str) -> dict[str, Any] | None:
    meta = _read_meta(os.path.join(directory, META_DIR, fname + ".json"))
    if meta is not None and meta.get("fingerprint") == fingerprints[fname][2] and os.path.exists(
        os.path.join(directory, fname)):
      return meta
    return None

  if os.path.isdir(os.path.dirname(os.path.normpath(dataset_dir)) or "."):
    _recover(dataset_dir)
  staging = staging_dir(dataset_dir)
  unchanged = _is_complete(dataset_dir) and all(matching(dataset_dir, f) for f in fingerprints) and {
      n for n in os.listdir(dataset_dir) if records.SHARD_RE.match(n)} == set(fingerprints)
  if _is_complete(dataset_dir) and not unchanged:
    # Protect the complete set: build the new one beside it, reusing what is unchanged.
    target = staging
    os.makedirs(os.path.join(target, META_DIR), exist_ok=True)
    _clean_stale(target, plan)
    for fname in fingerprints:
      if matching(target, fname) is None and matching(dataset_dir, fname) is not None:
        _link_or_copy(os.path.join(dataset_dir, META_DIR, fname + ".json"),
                      os.path.join(target, META_DIR, fname + ".json"))
        _link_or_copy(os.path.join(dataset_dir, fname), os.path.join(target, fname))
  else:
    target = dataset_dir
    if os.path.isdir(staging):  # a staged set for a folder that has no complete set to protect
      shutil.rmtree(staging)
    os.makedirs(os.path.join(target, META_DIR), exist_ok=True)
    if not unchanged:
      _clean_stale(target, plan)

  todo, metas = [], {}
  for fname, (split, shard, fp) in fingerprints.items():
    meta = matching(target, fname)
    if meta is not None:
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
      path = os.path.join(target, fname)
      bar.set_description(f"{name} {fname}")
      meta = _write_shard(path, shard, on_volume)
      tmp = meta.pop("tmp")
      meta.update(fingerprint=fp, split=split)
      _write_json_atomic(os.path.join(target, META_DIR, fname + ".json"), meta)
      os.replace(tmp, path)
      metas[fname] = meta
  finally:
    bar.close()

  all_bad = [tuple(b) for b in bad]
  load_bad = []
  for fname in sorted(metas):
    load_bad += [tuple(b) for b in metas[fname]["bad"]]
  all_bad += load_bad
  info = _make_info(name, plan, metas, config, all_bad, list(notes), extra_info)
  result = WriteResult(dataset_dir, info, all_bad, len(todo), reused)
  empty = [s for s in required_splits if not info["splits"].get(s, {}).get("num_examples")]
  if empty or (fail_on_bad and load_bad):
    log(summary_table(result, seconds=time.time() - t0))
    kept = " (the complete set there before is unchanged)" if target != dataset_dir else ""
    if empty:
      raise IncompleteDatasetError(
          f"split(s) {', '.join(repr(s) for s in empty)} got no slice (their volumes failed to load, "
          f"see above); {dataset_dir} not marked complete{kept}")
    raise IncompleteDatasetError(
        f"{len(load_bad)} volume(s) failed to load (listed above); {dataset_dir} not marked complete{kept}")
  records.write_info(target, info)
  if target != dataset_dir:
    _swap_in(dataset_dir, target)
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
