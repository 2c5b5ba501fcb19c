"""Can the input pipeline feed the SR step on GPUs? Slices/s per CPU core against what a GPU consumes.

  python bench/pipeline_vs_step.py --manual_dir=../shared/data/ixi_t1_2mm          # builds both sets
  python bench/pipeline_vs_step.py --data_dir=/tmp/pvs --skip_build --utilisation=0.4

Supply: `mrsr_jax.data.pipeline.create_dataset` (the training pipeline as the loop runs it: TFDS
read, file shuffle, interleave, shuffle buffer, repeat, on-the-fly random crop, batch, prefetch),
timed in a subprocess pinned to ONE CPU (TensorFlow sizes its thread pools from the CPU affinity),
so the figure is slices/s per core. Two real-anatomy sets, both built by data_prep from the IXI T1
volumes in `--manual_dir`: `ixi/t1` (the IXI builder: 240² slices, the IXI paper configs' crop) and
a fastMRI-format set (`reconstruction_rss` HDF5 files, acquisition CORPD_FBK) of the same volumes
resampled in-plane to 320² (the fastMRI builder and configs' crop): what differs between the two for
the pipeline is the bytes per slice, which this keeps.

Demand: FLOPs per slice of the real SR train step of `configs/sr_ixi_x4.py` (240²) and
`configs/sr_fastmri_x4.py` (320²), all loss terms on (ViT and AE features), from
`bench/memory.py`'s `analyse` (bench/flops.py's count at two batch sizes, lowered for a GPU).
One H100 SXM consumes `utilisation * peak / FLOPs-per-slice` slices/s, peak = 989 TFLOP/s for bf16
and 495 TFLOP/s for float32 run as TF32 (NVIDIA's dense figures). 4x is the hungrier scale (fewer
FLOPs per slice than 2x). The cores needed for 8 GPUs follow; a host has 8-16 cores, some of which
the training process itself needs.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

H100_PEAK = {"bfloat16": 989e12, "float32": 495e12}   # dense bf16 / TF32, SXM


def build_sets(manual_dir: str, data_dir: str) -> dict[str, str]:
  """{name: prepared dataset dir} of the 240² IXI set and the 320² fastMRI-format set."""
  from data_prep import __main__ as prep
  out = {}
  if prep.main(["--dataset=ixi/t1", f"--manual_dir={manual_dir}", f"--data_dir={data_dir}", "--no_progress"]):
    raise SystemExit("building ixi/t1 failed (see above)")
  out["ixi 240²"] = os.path.join(data_dir, "ixi", "t1")
  h5_dir = os.path.join(data_dir, "fastmri_format_h5")
  write_fastmri_format(manual_dir, h5_dir)
  if prep.main(["--dataset=fastmri/pd", f"--manual_dir={h5_dir}", f"--data_dir={data_dir}", "--no_progress"]):
    raise SystemExit("building the 320² fastMRI-format set failed (see above)")
  out["fastMRI-format 320²"] = os.path.join(data_dir, "fastmri", "pd")
  return out


def write_fastmri_format(manual_dir: str, h5_dir: str) -> None:
  """The IXI volumes as fastMRI single-coil files: axial slices, in-plane zoomed to fill 320²."""
  import h5py
  import nibabel as nib
  import numpy as np
  from scipy import ndimage
  os.makedirs(h5_dir, exist_ok=True)
  for path in sorted(glob.glob(os.path.join(manual_dir, "*.nii*"))):
    vol = np.asarray(nib.load(path).dataobj, np.float32)          # [x, y, z]
    zoom = 320 / max(vol.shape[:2])
    vol = ndimage.zoom(vol, (zoom, zoom, 1), order=1)
    slices = np.ascontiguousarray(np.moveaxis(vol, 2, 0))           # [z, x, y]
    name = os.path.join(h5_dir, os.path.basename(path).split(".")[0] + ".h5")
    with h5py.File(name, "w") as f:
      f.attrs["acquisition"] = "CORPD_FBK"
      f.create_dataset("reconstruction_rss", data=slices)


def supply_worker(spec: dict) -> dict:
  """slices/s of the training pipeline in this process (pinned to one CPU by the caller)."""
  os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:spec["cpus"]])
  from mrsr_jax.data import pipeline
  ds = pipeline.create_dataset(spec["dir"], "train", global_batch_size=spec["batch"], crop_size=spec["crop"],
                               seed=0, train=True, process_index=0, process_count=1)
  it = pipeline.iterate(ds)
  for _ in range(spec["warmup"]):
    next(it)
  c0, t0 = time.process_time(), time.perf_counter()
  for _ in range(spec["steps"]):
    next(it)
  wall, cpu = time.perf_counter() - t0, time.process_time() - c0
  n = spec["steps"] * spec["batch"]
  info = pipeline.dataset_info(spec["dir"])
  return {"slices_per_s": n / wall, "cpu_s_per_slice": cpu / n, "train_slices": info["splits"]["train"]["num_examples"],
          "shapes": info["slice_shapes"], "load": os.getloadavg()[0]}


def demand(config_path: str) -> dict:
  import memory
  from ml_collections import config_flags  # noqa: F401  (configs are plain modules here)
  import importlib.util
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, config_path))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config()
  r = memory.analyse(config, "sr", config_name=config_path, configured=False, log=lambda m: None)
  return {"per_slice_flops": r.per_slice_flops, "dtype": str(config.dtype), "crop": int(config.crop_size)}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--worker", help=argparse.SUPPRESS)
  p.add_argument("--manual_dir", default=os.path.join(ROOT, "..", "shared", "data", "ixi_t1_2mm"))
  p.add_argument("--data_dir", default="", help="where to build (default: a temporary folder)")
  p.add_argument("--skip_build", action="store_true", help="use the sets already in --data_dir")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--steps", type=int, default=60)
  p.add_argument("--warmup", type=int, default=10)
  p.add_argument("--utilisation", type=float, default=0.4, help="assumed H100 utilisation (MFU)")
  p.add_argument("--gpus", type=int, default=8)
  args = p.parse_args()
  if args.worker:
    print(json.dumps(supply_worker(json.loads(args.worker))))
    return
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = args.data_dir or tmp
    if args.skip_build:
      sets = {"ixi 240²": os.path.join(data_dir, "ixi", "t1"),
              "fastMRI-format 320²": os.path.join(data_dir, "fastmri", "pd")}
    else:
      sets = build_sets(os.path.abspath(args.manual_dir), data_dir)
    configs = {"ixi 240²": "configs/sr_ixi_x4.py", "fastMRI-format 320²": "configs/sr_fastmri_x4.py"}
    print(f"# {' '.join(sys.argv)}\n# {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; supply "
          f"measured on 1 core, batch {args.batch}, {args.steps} batches after {args.warmup}; H100 at "
          f"{args.utilisation:.0%} of peak")
    print("| set | crop | pipeline slices/s per core (CPU ms/slice) | SR step GFLOP/slice (4×) | "
          "one H100 consumes slices/s (bf16 / TF32) | cores for 8 GPUs (bf16 / TF32) |")
    print("|---|---|---|---|---|---|")
    for name, d in sets.items():
      need = demand(configs[name])
      spec = dict(dir=d, batch=args.batch, crop=need["crop"], steps=args.steps, warmup=args.warmup, cpus=1)
      r = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                         text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
      line = [x for x in r.stdout.splitlines() if x.startswith("{")]
      if not line:
        raise SystemExit(f"{name}: pipeline worker failed: {r.stderr.strip().splitlines()[-3:]}")
      s = json.loads(line[-1])
      gpu = {k: args.utilisation * peak / need["per_slice_flops"] for k, peak in H100_PEAK.items()}
      cores = {k: args.gpus * v / s["slices_per_s"] for k, v in gpu.items()}
      print(f"| {name} ({s['train_slices']} train slices) | {need['crop']} | {s['slices_per_s']:,.0f} "
            f"({1e3 * s['cpu_s_per_slice']:.2f}) | {need['per_slice_flops'] / 1e9:,.0f} | "
            f"{gpu['bfloat16']:,.0f} / {gpu['float32']:,.0f} | {cores['bfloat16']:.1f} / {cores['float32']:.1f} |",
            flush=True)
    print(f"# load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  main()
