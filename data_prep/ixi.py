"""IXI (brain MRI, T1/T2/PD): finding, checking and splitting the files as the download ships them.

Build:  python -m data_prep --dataset=ixi[/t1|/t2|/pd] --manual_dir=DIR --data_dir=DATA
        (or `tfds build data_prep/datasets/ixi --manual_dir=DIR --data_dir=DATA`; the TFDS builder is
        `data_prep/datasets/ixi/ixi_dataset_builder.py`)
DIR holds the IXI NIfTI files `IXI<nnn>-<site>-<nnnn>-<T1|T2|PD>.nii.gz`, extracted anywhere below it,
and/or the original archives (`IXI-T1.tar`, `IXI-T2.tar`, `IXI-PD.tar`), whose members are read one
at a time into memory (nothing is extracted to disk). Other IXI files (MRA, DTI) are ignored with a
note.

Every file is read and validated (header, dimensions, all voxels finite, not empty) before the split
is dealt, so a corrupt file is reported and the split is made among the good ones; a corrupt file
never silently leaves a held-out split short.

Split (the paper's protocol): by subject id, 500 / 70 / 6 train / test / val volumes per contrast
when that many subjects exist, proportional otherwise (at least one test and one val subject when a
contrast has >= 3). Subjects are sorted, permuted with a fixed seed, and dealt to val, then test, then
train; a subject lands in one split for all its contrasts. Subjects beyond 576 per contrast are left
unused (reported), as in the paper.

Each volume: slices along the acquisition slice axis (`volumes.slice_axis`), normalised by its
99.5th percentile, centre 240x240 in-plane (zero padded where smaller) and the centre 96 slices;
near-empty slices are dropped.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
import re
import tarfile
from typing import Iterable, Mapping, Sequence

import numpy as np

from data_prep import volumes
from data_prep.writer import VolumeSource, file_stamp

NAME = "ixi"
CONTRASTS = ("T1", "T2", "PD")
SPLIT_SIZES = {"val": 6, "test": 70, "train": 500}  # per contrast, the paper's 500/70/6
SPLIT_SEED = 0
TARGET_HW = (240, 240)
MAX_SLICES = 96

FILE_RE = re.compile(
    r"^(?P<subject>IXI\d{3})-(?P<site>[A-Za-z]+)-(?P<num>\d{4})-(?P<kind>[A-Za-z0-9_-]+?)\.nii(\.gz)?$")
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")


@dataclasses.dataclass(frozen=True)
class IxiFile:
  subject: str
  contrast: str
  key: str  # path, or "<archive>::<member>"
  path: str  # the file on disk (the archive for members)
  member: str | None = None
  size: int = 0


def parse_name(name: str) -> tuple[str, str] | None:
  """`IXI012-HH-1211-T1.nii.gz` -> ("IXI012", "T1"); None for names that are not IXI images."""
  m = FILE_RE.match(os.path.basename(name))
  return (m["subject"], m["kind"]) if m else None


def discover(manual_dir: str) -> tuple[list[IxiFile], list[tuple[str, str]], list[str]]:
  """Finds IXI T1/T2/PD volumes below `manual_dir`. Returns (files, bad, notes).

  Duplicates (the same subject and contrast twice, e.g. extracted and inside an archive) keep the
  first in sorted path order.
  """
  if not os.path.isdir(manual_dir):
    raise FileNotFoundError(f"--manual_dir={manual_dir}: no such directory")
  found: list[IxiFile] = []
  bad: list[tuple[str, str]] = []
  ignored: dict[str, int] = {}
  for root, dirs, files in os.walk(manual_dir):
    dirs.sort()
    for fname in sorted(files):
      path = os.path.join(root, fname)
      if fname.endswith(_ARCHIVE_SUFFIXES):
        try:
          members, problem = _archive_members(path)
        except volumes.BadInputError as e:
          bad.append((e.path, e.problem))
          continue
        if problem:
          bad.append((path, problem))
        for member, size in members:
          _classify(member, path, member, size, found, ignored)
      elif fname.endswith((".nii", ".nii.gz")):
        _classify(fname, path, None, os.path.getsize(path), found, ignored)
  notes = [f"ignored {n} {kind} file(s) (only T1, T2 and PD are used)" for kind, n in sorted(ignored.items())]
  unique: dict[tuple[str, str], IxiFile] = {}
  for f in found:
    if (f.subject, f.contrast) in unique:
      notes.append(f"duplicate {f.subject} {f.contrast}: using {unique[f.subject, f.contrast].key}, ignoring {f.key}")
    else:
      unique[f.subject, f.contrast] = f
  return list(unique.values()), bad, notes


def _classify(name, path, member, size, found, ignored):
  parsed = parse_name(name)
  if parsed is None:
    ignored["non-IXI-named"] = ignored.get("non-IXI-named", 0) + 1
    return
  subject, kind = parsed
  if kind not in CONTRASTS:
    ignored[kind] = ignored.get(kind, 0) + 1
    return
  key = f"{path}::{member}" if member else path
  found.append(IxiFile(subject, kind, key, path, member, size))


def _archive_members(path: str) -> tuple[list[tuple[str, int]], str | None]:
  """(member name, size) of the complete regular files of an archive, and a problem or None.

  A truncated archive (an interrupted download) keeps the members that are wholly present; the
  problem names what was lost. An unreadable archive raises BadInputError.
  """
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    magic = f.read(6)
  # Offsets are into the uncompressed stream, comparable with the file size only for a plain tar.
  plain = not magic.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ"))
  members, problem = [], None
  try:
    tar = tarfile.open(path, "r:*")
  except (tarfile.TarError, OSError, EOFError) as e:
    raise volumes.BadInputError(path, f"not a readable tar archive ({type(e).__name__}: {e})") from e
  with tar:
    while True:
      try:
        m = tar.next()
      except (tarfile.TarError, OSError, EOFError) as e:
        problem = f"truncated or corrupt tar archive after {len(members)} member(s) ({type(e).__name__}: {e})"
        break
      if m is None:
        break
      if m.isfile():
        if plain and m.offset_data + m.size > size:
          problem = f"truncated tar archive: member {m.name} incomplete"
          break
        members.append((m.name, m.size))
  return members, problem


# Open archives, indexed once: reading a member then seeks straight to it instead of rescanning the
# archive's headers for each of its ~600 volumes. (The IXI archives are plain .tar; a .tar.gz works
# too, but each member read decompresses from the start.)
_ARCHIVES: dict[str, tuple[tarfile.TarFile, dict[str, tarfile.TarInfo]]] = {}


def read_member(path: str, member: str) -> bytes:
  """The bytes of one archive member (one volume in memory, nothing written to disk)."""
  name = f"{path}::{member}"
  try:
    if path not in _ARCHIVES:
      tar = tarfile.open(path, "r:*")
      _ARCHIVES[path] = (tar, {m.name: m for m in tar.getmembers()})
    tar, index = _ARCHIVES[path]
    if member not in index:
      raise volumes.BadInputError(name, "no such member in the archive")
    info = index[member]
    return volumes.read_bytes(tar.extractfile(info), name, info.size)
  except (tarfile.TarError, OSError, EOFError) as e:
    _close_archive(path)
    raise volumes.BadInputError(name, f"cannot read archive member ({type(e).__name__}: {e})") from e


def _close_archive(path: str) -> None:
  entry = _ARCHIVES.pop(path, None)
  if entry is not None:
    entry[0].close()


def split_quota(n: int, sizes: Mapping[str, int] = SPLIT_SIZES) -> dict[str, int]:
  """Volumes per split for a contrast with `n` subjects: the paper's sizes, or proportional."""
  total = sum(sizes.values())
  if n >= total:
    return dict(sizes)
  if n < 3:
    return {"val": 0, "test": 0, "train": n}  # too few to hold any out
  val = max(1, round(n * sizes["val"] / total))
  test = max(1, round(n * sizes["test"] / total))
  # Train takes the rest; as a quota it is n, so no volume of a small set is left unused when
  # subjects with several contrasts make the per-contrast counts uneven.
  return {"val": val, "test": test, "train": n}


