"""Per-device memory and FLOPs of a stage's train step, from XLA's own compile of the real step.

  python bench/memory.py --config=configs/sr_ixi_x4.py                   # every stage, one device
  python bench/memory.py --config=configs/sr_fastmri_x2.py --stage=sr --devices=8
  python bench/memory.py --config=configs/sr_ixi_x4.py --stage=sr --config.dtype=bfloat16
  python bench/memory.py --config=configs/sr_ixi_x2.py --stage=sr --platform=cpu   # the CPU's own graph
  python bench/memory.py --table --json=mem.json     # the docs/benchmarks.md table: every paper config
  python bench/memory.py --config=configs/compare/edsr_ixi_x4.py   # a comparison method (its SR stage)

For each stage this builds the real stage object (`mrsr_jax.train.pipeline.STAGES`) and compiles its
train step exactly as the loop does (`step.compile_step(stage.update, mesh, ...)`, state donated,
batch sharded), but from `jax.ShapeDtypeStruct`s: the train state and the frozen ViT / AE params of
the SR loss are `jax.eval_shape`s of the stages' `init`, so nothing full-size is ever materialised
and no checkpoint or dataset is needed. Compiling needs no device memory either: XLA's buffer
assignment says what the step would hold.

What is printed, per stage (GiB = 2^30 bytes):
  argument / output / alias / temp / code   `compiled.memory_analysis()`: argument buffers (state,
        batch, rng, frozen params), outputs (new state, metrics), the part of the outputs aliased to
        donated arguments (the state is updated in place), XLA's temporaries, generated code.
  peak  = argument + output - alias + temp: every argument is live for the whole step (the caller
        holds the batch and the frozen params; the donated state becomes the output), outputs that
        do not reuse a donated buffer are new, and the temporaries are allocated for the execution.
        An upper bound on what the step holds at once; it leaves out what the runtime itself keeps
        (CUDA context, cuDNN/cuBLAS workspaces outside XLA's buffers, allocator fragmentation), hence
        the headroom below. (`memory_analysis().peak_memory_in_bytes`, XLA's heap simulation, is not
        used: on XLA:CPU it omits temporaries, e.g. 4 MiB for a step with 4 MiB of arguments and
        4 MiB of temporaries.)
  FLOPs bench/flops.py's count of the traced step (XLA's pricing, a multiply-add counted as 2,
        convolutions and matmuls included whatever the backend: XLA:GPU's own cost analysis leaves
        out what cuDNN and cuBLAS run, 18-120x too low), every microbatch of an accumulating step
        included, split by component (generator, discriminator, ViT / AE features, optimiser); XLA's
        cost analysis of the compiled step is kept beside it (`xla_flops`, one microbatch's).
  fixed + per slice   the step compiled at two per-device batch sizes (`--sizes`, default 2 and 4
        slices, no accumulation); peak and FLOPs are linear in the batch (FLOPs exactly), so the two
        give the fixed part (params, optimiser state, frozen extractors, per-step work) and the part
        per slice (activations kept for the backward pass, their gradients). Not 1: XLA simplifies
        size-1 batch dimensions (the AE step at 1 slice costs 62.5 GFLOP, at 2 and at 16 slices
        73.6 GFLOP per slice), so a batch of 1 is off the line.
  configured step     the step the loop would run on `--devices` devices: the config's per-device
        batch, split into the config's microbatches (`<stage>.microbatch_per_device`, gradient
        accumulation) when the train code has it, with the config's `dtype` and `remat`; compiled at
        full size (XLA's compile time hardly depends on the batch), and compared with the linear model.
  fits                for each memory budget (`--budgets_gb`, default 40 / 80 / 141 GB cards, of which
        `--headroom` = 90% is counted usable), the fewest microbatches k (dividing the per-device
        batch) whose estimated peak fits: fixed + per_slice * B/k, plus the full per-device batch as
        an argument and one gradient accumulator (the size of the trained params) when k > 1.

Platforms: `--platform=gpu` (default) lowers the step as JAX lowers it for a CUDA GPU (so every
`lax.platform_dependent` takes its GPU branch, e.g. XLA's own convolution kernel gradients instead of
the CPU-only im2col path of `mrsr_jax/models/cpu_conv.py`) and compiles that graph with the backend
at hand. On a machine without a GPU that is XLA:CPU: the graph is the GPU's, but the fusion and buffer
assignment are XLA:CPU's, and XLA:GPU's figures differ (typically by some tens of percent; run this
on a GPU for its own). `--platform=cpu` compiles the graph this CPU runs. JAX preallocates 75% of a
GPU's memory by default: for a step near a card's size set XLA_PYTHON_CLIENT_MEM_FRACTION=0.95.

Bad flags and config fields give one `error:` line and exit status 2, as run.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Sequence
from unittest import mock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
for _path in (ROOT, BENCH):
  if _path not in sys.path:
    sys.path.insert(0, _path)
import flops as flops_lib  # noqa: E402  (bench/flops.py)

GIB = 2 ** 30
STAGE_NAMES = ("vit", "ae", "sr")
PAPER_CONFIGS = ("configs/sr_ixi_x2.py", "configs/sr_ixi_x4.py",
                 "configs/sr_fastmri_x2.py", "configs/sr_fastmri_x4.py")
# The comparison methods of Tables 1-2 at their published sizes (SR stage only); --table covers them.
COMPARE_CONFIGS = tuple(f"configs/compare/{m}_ixi_x4.py" for m in ("srcnn", "vdsr", "edsr", "rdn"))

# Training-set sizes (slices) of the paper's runs, for stage lengths and costs where no prepared
# dataset is at hand. IXI (4): 500 volumes x 96 slices = 48,000 per contrast, and our data_prep puts
# the three contrasts in one set. fastMRI (4): 227 PD + 227 FS-PD knee volumes; fastMRI's knee volumes
# have 35.7 slices on average (34,742 slices in the 973 single-coil train volumes, Zbontar et al.
# 2018), and data_prep keeps every non-empty slice.
TRAIN_SLICES = {"ixi": 3 * 500 * 96, "ixi_per_contrast": 500 * 96, "fastmri": round(2 * 227 * 35.7)}
LABELS = {"ixi": ["ixi/T1", "ixi/T2", "ixi/PD"], "fastmri": ["fastmri/PD", "fastmri/PDFS"]}

# Dense peak throughput of one H100 SXM (NVIDIA's datasheet, without sparsity), FLOP/s.
H100_PEAK = {"bf16": 989e12, "tf32": 495e12, "fp32": 67e12}


# -- compiling the real step from shapes ---------------------------------------------------------------
@dataclasses.dataclass
class Figures:
  """One compiled step: XLA's memory figures (bytes) and FLOPs (bench/flops.py's count of the whole
  step; `xla_flops`: XLA's cost analysis of the compiled module, `components`: the count per
  component as plain numbers)."""
  per_device_batch: int
  microbatches: int
  argument: int
  output: int
  alias: int
  temp: int
  code: int
  flops: float
  compile_s: float
  xla_flops: float | None = None
  components: dict = dataclasses.field(default_factory=dict)

  @property
  def peak(self) -> int:
    return self.argument + self.output - self.alias + self.temp


def cost_flops(compiled) -> float:
  """FLOPs of a compiled step: `cost_analysis()` is a dict in jax 0.10 and a list of one dict per
  HLO module in older versions (summed)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, dict):
    cost = [cost]
  return float(sum(c.get("flops", 0.0) for c in cost or []))


