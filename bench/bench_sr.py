"""Side-by-side speed of the SR networks: our jitted JAX step vs the same networks in PyTorch.

  python bench/bench_sr.py                        # CPU defaults: small batch, train + inference rows
  python bench/bench_sr.py --batch=32 --repeats=3 # e.g. on a GPU
  python bench/bench_sr.py --rows=infer --sizes=256,512

Each measurement runs in its own subprocess (so peak memory is its own and one framework's thread
pools do not slow the other), frameworks alternate, and each row reports the median over `--repeats`.
Printed per row: compile / first-call time, steady-state ms per step and per slice, images/s, peak
memory (host RSS on CPU, device peak on GPU), and the ratio ours/PyTorch-eager in images/s.
Train step = one generator and one discriminator update (L1 + adversarial; the frozen-feature terms are
off so both frameworks run the same networks); LR made from 240x240 HR at 2x and 4x.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- workers (one measurement each, in a subprocess) -------------------------------------------------
def _peak_host_mb() -> float:
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timeit(fn, sync, iters: int, warmup: int) -> tuple[float, list[float]]:
  t0 = time.perf_counter()
  sync(fn())
  first = time.perf_counter() - t0
  for _ in range(warmup):
    sync(fn())
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    sync(fn())
    times.append(time.perf_counter() - t0)
  return first, times


def worker_jax(spec: dict) -> dict:
  sys.path.insert(0, ROOT)
  import jax
  import jax.numpy as jnp
  import numpy as np
  from configs import base
  from mrsr_jax import sharding
  from mrsr_jax.train import loop, step as step_lib
  from mrsr_jax.train.stage_sr import SRStage, generator

  config = base.get_config()
  config.scale = spec["scale"]
  config.dtype = spec["dtype"]
  config.crop_size = spec["size"]
  config.sr.batch_size = spec["batch"]
  config.sr.loss.update(lambda_vit=0.0, lambda_str=0.0, lambda_tex=0.0)
  mesh = sharding.make_mesh()
  rng = np.random.default_rng(0)
  b, m, s = spec["batch"], spec["size"], spec["scale"]
  if spec["task"] == "train":
    stage = SRStage(config, "/tmp/unused")
    init, _ = loop.init_state(stage, mesh)
    state = init(jax.random.key(0))
    step = step_lib.compile_step(stage.update, mesh)
    batch = sharding.to_global({"hr": rng.random((b, m, m, 1), np.float32),
                                "label": np.zeros((b,), np.int32)}, mesh)
    holder = {"state": state}

    def fn():
      holder["state"], metrics = step(holder["state"], batch, jax.random.key(1), {})
      return metrics["g_total"]
  else:
    gen = generator(config)
    lr = sharding.to_global(rng.random((b, m // s, m // s, 1), np.float32), mesh)
    variables = jax.jit(lambda k: gen.init(k, lr[:1], train=False))(jax.random.key(0))
    apply = jax.jit(lambda v, x: gen.apply(v, x.astype(jnp.dtype(config.dtype)), train=False))

    def fn():
      return apply(variables, lr)
  first, times = _timeit(fn, lambda x: jax.block_until_ready(x), spec["iters"], spec["warmup"])
  dev = jax.devices()[0]
  peak = None
  if dev.platform != "cpu":
    stats = dev.memory_stats() or {}
    peak = stats.get("peak_bytes_in_use", 0) / 2**20
  return {"first_s": first, "times": times, "peak_mb": peak if peak is not None else _peak_host_mb(),
          "device": f"{dev.platform}:{getattr(dev, 'device_kind', '')} x{jax.device_count()}"}


def worker_torch(spec: dict) -> dict:
  sys.path.insert(0, os.path.join(ROOT, "bench"))
  import torch
  import torch_reference as tr

  dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  if dev.type == "cpu":
    torch.set_num_threads(os.cpu_count())
  dtype = torch.bfloat16 if spec["dtype"] == "bfloat16" else None
  b, m, s = spec["batch"], spec["size"], spec["scale"]
  gen = tr.SRGenerator(s).to(dev).to(memory_format=torch.channels_last)
  torch.manual_seed(0)
  hr = torch.rand(b, 1, m, m, device=dev)
  lr = torch.rand(b, 1, m // s, m // s, device=dev)
  if spec["task"] == "train":
    disc = tr.SRDiscriminator().to(dev).to(memory_format=torch.channels_last)
    opt_g = torch.optim.AdamW(gen.parameters(), 1e-4, weight_decay=0.1)
    opt_d = torch.optim.AdamW(disc.parameters(), 1e-4, weight_decay=0.1)
    step = tr.train_step_fn(gen, disc, opt_g, opt_d)
    if spec["framework"] == "torch_compile":
      step = torch.compile(step)

    def fn():
      with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
        return step(lr, hr)[0]
  else:
    gen.eval()
    g = torch.compile(gen) if spec["framework"] == "torch_compile" else gen

    def fn():
      with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
        return g(lr)

  def sync(_):
    if dev.type == "cuda":
      torch.cuda.synchronize()

  if dev.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
  first, times = _timeit(fn, sync, spec["iters"], spec["warmup"])
  peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else _peak_host_mb()
  name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
  return {"first_s": first, "times": times, "peak_mb": peak, "device": f"{dev.type}:{name}"}


# -- driver ------------------------------------------------------------------------------------------
def run_one(spec: dict, timeout: int) -> dict | None:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  r = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                     text=True, env=env, timeout=timeout)
  for line in reversed(r.stdout.splitlines()):
    if line.startswith("{"):
      return json.loads(line)
  print(f"  ! {spec['framework']} failed: {r.stderr.strip().splitlines()[-1:] if r.stderr else r.returncode}",
        file=sys.stderr)
  return None


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--worker", help=argparse.SUPPRESS)
  p.add_argument("--rows", default="train,infer", help="train, infer or both")
  p.add_argument("--frameworks", default="jax,torch,torch_compile")
  p.add_argument("--scales", default="2,4")
  p.add_argument("--batch", type=int, default=4, help="global batch of the train step")
  p.add_argument("--size", type=int, default=240, help="HR slice size of the train step")
  p.add_argument("--sizes", default="256,512", help="HR output sizes of the inference rows")
  p.add_argument("--infer_batch", type=int, default=1)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--timeout", type=int, default=1200)
  args = p.parse_args()
  if args.worker:
    spec = json.loads(args.worker)
    out = worker_jax(spec) if spec["framework"] == "jax" else worker_torch(spec)
    print(json.dumps(out))
    return

  rows = []
  for task in args.rows.split(","):
    for s in map(int, args.scales.split(",")):
      sizes = [args.size] if task == "train" else list(map(int, args.sizes.split(",")))
      for size in sizes:
        batch = args.batch if task == "train" else args.infer_batch
        rows.append(dict(task=task, scale=s, size=size, batch=batch, dtype=args.dtype,
                         iters=args.iters, warmup=args.warmup))
  header = (f"| task | scale | HR size | batch | framework | device | first call s | ms/step | ms/slice "
            f"| images/s | peak MB | ours/this (images/s) |")
  print(header)
  print("|---" * (header.count("|") - 1) + "|")
  for row in rows:
    results = {f: [] for f in args.frameworks.split(",")}
    for _ in range(args.repeats):
      for f in results:
        r = run_one({**row, "framework": f}, args.timeout)
        if r:
          results[f].append(r)
    med = {}
    for f, rs in results.items():
      if not rs:
        continue
      step_s = statistics.median(statistics.median(r["times"]) for r in rs)
      med[f] = dict(first=statistics.median(r["first_s"] for r in rs), step=step_s,
                    ips=row["batch"] / step_s, peak=max(r["peak_mb"] for r in rs), device=rs[0]["device"])
    for f, m in med.items():
      ratio = f"{med['jax']['ips'] / m['ips']:.2f}×" if "jax" in med and f != "jax" else "–"
      print(f"| {row['task']} | {row['scale']}× | {row['size']} | {row['batch']} | {f} | {m['device']} | "
            f"{m['first']:.2f} | {1e3 * m['step']:.1f} | {1e3 * m['step'] / row['batch']:.1f} | "
            f"{m['ips']:.2f} | {m['peak']:.0f} | {ratio} |", flush=True)


if __name__ == "__main__":
  main()
