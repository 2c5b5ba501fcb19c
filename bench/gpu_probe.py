"""One command for a GPU: the paper configs' train steps, the SR step against PyTorch, and predict.

  python bench/gpu_probe.py                       # one GPU, every paper config, within --budget_s
  python bench/gpu_probe.py --configs=configs/sr_ixi_x4.py --dtypes=bfloat16 --json=probe.jsonl
  python bench/gpu_probe.py --tiny                # tiny sizes: the same tables on a CPU in about a minute

Printed (markdown), one row per item:
  train steps   for each paper config x stage x dtype: compile s (trace + lower + XLA compile of the
                configured step, as bench/memory.py compiles it: the config's global batch on ONE
                device, split into the config's microbatches), ms/step (median of --steps timed steps
                after --warmup, each blocked on), slices/s (global batch / step time), TFLOP/step and
                TFLOP/s from bench/flops.py's count of the step (convolutions and matmuls included;
                XLA:GPU's own cost analysis leaves them out), % of the device's dense peak for the
                step's dtype (TF32 for float32, BF16) and the roofline bound of the step on that
                device (bench/flops.py: no implementation is faster), XLA's predicted peak memory
                (bench/memory.py: argument + output - alias + temp) against the device's measured
                `memory_stats()["peak_bytes_in_use"]` ("n/a" where the backend has none, e.g. CPU).
  SR vs PyTorch the SR train step of bench/bench_sr.py (the same G and D in both frameworks, L1 + L_adv,
                the frozen-feature terms off) at --compare_batch slices (>= 64 on a GPU: PyTorch is
                launch-bound below that), ours and PyTorch eager (channels-last, cudnn.benchmark, TF32;
                bfloat16 = autocast AMP) and torch.compile when it compiles within --torch_compile_s
                (else its row says it did not).
  predict       a --volume_slices-slice volume at --volume_hr² through `predict.upsample_volume` (what
                `run.py --mode=predict` runs between reading and writing the NIfTI), first call (plan +
                compile) and second call, and the generator alone over the planned batches: seconds per
                volume.

Every item runs in its own subprocess (the device's peak memory is that item's alone; one failure or
hang does not stop the rest; `--tiny` runs all JAX items in one process and all PyTorch items in
another, to keep imports off the clock). Items run in priority order -- the first config's SR step,
its PyTorch comparison, the same in bfloat16, predict, the AE and ViT steps, then the other configs --
until `--budget_s` is spent: an item that would start with less than --min_item_s left is skipped, one
still running at the deadline is killed; both are rows that say so. Stages whose step is the same in
two configs (e.g. the AE and ViT stages of the two IXI configs) run once.

Parameters are random (the step's speed does not depend on them), placed as the training loop places
them; the SR stage's frozen ViT / AE params likewise. Frozen, compiled-from-shapes, one device: the
probe needs no dataset, checkpoint or TensorBoard.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
GIB = 2 ** 30
PAPER_CONFIGS = ("configs/sr_ixi_x4.py", "configs/sr_ixi_x2.py", "configs/sr_fastmri_x4.py",
                 "configs/sr_fastmri_x2.py")
TINY_CONFIG = "configs/tiny.py"
# --tiny: the SR networks of the PyTorch comparison at configs/tiny.py's sizes.
TINY_NETS = {"num_blocks": 1, "features": 8, "disc_features": 4}

TRAIN_COLUMNS = ("config", "stage", "dtype", "batch (microbatches)", "compile s", "ms/step", "slices/s",
                 "TFLOP/step", "TFLOP/s", "% of peak", "roofline ms", "predicted peak GiB",
                 "measured peak GiB", "note")
COMPARE_COLUMNS = ("config", "dtype", "batch", "framework", "first call s", "ms/step", "slices/s",
                   "TFLOP/s", "% of peak", "peak GiB", "ours/this", "note")
PREDICT_COLUMNS = ("config", "slices x HR", "planned batch", "first call s", "second call s",
                   "generator s/volume", "s per 256-slice volume", "note")


# -- the plan (parent; never imports JAX) ------------------------------------------------------------------
def load_config(path: str, overrides: list[str]):
  """A config file as run.py reads it ("file.py" or "file.py:arg"), with --set key=value overrides."""
  import ast
  import importlib.util
  if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
  file, _, arg = path.partition(":")
  full = file if os.path.isabs(file) else os.path.join(ROOT, file)
  if not os.path.isfile(full):
    raise SystemExit(f"error: --configs: no such config file {file}")
  spec = importlib.util.spec_from_file_location(f"probe_config_{abs(hash(full))}", full)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  for item in overrides:
    key, sep, value = item.partition("=")
    if not sep:
      raise SystemExit(f"error: --set={item}: expected key=value")
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass
    node = config
    *parents, leaf = key.split(".")
    try:
      for p in parents:
        node = node[p]
      node[leaf] = value
    except (KeyError, AttributeError, TypeError) as e:
      raise SystemExit(f"error: --set={item}: {path} has no field {key} ({e})") from None
  return config


def stage_key(config, stage: str) -> str:
  """What a stage's train step depends on in a config (two configs with the same key compile the same
  step): the stage's own fields, the crop sizes, the dataset (its labels) and, for SR, the scale and the
  frozen extractors' settings."""
  c = config.to_dict()
  key = {"stage": c[stage], "crop": c["crop_size"], "dtype": c["dtype"], "dataset": c["dataset"]}
  if stage == "sr":
    key.update(scale=c["scale"], vit=c["vit"], ae=c["ae"], degradation=c["degradation"])
  return json.dumps(key, sort_keys=True, default=str)