def synthetic_info(config, train_slices: int | None = None) -> dict:
  """A dataset-info dict with what the stages read from it (train size, labels): the prepared
  dataset's own when it exists, else the paper's sizes for `config.dataset`."""
  from mrsr_jax.data import records
  from mrsr_jax.train import loop
  try:
    info = records.read_info(loop.dataset_dir(config))
  except (OSError, ValueError, KeyError):
    info = None
  if info is not None and train_slices is None:
    return info
  n = train_slices or TRAIN_SLICES.get(config.dataset, TRAIN_SLICES["ixi"])
  labels = (info or {}).get("labels") or LABELS.get(config.dataset, ["a", "b"])
  return {"splits": {"train": {"num_examples": n}}, "labels": labels}


@contextlib.contextmanager
def _abstract_sources(info: dict):
  """Inside: the stages read `info` as their dataset's info, and the SR stage's frozen ViT / AE
  params are the abstract shapes of those stages' `init` (what their checkpoints would hold)."""
  import jax
  from mrsr_jax.data import records
  from mrsr_jax.train import stage_sr

  def abstract_params(stage, mesh):
    return jax.eval_shape(stage.init, jax.random.key(0)).params

  with mock.patch.object(records, "read_info", lambda *_: info), \
       mock.patch.object(stage_sr, "restore_params", abstract_params):
    yield


