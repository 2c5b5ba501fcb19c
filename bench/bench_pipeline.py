"""Prints the input pipeline's throughput (slices/s) on this machine. A benchmark, not a test.

  python bench/bench_pipeline.py                        # builds the bundled sample in a temp dir
  python bench/bench_pipeline.py --dataset_dir=~/mrsr_jax_data/ixi --crop_size=128 --batch_size=32

Times `--steps` batches after `--warmup` batches (which fill the shuffle buffer and prefetch), for the
training pipeline (shuffle, repeat, random crop) and, with --eval, one pass of the eval pipeline.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mrsr_jax.data import pipeline  # noqa: E402  (hides GPUs from TF first)


def _build_sample(tmp: str) -> str:
  from data_prep import __main__ as data_prep_main

  if data_prep_main.main(["--dataset=sample", f"--data_dir={tmp}", "--no_progress"]) != 0:
    raise SystemExit("building the sample failed (see above)")
  return os.path.join(tmp, "sample")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dataset_dir", default=None, help="a prepared dataset (<data_dir>/<dataset>[/<config>]); default: build the sample")
  p.add_argument("--split", default="train")
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--crop_size", type=int, default=64)
  p.add_argument("--steps", type=int, default=200)
  p.add_argument("--warmup", type=int, default=10)
  p.add_argument("--eval", action="store_true", help="also time one pass of the eval pipeline")
  args = p.parse_args()

  with tempfile.TemporaryDirectory() as tmp:
    d = os.path.expanduser(args.dataset_dir) if args.dataset_dir else _build_sample(tmp)
    info = pipeline.dataset_info(d)
    print(f"{d}: {info['splits'][args.split]['num_examples']} {args.split} slices of {info['slice_shapes']}, "
          f"{os.cpu_count()} CPUs")
    ds = pipeline.create_dataset(d, args.split, global_batch_size=args.batch_size, crop_size=args.crop_size,
                                 seed=0, train=True, process_index=0, process_count=1)
    it = pipeline.iterate(ds)
    for _ in range(args.warmup):
      next(it)
    t0 = time.perf_counter()
    for _ in range(args.steps):
      next(it)
    dt = time.perf_counter() - t0
    print(f"train: {args.steps * args.batch_size / dt:,.0f} slices/s "
          f"({args.steps / dt:,.1f} batches/s of {args.batch_size}x{args.crop_size}x{args.crop_size})")
    if args.eval:
      t0 = time.perf_counter()
      n = 0
      for batch in pipeline.iterate(pipeline.create_dataset(
          d, args.split, global_batch_size=args.batch_size, crop_size=None, seed=0, train=False,
          process_index=0, process_count=1)):
        n += int(batch["mask"].sum())
      print(f"eval:  {n / (time.perf_counter() - t0):,.0f} slices/s (one pass of {n} full-size slices, start-up included)")


if __name__ == "__main__":
  main()