def plan(args) -> list[dict]:
  """Every item in priority order (the budget may end the list)."""
  configs = [c for c in args.configs.split(",") if c]
  stages = [s for s in args.stages.split(",") if s]
  dtypes = [d for d in args.dtypes.split(",") if d]
  frameworks = [f for f in args.frameworks.split(",") if f]
  loaded = {c: load_config(c, args.set) for c in configs}
  seen: dict[str, str] = {}
  items: list[dict] = []

  def train(c, stage, dtype):
    loaded[c].dtype = dtype
    key = stage_key(loaded[c], stage)
    if key in seen:
      items.append({"kind": "train", "config": c, "stage": stage, "dtype": dtype,
                    "same_as": seen[key]})
    else:
      seen[key] = c
      items.append({"kind": "train", "config": c, "stage": stage, "dtype": dtype})

  def compare(c, dtype):
    if "compare" in stages:
      for f in frameworks:
        items.append({"kind": "compare", "config": c, "stage": "compare", "dtype": dtype,
                      "framework": f})

  for i, c in enumerate(configs):
    for j, dtype in enumerate(dtypes):
      if i == 0 or j == 0:       # the first config in every dtype, the others in the first dtype
        if "sr" in stages:
          train(c, "sr", dtype)
        if i == 0 and (j == 0 or not args.tiny):    # --tiny: the comparison in the first dtype only
          compare(c, dtype)
    if "predict" in stages and args.volume_slices > 0:
      items.append({"kind": "volume", "config": c, "stage": "predict", "dtype": dtypes[0]})
    if i == 0:
      for stage in ("ae", "vit"):
        if stage in stages:
          train(c, stage, dtypes[0])
  for c in configs[1:]:
    for stage in ("ae", "vit"):
      if stage in stages:
        train(c, stage, dtypes[0])
  for dtype in dtypes[1:]:
    for c in configs if not args.tiny else ():      # --tiny: the AE and ViT steps in the first dtype
      for stage in ("ae", "vit"):
        if stage in stages:
          train(c, stage, dtype)
    for c in configs[1:]:
      if "sr" in stages:
        train(c, "sr", dtype)
  common = {k: getattr(args, k) for k in ("steps", "warmup", "volume_slices", "volume_hr",
                                           "volume_repeats", "set", "compare_batch", "compare_size",
                                           "tiny", "peak", "torch_compile_s")}
  return [{**common, **it} for it in items]