def assign_splits(
    subject_contrasts: Mapping[str, Iterable[str]],
    seed: int = SPLIT_SEED,
    sizes: Mapping[str, int] = SPLIT_SIZES,
) -> dict[tuple[str, str], str | None]:
  """(subject id, contrast) -> "train" / "test" / "val", or None (train beyond 500 for that contrast).

  Deterministic: sorted ids permuted by `seed`. The held-out splits are filled first, val then
  test: subjects in that order, those with the most contrasts first, join while none of their
  contrasts' quotas is full; if a contrast is
  still short (subjects lacking some contrasts), the subject having it with the fewest full
  contrasts joins (those overflow by one). Everyone else is train. A subject has one split for all
  its contrasts, so no subject is ever in two splits.
  """
  subjects = sorted(subject_contrasts)
  contrasts = {s: sorted(set(subject_contrasts[s])) for s in subjects}
  per_contrast = collections.Counter(c for s in subjects for c in contrasts[s])
  quota = {c: split_quota(n, sizes) for c, n in per_contrast.items()}
  used = {c: dict.fromkeys(("val", "test", "train"), 0) for c in per_contrast}
  order = [subjects[i] for i in np.random.default_rng(seed).permutation(len(subjects))]
  split_of: dict[str, str] = {}

  def full(c, split):
    return used[c][split] >= quota[c][split]

  def take(s, split):
    split_of[s] = split
    for c in contrasts[s]:
      used[c][split] += 1

  # Subjects with every contrast first: they fill all contrasts' quotas evenly.
  by_completeness = sorted(order, key=lambda s: -len(contrasts[s]))  # stable: keeps the seeded order
  for split in ("val", "test"):
    for s in by_completeness:
      if s not in split_of and not any(full(c, split) for c in contrasts[s]):
        take(s, split)
    for c in sorted(per_contrast):
      while not full(c, split):
        free = [s for s in order if s not in split_of and c in contrasts[s]]
        if not free:
          break
        take(min(free, key=lambda s: sum(full(x, split) for x in contrasts[s])), split)
  out: dict[tuple[str, str], str | None] = {}
  for s in order:
    for c in contrasts[s]:
      if s in split_of:
        out[s, c] = split_of[s]
      elif not full(c, "train"):
        used[c]["train"] += 1
        out[s, c] = "train"
      else:
        out[s, c] = None
  return out


