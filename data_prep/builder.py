"""The TFDS builder every dataset shares: volumes in, one record per HR slice out.

A dataset (`data_prep/datasets/<name>/<name>_dataset_builder.py`) says where its volumes are
(`_find_sources`: the files, checked, split by subject, as `writer.VolumeSource`s) and how large its
slices are; this class does the rest the TFDS way:

* `_split_generators` plans the build: every bad file is reported by path with its problem and left
  out before the split is dealt (`strict=True`: any bad file stops the build before anything is
  written), and a split without volumes stops it (`allow_empty_splits=True`: the split is left out).
* `_generate_examples` converts one volume at a time (memory-bounded) into its slices, keyed
  `<subject>/<contrast>/<file name>#<slice index>` (TFDS shuffles examples by key hash when it writes,
  so the stored order mixes subjects, deterministically, and the same wherever the files are). A volume that fails when converted is reported and skipped
  (`strict`: fatal); a split that ends up without slices stops the build. Either way TFDS deletes its
  `incomplete.*` folder, so nothing is marked complete.
* Under Apache Beam (`--beam_pipeline_options`, or `DownloadConfig(beam_options=...)`), the same
  per-volume function runs as a `beam.FlatMap` on the runner's workers; a failed volume is logged
  there and counted (`mrsr_jax:bad_volumes`), and the slices are the same records as the plain path.
* `metadata.json` (read by `mrsr_jax.data.records.read_info`): labels ("dataset/contrast") and
  contrasts, per split the subjects, volume count and slices per contrast, the bad files and notes,
  and the settings with an input fingerprint (file keys, sizes and times, conversion settings) that
  `python -m data_prep` compares to decide whether a rerun can reuse the set.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
from typing import Any, Iterator, Sequence

import tensorflow_datasets as tfds

from mrsr_jax.data.volumes import BadInputError
from data_prep.writer import VolumeSource
from mrsr_jax.data import records

SPLITS = ("train", "val", "test")
log = logging.getLogger("data_prep")


class BuildError(ValueError):
  """The build cannot produce a usable dataset (bad input under strict, an empty split); one line."""


class Plan:
  """What a build will convert: the sources per split, and what was found on the way."""

  def __init__(self, sources: Sequence[VolumeSource], bad: list[tuple[str, str]], notes: list[str],
               settings: dict[str, Any]):
    self.sources, self.bad, self.notes, self.settings = list(sources), list(bad), list(notes), dict(settings)
    self.refingerprint()

  def refingerprint(self) -> None:
    """The input fingerprint: what was converted (keys, splits, file stamps) and how (settings)."""
    settings = {k: v for k, v in self.settings.items() if k != "fingerprint"}
    blob = json.dumps({"settings": settings, "volumes": [[s.key, s.split, s.stamp] for s in self.sources]},
                      sort_keys=True, default=str)
    self.settings["fingerprint"] = hashlib.sha256(blob.encode()).hexdigest()

  def by_split(self) -> dict[str, list[VolumeSource]]:
    out: dict[str, list[VolumeSource]] = {s: [] for s in SPLITS}
    for src in self.sources:
      if src.split not in out:
        raise ValueError(f"{src.key}: unknown split {src.split!r}, expected one of {SPLITS}")
      out[src.split].append(src)
    return out

  def empty_splits(self) -> list[str]:
    return [s for s, v in self.by_split().items() if not v]


def example_key(src: VolumeSource) -> str:
  """The volume's part of its examples' keys: subject, contrast and file name, not the directory.

  TFDS orders the stored examples by a hash of their keys, and that order is the training order: a key
  holding the absolute path made the same command give a different dataset (and different trained
  numbers) in every checkout or download folder. TFDS refuses duplicate keys, so two volumes that
  would share one stop the build loudly."""
  return f"{src.subject}/{src.contrast}/{os.path.basename(src.key)}"


def volume_examples(src: VolumeSource) -> list[tuple[str, dict[str, Any]]]:
  """(key, record) of every slice of one volume; raises BadInputError for a bad volume."""
  vol, orientation = src.load()
  if len(vol.slice_indices) != vol.slices.shape[0]:
    raise ValueError(f"{src.key}: {vol.slices.shape[0]} slices but {len(vol.slice_indices)} indices")
  return [(f"{example_key(src)}#{int(index)}", records.example(
      image=image, dataset=vol.dataset, contrast=vol.contrast, subject=vol.subject,
      slice_index=int(index), spacing=vol.spacing, intensity_scale=vol.intensity_scale,
      source=vol.source, orientation=orientation))
      for image, index in zip(vol.slices, vol.slice_indices)]


def _beam_volume_examples(src: VolumeSource, strict: bool):
  """`volume_examples` on a Beam worker: a bad volume is logged and counted (fatal under strict)."""
  import apache_beam as beam

  try:
    out = volume_examples(src)
  except BadInputError as e:
    if strict:
      raise BuildError(f"strict: {e.path}: {e.problem}") from e
    logging.getLogger("data_prep").warning("skipped %s: %s", e.path, e.problem)
    beam.metrics.Metrics.counter("mrsr_jax", "bad_volumes").inc()
    return []
  beam.metrics.Metrics.counter("mrsr_jax", f"slices_{src.split}").inc(len(out))
  return out


class VolumeBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the ixi, fastmri and sample builders (see the module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
      "1.0.0": "First TFDS release: the slices of the pre-TFDS mrsr_jax shards, plus `orientation`.",
  }
  DATASET = ""  # the `dataset` field of the records
  DESCRIPTION = ""
  HOMEPAGE = ""
  CITATION = ""

  def __init__(self, *, seed: int = 0, strict: bool = False, allow_empty_splits: bool = False,
               max_volumes: int | None = None, file_format: str | None = None, **kwargs):
    self.seed, self.strict, self.allow_empty_splits, self.max_volumes = seed, strict, allow_empty_splits, max_volumes
    # ArrayRecord unless asked otherwise (`tfds build` passes None without --file_format): the
    # format every reader reads, TensorFlow installed or not (records.FILE_FORMATS, docs/data.md).
    self.file_format = file_format or records.FILE_FORMATS[0]
    if self.file_format not in records.FILE_FORMATS:
      raise ValueError(f"file_format={self.file_format!r}: expected one of {', '.join(records.FILE_FORMATS)}")
    self._plan: Plan | None = None
    self.report_bad = True  # log the plan's bad files (the front door prints them itself)
    self._beam = False
    self._converted: dict[str, tuple[str, str, str, int]] = {}  # key -> (split, subject, contrast, slices)
    self._conversion_bad: list[tuple[str, str]] = []
    super().__init__(file_format=self.file_format, **kwargs)

  # -- what a dataset provides ------------------------------------------------------------------
  def _slice_hw(self) -> tuple[int, int]:
    raise NotImplementedError

  def _find_sources(self, manual_dir: str | None) -> tuple[list[VolumeSource], list[tuple[str, str]], list[str], dict]:
    """(sources, bad files, notes, settings) for this builder config; bad files found before the split."""
    raise NotImplementedError

  # -- TFDS ---------------------------------------------------------------------------------------
  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=self.DESCRIPTION, features=records.features(*self._slice_hw()),
        homepage=self.HOMEPAGE, citation=self.CITATION, metadata=tfds.core.MetadataDict())

  def plan(self, manual_dir: str | None) -> Plan:
    """Finds, checks and splits the input files (once per builder); nothing is written."""
    if self._plan is None:
      sources, bad, notes, settings = self._find_sources(manual_dir)
      settings = {**settings, "seed": self.seed, "config": self.builder_config.name if self.builder_config else "",
                  "file_format": self.file_format}
      if self.max_volumes is not None:
        kept, per_split = [], collections.Counter()
        for s in sources:
          per_split[s.split] += 1
          if per_split[s.split] <= self.max_volumes:
            kept.append(s)
        notes.append(f"max_volumes={self.max_volumes}: {len(kept)} of {len(sources)} volumes converted")
        settings["max_volumes"] = self.max_volumes
        sources = kept
      self._plan = Plan(sources, bad, notes, settings)
    return self._plan

  def _manual_dir(self, dl_manager) -> str | None:
    try:
      return str(dl_manager.manual_dir)
    except AssertionError:  # none given, or missing or empty: ixi / fastmri say so, the sample needs none
      return None

  def _download_and_prepare(self, dl_manager, download_config, **kwargs):
    self._beam = download_config.beam_options is not None or download_config.beam_runner is not None
    self._converted, self._conversion_bad = {}, []
    out = super()._download_and_prepare(dl_manager, download_config, **kwargs)
    self._write_metadata()
    return out

  def _split_generators(self, dl_manager):
    plan = self.plan(self._manual_dir(dl_manager))
    for path, problem in plan.bad if self.report_bad else ():
      log.warning("bad input: %s: %s", path, problem)
    if self.strict and plan.bad:
      raise BuildError(f"strict: {len(plan.bad)} bad input file(s) (listed above); nothing written")
    if not plan.sources:
      raise BuildError(f"no valid {self.name} volumes found")
    empty = plan.empty_splits()
    if empty and not self.allow_empty_splits:
      have = ", ".join(f"{s}: {len(v)}" for s, v in plan.by_split().items())
      raise BuildError(f"split(s) {', '.join(repr(s) for s in empty)} would be empty (volumes per split: "
                       f"{have}); holding out val and test needs >= 3 subjects with valid files")
    return {split: self._generate_examples(split, sources)
            for split, sources in plan.by_split().items() if sources}

  def _generate_examples(self, split: str, sources: Sequence[VolumeSource]):
    if self._beam:
      import apache_beam as beam

      strict = self.strict
      return (beam.Create(list(sources))
              | beam.Reshuffle()  # one volume per work item, spread over the workers
              | beam.FlatMap(_beam_volume_examples, strict=strict))
    return self._generate_local(split, sources)

  def _generate_local(self, split: str, sources: Sequence[VolumeSource]) -> Iterator[tuple[str, dict]]:
    n = 0
    for src in sources:
      try:
        examples = volume_examples(src)
      except BadInputError as e:
        self._conversion_bad.append((e.path, e.problem))
        log.warning("skipped %s: %s", e.path, e.problem)
        if self.strict:
          raise BuildError(f"strict: {e.path}: {e.problem}; the new set is not marked complete") from e
        continue
      if examples:
        ex = examples[0][1]
        self._converted[src.key] = (split, ex["subject"], ex["contrast"], len(examples))
      n += len(examples)
      yield from examples
      del examples  # memory-bounded: one volume alive
    if n == 0:
      raise BuildError(f"split '{split}' got no slice (its volumes failed to load, see above); "
                       f"the new set is not marked complete")

  def _write_metadata(self) -> None:
    plan = self._plan
    assert plan is not None
    contrasts = sorted({s.contrast for s in plan.sources})
    splits = {}
    for split, sources in plan.by_split().items():
      if self._beam:  # counted on the workers: what the plan says
        splits[split] = {"subjects": sorted({s.subject for s in sources}), "num_volumes": len(sources),
                         "examples_per_contrast": None}
        continue
      done = [v for k, v in self._converted.items() if v[0] == split]
      per = collections.Counter()
      for _, _, contrast, n in done:
        per[contrast] += n
      splits[split] = {"subjects": sorted({v[1] for v in done}), "num_volumes": len(done),
                       "examples_per_contrast": dict(sorted(per.items()))}
    if not self._beam:
      contrasts = sorted({v[2] for v in self._converted.values()})
    notes = list(plan.notes)
    if self._beam:
      notes.append("built with Apache Beam: volumes that failed on the workers are in the worker logs "
                   "('skipped <path>: <problem>') and counted in the mrsr_jax:bad_volumes counter")
    self.info.metadata.update({
        "labels": sorted(f"{self.DATASET}/{c}" for c in contrasts),
        "contrasts": contrasts,
        "splits": splits,
        "bad_files": [{"path": p, "problem": q} for p, q in plan.bad + self._conversion_bad],
        "notes": notes,
        "settings": plan.settings,
    })

  def _process_pipeline_result(self, pipeline_result) -> None:
    import apache_beam as beam

    bad = pipeline_result.metrics().query(beam.metrics.MetricsFilter().with_name("bad_volumes"))["counters"]
    n = sum(c.committed or 0 for c in bad)
    if n:
      log.warning("%d volume(s) failed to convert on the Beam workers (see their logs)", n)
      self._plan.notes.append(f"{n} volume(s) failed to convert on the Beam workers")


def nifti_orientation(source, name: str) -> str:
  """Axis codes toward which the row and column index of the stored slices increase, e.g. "AS".

  From the header alone (the affine and the slice axis the conversion slices along, as
  `volumes.load_volume` chooses it): the slices are `moveaxis(data, slice_axis, 0)[i]`, so their
  rows follow the first remaining voxel axis and their columns the second (cropping, padding and the
  sample's box downsampling never flip an axis). "" where the affine has no clear direction.
  """
  import gzip
  import io

  import nibabel as nib
  from nibabel import orientations

  from mrsr_jax.data import volumes

  try:
    if isinstance(source, (bytes, bytearray)):
      raw = bytes(source)
      head = gzip.GzipFile(fileobj=io.BytesIO(raw)).read(544) if raw[:2] == b"\x1f\x8b" else raw[:544]
    else:
      with open(source, "rb") as f:
        magic = f.read(2)
      opener = gzip.open if magic == b"\x1f\x8b" else open
      with opener(source, "rb") as f:
        head = f.read(544)
    sizes = {int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")}
    cls, size = (nib.Nifti2Header, 540) if 540 in sizes else (nib.Nifti1Header, 348)
    header = cls.from_fileobj(io.BytesIO(head[:size]), check=False)  # the header without extensions
    affine = header.get_best_affine()
  except Exception as e:  # the full read already validated the file; a header we cannot parse here
    raise BadInputError(name, f"cannot read the header's orientation ({type(e).__name__}: {e})") from e
  axis = volumes.slice_axis(affine, header)
  codes = orientations.aff2axcodes(affine)
  rows, cols = (codes[a] for a in range(3) if a != axis)
  return f"{rows}{cols}" if rows and cols else ""