def groups(items: list[dict], tiny: bool) -> list[list[dict]]:
  """Items per subprocess: one each, or (--tiny) the JAX items in one and the PyTorch items in one."""
  runnable = [it for it in items if "same_as" not in it]
  if not tiny:
    return [[it] for it in runnable]
  jax_items = [it for it in runnable if it.get("framework", "jax") == "jax"]
  torch_items = [it for it in runnable if it.get("framework", "jax") != "jax"]
  return [g for g in (jax_items, torch_items) if g]


def child_env() -> dict:
  """The children's environment: one device (the first GPU visible; a forced host device count, e.g.
  the tests' 8, is dropped), quiet TensorFlow / XLA logs."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
  env["CUDA_VISIBLE_DEVICES"] = (env.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", "")).strip()
  if flags:
    env["XLA_FLAGS"] = flags
  else:
    env.pop("XLA_FLAGS", None)
  return env


def _results(stdout: str) -> dict[int, dict]:
  """The JSON result lines a child printed, by item index (the last line per item wins)."""
  out = {}
  for line in (stdout or "").splitlines():
    if line.startswith("{"):
      try:
        d = json.loads(line)
      except ValueError:
        continue
      if isinstance(d, dict) and "index" in d:
        out[d["index"]] = d
  return out


def _run_child(cmd: list[str], timeout: float, env: dict) -> tuple[int | None, str]:
  """(exit status, or None if killed at `timeout`; its stdout). The child runs in its own process
  group, so a kill also ends what it started (torch.compile's compile workers)."""
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                          start_new_session=True)
  try:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate()
    return None, out


def run_parent(args) -> int:
  start = time.monotonic()
  deadline = start + args.budget_s
  items = plan(args)
  for i, it in enumerate(items):
    it["index"] = i
  results: dict[int, dict] = {}
  for it in items:
    if "same_as" in it:
      results[it["index"]] = {"status": "same", "note": f"same step as {os.path.basename(it['same_as'])}"}
  print(f"# bench/gpu_probe.py: {len(items)} item(s), budget {args.budget_s:.0f} s", file=sys.stderr,
        flush=True)
  env = child_env()
  for group in groups(items, args.tiny):
    left = deadline - time.monotonic()
    if left < args.min_item_s:
      for it in group:
        results[it["index"]] = {"status": "skipped", "note": f"skipped: budget spent ({max(left, 0):.0f} s left)"}
      continue
    timeout = left
    names = ", ".join(f"{os.path.basename(it['config'])} {it['stage']} {it['dtype']}"
                      + (f" {it['framework']}" if "framework" in it else "") for it in group)
    print(f"# running {names} (up to {timeout:.0f} s)", file=sys.stderr, flush=True)
    cmd = [sys.executable, os.path.abspath(__file__), "--items", json.dumps(group)]
    returncode, stdout = _run_child(cmd, timeout, env)
    got = _results(stdout)
    for it in group:
      r = got.get(it["index"])
      if r is None or r.get("status") == "partial":
        note = (f"timeout: killed at the budget's end ({args.budget_s:.0f} s)" if returncode is None else
                f"error: the process exited ({returncode}) before this item finished")
        r = {**(r or {}), "status": "timeout" if returncode is None else "error", "note": note}
      results[it["index"]] = r
  text = render(items, results, args, time.monotonic() - start)
  print(text, flush=True)
  if args.json:
    with open(args.json, "a") as f:
      for it in items:
        f.write(json.dumps({"item": it, "result": results.get(it["index"], {})}) + "\n")
  return 1 if any(r.get("status") == "error" for r in results.values()) else 0