def make_stage(config, name: str, info: dict, platform: str | None = None):
  """The stage `name` of `config`, its models built for `platform` ("gpu" / "cpu"; default: this
  host's backend). The models fix their convolution code when built (`srgan.backend_conv_impl`), so a
  step meant to be lowered for a GPU must be built for one, or it would carry XLA:CPU's kernels."""
  from unittest import mock

  from mrsr_jax.models import srgan
  from mrsr_jax.train import pipeline
  config = config.copy_and_resolve_references()
  if platform is not None:
    impl = srgan.backend_conv_impl({"gpu": "cuda"}.get(platform, platform))
    with mock.patch.object(srgan, "backend_conv_impl", lambda platform=None: impl):
      return make_stage(config, name, info)
  if name == "vit":
    config.vit.init_checkpoint = ""    # the same shapes; the tool reads no weights
  from absl import logging
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)   # the stages' advice for a training run (e.g. on the ViT's
  try:                                    # starting point) is not about memory
    with _abstract_sources(info):
      stage = pipeline.STAGES[name](config, "/nonexistent-memory-tool-workdir")
      stage.num_steps(info)           # the SR cosine schedule's length (no effect on memory)
  finally:
    logging.set_verbosity(verbosity)
  return stage


def has_accumulation(stage) -> bool:
  """Whether the train code accumulates gradients over microbatches (`Stage.microbatches`)."""
  return callable(getattr(stage, "microbatches", None))


def configured_microbatches(stage, devices: int) -> int:
  return stage.microbatches(devices) if has_accumulation(stage) else 1


_COMPILED: dict[str, Any] = {}     # lowered module text hash -> compiled step (a --table run compiles
                                   # the AE step, the same module for every paper config, once)


