"""Command line of data_prep: one dataset's files -> TFRecord slice shards + dataset_info.json.

  python -m data_prep --dataset=sample --data_dir=~/mrsr_jax_data
  python -m data_prep --dataset=ixi --manual_dir=~/Downloads/IXI --data_dir=~/mrsr_jax_data
  python -m data_prep --dataset=fastmri --manual_dir=~/fastmri/knee --data_dir=~/mrsr_jax_data

Shards go to `<data_dir>/<dataset>/`. Input files are checked before the split is dealt: bad ones
(path: problem) are reported and skipped, or, with --strict, nothing is written and the exit status
is 1. The exit status is also 1 (nothing marked complete) if a split would be empty, unless
--allow_empty_splits. Rerunning after an interruption completes the set: complete shards are kept,
partial ones redone; a rerun that changes a complete set (new files, --num_shards) builds the new
set beside it and swaps it in only once complete. Usage errors exit 2, other errors 1, each with one
line on stderr.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
from typing import Sequence

from data_prep import DATASETS

SPLITS = ("train", "val", "test")


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line, not the usage block
    self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = _Parser(prog="python -m data_prep", description=__doc__,
              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dataset", choices=DATASETS, default="sample")
  p.add_argument("--manual_dir", default=None,
                 help="folder with the downloaded files (required for ixi and fastmri; more IXI files for sample)")
  p.add_argument("--data_dir", default=os.path.join("~", "mrsr_jax_data"),
                 help="shards are written to DATA_DIR/<dataset>/ (default: %(default)s)")
  p.add_argument("--strict", action="store_true",
                 help="any bad input file is fatal: exit 1 before writing anything")
  p.add_argument("--allow_empty_splits", action="store_true",
                 help="write the set even if the train, val or test split gets no volume (warns)")
  p.add_argument("--num_shards", type=int, default=None,
                 help="shards per split (at most one per volume); default: ~128 MB per shard")
  p.add_argument("--max_volumes", type=int, default=None,
                 help="convert at most N volumes per split (a quick trial; the split itself uses all files)")
  p.add_argument("--seed", type=int, default=0, help="seed of the subject split (default: %(default)s)")
  p.add_argument("--no_progress", action="store_true", help="no progress bar")
  args = p.parse_args(argv)
  if args.dataset in ("ixi", "fastmri") and not args.manual_dir:
    p.error(f"--dataset={args.dataset} needs --manual_dir (the folder of the manual download)")
  for name in ("num_shards", "max_volumes"):
    v = getattr(args, name)
    if v is not None and v < 1:
      p.error(f"--{name} must be >= 1, got {v}")
  return args


def _error(message: str) -> int:
  print(f"error: {message}", file=sys.stderr)
  return 1


def check_output_dir(data_dir: str, dataset_dir: str) -> str | None:
  """The problem with writing `dataset_dir` (below `data_dir`), or None; creates nothing.

  Probes the nearest existing folder by creating and removing a temporary file: permission bits
  alone miss read-only file systems (and every check passes for root).
  """
  probe = os.path.abspath(dataset_dir)
  while not os.path.lexists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    return f"--data_dir={data_dir}: {probe} is a file, not a folder"
  try:
    fd, tmp = tempfile.mkstemp(prefix=".data_prep-write-test-", dir=probe)
  except OSError as e:
    return f"--data_dir={data_dir}: cannot write in {probe} ({e.strerror or e})"
  os.close(fd)
  os.remove(tmp)
  return None


def _split_problem(counts: collections.Counter) -> str | None:
  empty = [s for s in SPLITS if not counts[s]]
  if not empty:
    return None
  have = ", ".join(f"{s}: {counts[s]}" for s in SPLITS)
  return (f"split(s) {', '.join(repr(s) for s in empty)} would be empty (volumes per split: {have}); "
          f"holding out val and test needs >= 3 subjects with valid files")


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  manual_dir = os.path.expanduser(args.manual_dir) if args.manual_dir else None
  if manual_dir is not None and not os.path.isdir(manual_dir):
    what = "is a file, not a folder" if os.path.exists(manual_dir) else "no such folder"
    return _error(f"--manual_dir={args.manual_dir}: {what}")
  data_dir = os.path.expanduser(args.data_dir)
  dataset_dir = os.path.join(data_dir, args.dataset)
  problem = check_output_dir(args.data_dir, dataset_dir)
  if problem:
    return _error(problem)

  # Import after the checks so --help and usage errors are instant; TF (via the writer) is slow.
  from data_prep import fastmri, ixi, sample, writer

  builder = {"ixi": ixi.build, "fastmri": fastmri.build, "sample": sample.build}[args.dataset]
  try:
    sources, bad, notes, config = builder(manual_dir, seed=args.seed, progress=not args.no_progress)
  except (OSError, ValueError) as e:
    return _error(str(e))
  for path, problem in bad:
    print(f"bad input: {path}: {problem}", file=sys.stderr)
  if args.strict and bad:
    return _error(f"--strict and {len(bad)} bad input file(s) (listed above); nothing written")
  if not sources:
    return _error(f"no valid {args.dataset} volumes found"
                  + (f" under --manual_dir={args.manual_dir}" if manual_dir else ""))
  split_problem = _split_problem(collections.Counter(s.split for s in sources))
  if split_problem and not args.allow_empty_splits:
    return _error(f"{split_problem}; nothing written (add input files, or pass --allow_empty_splits)")
  if args.max_volumes is not None:
    kept, per_split = [], {}
    for s in sources:
      per_split[s.split] = per_split.get(s.split, 0) + 1
      if per_split[s.split] <= args.max_volumes:
        kept.append(s)
    notes.append(f"--max_volumes={args.max_volumes}: {len(kept)} of {len(sources)} volumes converted")
    sources = kept

  try:
    result = writer.write_dataset(
        dataset_dir, sources, name=args.dataset, num_shards=args.num_shards, config=config, bad=bad,
        notes=notes, progress=not args.no_progress, log=lambda m: print(m, flush=True),
        required_splits=() if args.allow_empty_splits else SPLITS, fail_on_bad=args.strict)
  except writer.IncompleteDatasetError as e:
    return _error(str(e))
  except OSError as e:  # disk full, permissions changed mid-run...
    return _error(f"writing {dataset_dir} failed: {e}")
  if result.num_slices == 0:
    return _error(f"no valid slice found in the {args.dataset} input; nothing usable written")
  empty = [s for s in SPLITS if not result.info["splits"][s]["num_examples"]]
  if empty:
    print(f"WARNING: split(s) {', '.join(repr(s) for s in empty)} of {dataset_dir} are EMPTY "
          f"(--allow_empty_splits); training or evaluation on them will fail", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