# -- printing -----------------------------------------------------------------------------------------------
def _num(x, fmt: str) -> str:
  if x is None or isinstance(x, float) and not math.isfinite(x):
    return "n/a"
  return format(x, fmt)


def _row(cells) -> str:
  return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(columns) -> list[str]:
  return [_row(columns), "|" + "---|" * len(columns)]


def render(items: list[dict], results: dict[int, dict], args, wall_s: float) -> str:
  env = next((r["env"] for r in results.values() if r.get("env")), {})
  peak = next((r["peak"] for r in results.values() if r.get("peak")), None)
  lines = [f"# gpu_probe: {env.get('device', '?')} ({env.get('backend', '?')}), jax {env.get('jax', '?')}; "
           f"peak used for %: {peak or 'none known for this device (n/a)'}; "
           f"{wall_s:.0f} s of a {args.budget_s:.0f} s budget", "", "## Train steps", ""]
  lines += _table(TRAIN_COLUMNS)
  for it in items:
    if it["kind"] != "train":
      continue
    r = results.get(it["index"], {})
    k = r.get("microbatches")
    batch = f"{r['global_batch']} ({k} x {r['global_batch'] // k})" if r.get("global_batch") else "–"
    lines.append(_row([
        os.path.basename(it["config"]), it["stage"], it["dtype"], batch,
        _num(r.get("compile_s"), ".1f"), _num(r.get("ms_per_step"), ",.4g"),
        _num(r.get("slices_per_s"), ",.1f"), _num(_div(r.get("flops"), 1e12), ",.3g"),
        _num(r.get("tflops"), ",.3g"), _num(r.get("pct_peak"), ".1f"),
        _num(_mul(r.get("bound_s"), 1e3), ".4g"), _num(r.get("predicted_peak_gib"), ".4g"),
        _num(r.get("measured_peak_gib"), ".4g"), r.get("note", r.get("status", "not run"))]))
  compare = [it for it in items if it["kind"] == "compare"]
  if compare:
    lines += ["", "## SR step vs the same networks in PyTorch (bench/bench_sr.py's train row)", ""]
    lines += _table(COMPARE_COLUMNS)
    for it in compare:
      r = results.get(it["index"], {})
      ours = next((results.get(o["index"], {}) for o in compare
                   if o["config"] == it["config"] and o["dtype"] == it["dtype"] and o["framework"] == "jax"), {})
      gflop = ours.get("gflop")
      step = r.get("step_s")
      # ours/this in slices/s: > 1 when ours is faster.
      ratio = step / ours["step_s"] if step and ours.get("step_s") and it["framework"] != "jax" else None
      tflops = gflop / 1e3 / step if gflop and step else None
      lines.append(_row([
          os.path.basename(it["config"]), it["dtype"], r.get("batch", "–"), it["framework"],
          _num(r.get("first_s"), ".1f"), _num(_mul(step, 1e3), ",.1f"),
          _num(_div(r.get("batch"), step), ",.1f"), _num(tflops, ",.3g"),
          _num(_pct(tflops, r.get("peak_tflops")), ".1f"), _num(r.get("peak_gib"), ".4g"),
          "–" if it["framework"] == "jax" else _num(ratio, ".2f"),
          r.get("note", r.get("status", "not run"))]))
  volumes = [it for it in items if it["kind"] == "volume"]
  if volumes:
    lines += ["", "## Predict (run.py --mode=predict's path, generator at random params)", ""]
    lines += _table(PREDICT_COLUMNS)
    for it in volumes:
      r = results.get(it["index"], {})
      lines.append(_row([
          os.path.basename(it["config"]), f"{it['volume_slices']} x {r.get('hr', it['volume_hr'])}²",
          r.get("planned_batch", "–"), _num(r.get("predict_first_s"), ".2f"),
          _num(r.get("predict_second_s"), ".2f"), _num(r.get("s_per_volume"), ".3f"),
          _num(r.get("s_per_256_slice_volume"), ".3f"), r.get("note", r.get("status", "not run"))]))
  return "\n".join(lines)


