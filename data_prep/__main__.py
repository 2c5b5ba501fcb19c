"""Command line of data_prep: one dataset's files -> TFRecord slice shards + dataset_info.json.

  python -m data_prep --dataset=sample --data_dir=~/mrsr_jax_data
  python -m data_prep --dataset=ixi --manual_dir=~/Downloads/IXI --data_dir=~/mrsr_jax_data
  python -m data_prep --dataset=fastmri --manual_dir=~/fastmri/knee --data_dir=~/mrsr_jax_data

Shards go to `<data_dir>/<dataset>/`. Rerunning after an interruption completes the set: complete
shards are kept, partial ones redone. Bad input files are reported (path: problem) and skipped; the
exit status is 1 if any was found with --strict, or if no valid slice was found at all.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from data_prep import DATASETS


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dataset", choices=DATASETS, default="sample")
  p.add_argument("--manual_dir", default=None,
                 help="folder with the downloaded files (required for ixi and fastmri; optional IXI files for sample)")
  p.add_argument("--data_dir", default=os.path.join("~", "mrsr_jax_data"),
                 help="shards are written to DATA_DIR/<dataset>/ (default: %(default)s)")
  p.add_argument("--strict", action="store_true", help="exit 1 if any input file is bad (they are skipped anyway)")
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


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  # Import after parsing so --help is instant; TF (via the writer) is slow to import.
  from data_prep import fastmri, ixi, sample, writer

  builder = {"ixi": ixi.build, "fastmri": fastmri.build, "sample": sample.build}[args.dataset]
  manual_dir = os.path.expanduser(args.manual_dir) if args.manual_dir else None
  try:
    sources, bad, notes, config = builder(manual_dir, seed=args.seed)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if args.max_volumes is not None:
    kept, per_split = [], {}
    for s in sources:
      per_split[s.split] = per_split.get(s.split, 0) + 1
      if per_split[s.split] <= args.max_volumes:
        kept.append(s)
    notes.append(f"--max_volumes={args.max_volumes}: {len(kept)} of {len(sources)} volumes converted")
    sources = kept
  for path, problem in bad:
    print(f"bad input: {path}: {problem}", file=sys.stderr)
  if not sources:
    print(f"error: no valid {args.dataset} volumes found"
          + (f" under --manual_dir={manual_dir}" if manual_dir else ""), file=sys.stderr)
    return 1

  dataset_dir = os.path.join(os.path.expanduser(args.data_dir), args.dataset)
  os.makedirs(dataset_dir, exist_ok=True)
  result = writer.write_dataset(
      dataset_dir, sources, name=args.dataset, num_shards=args.num_shards, config=config, bad=bad,
      notes=notes, progress=not args.no_progress, log=lambda m: print(m, flush=True))
  if result.num_slices == 0:
    print(f"error: no valid slice found in the {args.dataset} input; nothing usable written", file=sys.stderr)
    return 1
  if args.strict and result.bad:
    print(f"error: --strict and {len(result.bad)} bad input file(s) (listed above)", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