def compile_step_from_shapes(stage, per_device_batch: int, *, microbatches: int = 1,
                             platform: str = "gpu", info: dict | None = None,
                             peak: "flops_lib.Peak | None" = None):
  """(compiled step, Figures): `stage`'s real train step for `per_device_batch` slices on one device
  (split into `microbatches`), compiled from shapes alone, lowered for `platform` ("gpu" or "cpu").
  The compiled step is what `jax.jit` would run: call it with (state, batch, rng, frozen) arrays.
  With a device `peak`, each component of `Figures.components` also has its roofline bound `bound_s`."""
  import hashlib
  import jax
  import jax.numpy as jnp
  from mrsr_jax import sharding
  from mrsr_jax.train import step as step_lib

  mesh = sharding.make_mesh(jax.devices()[:1])
  key = jax.random.key(0)
  state = jax.eval_shape(stage.init, key)
  with _abstract_sources(info or synthetic_info(stage.config)):
    frozen = stage.frozen(mesh)
  c = stage.crop_size
  batch = {"hr": jax.ShapeDtypeStruct((per_device_batch, c, c, 1), jnp.float32),
           "label": jax.ShapeDtypeStruct((per_device_batch,), jnp.int32)}
  rng = jax.eval_shape(lambda: step_lib.step_rng(0, 0))
  if microbatches > 1:
    step = step_lib.compile_step(stage.update, mesh, microbatches)
  else:
    step = step_lib.compile_step(stage.update, mesh)
  t0 = time.perf_counter()
  lowering_platform = {"gpu": "cuda", "cpu": "cpu"}[platform]
  with flops_lib.named_optimizer():      # labels the optimiser's operations for the count
    traced = step.trace(state, batch, rng, frozen)
  count = flops_lib.count(traced.jaxpr, platform=lowering_platform,
                          labels=flops_lib.STAGE_LABELS.get(stage.name))
  lowered = traced.lower(lowering_platforms=(lowering_platform,))
  digest = hashlib.sha256(lowered.as_text().encode()).hexdigest()
  if digest not in _COMPILED:
    _COMPILED[digest] = lowered.compile()
  compiled = _COMPILED[digest]
  seconds = time.perf_counter() - t0
  m = compiled.memory_analysis()
  return compiled, Figures(
      per_device_batch=per_device_batch, microbatches=microbatches,
      argument=int(m.argument_size_in_bytes), output=int(m.output_size_in_bytes),
      alias=int(m.alias_size_in_bytes), temp=int(m.temp_size_in_bytes),
      code=int(m.generated_code_size_in_bytes), flops=count.flops, compile_s=seconds,
      xla_flops=cost_flops(compiled), components=count.summary(peak)["components"])


def compile_figures(stage, per_device_batch: int, **kwargs) -> Figures:
  return compile_step_from_shapes(stage, per_device_batch, **kwargs)[1]


# -- the linear model and what fits --------------------------------------------------------------------
@dataclasses.dataclass
class Report:
  config: str
  stage: str
  devices: int
  global_batch: int
  per_device_batch: int
  dtype: str
  remat: bool
  platform: str
  backend: str
  small: list[Figures]                 # at --sizes, no accumulation
  fixed_peak: float                    # bytes
  per_slice_peak: float                # bytes per slice
  fixed_flops: float
  per_slice_flops: float
  trained_param_bytes: int             # one gradient accumulator
  input_bytes_per_slice: int
  configured: Figures | None           # the step the loop would compile
  headroom: float
  fits: dict[str, int | None]          # budget (GB) -> microbatches k, None if no k fits

  def peak_estimate(self, microbatches: int) -> float:
    b = self.per_device_batch
    m = b // microbatches
    est = self.fixed_peak + self.per_slice_peak * m
    if microbatches > 1:
      est += self.input_bytes_per_slice * (b - m) + self.trained_param_bytes
    return est

  @property
  def flops_per_step(self) -> float:
    return self.fixed_flops + self.per_slice_flops * self.per_device_batch * self.devices

  @property
  def peak_at_batch(self) -> float:
    """Per-device peak of the step at the config's per-device batch without accumulation."""
    return self.peak_estimate(1)


def linear(x1: float, y1: float, x2: float, y2: float) -> tuple[float, float]:
  slope = (y2 - y1) / (x2 - x1)
  return y1 - slope * x1, slope


def fitting_microbatches(report: Report, budget_bytes: float) -> int | None:
  b = report.per_device_batch
  for k in range(1, b + 1):
    if b % k == 0 and report.peak_estimate(k) <= budget_bytes:
      return k
  return None


