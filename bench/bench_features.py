"""Speed of the feature extractors and of whole-volume prediction: ours (JAX) vs MONAI / PyTorch.

  python bench/bench_features.py                           # every row, float32
  python bench/bench_features.py --rows=vit3d,vit2d --dtype=bfloat16
  python bench/bench_features.py --rows=volume --volume_scale=2

Rows (forward only, batch 1 unless said otherwise):
  vit3d   UNETR's ViT (patch 16, 768 wide, 12 layers, 12 heads) on a 96³ volume (216 tokens):
          `mrsr_jax.models.vit.ViT` vs `monai.networks.nets.ViT` with the same config.
  vit2d   the same ViT in 2D on a 240² slice (225 tokens), as the SR loss runs it (Eq. 8).
  ae      the swapping-AE encoder on one 256² image (the paper quotes 0.05 s per image):
          `mrsr_jax.models.swap_ae.SwapEncoder` vs `bench/torch_reference.SwapEncoder`.
  volume  a 256×256×150 HR volume's LR (128² at 2×, 64² at 4×) through `mrsr_jax.predict.super_resolve`
          in batches of `--volume_batch` (ours only): first pass (compile included) and a second pass.

The SR generator's own per-slice latency (256² and 512² outputs, 2× and 4×, vs PyTorch) is a row of
`bench/bench_sr.py --rows=infer`. Workers, alternation, medians and memory as in bench_sr.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import bench_sr  # noqa: E402  (the worker helpers and the subprocess driver)

VIT = dict(patch_size=16, hidden_size=768, mlp_dim=3072, num_layers=12, num_heads=12)


def worker_jax(spec: dict) -> dict:
  sys.path.insert(0, ROOT)
  import jax
  import jax.numpy as jnp
  import numpy as np
  from mrsr_jax.models import swap_ae, vit

  dtype = jnp.dtype(spec["dtype"])
  rng = np.random.default_rng(0)
  base_rss, _ = bench_sr.rss_mb()
  row = spec["row"]
  if row == "volume":
    return _volume(spec, base_rss)
  if row in ("vit3d", "vit2d"):
    size = (96, 96, 96) if row == "vit3d" else (240, 240)
    model = vit.ViT(img_size=size, in_channels=1, dtype=dtype, **VIT)
  else:
    size = (256, 256)
    model = swap_ae.SwapEncoder(dtype=dtype)
  x = jnp.asarray(rng.random((spec["batch"],) + size + (1,), np.float32))
  params = jax.jit(model.init)(jax.random.key(0), x)
  apply = jax.jit(model.apply)
  first, times = bench_sr.timeit(lambda: apply(params, x), jax.block_until_ready, spec["iters"],
                                 spec["warmup"])
  return {"first_s": first, "times": times, **bench_sr.jax_memory(base_rss),
          "device": bench_sr.jax_device(), "threads": None}


def _volume(spec: dict, base_rss: float) -> dict:
  import time

  import jax
  import jax.numpy as jnp
  import numpy as np
  from configs import base
  from mrsr_jax import predict, sharding
  from mrsr_jax.data import degrade
  from mrsr_jax.train.stage_sr import generator

  config = base.get_config()
  config.scale = s = spec["scale"]
  config.dtype = spec["dtype"]
  mesh = sharding.make_mesh()
  n = spec["slices"]
  hr = np.random.default_rng(0).random((n, 256, 256, 1), np.float32)
  lr = np.asarray(jax.jit(lambda v: degrade.downsample(v, s))(hr))[..., 0]
  gen = generator(config)
  variables = jax.jit(lambda k: gen.init(k, jnp.zeros((1, 256 // s, 256 // s, 1)), train=False))(
      jax.random.key(0))
  apply_fn = jax.jit(lambda x: gen.apply(variables, x.astype(jnp.dtype(config.dtype)), train=False))
  times = []
  for _ in range(1 + spec["iters"]):
    t0 = time.perf_counter()
    out = predict.super_resolve(apply_fn, lr, spec["batch"], mesh)
    times.append(time.perf_counter() - t0)
  assert out.shape == (n, 256, 256)
  return {"first_s": times[0], "times": times[1:], **bench_sr.jax_memory(base_rss),
          "device": bench_sr.jax_device(), "threads": None}


def worker_torch(spec: dict) -> dict:
  import torch
  import torch_reference as tr

  dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  dtype = torch.bfloat16 if spec["dtype"] == "bfloat16" else None
  base_rss, _ = bench_sr.rss_mb()
  row = spec["row"]
  torch.manual_seed(0)
  if row in ("vit3d", "vit2d"):
    from monai.networks.nets import ViT
    nd = 3 if row == "vit3d" else 2
    size = (96,) * 3 if nd == 3 else (240, 240)
    model = ViT(in_channels=1, img_size=size, proj_type="conv", pos_embed_type="learnable",
                classification=False, spatial_dims=nd, **VIT)
  else:
    size = (256, 256)
    model = tr.SwapEncoder()
  model = model.to(dev).eval()
  x = torch.rand((spec["batch"], 1) + size, device=dev)
  if row == "ae":   # channels-last convolutions, as ours and as bench_sr.py's PyTorch rows
    model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)

  def fn():
    with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
      return model(x)

  def sync(_):
    if dev.type == "cuda":
      torch.cuda.synchronize()

  import time
  t0 = time.perf_counter()
  sync(fn())
  first = time.perf_counter() - t0
  threads = bench_sr.pick_torch_threads(fn, spec["torch_threads"]) if dev.type == "cpu" else None
  _, times = bench_sr.timeit(fn, sync, spec["iters"], max(spec["warmup"] - 1, 0))
  if dev.type == "cuda":
    mem = {"peak_mb": torch.cuda.max_memory_allocated() / 2**20, "growth_mb": None}
  else:
    _, peak = bench_sr.rss_mb()
    mem = {"peak_mb": peak, "growth_mb": peak - base_rss}
  return {"first_s": first, "times": times, **mem, "device": f"{dev.type}", "threads": threads}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--worker", help=argparse.SUPPRESS)
  p.add_argument("--rows", default="vit3d,vit2d,ae,volume")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--volume_scale", type=int, default=4)
  p.add_argument("--volume_slices", type=int, default=150)
  p.add_argument("--volume_batch", type=int, default=16, help="config.predict.batch_size's default")
  p.add_argument("--volume_repeats", type=int, default=1, help="passes timed after the first one")
  p.add_argument("--torch_threads", default="auto")
  p.add_argument("--timeout", type=int, default=1800)
  args = p.parse_args()
  if args.worker:
    spec = json.loads(args.worker)
    print(json.dumps(worker_jax(spec) if spec["framework"] == "jax" else worker_torch(spec)))
    return

  print(f"# {' '.join(sys.argv)}\n# load average at start: {bench_sr.load_average()}; {os.cpu_count()} CPUs")
  header = ("| row | dtype | framework | first call s | ms/call (min–max) | items/s | peak MB (+growth) "
            "| ours/this |")
  print(header)
  print("|---" * (header.count("|") - 1) + "|")
  for row in args.rows.split(","):
    if row == "volume":
      spec = dict(row=row, dtype=args.dtype, scale=args.volume_scale, slices=args.volume_slices,
                  batch=args.volume_batch, iters=args.volume_repeats, warmup=0)
      frameworks, repeats, items = ["jax"], 1, args.volume_slices
    else:
      spec = dict(row=row, dtype=args.dtype, batch=1, iters=args.iters, warmup=args.warmup,
                  torch_threads=args.torch_threads)
      frameworks, repeats, items = ["jax", "torch"], args.repeats, 1
    results = {f: [] for f in frameworks}
    for rep in range(repeats):
      order = frameworks[rep % len(frameworks):] + frameworks[:rep % len(frameworks)]
      for f in order:
        r = bench_sr.run_one(__file__, {**spec, "framework": f}, args.timeout)
        if r:
          results[f].append(r)
    med = bench_sr.summarise(results, items)
    label = {"vit3d": "ViT 96³", "vit2d": "ViT 240²", "ae": "AE encoder 256²",
             "volume": f"volume 256²×{args.volume_slices} at {args.volume_scale}× (batch {args.volume_batch})"}[row]
    names = {"jax": "ours (JAX)", "torch": "MONAI ViT" if row.startswith("vit") else "PyTorch"}
    for f, m in med.items():
      ratio = f"{med['jax']['ips'] / m['ips']:.2f}×" if "jax" in med and f != "jax" else "–"
      mem = f"{m['peak']:.0f}" + (f" (+{m['growth']:.0f})" if m["growth"] is not None else "")
      thr = f" [{','.join(map(str, m['threads']))} thr]" if m["threads"] else ""
      lo, hi = m["spread"]
      print(f"| {label} | {args.dtype} | {names[f]}{thr} | {m['first']:.1f} | {1e3 * m['step']:.1f} "
            f"({1e3 * lo:.1f}–{1e3 * hi:.1f}) | {m['ips']:.2f} | {mem} | {ratio} |", flush=True)
  print(f"# load average at end: {bench_sr.load_average()}")


if __name__ == "__main__":
  main()