def _div(a, b):
  return a / b if a is not None and b else None


def _mul(a, b):
  return a * b if a is not None else None


def _pct(tflops, peak_tflops):
  return 100.0 * tflops / peak_tflops if tflops and peak_tflops else None


# -- children ---------------------------------------------------------------------------------------------
def _imports():
  for p in (ROOT, BENCH):
    if p not in sys.path:
      sys.path.insert(0, p)


def _env() -> dict:
  import jax
  dev = jax.devices()[0]
  return {"jax": jax.__version__, "backend": jax.default_backend(),
          "device": getattr(dev, "device_kind", str(dev)), "device_count": jax.device_count()}


def _peak(spec, device_kind: str | None = None):
  """The device's datasheet peak (bench/flops.py), or --peak's named one (e.g. to see the roofline of an
  H200 from a CPU run). `device_kind` given: JAX is not asked (a PyTorch process must not start JAX's
  GPU client, which would take most of the card's memory)."""
  import flops as flops_lib
  if spec.get("peak"):
    return flops_lib.PEAKS[spec["peak"]]
  if device_kind is None:
    import jax
    device_kind = getattr(jax.devices()[0], "device_kind", "")
  return flops_lib.peak_for(device_kind)


def _device_peak_gib() -> float | None:
  import jax
  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # noqa: BLE001 -- a backend without memory stats
    stats = {}
  v = stats.get("peak_bytes_in_use")
  return v / GIB if v is not None else None


def _config(spec):
  config = load_config(spec["config"], spec["set"])
  config.dtype = spec["dtype"]
  return config


def _random_like(tree, mesh, seed: int):
  """Arrays of `tree`'s shapes (jax.ShapeDtypeStruct leaves), replicated on `mesh`: small normal values
  for floats (ones for variances and scales, so BatchNorm and LayerNorm stay finite; zeros for the
  optimiser's moments, as after init), zeros otherwise."""
  import jax
  import numpy as np
  from mrsr_jax import sharding
  rng = np.random.default_rng(seed)
  rep = sharding.replicated(mesh)

  def make(path, s):
    name = jax.tree_util.keystr(path).lower()
    dtype = np.dtype(s.dtype) if not jax.dtypes.issubdtype(s.dtype, jax.dtypes.extended) else None
    if dtype is None:
      return jax.device_put(jax.random.key(seed), rep)
    if np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16":
      if "opt_state" in name:
        x = np.zeros(s.shape, np.float32)
      elif "var" in name or "scale" in name:
        x = np.ones(s.shape, np.float32)
      else:
        x = (0.02 * rng.standard_normal(s.shape, dtype=np.float32))
      return jax.device_put(x.astype(dtype), rep)
    return jax.device_put(np.zeros(s.shape, dtype), rep)
  return jax.tree_util.tree_map_with_path(make, tree)


def _stats(times):
  return statistics.median(times), min(times), max(times)