def tree_bytes(tree) -> int:
  import jax
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def analyse(config, name: str, *, config_name: str = "", devices: int = 1,
            sizes: Sequence[int] = (2, 4), platform: str = "gpu",
            budgets_gb: Sequence[float] = (40, 80, 141), headroom: float = 0.9,
            configured: bool = True, train_slices: int | None = None, log=print) -> Report:
  import jax
  info = synthetic_info(config, train_slices)
  stage = make_stage(config, name, info, platform)
  global_batch = stage.batch_size
  if global_batch % devices:
    raise ValueError(f"{name}.batch_size {global_batch} is not divisible by --devices={devices}")
  per_device = global_batch // devices
  small = []
  for b in sizes:
    small.append(compile_figures(stage, b, platform=platform, info=info))
    log(f"  [{name}] compiled at {b} slice(s)/device in {small[-1].compile_s:.0f} s: "
        f"temp {small[-1].temp / GIB:.3f} GiB, peak {small[-1].peak / GIB:.3f} GiB, "
        f"{small[-1].flops / 1e9:.1f} GFLOP")
  (b1, f1), (b2, f2) = [(f.per_device_batch, f) for f in small[:2]]
  fixed_peak, per_slice_peak = linear(b1, f1.peak, b2, f2.peak)
  fixed_flops, per_slice_flops = linear(b1, f1.flops, b2, f2.flops)
  state = jax.eval_shape(stage.init, jax.random.key(0))
  trained = tree_bytes(state.params)
  report = Report(
      config=config_name, stage=name, devices=devices, global_batch=global_batch,
      per_device_batch=per_device, dtype=str(config.dtype), remat=bool(stage.cfg.remat),
      platform=platform, backend=jax.default_backend(), small=small,
      fixed_peak=fixed_peak, per_slice_peak=per_slice_peak, fixed_flops=fixed_flops,
      per_slice_flops=per_slice_flops, trained_param_bytes=trained,
      input_bytes_per_slice=stage.crop_size ** 2 * 4 + 4, configured=None, headroom=headroom,
      fits={})
  report.fits = {f"{g:g}": fitting_microbatches(report, headroom * g * GIB) for g in budgets_gb}
  if configured:
    k = configured_microbatches(stage, devices)
    report.configured = compile_figures(stage, per_device, microbatches=k, platform=platform, info=info)
  return report


def configured_figures(config, name: str, *, devices: int = 1, platform: str = "gpu",
                       train_slices: int | None = None) -> Figures:
  """The step the loop would compile for `name` on `devices` devices (the config's per-device batch
  and microbatches, dtype, remat), per device, lowered for `platform`: one compile, no linear model."""
  info = synthetic_info(config, train_slices)
  stage = make_stage(config, name, info, platform)
  if stage.batch_size % devices:
    raise ValueError(f"{name}.batch_size {stage.batch_size} is not divisible by --devices={devices}")
  return compile_figures(stage, stage.batch_size // devices,
                         microbatches=configured_microbatches(stage, devices), platform=platform,
                         info=info)


# -- printing ------------------------------------------------------------------------------------------
def gib(x: float) -> str:
  return f"{x / GIB:,.2f}"


def describe(r: Report) -> str:
  lines = [f"[{r.stage}] {r.config}: global batch {r.global_batch} on {r.devices} device(s) -> "
           f"{r.per_device_batch} slices per device; dtype {r.dtype}, remat {'on' if r.remat else 'off'}; "
           f"lowered for {r.platform}, compiled by XLA:{r.backend}"]
  lines.append("  per device (GiB)      batch  argument    output     alias      temp   code   peak   GFLOP")
  rows = [("", f) for f in r.small] + ([("configured ", r.configured)] if r.configured else [])
  for label, f in rows:
    mb = f" ({f.microbatches} x {f.per_device_batch // f.microbatches})" if f.microbatches > 1 else ""
    lines.append(f"  {label + 'step':<20} {f.per_device_batch:>6}{mb} {gib(f.argument):>9} {gib(f.output):>9} "
                 f"{gib(f.alias):>9} {gib(f.temp):>9} {gib(f.code):>6} {gib(f.peak):>6} "
                 f"{f.flops / 1e9:>9,.1f}")
  lines.append(f"  linear model: peak = {gib(r.fixed_peak)} GiB + {r.per_slice_peak / GIB:.4f} GiB/slice; "
               f"FLOPs = {r.fixed_flops / 1e9:,.2f} G + {r.per_slice_flops / 1e9:,.2f} G/slice")
  lines.append(f"  at the per-device batch {r.per_device_batch}, no accumulation: peak ~{gib(r.peak_at_batch)} GiB "
               f"(linear model); FLOPs per step (global batch {r.global_batch}): "
               f"{r.flops_per_step / 1e12:,.2f} TFLOP")
  if r.configured is not None:
    k = r.configured.microbatches
    lines.append(f"  configured step: {k} microbatch(es) of {r.per_device_batch // k}: peak "
                 f"{gib(r.configured.peak)} GiB compiled, {gib(r.peak_estimate(k))} GiB by the linear model")
    if r.configured.components:
      lines.append("  configured step's GFLOP by component (bench/flops.py): " + ", ".join(
          f"{name} {c['flops'] / 1e9:,.1f}" for name, c in
          sorted(r.configured.components.items(), key=lambda kv: -kv[1]["flops"])))
  fits = ", ".join(f"{g} GB: " + (f"{k} microbatch(es) of {r.per_device_batch // k}" if k else "no split fits")
                   for g, k in r.fits.items())
  lines.append(f"  fits ({r.headroom:.0%} of the card counted usable): {fits}")
  return "\n".join(lines)


