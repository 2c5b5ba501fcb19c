"""Prints the input pipeline's throughput (slices/s) on this machine. A benchmark, not a test.

  python bench/bench_pipeline.py                        # builds the bundled sample in a temp dir, both formats
  python bench/bench_pipeline.py --file_formats=array_record --num_threads=1
  python bench/bench_pipeline.py --dataset_dir=~/mrsr_jax_data/ixi --crop_size=128 --batch_size=32

Times `--steps` batches after `--warmup` batches (which fill the shuffle buffer and prefetch), for the
training pipeline (shuffle, repeat, random crop) and, with --eval, one pass of the eval pipeline. The
sample is built once per record format of `--file_formats`: ArrayRecord (read by Grain, no
TensorFlow) and TFRecord (read by tf.data); a `--dataset_dir` is read in the format it was built in.
Prints the CPU time per slice (all threads) and the load average before and after: on a shared
machine the rates are only as good as the load allows.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mrsr_jax.data import pipeline  # noqa: E402


def _build_sample(tmp: str, file_format: str) -> str:
  from data_prep import __main__ as data_prep_main

  data_dir = os.path.join(tmp, file_format)
  if data_prep_main.main(["--dataset=sample", f"--data_dir={data_dir}", "--no_progress",
                          f"--file_format={file_format}"]) != 0:
    raise SystemExit("building the sample failed (see above)")
  return os.path.join(data_dir, "sample")


def _load() -> str:
  return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dataset_dir", default=None, help="a prepared dataset (<data_dir>/<dataset>[/<config>]); default: build the sample")
  p.add_argument("--split", default="train")
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--crop_size", type=int, default=64)
  p.add_argument("--steps", type=int, default=200)
  p.add_argument("--warmup", type=int, default=10)
  p.add_argument("--eval", action="store_true", help="also time one pass of the eval pipeline")
  p.add_argument("--file_formats", default="array_record,tfrecord",
                 help="record formats to build the sample in and time, comma-separated (default: %(default)s)")
  p.add_argument("--num_threads", type=int, default=None,
                 help="Grain's decoding threads (default: one per usable core, at most 16)")
  args = p.parse_args()

  with tempfile.TemporaryDirectory() as tmp:
    dirs = ([os.path.expanduser(args.dataset_dir)] if args.dataset_dir else
            [_build_sample(tmp, f) for f in args.file_formats.split(",")])
    for d in dirs:
      _time(d, args)


def _time(d: str, args) -> None:
  info = pipeline.dataset_info(d)
  reader = "Grain" if info["file_format"] == "array_record" else "tf.data"
  print(f"{d} ({info['file_format']}, {reader}): {info['splits'][args.split]['num_examples']} {args.split} "
        f"slices of {info['slice_shapes']}, {os.cpu_count()} CPUs, {_load()}")
  ds = pipeline.create_dataset(d, args.split, global_batch_size=args.batch_size, crop_size=args.crop_size,
                               seed=0, train=True, process_index=0, process_count=1,
                               num_threads=args.num_threads)
  it = pipeline.iterate(ds)
  for _ in range(args.warmup):
    next(it)
  t0, c0 = time.perf_counter(), time.process_time()
  for _ in range(args.steps):
    next(it)
  dt, cpu = time.perf_counter() - t0, time.process_time() - c0
  # CPU time of the whole process (every reader thread) per slice: the figure a loaded machine
  # distorts least.
  print(f"train: {args.steps * args.batch_size / dt:,.0f} slices/s "
        f"({args.steps / dt:,.1f} batches/s of {args.batch_size}x{args.crop_size}x{args.crop_size}), "
        f"{1e3 * cpu / (args.steps * args.batch_size):.2f} CPU ms/slice")
  if args.eval:
    t0 = time.perf_counter()
    n = 0
    for batch in pipeline.iterate(pipeline.create_dataset(
        d, args.split, global_batch_size=args.batch_size, crop_size=None, seed=0, train=False,
        process_index=0, process_count=1)):
      n += int(batch["mask"].sum())
    print(f"eval:  {n / (time.perf_counter() - t0):,.0f} slices/s (one pass of {n} full-size slices, start-up included)")
  print(_load())


if __name__ == "__main__":
  main()