def train_item(spec: dict, emit) -> dict:
  _imports()
  import jax
  import numpy as np
  import memory
  from mrsr_jax import sharding
  from mrsr_jax.train import step as step_lib

  config = _config(spec)
  peak = _peak(spec)
  info = memory.synthetic_info(config)
  stage = memory.make_stage(config, spec["stage"], info)
  k = memory.configured_microbatches(stage, 1)
  b = stage.batch_size
  platform = "cpu" if jax.default_backend() == "cpu" else "gpu"
  res = {"env": _env(), "peak": peak.name if peak else None, "global_batch": b, "microbatches": k}
  t0 = time.perf_counter()
  compiled, fig = memory.compile_step_from_shapes(stage, b, microbatches=k, platform=platform, info=info,
                                                  peak=peak)
  res["compile_s"] = time.perf_counter() - t0
  res["flops"] = fig.flops
  res["xla_flops"] = fig.xla_flops
  res["components"] = fig.components
  res["predicted_peak_gib"] = fig.peak / GIB
  if peak:
    res["bound_s"] = sum(c.get("bound_s", 0.0) for c in fig.components.values())
  emit({**res, "status": "partial"})

  mesh = sharding.make_mesh(jax.devices()[:1])
  state = _random_like(jax.eval_shape(stage.init, jax.random.key(0)), mesh, 0)
  with memory._abstract_sources(info):
    frozen = _random_like(stage.frozen(mesh), mesh, 1)
  rng = np.random.default_rng(0)
  c = stage.crop_size
  n_labels = max(len(info.get("labels") or []), 1)
  batch = sharding.to_global({"hr": rng.random((b, c, c, 1), dtype=np.float32),
                              "label": rng.integers(0, n_labels, size=(b,)).astype(np.int32)}, mesh)
  rep = sharding.replicated(mesh)
  n = spec["warmup"] + spec["steps"]
  keys = [jax.device_put(step_lib.step_rng(config.seed, i), rep) for i in range(n)]
  jax.block_until_ready((state, frozen, batch, keys))
  times = []
  for i in range(n):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch, keys[i], frozen)
    jax.block_until_ready(metrics)
    if i >= spec["warmup"]:
      times.append(time.perf_counter() - t0)
  jax.block_until_ready(state)
  med, lo, hi = _stats(times)
  res.update(ms_per_step=1e3 * med, ms_min=1e3 * lo, ms_max=1e3 * hi, slices_per_s=b / med,
             tflops=fig.flops / med / 1e12, measured_peak_gib=_device_peak_gib())
  if peak:
    rate = peak.rate("bf16" if spec["dtype"] == "bfloat16" else "tf32")
    res["pct_peak"] = 100.0 * fig.flops / med / rate
  bad = step_lib.nonfinite_terms(jax.device_get(metrics))
  res["status"] = "ok"
  res["note"] = "ok" if not bad else f"ok (non-finite at random params: {', '.join(bad)})"
  return res


def compare_item(spec: dict, emit) -> dict:
  """bench/bench_sr.py's train row, one framework."""
  _imports()
  import bench_sr
  config = _config(spec)
  framework = spec["framework"]
  wspec = dict(task="train", framework=framework, scale=int(config.scale), dtype=spec["dtype"],
               size=spec["compare_size"] or int(config.crop_size), batch=spec["compare_batch"],
               adv_weight=float(config.sr.loss.adv_weight), iters=spec["steps"], warmup=spec["warmup"],
               torch_threads="same", matmul_precision="", threads=None, keep_freed=None,
               **(TINY_NETS if spec["tiny"] else {}))
  if framework == "jax":
    out = bench_sr.worker_jax(wspec)
  elif framework == "torch_compile":
    out = _within(spec["torch_compile_s"], bench_sr.worker_torch, wspec)
  else:
    out = bench_sr.worker_torch(wspec)
  step = statistics.median(out["times"])
  on_gpu = not str(out.get("device", "cpu")).startswith("cpu")
  res = {"batch": wspec["batch"], "first_s": out["first_s"], "step_s": step, "gflop": out.get("gflop"),
         "peak_gib": out["peak_mb"] / 1024 if on_gpu else None, "status": "ok",
         "note": f"ok ({wspec['size']}², {wspec['scale']}x)"}
  if framework == "jax":
    res["env"] = _env()
  # bench_sr names the device "<type>:<name>", e.g. "cuda:NVIDIA H200" (PyTorch) or "gpu:NVIDIA H200 x1".
  peak = _peak(spec, str(out.get("device", "")).partition(":")[2])
  if peak:
    res["peak_tflops"] = peak.rate("bf16" if spec["dtype"] == "bfloat16" else "tf32") / 1e12
  return res


