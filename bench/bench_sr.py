"""Side-by-side speed of the SR networks: our jitted JAX step vs the same networks in PyTorch.

  python bench/bench_sr.py                        # CPU defaults: batch 4 at 240², train + inference rows
  python bench/bench_sr.py --rows=train --scales=4 --iters=3 --repeats=3
  python bench/bench_sr.py --rows=infer --sizes=256,512 --dtype=bfloat16
  python bench/bench_sr.py --batch=32 --repeats=3  # e.g. on a GPU

Each measurement runs in its own subprocess (so peak memory is its own and one framework's thread
pools do not slow the other); frameworks alternate within a row and their order rotates from one
repeat to the next, so load changes on a shared machine hit all of them alike. Each row reports the
median over `--repeats` of each worker's median step time.

Printed per row: compile / first-call time (tracing + XLA or inductor compile + first run), steady
ms per step and per slice, images/s, peak memory (host RSS on CPU, with the growth over the RSS after
imports in brackets; device peak on GPU) and ours/this in images/s (> 1: ours is faster). Under each
train / infer row: the call's GFLOP (bench/flops.py's count of ours, convolutions and matmuls included
on every backend) and each framework's achieved GFLOP/s, to set against the machine's attainable rates
(`bench/roofline.py`).

Train step = one generator and one discriminator update (L1 + adversarial at `--adv_weight`; the
frozen-feature terms are off so both frameworks run the same networks; `--adv_weight=0`: G alone),
LR made from the 240² HR batch inside the step (anti-aliased bicubic, 2× and 4×). Ours is the real `SRStage.update` compiled by
`mrsr_jax.train.step.compile_step`; PyTorch's is `bench/torch_reference.py`.

On a GPU, PyTorch runs channels-last with `cudnn.benchmark` (its fastest kernel per shape) and TF32
float32 matmuls, as XLA:GPU's default precision; `--dtype=bfloat16` is autocast (AMP) there.

Equal threads (CPU): every worker is pinned to the same `--threads` CPUs (default: all), so XLA's
thread pool (sized from the CPU affinity) and PyTorch (`torch.set_num_threads`) get the same cores.
`--torch_threads=auto` instead gives PyTorch the faster of 1 thread and `--threads` on a warm call
(the old protocol: it hid PyTorch's multi-threaded speed behind a loaded machine's OpenMP stalls).
Equal memory settings: by default both frameworks' workers keep freed memory (`--keep_freed`, as run.py
does for ours). `--huge_pages` puts glibc's malloc on transparent huge pages (an experiment, not what
run.py does: docs/benchmarks.md); `--frameworks=jax,jax_nohuge` then times ours with and without them
in one run.

Load (issue 13): the 1-minute load average is read before and after every row. A ratio is only
printed when both are at most the core count (`--max_load`, default: the machine's CPUs); otherwise
the row says "load X > cores N: ratio not reported" (times are still printed, for the record). Each
row also prints the CPU time per step (all threads, `time.process_time`), which a busy machine
disturbs less than the wall clock, and the CPU time other processes used during the row ("others").

Rows: `train` (the step above), `infer` (one generator call on `--infer_batch` LR slices) and
`volume` (`--volume_slices` slices of one size through ours' `mrsr_jax.predict.super_resolve` in
batches of `--volume_batch`, 0 = `predict.auto_batch_size`'s choice; PyTorch loops over the same batches
under `inference_mode`): ms per slice, and s per 256-slice volume from the measured pass.
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


# -- shared by the bench scripts' workers --------------------------------------------------------------
def rss_mb() -> tuple[float, float]:
  """(current, peak) resident set size of this process in MiB, from /proc (Linux)."""
  cur = peak = 0.0
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        cur = int(line.split()[1]) / 1024
      elif line.startswith("VmHWM:"):
        peak = int(line.split()[1]) / 1024
  return cur, peak


CPU_TIMES: list[float] = []   # process CPU seconds of each steady call of the last `timeit`


def set_malloc(spec: dict) -> None:
  """`--keep_freed`: glibc keeps freed memory (mrsr_jax.cpu_alloc, what run.py does) in these workers."""
  if spec["framework"].startswith("jax") and spec.get("keep_freed") in ("ours", "both") or \
     spec["framework"].startswith("torch") and spec.get("keep_freed") == "both":
    sys.path.insert(0, ROOT)
    from mrsr_jax import cpu_alloc
    cpu_alloc.keep_freed_memory()


def pin_cpus(threads: int | None) -> None:
  """Restricts this process to the first `threads` CPUs it may use (before jax / torch start their
  thread pools: XLA sizes its pool from this affinity), so both frameworks get the same cores."""
  if threads:
    cpus = sorted(os.sched_getaffinity(0))
    if threads > len(cpus):
      raise SystemExit(f"--threads={threads}: only {len(cpus)} CPUs are available")
    os.sched_setaffinity(0, cpus[:threads])


def timeit(fn, sync, iters: int, warmup: int) -> tuple[float, list[float]]:
  """(first-call seconds, steady per-call seconds): compile + first run apart from the steady state.

  The steady calls' process CPU time (all threads) goes to CPU_TIMES."""
  t0 = time.perf_counter()
  sync(fn())
  first = time.perf_counter() - t0
  for _ in range(warmup):
    sync(fn())
  times = []
  CPU_TIMES.clear()
  for _ in range(iters):
    c0, t0 = time.process_time(), time.perf_counter()
    sync(fn())
    times.append(time.perf_counter() - t0)
    CPU_TIMES.append(time.process_time() - c0)
  return first, times


