"""How fast this machine can go: the attainable rate of dense matrix products and of the SR step's
convolutions, per framework and dtype, side by side on the same pinned cores.

  python bench/roofline.py                       # float32 and bfloat16, all CPUs, JAX and PyTorch
  python bench/roofline.py --threads=1 --dtypes=float32

A ratio "ours / PyTorch" cannot beat what the hardware allows: on a CPU where PyTorch's convolutions
already run near the machine's multiply-add peak, a step 1.3x faster than PyTorch's would need a
higher rate than any kernel here reaches. This script measures that ceiling; `bench/bench_sr.py`
prints each framework's achieved rate on the real step (FLOPs from XLA's cost analysis of ours), and
docs/benchmarks.md sets one against the other.

Rows (GFLOP/s, best of `--iters` calls after a warm-up in each of `--repeats` worker runs; 2 FLOPs per multiply-add, counted as XLA's
cost analysis counts them):
  * `matmul N³`: one [N, N] x [N, N] product (float32 accumulation for bfloat16 inputs).
  * the SR step's two commonest convolution shapes (G's 64->64 residual-block conv at batch 4, 60²,
    i.e. 4x at 240²; D's 64->128 conv at batch 8, 120²), forward, input gradient (dx) and kernel
    gradient (dw). Ours as the train step compiles them (`step.compile_step` on CPU: Eigen's
    convolutions and `cpu_conv`'s kernel gradients, "jax[step]") and with XLA's defaults (YNNPACK,
    what inference uses, "jax[default]"); PyTorch channels-last through `convolution_backward`.
Each (framework, dtype) runs in its own subprocess pinned to the same `--threads` CPUs, glibc keeping
freed memory in both (as run.py sets it for ours), and the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from bench_sr import load_1min, pin_cpus, run_one, set_malloc  # noqa: E402

# (name, batch, H, W, cin, cout): 3x3, stride 1, SAME.
CONVS = (("G block 64->64 [4,60,60]", 4, 60, 60, 64, 64),
         ("D conv2 64->128 [8,120,120]", 8, 120, 120, 64, 128))


def conv_flops(b: int, h: int, w: int, ci: int, co: int, k: int = 3) -> float:
  """FLOPs of a k x k, stride-1, SAME convolution as XLA's cost analysis counts them (so that these rates
  and bench_sr.py's per-step rates share one convention): 2 per multiply-add, taps that fall on the zero
  padding not counted (1% fewer than 2*b*h*w*ci*co*k*k at 120², 4% at 60²)."""
  def taps(n: int) -> int:   # sum over output positions of the kernel taps inside the image
    return sum(min(i + k // 2, n - 1) - max(i - k // 2, 0) + 1 for i in range(n))
  return 2.0 * b * ci * co * taps(h) * taps(w)


def best_rate(fn, flops: float, iters: int) -> float:
  fn()                                        # compile / first call
  fn()
  best = float("inf")
  for _ in range(iters):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return flops / best / 1e9


def worker_jax(spec: dict) -> dict:
  sys.path.insert(0, ROOT)
  import jax
  import jax.numpy as jnp
  import numpy as np
  from mrsr_jax.models import cpu_conv
  dt = jnp.dtype(spec["dtype"])
  rng = np.random.default_rng(0)
  n, it = spec["n"], spec["iters"]
  out = {}
  a, b = (jnp.asarray(rng.standard_normal((n, n)), dt) for _ in range(2))
  mm = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  out[f"matmul {n}³||"] = best_rate(lambda: mm(a, b).block_until_ready(), 2.0 * n ** 3, it)
  modes = {"default": ({}, False)}
  step_options = cpu_conv.train_compiler_options()
  if step_options:
    modes["step"] = (step_options, True)
  for name, bb, h, w, ci, co in CONVS:
    x = jnp.asarray(rng.standard_normal((bb, h, w, ci)), dt)
    k = jnp.asarray(rng.standard_normal((3, 3, ci, co)) * 0.05, dt)
    dy = jnp.asarray(rng.standard_normal((bb, h, w, co)), dt)
    for mode, (options, eigen) in modes.items():
      # Fresh functions per mode: jit caches a trace by function, and `eigen_convolutions` only acts
      # when the convolutions are traced.
      f = lambda x_, k_: cpu_conv.conv_general_dilated(x_, k_, (1, 1), "SAME",
                                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      passes = {"fwd": (f, (x, k)),
                "dx": (lambda k_, g, f=f: jax.vjp(lambda a_: f(a_, k_), x)[1](g)[0], (k, dy)),
                "dw": (lambda x_, g, f=f: jax.vjp(lambda a_: f(x_, a_), k)[1](g)[0], (x, dy))}
      for pss, (fn, args) in passes.items():
        with cpu_conv.eigen_convolutions() if eigen else contextlib.nullcontext():
          compiled = jax.jit(fn).lower(*args).compile(compiler_options=options or None)
        out[f"{name}|{pss}|{mode}"] = best_rate(
            lambda c=compiled, a_=args: jax.block_until_ready(c(*a_)), conv_flops(bb, h, w, ci, co), it)
  return out


def worker_torch(spec: dict) -> dict:
  import torch
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[spec["dtype"]]
  g = torch.Generator().manual_seed(0)
  n, it = spec["n"], spec["iters"]
  out = {}
  a, b = (torch.randn(n, n, generator=g).to(dt) for _ in range(2))
  out[f"matmul {n}³||"] = best_rate(lambda: torch.mm(a, b), 2.0 * n ** 3, it)
  cl = torch.channels_last
  cb = torch.ops.aten.convolution_backward
  for name, bb, h, w, ci, co in CONVS:
    x = torch.randn(bb, ci, h, w, generator=g).to(dt).contiguous(memory_format=cl)
    k = (torch.randn(co, ci, 3, 3, generator=g) * 0.05).to(dt).contiguous(memory_format=cl)
    dy = torch.randn(bb, co, h, w, generator=g).to(dt).contiguous(memory_format=cl)
    fl = conv_flops(bb, h, w, ci, co)

    def fwd(x=x, k=k):
      with torch.no_grad():
        return torch.nn.functional.conv2d(x, k, None, 1, 1)
    out[f"{name}|fwd|"] = best_rate(fwd, fl, it)
    for pss, mask in (("dx", [True, False, False]), ("dw", [False, True, False])):
      out[f"{name}|{pss}|"] = best_rate(
          lambda m=mask, x=x, k=k, dy=dy: cb(dy, x, k, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, m),
          fl, it)
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--threads", type=int, default=os.cpu_count())
  p.add_argument("--dtypes", default="float32,bfloat16")
  p.add_argument("--frameworks", default="jax,torch")
  p.add_argument("--n", type=int, default=4096, help="matmul size")
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--repeats", type=int, default=3, help="worker runs per framework (the best rate is kept: "
                 "the attainable rate, not a typical one)")
  p.add_argument("--timeout", type=int, default=900)
  p.add_argument("--worker", default="")
  args = p.parse_args()
  if args.worker:
    spec = json.loads(args.worker)
    pin_cpus(spec["threads"])
    set_malloc({**spec, "keep_freed": "both"})
    print(json.dumps((worker_jax if spec["framework"] == "jax" else worker_torch)(spec)))
    return
  load0 = load_1min()
  print(f"# {' '.join(sys.argv)}\n# load average at start {load0:.2f}; {os.cpu_count()} CPUs; workers "
        f"pinned to {args.threads}")
  print("| kernel | pass | dtype | framework [mode] | GFLOP/s |")
  print("|---|---|---|---|---|")
  for dtype in args.dtypes.split(","):
    best: dict[str, dict[str, float]] = {}
    frameworks = args.frameworks.split(",")
    for rep in range(args.repeats):            # frameworks alternate; the order rotates per repeat
      for fw in frameworks[rep % len(frameworks):] + frameworks[:rep % len(frameworks)]:
        spec = dict(framework=fw, dtype=dtype, threads=args.threads, n=args.n, iters=args.iters)
        for key, rate in (run_one(__file__, spec, args.timeout) or {}).items():
          best.setdefault(fw, {})[key] = max(rate, best.get(fw, {}).get(key, 0.0))
    for fw in frameworks:
      for key, rate in best.get(fw, {}).items():
        kernel, pss, mode = key.split("|")
        print(f"| {kernel} | {pss} | {dtype} | {fw}{f' [{mode}]' if mode else ''} | {rate:.0f} |", flush=True)
  print(f"# load average at end {load_1min():.2f} (ratios from a row count only at a load <= "
        f"{args.threads} cores)")


if __name__ == "__main__":
  main()