# -- the docs tables (docs/benchmarks.md) ---------------------------------------------------------------
# Training sets a paper run can use: (label, dataset, slices).
COST_SETS = (
    ("IXI, one contrast (`config.contrast`), 48,000 slices", "ixi", TRAIN_SLICES["ixi_per_contrast"]),
    ("IXI, three contrasts pooled, 144,000 slices", "ixi", TRAIN_SLICES["ixi"]),
    (f"fastMRI PD + FS-PD, ~{TRAIN_SLICES['fastmri']:,} slices", "fastmri", TRAIN_SLICES["fastmri"]),
)


def report_from_dict(d: dict) -> Report:
  d = dict(d)
  d["small"] = [Figures(**f) for f in d["small"]]
  d["configured"] = Figures(**d["configured"]) if d.get("configured") else None
  return Report(**d)


def memory_table(reports: Sequence[Report]) -> str:
  budgets = list(reports[0].fits)
  lines = ["| config | stage | global batch | per device, 1 GPU: peak at that batch (GiB) | fixed + per slice "
           "(GiB) | microbatches to fit " + " / ".join(f"{g} GB" for g in budgets) +
           " | GFLOP per slice | TFLOP per step |",
           "|---|---|---|---|---|---|---|---|"]
  for r in reports:
    fits = " / ".join(f"{k} (×{r.per_device_batch // k})" if k else "—" for k in r.fits.values())
    checked = (f" (compiled at {r.configured.per_device_batch}"
               + (f" in {r.configured.microbatches} microbatches" if r.configured.microbatches > 1 else "")
               + f": {gib(r.configured.peak)})") if r.configured else ""
    lines.append(f"| {os.path.basename(r.config)} | {r.stage} | {r.global_batch} | "
                 f"{gib(r.peak_at_batch)}{checked} | {gib(r.fixed_peak)} + {r.per_slice_peak / GIB:.4f} | "
                 f"{fits} | {r.per_slice_flops / 1e9:,.1f} | {r.flops_per_step / 1e12:,.2f} |")
  return "\n".join(lines)


def stage_steps(config, name: str, slices: int) -> tuple[int, int]:
  """(steps of the stage as the config sets it, steps as the paper's text reads: 100 epochs of the
  set trained on for the AE and SR stages, 20,000 ViT iterations) for a training set of `slices`."""
  info = synthetic_info(config, slices)
  stage = make_stage(config, name, info)
  ours = stage.num_steps(info)
  text = 20_000 if name == "vit" else math.ceil(100 * slices / stage.batch_size)
  return ours, text