def jax_memory(base_rss: float) -> dict:
  import jax
  dev = jax.devices()[0]
  if dev.platform != "cpu":
    stats = dev.memory_stats() or {}
    return {"peak_mb": stats.get("peak_bytes_in_use", 0) / 2**20, "growth_mb": None}
  _, peak = rss_mb()
  return {"peak_mb": peak, "growth_mb": peak - base_rss}


def jax_device() -> str:
  import jax
  dev = jax.devices()[0]
  return f"{dev.platform}:{getattr(dev, 'device_kind', '')} x{jax.device_count()}"


def pick_torch_threads(fn, requested: str) -> int:
  """`auto`: the faster of 1 thread and one per allowed CPU on a warm call (see the module docstring);
  `same`: one per allowed CPU, as XLA; else the number given."""
  import torch
  ncpu = len(os.sched_getaffinity(0)) or 1
  if requested == "same":
    requested = str(ncpu)
  if requested != "auto":
    torch.set_num_threads(int(requested))
    return int(requested)
  best = None
  for n in sorted({1, ncpu}):
    torch.set_num_threads(n)
    fn()
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    if best is None or dt < best[0]:
      best = (dt, n)
  torch.set_num_threads(best[1])
  return best[1]


# -- workers (one measurement each, in a subprocess) -------------------------------------------------
def worker_jax(spec: dict) -> dict:
  pin_cpus(spec.get("threads"))
  set_malloc(spec)
  sys.path.insert(0, ROOT)
  import jax
  import jax.numpy as jnp
  import numpy as np
  if spec.get("matmul_precision"):
    jax.config.update("jax_default_matmul_precision", spec["matmul_precision"])
  from configs import base
  from mrsr_jax import sharding
  from mrsr_jax.train import loop, step as step_lib
  from mrsr_jax.train.stage_sr import SRStage, generator
  if spec["framework"] == "jax_xlaconv":
    # Before/after of the CPU kernel-gradient convolution (mrsr_jax/models/cpu_conv.py), same run.
    from mrsr_jax.models import srgan
    srgan.backend_conv_impl = lambda platform=None: "xla"   # the models built below: XLA's convolutions

  config = base.get_config()
  config.scale = spec["scale"]
  config.dtype = spec["dtype"]
  config.crop_size = spec["size"]
  config.sr.batch_size = spec["batch"]
  config.sr.loss.update(lambda_vit=0.0, lambda_str=0.0, lambda_tex=0.0, adv_weight=spec["adv_weight"])
  # Network sizes (bench/gpu_probe.py --tiny shrinks them; the paper's by default).
  config.sr.model.update(num_blocks=spec.get("num_blocks", 16), features=spec.get("features", 64))
  config.sr.disc_features = spec.get("disc_features", 64)
  mesh = sharding.make_mesh()
  rng = np.random.default_rng(0)
  b, m, s = spec["batch"], spec["size"], spec["scale"]
  base_rss, _ = rss_mb()
  extra = {}
  if spec["task"] == "train":
    stage = SRStage(config, "/tmp/unused")
    init, _ = loop.init_state(stage, mesh)
    state = init(jax.random.key(0))
    step = step_lib.compile_step(stage.update, mesh)
    batch = sharding.to_global({"hr": rng.random((b, m, m, 1), np.float32),
                                "label": np.zeros((b,), np.int32)}, mesh)
    key = jax.random.key(1)
    holder = {"state": state}

    def fn():
      holder["state"], metrics = step(holder["state"], batch, key, {})
      return metrics["g_total"]
    extra["gflop"] = gflop(step.trace(state, batch, key, {}))
  else:
    gen = generator(config)
    lr_shape = (m // s, m // s)
    variables = jax.jit(lambda k: gen.init(k, jnp.zeros((1, *lr_shape, 1)), train=False))(jax.random.key(0))
    apply = lambda x: gen.apply(variables, x.astype(jnp.dtype(config.dtype)), train=False)
    if spec["task"] == "infer":
      lr = sharding.to_global(rng.random((b, *lr_shape, 1), np.float32), mesh)
      apply_jit = jax.jit(apply)
      extra["gflop"] = gflop(apply_jit.trace(lr))

      def fn():
        return apply_jit(lr)
    else:   # volume: the predict path, slices -> batches -> device -> generator -> host
      from mrsr_jax import predict
      slices = rng.random((spec["volume_slices"], *lr_shape), np.float32)
      if spec["volume_batch"]:
        call, vb = jax.jit(apply), spec["volume_batch"]
      else:
        call, vb = predict.plan_batches(apply, lr_shape, spec["volume_slices"], mesh)
      extra = {"volume_batch": vb}

      def fn():
        return predict.super_resolve(call, slices, vb, mesh)
  first, times = timeit(fn, jax.block_until_ready, spec["iters"], spec["warmup"])
  return {"first_s": first, "times": times, "cpu_times": list(CPU_TIMES), **jax_memory(base_rss),
          "device": jax_device(), "threads": len(os.sched_getaffinity(0)), **extra}


def gflop(traced) -> float | None:
  """GFLOP per call of a traced call (`jax.jit(f).trace(...)`): bench/flops.py's count of its jaxpr for
  the backend it runs on, a multiply-add counted twice as XLA counts it, whatever kernels later run
  them (XLA:GPU's own cost analysis leaves out cuDNN's and cuBLAS's; PyTorch's same network does the
  same arithmetic, so one figure serves both frameworks' achieved GFLOP/s)."""
  sys.path.insert(0, os.path.join(ROOT, "bench"))
  import flops as flops_lib
  total = flops_lib.count(traced.jaxpr, platform=flops_lib.default_platform()).flops
  return total / 1e9 if total else None


def worker_torch(spec: dict) -> dict:
  pin_cpus(spec.get("threads"))
  set_malloc(spec)
  sys.path.insert(0, os.path.join(ROOT, "bench"))
  import torch
  import torch_reference as tr

  dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  if dev.type == "cuda":
    # cuDNN picks its fastest kernels per shape; float32 matmuls on TF32 tensor cores as XLA:GPU's
    # default precision does (cuDNN's float32 convolutions already are).
    torch.backends.cudnn.benchmark = spec.get("cudnn_benchmark", True)
    torch.backends.cuda.matmul.allow_tf32 = True
  dtype = torch.bfloat16 if spec["dtype"] == "bfloat16" else None
  b, m, s = spec["batch"], spec["size"], spec["scale"]
  cl = torch.channels_last
  base_rss, _ = rss_mb()
  nb, nf = spec.get("num_blocks", 16), spec.get("features", 64)
  gen = tr.SRGenerator(s, num_blocks=nb, features=nf).to(dev).to(memory_format=cl)
  torch.manual_seed(0)
  hr = torch.rand(b, 1, m, m, device=dev).contiguous(memory_format=cl)
  lr = torch.rand(b, 1, m // s, m // s, device=dev).contiguous(memory_format=cl)
  extra = {}
  if spec["task"] == "train":
    disc = tr.SRDiscriminator(features=spec.get("disc_features", 64)).to(dev).to(memory_format=cl)
    opt_g = torch.optim.AdamW(gen.parameters(), 1e-4, weight_decay=0.1)
    opt_d = torch.optim.AdamW(disc.parameters(), 1e-4, weight_decay=0.1)
    step = tr.train_step_fn(gen, disc, opt_g, opt_d, s, adv_weight=spec["adv_weight"])
    if spec["framework"] == "torch_compile":
      step = torch.compile(step)

    def fn():
      with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
        return step(hr)[0]
  else:
    gen.eval()
    g = torch.compile(gen) if spec["framework"] == "torch_compile" else gen
    if spec["task"] == "volume":
      # The same slices in the same batches as ours (the batch ours chose is passed in).
      n, vb = spec["volume_slices"], spec["volume_batch"] or 16
      vol = torch.rand(n, 1, m // s, m // s, device=dev)
      extra = {"volume_batch": vb}

      def fn():
        out = []
        with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
          for i in range(0, n, vb):
            out.append(g(vol[i:i + vb].contiguous(memory_format=cl)).float().cpu())
        return torch.cat(out)
    else:
      def fn():
        with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
          return g(lr)

  def sync(_):
    if dev.type == "cuda":
      torch.cuda.synchronize()

  if dev.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
  threads = None
  if dev.type == "cpu":
    t0 = time.perf_counter()
    fn()          # the first call (compile for torch.compile) is timed here, before the thread pick
    first = time.perf_counter() - t0
    threads = pick_torch_threads(fn, spec["torch_threads"])
    _, times = timeit(fn, sync, spec["iters"], max(spec["warmup"] - 1, 0))
  else:
    first, times = timeit(fn, sync, spec["iters"], spec["warmup"])
  if dev.type == "cuda":
    mem = {"peak_mb": torch.cuda.max_memory_allocated() / 2**20, "growth_mb": None}
  else:
    _, peak = rss_mb()
    mem = {"peak_mb": peak, "growth_mb": peak - base_rss}
  name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
  return {"first_s": first, "times": times, "cpu_times": list(CPU_TIMES), **mem,
          "device": f"{dev.type}:{name}", "threads": threads, **extra}


# -- driver ------------------------------------------------------------------------------------------
def run_one(script: str, spec: dict, timeout: int, env_extra: dict | None = None) -> dict | None:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env_extra or {}))
  try:
    r = subprocess.run([sys.executable, script, "--worker", json.dumps(spec)], capture_output=True,
                       text=True, env=env, timeout=timeout)
  except subprocess.TimeoutExpired:
    print(f"  ! {spec['framework']} timed out after {timeout} s", file=sys.stderr)
    return None
  for line in reversed(r.stdout.splitlines()):
    if line.startswith("{"):
      return json.loads(line)
  tail = r.stderr.strip().splitlines()[-3:] if r.stderr else [f"exit {r.returncode}"]
  print(f"  ! {spec['framework']} failed: {' | '.join(tail)}", file=sys.stderr)
  return None


def summarise(results: dict[str, list[dict]], batch: int) -> dict[str, dict]:
  med = {}
  for f, rs in results.items():
    if not rs:
      continue
    steps = [statistics.median(r["times"]) for r in rs]
    step_s = statistics.median(steps)
    cpus = [statistics.median(r["cpu_times"]) for r in rs if r.get("cpu_times")]
    growth = [r["growth_mb"] for r in rs if r.get("growth_mb") is not None]
    med[f] = dict(first=statistics.median(r["first_s"] for r in rs), step=step_s,
                  spread=(min(steps), max(steps)), ips=batch / step_s,
                  cpu=statistics.median(cpus) if cpus else None,
                  peak=max(r["peak_mb"] for r in rs), growth=max(growth) if growth else None,
                  device=rs[0]["device"], threads=sorted({r.get("threads") for r in rs} - {None}),
                  volume_batch=rs[0].get("volume_batch"), gflop=rs[0].get("gflop"))
  return med


def load_1min() -> float:
  try:
    return os.getloadavg()[0]
  except OSError:
    return float("nan")


def busy_cpu_s() -> float:
  """CPU seconds all processes have used since boot (/proc/stat: everything but idle and iowait)."""
  try:
    with open("/proc/stat") as f:
      v = [int(x) for x in f.readline().split()[1:]]
  except (OSError, ValueError):
    return float("nan")
  return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
  import resource
  r = resource.getrusage(resource.RUSAGE_CHILDREN)
  return r.ru_utime + r.ru_stime


def ratio_gate(loads: tuple[float, float], max_load: float) -> str | None:
  """None if a ratio may be reported, else why not (issue 13: only from a quiet machine)."""
  worst = max(loads)
  if worst != worst:      # NaN: no load average on this system
    return "load unknown: ratio not reported"
  if worst > max_load:
    return f"load {worst:.2f} > cores {max_load:g}: ratio not reported"
  return None


def print_rows(row: dict, med: dict[str, dict], ref: str = "jax", name_of=None, gate: str | None = None,
               load_note: str = "") -> None:
  per = "volume" if row["task"] == "volume" else "step"
  for f, m in med.items():
    if ref in med and f != ref:
      ratio = gate or f"{med[ref]['ips'] / m['ips']:.2f}×"
    else:
      ratio = "–"
    mem = f"{m['peak']:.0f}" + (f" (+{m['growth']:.0f})" if m["growth"] is not None else "")
    label = name_of(f) if name_of else f
    if m["threads"]:
      label += f" [{','.join(map(str, m['threads']))} thr]"
    if m.get("volume_batch"):
      label += f" [batch {m['volume_batch']}]"
    lo, hi = m["spread"]
    cpu = f"{1e3 * m['cpu']:.0f}" if m.get("cpu") is not None else ""
    n = row["volume_slices"] if per == "volume" else row["batch"]
    vol = f"{256 * m['step'] / n:.1f}" if per == "volume" else ""
    print(f"| {row['task']} | {row['scale']}× | {row['size']} | {n} | {row['dtype']} | {label} | "
          f"{m['first']:.1f} | {1e3 * m['step']:.0f} ({1e3 * lo:.0f}–{1e3 * hi:.0f}) | {cpu} | "
          f"{1e3 * m['step'] / n:.0f} | {vol} | {n / m['step']:.2f} | {mem} | {load_note} | {ratio} |", flush=True)


def load_average() -> str:
  try:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
  except OSError:
    return "n/a"


HEADER = ("| task | scale | HR size | slices | dtype | framework | first call s | ms/call (min–max) "
          "| CPU ms/call | ms/slice | s per 256-slice volume | images/s | peak MB (+growth) "
          "| load before → after (others' CPU) | ours/this |")


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--worker", help=argparse.SUPPRESS)
  p.add_argument("--rows", default="train,infer", help="any of train, infer, volume")
  p.add_argument("--frameworks", default="jax,torch,torch_compile",
                 help="any of jax, jax_xlaconv (ours with XLA's own conv gradients), jax_nohuge (ours "
                      "without --huge_pages), torch, torch_compile")
  p.add_argument("--scales", default="2,4")
  p.add_argument("--batch", type=int, default=4, help="global batch of the train step")
  p.add_argument("--size", type=int, default=240, help="HR slice size of the train step")
  p.add_argument("--sizes", default="256,512", help="HR output sizes of the inference and volume rows")
  p.add_argument("--infer_batch", type=int, default=1)
  p.add_argument("--volume_slices", type=int, default=256, help="slices of the volume rows (s per "
                 "256-slice volume is scaled from these)")
  p.add_argument("--volume_batch", type=int, default=0,
                 help="slices per call in the volume rows; 0: ours plans it (predict.plan_batches) and "
                      "PyTorch uses the same batch")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--adv_weight", type=float, default=1e-3,
                 help="train rows' adversarial weight (the configs' 1e-3; 0: an L1-only step, no D in either)")
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--timeout", type=int, default=1800)
  p.add_argument("--threads", type=int, default=os.cpu_count(),
                 help="CPUs every worker is pinned to (XLA's pool and PyTorch's threads alike)")
  p.add_argument("--torch_threads", default="same",
                 help="'same' (= --threads), 'auto' (faster of 1 and --threads) or a number")
  p.add_argument("--keep_freed", default="both", choices=["both", "ours", "none"],
                 help="glibc keeps freed memory (mrsr_jax.cpu_alloc, as run.py sets it) in: both "
                      "frameworks' workers (default: equal environments), ours only, or neither")
  p.add_argument("--huge_pages", default="none", choices=["both", "ours", "none"],
                 help="glibc's malloc on transparent huge pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1) in: "
                      "both frameworks' workers, ours only, or neither (default)")
  p.add_argument("--max_load", type=float, default=float(os.cpu_count() or 1),
                 help="no ratio is reported for a row whose 1-min load average before or after is above this")
  p.add_argument("--xla_flags", default=None, help="XLA_FLAGS for the JAX workers (e.g. CPU flags to try)")
  p.add_argument("--matmul_precision", default="", help="jax_default_matmul_precision for the JAX workers")
  p.add_argument("--json", default="", help="also append the raw results to this JSON-lines file")
  args = p.parse_args()
  if args.worker:
    spec = json.loads(args.worker)
    out = worker_jax(spec) if spec["framework"].startswith("jax") else worker_torch(spec)
    print(json.dumps(out))
    return

  rows = []
  for task in args.rows.split(","):
    for s in map(int, args.scales.split(",")):
      sizes = [args.size] if task == "train" else list(map(int, args.sizes.split(",")))
      for size in sizes:
        batch = {"train": args.batch, "infer": args.infer_batch}.get(task, args.volume_batch)
        rows.append(dict(task=task, scale=s, size=size, batch=batch, dtype=args.dtype,
                         iters=args.iters, warmup=args.warmup, torch_threads=args.torch_threads,
                         threads=args.threads, matmul_precision=args.matmul_precision,
                         volume_slices=args.volume_slices, volume_batch=args.volume_batch,
                         keep_freed=args.keep_freed, adv_weight=args.adv_weight))
  jax_env = {"XLA_FLAGS": args.xla_flags} if args.xla_flags is not None else {}
  torch_env = {}
  if args.huge_pages != "none":
    # glibc >= 2.35 madvises what malloc maps for transparent huge pages (read at process start).
    tun = ":".join(t for t in (os.environ.get("GLIBC_TUNABLES", ""), "glibc.malloc.hugetlb=1") if t)
    jax_env["GLIBC_TUNABLES"] = tun
    if args.huge_pages == "both":
      torch_env["GLIBC_TUNABLES"] = tun
  print(f"# {' '.join(sys.argv)}\n# load average at start: {load_average()}; {os.cpu_count()} CPUs; "
        f"workers pinned to {args.threads} CPU(s), PyTorch threads: {args.torch_threads}; freed memory "
        f"kept by: {args.keep_freed}; huge pages: {args.huge_pages}; ratios only "
        f"where the 1-min load before and after the row is <= {args.max_load:g}")
  print(HEADER)
  print("|---" * (HEADER.count("|") - 1) + "|")
  frameworks = args.frameworks.split(",")
  for row in rows:
    results = {f: [] for f in frameworks}
    load0, busy0, own0, t0 = load_1min(), busy_cpu_s(), children_cpu_s(), time.perf_counter()
    for rep in range(args.repeats):
      order = frameworks[rep % len(frameworks):] + frameworks[:rep % len(frameworks)]
      for f in order:
        spec = {**row, "framework": f}
        if row["task"] == "volume" and not row["volume_batch"] and f.startswith("torch"):
          # PyTorch gets the batch ours planned (same calls), once ours has run.
          planned = [r.get("volume_batch") for r in results.get("jax", []) if r.get("volume_batch")]
          spec["volume_batch"] = planned[0] if planned else 16
        env = jax_env if f.startswith("jax") else torch_env
        if f == "jax_nohuge":     # ours without huge pages, alternating with "jax" (an A/B in one run)
          env = {k: v for k, v in jax_env.items() if k != "GLIBC_TUNABLES"}
        r = run_one(__file__, spec, args.timeout, env)
        if r:
          results[f].append(r)
    load1 = load_1min()
    wall = time.perf_counter() - t0
    others = (busy_cpu_s() - busy0 - (children_cpu_s() - own0)) / wall
    gate = ratio_gate((load0, load1), args.max_load)
    note = f"{load0:.2f} → {load1:.2f} ({max(others, 0.0):.2f} cores)"
    if args.json:
      with open(args.json, "a") as fh:
        fh.write(json.dumps({"row": row, "xla_flags": args.xla_flags, "results": results,
                             "load": [load0, load1], "others_cores": others}) + "\n")
    n = row["volume_slices"] if row["task"] == "volume" else row["batch"]
    med = summarise(results, n)
    print_rows(row, med, gate=gate, load_note=note)
    gflop = next((m["gflop"] for m in med.values() if m.get("gflop")), None)
    if gflop:
      print(f"#   {gflop:.0f} GFLOP per call (bench/flops.py's count of ours); achieved: " + ", ".join(
          f"{f} {gflop / m['step']:.0f} GFLOP/s" for f, m in med.items()) +
          " (bench/roofline.py: what this machine's kernels reach)", flush=True)
  print(f"# load average at end: {load_average()}")


if __name__ == "__main__":
  main()