def check_files(files: Sequence[IxiFile], *, progress: bool = False) -> tuple[list[IxiFile], list[tuple[str, str]]]:
  """(good files, [(key, problem)]): each file read and validated as `volumes.load_nifti` does.

  Reads every voxel (truncated gzip data, NaN and empty volumes only show there), so it costs about
  one decompression per file; the data is dropped at once (one volume in memory at a time).
  """
  from tqdm.auto import tqdm

  good, bad = [], []
  for f in tqdm(files, desc="checking files", unit="file", disable=not progress or not files,
                dynamic_ncols=True):
    try:
      volumes.load_nifti(read_member(f.path, f.member) if f.member else f.path, f.key)
    except volumes.BadInputError as e:
      bad.append((e.path, e.problem))
    else:
      good.append(f)
  return good, bad


def load_file(f: IxiFile, *, dataset: str = NAME, target_hw: Sequence[int] = TARGET_HW,
              max_slices: int | None = MAX_SLICES, resample_mm: float | None = None) -> volumes.Volume:
  return load_with_orientation(f, dataset=dataset, target_hw=target_hw, max_slices=max_slices,
                               resample_mm=resample_mm)[0]


def load_with_orientation(f: IxiFile, *, dataset: str = NAME, target_hw: Sequence[int] = TARGET_HW,
                          max_slices: int | None = MAX_SLICES, resample_mm: float | None = None
                          ) -> tuple[volumes.Volume, str]:
  """The volume and its slices' orientation (`builder.nifti_orientation`), the file read once."""
  from data_prep.builder import nifti_orientation

  source = read_member(f.path, f.member) if f.member else f.path
  vol = volumes.load_volume(
      source, f.key, dataset=dataset, contrast=f.contrast, subject=f.subject,
      target_hw=target_hw, max_slices=max_slices, resample_mm=resample_mm)
  return vol, nifti_orientation(source, f.key)


def make_sources(
    files: Sequence[IxiFile],
    *,
    seed: int = SPLIT_SEED,
    dataset: str = NAME,
    target_hw: Sequence[int] = TARGET_HW,
    max_slices: int | None = MAX_SLICES,
    resample_mm: float | None = None,
) -> tuple[list[VolumeSource], list[str]]:
  """Split `files` by subject and wrap each as a `VolumeSource`. Returns (sources, notes)."""
  contrasts: dict[str, set[str]] = {}
  for f in files:
    contrasts.setdefault(f.subject, set()).add(f.contrast)
  split_of = assign_splits(contrasts, seed)
  sources, unused = [], 0
  target_hw = tuple(target_hw)
  for f in sorted(files, key=lambda f: (f.subject, f.contrast)):
    split = split_of[f.subject, f.contrast]
    if split is None:
      unused += 1
      continue
    # A partial of a module function, not a lambda: Beam pickles the sources to its workers.
    load = functools.partial(load_with_orientation, f, dataset=dataset, target_hw=target_hw,
                             max_slices=max_slices, resample_mm=resample_mm)
    sources.append(VolumeSource(key=f.key, split=split, load=load, stamp=file_stamp(f.path),
                                subject=f.subject, contrast=f.contrast))
  notes = [f"{unused} volume(s) beyond the 500/70/6 split sizes left unused"] if unused else []
  return sources, notes


def build(manual_dir: str, *, seed: int = SPLIT_SEED, progress: bool = False,
          contrasts: Sequence[str] = CONTRASTS) -> tuple[list[VolumeSource], list[tuple[str, str]], list[str], dict]:
  """(sources, bad, notes, settings) for the builder; bad files are found before the split is dealt.

  The split is dealt among the good files of every contrast, then `contrasts` are kept, so a subject
  is in the same split in every builder config (ixi/t1 never tests on a subject ixi/all trains on).
  """
  files, bad, notes = discover(manual_dir)
  files, more_bad = check_files(files, progress=progress)
  bad += more_bad
  sources, more = make_sources(files, seed=seed, target_hw=TARGET_HW, max_slices=MAX_SLICES)
  kept = [s for s in sources if s.contrast in contrasts]
  if len(kept) < len(sources):
    more.append(f"contrasts {', '.join(contrasts)}: {len(kept)} of {len(sources)} volumes")
  settings = {"dataset": NAME, "target_hw": list(TARGET_HW), "max_slices": MAX_SLICES,
              "split_sizes": SPLIT_SIZES, "contrasts": list(contrasts)}
  return kept, bad, notes + more, settings