def cost_table(reports: Sequence[Report], configs: dict, mfu: float) -> str:
  by_config: dict[str, dict[str, Report]] = {}
  for r in reports:
    by_config.setdefault(r.config, {})[r.stage] = r
  lines = ["| training set | config | steps ViT / AE / SR | PFLOP ViT / AE / SR | total EFLOP | "
           "H100 h, lower bound: bf16 / TF32 peak | H100 h at "
           f"{mfu:.0%} of bf16 / TF32 peak |", "|---|---|---|---|---|---|---|"]
  for label, dataset, slices in COST_SETS:
    for path, stages in by_config.items():
      config = configs[path]
      if config.dataset != dataset or set(stages) != set(STAGE_NAMES):
        continue
      rows = {"ours": [], "text": []}
      for name in STAGE_NAMES:
        ours, text = stage_steps(config, name, slices)
        rows["ours"].append(ours)
        rows["text"].append(text)
      variants = [("", rows["ours"])]
      if rows["text"] != rows["ours"]:
        variants.append((" (as the text reads: 100 epochs of this set)", rows["text"]))
      for note, steps in variants:
        flops = [n * stages[name].flops_per_step for n, name in zip(steps, STAGE_NAMES)]
        total = sum(flops)
        bound = [total / H100_PEAK[p] / 3600 for p in ("bf16", "tf32")]
        lines.append(
            f"| {label}{note} | {os.path.basename(path)} | "
            + " / ".join(f"{n:,}" for n in steps) + " | "
            + " / ".join(f"{f / 1e15:,.0f}" for f in flops)
            + f" | {total / 1e18:,.2f} | {bound[0]:,.1f} / {bound[1]:,.1f} | "
            f"{bound[0] / mfu:,.1f} / {bound[1] / mfu:,.1f} |")
  return "\n".join(lines)


# -- command line --------------------------------------------------------------------------------------
def _define_flags(fv):
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Config file (a get_config() python file).",
                                  flag_values=fv, lock_config=True)
  flags.DEFINE_enum("stage", "all", ["all", *STAGE_NAMES], "Which stage's step (all: every stage "
                    "the config trains).", flag_values=fv)
  flags.DEFINE_integer("devices", 1, "Devices sharing the global batch (per-device batch = "
                       "batch_size / devices).", lower_bound=1, flag_values=fv)
  flags.DEFINE_list("sizes", ["2", "4"], "Two per-device batch sizes for the linear model.",
                    flag_values=fv)
  flags.DEFINE_enum("platform", "gpu", ["gpu", "cpu"], "Lower the step as for this platform.",
                    flag_values=fv)
  flags.DEFINE_list("budgets_gb", ["40", "80", "141"], "Card memory sizes (GB).", flag_values=fv)
  flags.DEFINE_float("headroom", 0.9, "Fraction of a card counted usable.", lower_bound=0.01,
                     upper_bound=1.0, flag_values=fv)
  flags.DEFINE_bool("configured", True, "Also compile the configured step at full size.",
                    flag_values=fv)
  flags.DEFINE_integer("train_slices", None, "Training-set size for stage lengths (default: the "
                       "prepared dataset's, else the paper's).", lower_bound=1, flag_values=fv)
  flags.DEFINE_bool("table", False, "Every paper and comparison config x stage (ignores --config).",
                    flag_values=fv)
  flags.DEFINE_string("json", None, "Also write the reports as JSON here.", flag_values=fv)
  flags.DEFINE_string("from_json", None, "Print the --table tables from a --json file of an earlier "
                      "--table run instead of compiling.", flag_values=fv)
  flags.DEFINE_float("mfu", 0.35, "Utilisation (of the peak FLOP/s) for the cost estimate.",
                     lower_bound=0.01, upper_bound=1.0, flag_values=fv)


def _ints(name: str, values: Sequence[str], cast=int) -> list:
  try:
    out = [cast(v) for v in values]
  except ValueError:
    raise ValueError(f"--{name}={','.join(values)}: not a list of numbers") from None
  if any(v <= 0 for v in out):
    raise ValueError(f"--{name}={','.join(values)}: every value must be > 0")
  return out