class CompileBudget(BaseException):
  """A BaseException, like KeyboardInterrupt: torch.compile catches Exception raised while it traces
  or compiles (torch 2.13: dynamo swallowed one from SIGALRM and the compile returned after 10.5 s;
  inductor wraps one in BackendCompilerFailed; on a loaded machine a 0.5 s budget ran 159 s), so only
  an exception outside that hierarchy gives the row up on time (tests/test_gpu_probe.py)."""


def _within(seconds: float, fn, *args):
  """fn(*args), interrupted (SIGALRM) after `seconds`: torch.compile's row is given up, not the probe."""
  def expire(*_):
    raise CompileBudget(f"torch.compile did not finish within --torch_compile_s={seconds:g}")
  old = signal.signal(signal.SIGALRM, expire)
  signal.setitimer(signal.ITIMER_REAL, seconds)
  try:
    return fn(*args)
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


def volume_item(spec: dict, emit) -> dict:
  _imports()
  import jax
  import jax.numpy as jnp
  import numpy as np
  from mrsr_jax import predict, sharding
  from mrsr_jax.data import volumes
  from mrsr_jax.train.stage_sr import generator

  config = _config(spec)
  s, n = int(config.scale), spec["volume_slices"]
  hr = spec["volume_hr"] // s * s
  lr_hw = (hr // s, hr // s)
  mesh = sharding.make_mesh(jax.devices()[:1])
  gen = generator(config)
  shapes = jax.eval_shape(lambda key: gen.init(key, jnp.zeros((1, *lr_hw, 1), jnp.float32), train=False),
                          jax.random.key(0))
  # What mrsr_jax.evaluate.load_generator returns for run.py --mode=predict, at random variables.
  apply = predict.Generator(gen, _random_like(shapes, mesh, 0), jnp.dtype(config.dtype).name)

  volume = (1000.0 * np.random.default_rng(0).random((n, *lr_hw))).astype(np.float32)
  batch = int(config.predict.batch_size)
  res = {"env": _env(), "hr": hr}
  t0 = time.perf_counter()
  out = predict.upsample_volume(apply, volume, 0, s, batch, mesh)
  res["predict_first_s"] = time.perf_counter() - t0
  if out.shape != (n, hr, hr):
    raise AssertionError(f"predict returned {out.shape}, expected {(n, hr, hr)}")
  emit({**res, "status": "partial"})
  t0 = time.perf_counter()
  predict.upsample_volume(apply, volume, 0, s, batch, mesh)
  res["predict_second_s"] = time.perf_counter() - t0
  call, vb = predict.plan_batches(apply, lr_hw, n, mesh)
  norm, _ = volumes.robust_normalise(volume, "probe")
  predict.super_resolve(call, norm, vb, mesh)
  times = []
  for _ in range(spec["volume_repeats"]):
    t0 = time.perf_counter()
    predict.super_resolve(call, norm, vb, mesh)
    times.append(time.perf_counter() - t0)
  med, _, _ = _stats(times)
  res.update(planned_batch=vb, s_per_volume=med, s_per_256_slice_volume=med * 256 / n, status="ok",
             note="ok", measured_peak_gib=_device_peak_gib())
  return res


KINDS = {"train": train_item, "compare": compare_item, "volume": volume_item}


def run_items(items: list[dict]) -> int:
  for spec in items:
    def emit(res, index=spec["index"]):
      print(json.dumps({**res, "index": index}, default=float), flush=True)
    try:
      res = KINDS[spec["kind"]](spec, emit)
    except CompileBudget as e:
      res = {"status": "timeout", "note": f"timeout: {e}"}
    except BaseException as e:  # noqa: BLE001 -- one item's failure is a row of the table
      traceback.print_exc(file=sys.stderr)
      msg = f"{type(e).__name__}: {e}".splitlines()[0][:300]
      res = {"status": "error", "note": f"error: {msg}"}
    emit(res)
  return 0


# -- command line -------------------------------------------------------------------------------------------
def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--items", help=argparse.SUPPRESS)
  p.add_argument("--configs", default=None, help="comma-separated config files (default: the four paper "
                 f"configs; --tiny: {TINY_CONFIG})")
  p.add_argument("--stages", default="sr,compare,predict,ae,vit",
                 help="any of sr, compare (SR step vs PyTorch), predict, ae, vit")
  p.add_argument("--dtypes", default="float32,bfloat16")
  p.add_argument("--frameworks", default=None,
                 help="the comparison's: jax (ours), torch, torch_compile (default all; --tiny: jax,torch)")
  p.add_argument("--set", action="append", default=[], help="config override key=value (every config)")
  p.add_argument("--steps", type=int, default=None, help="timed steps per item (default 5; --tiny 2)")
  p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2; --tiny 1)")
  p.add_argument("--compare_batch", type=int, default=None,
                 help="slices of the PyTorch comparison (default 64; --tiny 2)")
  p.add_argument("--compare_size", type=int, default=0, help="HR size of the comparison (0: the config's crop)")
  p.add_argument("--volume_slices", type=int, default=None, help="default 256; --tiny 4; 0: no predict")
  p.add_argument("--volume_hr", type=int, default=None, help="HR in-plane size (default 256; --tiny 32)")
  p.add_argument("--volume_repeats", type=int, default=None, help="default 3; --tiny 1")
  p.add_argument("--torch_compile_s", type=float, default=90.0,
                 help="torch.compile's item (imports, compile, timed steps) is given up after this "
                      "long; its row says so")
  p.add_argument("--budget_s", type=float, default=None, help="whole probe (default 285; --tiny 600)")
  p.add_argument("--min_item_s", type=float, default=20.0, help="no item starts with less left")
  p.add_argument("--peak", default="", help="use this device's peak (bench/flops.py PEAKS: "
                 "H200, 'H100 SXM', 'H100 PCIe') instead of the one detected")
  p.add_argument("--tiny", action="store_true", help="configs/tiny.py sizes and tiny batches (CPU smoke run)")
  p.add_argument("--json", default="", help="also append one JSON line per item here")
  args = p.parse_args(argv)
  tiny = args.tiny
  defaults = dict(configs=TINY_CONFIG if tiny else ",".join(PAPER_CONFIGS),
                  frameworks="jax,torch" if tiny else "jax,torch,torch_compile",
                  steps=2 if tiny else 5, warmup=1 if tiny else 2, compare_batch=2 if tiny else 64,
                  volume_slices=4 if tiny else 256, volume_hr=32 if tiny else 256,
                  volume_repeats=1 if tiny else 3, budget_s=600.0 if tiny else 285.0)
  for k, v in defaults.items():
    if getattr(args, k) is None:
      setattr(args, k, v)
  if args.peak:
    sys.path.insert(0, BENCH)
    import flops as flops_lib
    if args.peak not in flops_lib.PEAKS:
      p.error(f"--peak={args.peak}: not one of {', '.join(flops_lib.PEAKS)}")
  for name in ("stages", "dtypes", "frameworks"):
    allowed = {"stages": {"sr", "compare", "predict", "ae", "vit"}, "dtypes": {"float32", "bfloat16"},
               "frameworks": {"jax", "torch", "torch_compile"}}[name]
    bad = [x for x in getattr(args, name).split(",") if x and x not in allowed]
    if bad:
      p.error(f"--{name}: unknown {', '.join(bad)} (choose from {', '.join(sorted(allowed))})")
  for name in ("steps", "compare_batch"):
    if getattr(args, name) < 1:
      p.error(f"--{name} must be >= 1")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.items:
    return run_items(json.loads(args.items))
  return run_parent(args)


if __name__ == "__main__":
  sys.exit(main())
