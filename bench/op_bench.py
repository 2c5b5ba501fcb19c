"""Per-layer microbenchmark of the SR train step: the same convolution / BatchNorm / resize shapes in
XLA:CPU (JAX) and oneDNN (PyTorch), side by side in one process, so a ratio is measured under one load.

  taskset -c 0 python bench/op_bench.py --scale=4            # one core, one thread each (the default)
  taskset -c 0,1 python bench/op_bench.py --threads=2
  python bench/op_bench.py --xla_flags=--xla_cpu_experimental_ynn_fusion_type=individual_dot

For each layer of the 4x (or 2x) step at batch 4, 240² (D at batch 8 where D's own update sees [HR; SR]):
forward, input gradient and kernel gradient, each jitted on its own (JAX: `jax.vjp` pieces; ours = the
cpu_conv kernel gradient where srgan.py uses it) and `torch.ops.aten.convolution_backward` with one
output mask each (channels_last). Also BatchNorm training forward + backward and the antialiased
bicubic LR resize. The variants alternate within each round and the median over rounds is printed,
with the process CPU time per call (user + system, all threads): on a shared machine the CPU time of a
single-threaded call is its work, whatever the load does to the wall clock.

`ours/torch` > 1: ours is faster (CPU time). Rows are weighted by how often the step runs them, so the
"step total" estimates each framework's step at one thread; the layers with the largest deficit are
where XLA:CPU loses.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_s() -> float:
  return time.process_time()   # CLOCK_PROCESS_CPUTIME_ID: all threads, ns resolution


def layers(scale: int, b: int = 4, m: int = 240):
  """(name, batch, H, W, cin, cout, k, stride, [(pass, count)]) of the SR train step's convolutions.

  Counts per step: G's convs run forward once, input and kernel gradient once. D runs forward on SR
  (batch b, G's loss: forward + input gradient) and on [HR; SR] (batch 2b, D's loss: forward + kernel
  gradient + input gradient except for the first layer).
  """
  lr = m // scale
  g = [("G.conv_in 9x9 1->64", b, lr, lr, 1, 64, 9, 1),
       ("G.block 3x3 64->64 (x33)", b, lr, lr, 64, 64, 3, 1)]
  h = lr
  for i in range(int(scale).bit_length() - 1):
    g.append((f"G.up_{i} 3x3 64->256", b, h, h, 64, 256, 3, 1))
    h *= 2
  g.append(("G.conv_out 9x9 64->1", b, m, m, 64, 1, 9, 1))
  rows = []
  for name, bb, hh, ww, ci, co, k, s in g:
    n = 33 if "x33" in name else 1
    rows.append((name, bb, hh, ww, ci, co, k, s, {"fwd": n, "dx": n if ci > 1 else 0, "dw": n}))
  d = [(1, 64, 1), (64, 64, 2), (64, 128, 1), (128, 128, 2), (128, 256, 1), (256, 256, 2), (256, 512, 1),
       (512, 512, 2)]
  h = m
  for i, (ci, co, s) in enumerate(d):
    # D on SR inside G's loss (batch b): forward + input gradient; D's own step (2b): forward + both.
    rows.append((f"D.conv{i} {ci}->{co} s{s} (b{b})", b, h, h, ci, co, 3, s,
                 {"fwd": 1, "dx": 1, "dw": 0}))
    rows.append((f"D.conv{i} {ci}->{co} s{s} (b{2 * b})", 2 * b, h, h, ci, co, 3, s,
                 {"fwd": 1, "dx": 1 if i else 0, "dw": 1}))
    h = (h + s - 1) // s
  return rows


def make_jax(row, ours: bool):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax import lax
  from mrsr_jax.models import cpu_conv
  _, b, h, w, ci, co, k, s, _ = row
  conv = cpu_conv.conv_general_dilated if ours else lax.conv_general_dilated
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((b, h, w, ci), np.float32))
  wt = jnp.asarray(rng.standard_normal((k, k, ci, co), np.float32) * 0.05)
  f = lambda x_, w_: conv(x_, w_, (s, s), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  y = jax.jit(f)(x, wt)
  dy = jnp.ones_like(y)
  fwd = jax.jit(f)
  dx = jax.jit(lambda x_, w_, g: jax.vjp(lambda a: f(a, w_), x_)[1](g)[0])
  dw = jax.jit(lambda x_, w_, g: jax.vjp(lambda a: f(x_, a), w_)[1](g)[0])
  return {"fwd": lambda: fwd(x, wt).block_until_ready(),
          "dx": lambda: dx(x, wt, dy).block_until_ready(),
          "dw": lambda: dw(x, wt, dy).block_until_ready()}


def make_torch(row):
  import torch
  _, b, h, w, ci, co, k, s, _ = row
  cl = torch.channels_last
  g = torch.Generator().manual_seed(0)
  x = torch.randn(b, ci, h, w, generator=g).contiguous(memory_format=cl)
  wt = (torch.randn(co, ci, k, k, generator=g) * 0.05).contiguous(memory_format=cl)
  pad = k // 2
  y = torch.nn.functional.conv2d(x, wt, None, s, pad)
  dy = torch.ones_like(y).contiguous(memory_format=cl)
  cb = torch.ops.aten.convolution_backward

  def bwd(mask):
    return lambda: cb(dy, x, wt, None, [s, s], [pad, pad], [1, 1], False, [0, 0], 1, mask)

  def fwd():
    with torch.no_grad():
      return torch.nn.functional.conv2d(x, wt, None, s, pad)
  return {"fwd": fwd, "dx": bwd([True, False, False]), "dw": bwd([False, True, False])}


def extra_rows(scale: int, b: int = 4, m: int = 240):
  """BatchNorm (train forward + backward) at the generator's block shape and D's widest, and the LR resize."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  import flax.linen as nn
  out = []
  lr = m // scale
  for name, shape, n in ((f"BN fwd+bwd [{b},{lr},{lr},64] (x33)", (b, lr, lr, 64), 33),
                         (f"BN fwd+bwd [{2 * b},{m // 2},{m // 2},128]", (2 * b, m // 2, m // 2, 128), 1)):
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape, np.float32))
    bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
    v = bn.init(jax.random.key(0), x)

    def loss(p, x_, bn=bn, v=v):
      y, _ = bn.apply({"params": p, "batch_stats": v["batch_stats"]}, x_, mutable=["batch_stats"])
      return jnp.sum(jax.nn.relu(y))
    g = jax.jit(jax.grad(loss, argnums=(0, 1)))
    tb = torch.nn.BatchNorm2d(shape[-1])
    tx = torch.randn(shape[0], shape[3], shape[1], shape[2]).contiguous(
        memory_format=torch.channels_last).requires_grad_()

    def tbn(tb=tb, tx=tx):
      torch.relu(tb(tx)).sum().backward()
    out.append((name, {"bn": n}, {"bn": lambda g=g, v=v, x=x: jax.block_until_ready(g(v["params"], x))},
                {"bn": tbn}))
  from mrsr_jax.data import degrade
  hr = jnp.asarray(np.random.default_rng(0).random((b, m, m, 1), np.float32))
  down = jax.jit(lambda a: degrade.downsample(a, scale))
  thr = torch.rand(b, 1, m, m)

  def tdown():
    with torch.no_grad():
      return torch.nn.functional.interpolate(thr, size=(lr, lr), mode="bicubic", antialias=True)
  out.append((f"bicubic LR resize [{b},{m},{m}] /{scale}", {"resize": 1},
              {"resize": lambda: down(hr).block_until_ready()}, {"resize": tdown}))
  return out


def measure(fn, min_s: float) -> tuple[float, float]:
  """(wall s, CPU s) per call: calls repeated until `min_s` of wall time, averaged."""
  n, t0, c0 = 0, time.perf_counter(), cpu_s()
  while True:
    fn()
    n += 1
    dt = time.perf_counter() - t0
    if dt >= min_s:
      return dt / n, (cpu_s() - c0) / n


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--scale", type=int, default=4)
  p.add_argument("--threads", type=int, default=1, help="PyTorch threads (XLA uses the CPUs taskset allows)")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--min_s", type=float, default=0.3, help="least wall time per measurement")
  p.add_argument("--only", default="", help="substring filter on the row names")
  p.add_argument("--xla_flags", default=None)
  p.add_argument("--no_xla_baseline", action="store_true", help="skip XLA's own kernel gradient column")
  p.add_argument("--keep_freed", type=int, default=1, help="1: glibc keeps freed memory (mrsr_jax.cpu_alloc, "
                 "as run.py sets it; it applies to both frameworks in this one process)")
  args = p.parse_args()
  if args.keep_freed:
    sys.path.insert(0, ROOT)
    from mrsr_jax import cpu_alloc
    cpu_alloc.keep_freed_memory()
  if args.xla_flags is not None:
    os.environ["XLA_FLAGS"] = args.xla_flags
  sys.path.insert(0, ROOT)
  import jax
  import torch
  torch.set_num_threads(args.threads)
  cpus = len(os.sched_getaffinity(0))
  print(f"# {' '.join(sys.argv)}\n# {cpus} CPUs allowed, torch threads {torch.get_num_threads()}, keep_freed "
        f"{args.keep_freed}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, load {os.getloadavg()[0]:.2f}")
  print("| layer | pass | count | ours ms (CPU) | XLA own ms | torch ms (CPU) | ours/torch | wall ours / torch |")
  print("|---|---|---|---|---|---|---|---|")
  tot = {"ours": 0.0, "torch": 0.0, "xla": 0.0}
  work = []
  for row in layers(args.scale):
    name, *_, counts = row
    if args.only and args.only not in name:
      continue
    ours, xla, tch = make_jax(row, True), make_jax(row, False), make_torch(row)
    for pss, n in counts.items():
      if n:
        variants = {"ours": ours[pss], "torch": tch[pss]}
        if pss == "dw" and not args.no_xla_baseline:
          variants["xla"] = xla[pss]
        work.append((name, pss, n, variants))
  if not args.only or "BN" in args.only or "resize" in args.only:
    for name, counts, jf, tf in extra_rows(args.scale):
      if args.only and args.only not in name:
        continue
      for pss, n in counts.items():
        work.append((name, pss, n, {"ours": jf[pss], "torch": tf[pss]}))
  for name, pss, n, variants in work:
    for f in variants.values():   # compile + warm
      f()
      f()
    res = {k: [] for k in variants}
    for r in range(args.rounds):
      keys = list(variants)
      keys = keys[r % len(keys):] + keys[:r % len(keys)]
      for k in keys:
        res[k].append(measure(variants[k], args.min_s))
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in res.items()}
    for k in med:
      tot[k] += n * med[k][1]
    xla_ms = f"{1e3 * med['xla'][1]:.1f}" if "xla" in med else ""
    print(f"| {name} | {pss} | {n} | {1e3 * med['ours'][1]:.1f} | {xla_ms} | {1e3 * med['torch'][1]:.1f} | "
          f"{med['torch'][1] / med['ours'][1]:.2f}× | {1e3 * med['ours'][0]:.1f} / {1e3 * med['torch'][0]:.1f} |",
          flush=True)
  print(f"| **step total (weighted, CPU s)** | | | {tot['ours']:.2f} | | {tot['torch']:.2f} | "
        f"{tot['torch'] / max(tot['ours'], 1e-9):.2f}× | |")
  print(f"# load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  main()