def load_named_config(path: str, argv: Sequence[str] = ()):
  """A config file as run.py loads it (one-line errors), with `--config.x=y` overrides in `argv`."""
  import run as run_cli
  config = run_cli.load_config_file(path)
  run_cli.check_overrides(config, argv, path.partition(":")[0])
  return config


def main(argv: Sequence[str] | None = None) -> int:
  from absl import flags
  import run as run_cli
  argv = list(sys.argv if argv is None else argv)
  fv = flags.FlagValues()
  _define_flags(fv)
  saved, sys.argv = sys.argv, argv          # config_flags reads the --config.<field> overrides there
  try:
    try:
      spec = run_cli._config_spec(argv)
      if spec is not None:
        load_named_config(spec, argv)
      rest = fv(argv)
      if len(rest) > 1:
        raise run_cli.CommandLineError(f"unexpected arguments: {rest[1:]}")
      sizes = _ints("sizes", fv.sizes)
      budgets = _ints("budgets_gb", fv.budgets_gb, float)
      if len(sizes) != 2 or sizes[0] == sizes[1]:
        raise run_cli.CommandLineError(f"--sizes={','.join(fv.sizes)}: give two different sizes")
      if not (fv.table or fv.from_json) and fv.config is None:
        raise run_cli.CommandLineError("--config is required (or --table for every paper config)")
      if fv.json:
        parent = os.path.dirname(os.path.abspath(fv.json))
        if not os.path.isdir(parent):
          raise run_cli.CommandLineError(f"--json={fv.json}: no such directory {parent}")
      loaded = None
      if fv.from_json:
        try:
          with open(fv.from_json) as f:
            loaded = [report_from_dict(d) for d in json.load(f)]
        except (OSError, ValueError, TypeError, KeyError) as e:
          raise run_cli.CommandLineError(f"--from_json={fv.from_json}: not a --json file of this "
                                         f"tool ({type(e).__name__}: {e})") from None
        if not loaded:
          raise run_cli.CommandLineError(f"--from_json={fv.from_json}: holds no reports")
    except (flags.Error, run_cli.CommandLineError, ValueError) as e:
      print(run_cli.error_line(e), file=sys.stderr)
      return 2
    table = fv.table or loaded is not None
    paths = (PAPER_CONFIGS + COMPARE_CONFIGS if fv.table else sorted({r.config for r in loaded}) if loaded
             else [spec])
    try:
      configs = {p: (fv.config if p == spec and not table else
                     load_named_config(p if os.path.isabs(p) else os.path.join(ROOT, p)))
                 for p in paths}
      from absl import logging
      from mrsr_jax import config_check
      logging.set_verbosity(logging.ERROR)   # advice for a training run, not about memory
      for config in configs.values():
        config_check.validate(config, num_devices=fv.devices, num_processes=1)
      reports = loaded or []
      if loaded is None:
        for path, config in configs.items():
          # "all": every stage the config trains (a comparison config trains the SR stage only).
          stages = [s for s in STAGE_NAMES if s in config.stages] if fv.stage == "all" else (fv.stage,)
          for name in stages:
            r = analyse(config, name, config_name=path, devices=fv.devices, sizes=sizes,
                        platform=fv.platform, budgets_gb=budgets, headroom=fv.headroom,
                        configured=fv.configured, train_slices=fv.train_slices,
                        log=lambda line: print(line, flush=True))
            print(describe(r), flush=True)
            reports.append(r)
        if fv.json:
          tmp = f"{fv.json}.tmp{os.getpid()}"
          with open(tmp, "w") as f:
            json.dump([dataclasses.asdict(r) for r in reports], f, indent=1)
          os.replace(tmp, fv.json)
      if table:
        print("\n" + memory_table(reports) + "\n\n" + cost_table(reports, configs, fv.mfu))
    except (ValueError, KeyError, OSError) as e:
      print(run_cli.error_line(e), file=sys.stderr)
      return 2
    return 0
  finally:
    sys.argv = saved


if __name__ == "__main__":
  sys.exit(main())
