"""Where the SR train step's time goes: a jax.profiler trace of ours, a torch.profiler table of PyTorch's.

  python bench/profile_sr.py --scale=4              # ours: per-op table from the XLA:CPU trace
  python bench/profile_sr.py --scale=4 --torch      # PyTorch eager: torch.profiler table
  python bench/profile_sr.py --scale=4 --xlaconv    # ours with XLA's own conv gradients (the before)

Ours: `jax.profiler` traces `--steps` steady steps; the XLA thunks on the CPU threads are summed by
HLO instruction and grouped by what they compute (from the HLO's op_name metadata): conv forward,
conv input gradient, conv kernel gradient, other (elementwise / BatchNorm / optimiser fusions,
copies). Also prints the step's FLOPs (bench/flops.py's count, convolutions and matmuls included on
every backend), the bytes XLA's cost analysis says the compiled step accesses, and the achieved GFLOP/s.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))


def _classify(hlo: str) -> dict[str, tuple[str, str]]:
  """HLO instruction name -> (category, layer) from its op_name metadata and output shape."""
  out = {}
  for m in re.finditer(r"%([\w.\-]+) = (\w+)\[([\d,]*)\][^\n]*?op_name=\"([^\"]+)\"", hlo):
    name, _, shape, op = m.groups()
    layer = "/".join(p for p in op.split("/") if not p.startswith(("jit(", "transpose(", "jvp(")))
    if "/cond/branch" in op:
      # lax.platform_dependent's CPU branch of cpu_conv: im2col + one matmul per kernel gradient.
      cat = "conv kernel grad"
    elif "conv_general_dilated" in op:
      dims = [int(d) for d in shape.split(",") if d]
      is_kernel = any(dims[i:i + 2] in ([3, 3], [9, 9]) for i in range(len(dims) - 1))
      cat = ("conv kernel grad" if is_kernel else "conv input grad") if "transpose(" in op else "conv forward"
    elif "dot_general" in op:
      cat = "dot (dense layers)"
    else:
      cat = "other (elementwise, BatchNorm, optimiser, copies)"
    out[name] = (cat, layer.replace("/conv_general_dilated", ""))
  return out


def profile_jax(args) -> None:
  import jax
  import numpy as np
  from jax.profiler import ProfileData
  from configs import base
  from mrsr_jax import sharding
  from mrsr_jax.train import loop, step as step_lib
  from mrsr_jax.train.stage_sr import SRStage
  if args.xlaconv:
    from mrsr_jax.models import srgan
    srgan.backend_conv_impl = lambda platform=None: "xla"   # the models built below: XLA's convolutions

  config = base.get_config()
  config.scale, config.crop_size, config.sr.batch_size = args.scale, args.size, args.batch
  config.sr.loss.update(lambda_vit=0.0, lambda_str=0.0, lambda_tex=0.0)
  mesh = sharding.make_mesh()
  stage = SRStage(config, "/tmp/unused")
  init, _ = loop.init_state(stage, mesh)
  state = init(jax.random.key(0))
  step = step_lib.compile_step(stage.update, mesh)
  rng = np.random.default_rng(0)
  batch = sharding.to_global({"hr": rng.random((args.batch, args.size, args.size, 1), np.float32),
                              "label": np.zeros((args.batch,), np.int32)}, mesh)
  key = jax.random.key(1)
  import flops as flops_lib
  traced = step.trace(state, batch, key, {})
  counted = flops_lib.count(traced.jaxpr, platform=flops_lib.default_platform()).flops
  compiled = traced.lower().compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  names = _classify(compiled.as_text())
  state, m = step(state, batch, key, {})
  jax.block_until_ready(m)
  with tempfile.TemporaryDirectory() as d:
    t0 = time.perf_counter()
    jax.profiler.start_trace(d)
    for _ in range(args.steps):
      state, m = step(state, batch, key, {})
      jax.block_until_ready(m)
    jax.profiler.stop_trace()
    wall = (time.perf_counter() - t0) / args.steps
    data = ProfileData.from_file(sorted(glob.glob(f"{d}/**/*.xplane.pb", recursive=True))[-1])
    per_op = collections.Counter()
    for plane in data.planes:
      for line in plane.lines:
        if "XLAEigen" not in line.name and "PjRtCpuClient" not in line.name:
          continue
        for ev in line.events:
          if ev.name in names:
            per_op[ev.name] += ev.duration_ns / 1e6 / args.steps
  print(f"ours, {args.scale}×, batch {args.batch} at {args.size}²{' (XLA conv gradients)' if args.xlaconv else ''}: "
        f"{wall * 1e3:.0f} ms/step (traced); {counted / 1e9:.0f} GFLOP (bench/flops.py), "
        f"{cost.get('bytes accessed', 0) / 1e9:.1f} GB accessed (XLA cost analysis) -> "
        f"{counted / 1e9 / wall:.0f} GFLOP/s")
  total = sum(per_op.values())
  by_cat = collections.Counter()
  for n, t in per_op.items():
    by_cat[names[n][0]] += t
  print(f"\n| category | ms/step (sum over threads) | share |\n|---|---|---|")
  for c, t in by_cat.most_common():
    print(f"| {c} | {t:.0f} | {100 * t / total:.0f}% |")
  print(f"\n| top HLO ops | category | layer | ms/step |\n|---|---|---|---|")
  for n, t in per_op.most_common(args.top):
    print(f"| {n} | {names[n][0]} | {names[n][1]} | {t:.0f} |")


def profile_torch(args) -> None:
  import torch
  import torch_reference as tr
  from torch.profiler import ProfilerActivity, profile

  torch.set_num_threads(args.torch_threads or os.cpu_count())
  cl = torch.channels_last
  gen = tr.SRGenerator(args.scale).to(memory_format=cl)
  disc = tr.SRDiscriminator().to(memory_format=cl)
  step = tr.train_step_fn(gen, disc, torch.optim.AdamW(gen.parameters(), 1e-4, weight_decay=0.1),
                          torch.optim.AdamW(disc.parameters(), 1e-4, weight_decay=0.1), args.scale)
  hr = torch.rand(args.batch, 1, args.size, args.size).contiguous(memory_format=cl)
  step(hr)
  t0 = time.perf_counter()
  with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
    for _ in range(args.steps):
      step(hr)
  wall = (time.perf_counter() - t0) / args.steps
  print(f"PyTorch eager ({torch.get_num_threads()} threads), {args.scale}×, batch {args.batch} at "
        f"{args.size}²: {wall * 1e3:.0f} ms/step (profiled)")
  print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--scale", type=int, default=4)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--size", type=int, default=240)
  p.add_argument("--steps", type=int, default=2)
  p.add_argument("--top", type=int, default=15)
  p.add_argument("--torch", action="store_true")
  p.add_argument("--torch_threads", type=int, default=0)
  p.add_argument("--xlaconv", action="store_true")
  args = p.parse_args()
  profile_torch(args) if args.torch else profile_jax(args)


if __name__ == "__main__":
  main()
