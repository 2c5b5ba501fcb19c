"""Command line of data_prep: one dataset's files -> a prepared TFDS dataset (the friendly front door).

  python -m data_prep --dataset=sample --data_dir=~/mrsr_jax_data
  python -m data_prep --dataset=ixi --manual_dir=~/Downloads/IXI --data_dir=~/mrsr_jax_data
  python -m data_prep --dataset=ixi/t1 --manual_dir=~/Downloads/IXI --data_dir=~/mrsr_jax_data
  python -m data_prep --dataset=fastmri --manual_dir=~/fastmri/knee --data_dir=~/mrsr_jax_data
      --beam_pipeline_options="runner=DirectRunner,direct_num_workers=8,direct_running_mode=multi_processing"

It runs the dataset's TFDS builder (`data_prep/datasets/`, what `tfds build` runs), writing
`<data_dir>/<dataset>/<config>/<version>/` (`<data_dir>/sample/<version>/`). Input files are checked
before the split is dealt: bad ones (path: problem) are reported and skipped, or, with --strict,
nothing is written and the exit status is 1. The exit status is also 1 (nothing marked complete) if
a split would be empty, unless --allow_empty_splits. TFDS writes into an `incomplete.*` folder and
renames it into place when done, so an interrupted build is never read as complete (a rerun starts
it over). A rerun with the same inputs reuses the set; one with changed inputs or settings builds
the new set beside the complete one and swaps it in only once complete. Usage errors exit 2, other
errors 1, each with one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Sequence

from data_prep import DATASETS

SPLITS = ("train", "val", "test")
CONFIGS = {"ixi": ("all", "t1", "t2", "pd"), "fastmri": ("both", "pd", "fspd"), "sample": ()}


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line, not the usage block
    self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = _Parser(prog="python -m data_prep", description=__doc__,
              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dataset", default="sample",
                 help="ixi[/all|/t1|/t2|/pd], fastmri[/both|/pd|/fspd] or sample (default: %(default)s)")
  p.add_argument("--manual_dir", default=None,
                 help="folder with the downloaded files (required for ixi and fastmri; more IXI files for sample)")
  p.add_argument("--data_dir", default=os.path.join("~", "mrsr_jax_data"),
                 help="the TFDS data_dir: DATA_DIR/<dataset>/<config>/<version>/ (default: %(default)s)")
  p.add_argument("--strict", action="store_true",
                 help="any bad input file is fatal: exit 1 before writing anything")
  p.add_argument("--beam_pipeline_options", default=None,
                 help="build with Apache Beam, e.g. 'runner=DirectRunner,direct_num_workers=8' or a "
                      "Dataflow / Spark runner's options (comma-separated, as `tfds build` takes them)")
  p.add_argument("--allow_empty_splits", action="store_true",
                 help="write the set even if the train, val or test split gets no volume (warns)")
  p.add_argument("--file_format", default="array_record", choices=("array_record", "tfrecord"),
                 help="record files: array_record (read with or without TensorFlow, by Grain) or "
                      "tfrecord (read by tf.data only: needs TensorFlow) (default: %(default)s)")
  p.add_argument("--num_shards", type=int, default=None,
                 help="record files per split (default: TFDS's choice by size)")
  p.add_argument("--max_volumes", type=int, default=None,
                 help="convert at most N volumes per split (a quick trial; the split itself uses all files)")
  p.add_argument("--seed", type=int, default=0, help="seed of the subject split (default: %(default)s)")
  p.add_argument("--no_progress", action="store_true", help="no progress bar")
  args = p.parse_args(argv)
  name, _, config = args.dataset.partition("/")
  if name not in DATASETS:
    p.error(f"argument --dataset: invalid choice: {name!r} (choose from {', '.join(DATASETS)})")
  if config and config not in CONFIGS[name]:
    have = f"one of {', '.join(CONFIGS[name])}" if CONFIGS[name] else f"{name} has no configs"
    p.error(f"argument --dataset: {name} has no config {config!r} ({have})")
  args.name, args.config = name, config or None
  if name in ("ixi", "fastmri") and not args.manual_dir:
    p.error(f"--dataset={args.dataset} needs --manual_dir (the folder of the manual download)")
  if args.beam_pipeline_options is not None and not args.beam_pipeline_options.strip():
    p.error("--beam_pipeline_options is empty (e.g. 'runner=DirectRunner')")
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


def summary_table(info: dict, dataset_dir: str, note: str = "") -> str:
  rows = [("split", "volumes", "subjects", "slices", "files", "per contrast")]
  for split in SPLITS:
    sp = info["splits"].get(split)
    if sp is None:
      continue
    per = ", ".join(f"{c}:{n}" for c, n in (sp["examples_per_contrast"] or {}).items())
    rows.append((split, str(sp["num_volumes"]), str(len(sp["subjects"])), str(sp["num_examples"]),
                 str(sp["num_shards"]), per))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = [f"== {info['name']}{'/' + info['config'] if info['config'] else ''} {info['version']} -> {dataset_dir}"]
  for j, r in enumerate(rows):
    lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if j == 0:
      lines.append("  ".join("-" * w for w in widths))
  lines.append(f"slice shapes {info['slice_shapes']}, labels {info['labels']}")
  if note:
    lines.append(note)
  lines += [f"note: {n}" for n in info["notes"]]
  if info["bad_files"]:
    lines.append(f"{len(info['bad_files'])} bad file(s) skipped:")
    lines += [f"  {b['path']}: {b['problem']}" for b in info["bad_files"]]
  return "\n".join(lines)


def _beam_options(text: str):
  import apache_beam as beam

  return beam.options.pipeline_options.PipelineOptions(flags=[f"--{o.strip()}" for o in text.split(",") if o.strip()])


def _fingerprint(version_dir: str) -> str | None:
  import json

  try:
    with open(os.path.join(version_dir, "metadata.json")) as f:
      return json.load(f)["settings"]["fingerprint"]
  except (OSError, ValueError, KeyError, TypeError):
    return None


def _remove_incomplete(version_dir: str) -> None:
  """Removes what a killed TFDS build left: `incomplete.XXXXXX_<version>` beside the version folder."""
  import shutil

  parent, version = os.path.split(version_dir)
  if os.path.isdir(parent):
    for n in os.listdir(parent):
      if n.startswith("incomplete.") and n.endswith(f"_{version}"):
        shutil.rmtree(os.path.join(parent, n), ignore_errors=True)


def prepare(builder, plan, *, manual_dir: str | None = None, num_shards: int | None = None,
            beam_options=None) -> tuple[str, bool | None]:
  """Builds `builder`'s dataset from `plan` unless the same set is there; returns (version folder,
  replaced): None when reused, False for a first build, True when a complete set was replaced.

  A complete set with another input fingerprint is never deleted before its replacement is complete
  (TFDS's own overwrite deletes first): the new one is built in `<data_dir>/.<name>.staging/` and
  swapped in. Raises `BuildError` (nothing marked complete, a complete set there before unchanged).
  """
  import shutil

  import tensorflow_datasets as tfds

  from data_prep import writer
  from data_prep.builder import BuildError

  data_dir = str(builder.data_dir_root)
  plan.settings["num_shards"] = num_shards
  plan.refingerprint()
  target = str(builder.data_dir)  # <data_dir>/<name>[/<config>]/<version>
  staging_root = os.path.join(data_dir, f".{builder.name}.staging")
  staged = os.path.join(staging_root, os.path.relpath(target, data_dir))
  writer.recover(target, staged)
  if os.path.isdir(staging_root):  # a killed rebuild: TFDS starts a build over, so does this
    shutil.rmtree(staging_root)
  complete = os.path.isfile(os.path.join(target, "dataset_info.json"))
  if complete and _fingerprint(target) == plan.settings["fingerprint"]:
    return target, None
  _remove_incomplete(target)
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir, num_shards=num_shards,
                                                 beam_options=beam_options)
  if complete:
    # TFDS would delete the complete set before building its replacement: build beside it instead.
    build = type(builder)(data_dir=staging_root, config=builder.builder_config, seed=builder.seed,
                          strict=builder.strict, allow_empty_splits=builder.allow_empty_splits,
                          max_volumes=builder.max_volumes, file_format=builder.file_format)
    build._plan, build.report_bad = plan, builder.report_bad
  else:
    build = builder
  # Nothing is downloaded (manual datasets), but TFDS insists on a download folder: ours, emptied
  # on every run (a killed run's is removed by the next).
  download_dir = os.path.join(data_dir, f".{builder.name}.downloads")
  shutil.rmtree(download_dir, ignore_errors=True)
  os.makedirs(download_dir)
  try:
    build.download_and_prepare(download_dir=download_dir, download_config=download_config)
  except BuildError as e:
    raise BuildError(f"{e}{' (the complete set there before is unchanged)' if complete else ''}") from e
  except Exception as e:
    # Under Beam a worker's BuildError (--strict) comes back wrapped in the runner's exception.
    line = next((l.strip() for l in str(e).splitlines() if "strict: " in l), None)
    if beam_options is None or line is None:
      raise
    line = line[line.index("strict: "):]
    raise BuildError(f"{line}{' (the complete set there before is unchanged)' if complete else ''}") from e
  finally:
    shutil.rmtree(download_dir, ignore_errors=True)
    if complete and not os.path.isfile(os.path.join(staged, "dataset_info.json")):
      shutil.rmtree(staging_root, ignore_errors=True)
  if complete:
    writer.swap_in(target, staged)
    shutil.rmtree(staging_root, ignore_errors=True)
  return target, complete


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  manual_dir = os.path.expanduser(args.manual_dir) if args.manual_dir else None
  if manual_dir is not None and not os.path.isdir(manual_dir):
    what = "is a file, not a folder" if os.path.exists(manual_dir) else "no such folder"
    return _error(f"--manual_dir={args.manual_dir}: {what}")
  data_dir = os.path.expanduser(args.data_dir)
  dataset_dir = os.path.join(data_dir, args.name)
  problem = check_output_dir(args.data_dir, dataset_dir)
  if problem:
    return _error(problem)
  beam_options = None
  if args.beam_pipeline_options is not None:
    try:
      beam_options = _beam_options(args.beam_pipeline_options)
    except ImportError:
      return _error("--beam_pipeline_options needs Apache Beam: pip install 'mrsr_jax[beam]' (or apache-beam)")

  # Import after the checks so --help and usage errors are instant; TF and TFDS are slow.
  import tensorflow_datasets as tfds

  from data_prep.builder import BuildError
  from data_prep.datasets import BUILDERS
  from mrsr_jax.data import records

  if args.no_progress:
    tfds.disable_progress_bar()
  kwargs = dict(config=args.config, seed=args.seed, strict=args.strict,
                allow_empty_splits=args.allow_empty_splits, max_volumes=args.max_volumes,
                file_format=args.file_format)
  builder = BUILDERS[args.name](data_dir=data_dir, **kwargs)
  try:
    plan = builder.plan(manual_dir)
  except (OSError, ValueError) as e:
    return _error(str(e))
  for path, problem in plan.bad:
    print(f"bad input: {path}: {problem}", file=sys.stderr)
  builder.report_bad = False
  if args.strict and plan.bad:
    return _error(f"--strict and {len(plan.bad)} bad input file(s) (listed above); nothing written")
  if not plan.sources:
    return _error(f"no valid {args.name} volumes found"
                  + (f" under --manual_dir={args.manual_dir}" if manual_dir else ""))
  by_split = plan.by_split()
  empty = plan.empty_splits()
  if empty and not args.allow_empty_splits:
    have = ", ".join(f"{s}: {len(by_split[s])}" for s in SPLITS)
    return _error(f"split(s) {', '.join(repr(s) for s in empty)} would be empty (volumes per split: {have}); "
                  f"holding out val and test needs >= 3 subjects with valid files; nothing written "
                  f"(add input files, or pass --allow_empty_splits)")

  try:
    target, replaced = prepare(builder, plan, manual_dir=manual_dir, num_shards=args.num_shards,
                               beam_options=beam_options)
  except BuildError as e:
    return _error(str(e))
  except OSError as e:  # disk full, permissions changed mid-run...
    return _error(f"writing {builder.data_dir} failed: {e}")
  if replaced is None:
    print(summary_table(records.read_info(target), target, "unchanged inputs: the prepared set is reused"), flush=True)
    return 0
  info = records.read_info(target)
  print(summary_table(info, target, "built" + (" (replacing the previous set)" if replaced else "")), flush=True)
  if records._is_old_format(dataset_dir):
    print(f"note: {dataset_dir} also holds shards of the old (pre-TFDS) format, no longer read: its "
          f"*.tfrecord files, .meta/ and dataset_info.json can be deleted", file=sys.stderr)
  empty = [s for s in SPLITS if not info["splits"].get(s, {}).get("num_examples")]
  if empty:
    print(f"WARNING: split(s) {', '.join(repr(s) for s in empty)} of {target} are EMPTY "
          f"(--allow_empty_splits); training or evaluation on them will fail", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
