"""FLOPs and bytes of a JAX computation, counted from its jaxpr: convolutions and matmuls included on
every backend, split by the network each operation belongs to.

Why not XLA's cost analysis: on a GPU, XLA hands convolutions to cuDNN and large matmuls to cuBLAS as
custom calls, and `compiled.cost_analysis()` counts nothing for them (the paper SR x4 step: 2.0 TFLOP
where the arithmetic is 65.4, issue 22), so a TFLOP/s figure divided by it is 18-120x too low. The
count here walks `jax.make_jaxpr` / `jit(f).trace(...).jaxpr` instead, which is the same on every
backend, and prices each operation by XLA's own rules (xla/service/hlo_cost_analysis.cc), so it agrees
with XLA:CPU's count of the same graph (tests/test_flops.py):

  conv_general_dilated  2 x (input features / feature groups) x output features x (batch / batch
                        groups) x the (output position, kernel tap) pairs that land inside the input,
                        per spatial dimension (taps on the zero padding, or between dilated inputs, are
                        not counted)
  dot_general           2 x output elements x contracted size
  elementwise, compare, select, convert   1 per output element; exp, log, tanh, sqrt, ... are
                        "transcendentals" (XLA keeps them apart from FLOPs); integer_pow by its
                        multiplies
  reductions            1 per input element reduced away; reduce_window (window - 1) per output
  fft                   as XLA: 8 x prod(floor(log2(n))) x elements

Dead code is left out as XLA's DCE would (a jaxpr of a gradient keeps forward results nothing reads);
`lax.platform_dependent` branches are resolved for `platform` ("cuda" by default: the count of the
graph a GPU runs); a `scan` body counts `length` times (XLA's cost analysis counts a loop body once,
so an accumulating step's XLA figure is one microbatch's); a `while` body counts once (noted).

Bytes, two figures per operation:
  bytes          every operation reads its operands and writes its result (XLA's rule for an
                 unfused graph): an upper bound on memory traffic, most of which fusion removes.
  matmul_bytes   the operands and results of convolutions and matmuls only: what those must move at
                 least once (their activations are far larger than a GPU's L2), i.e. the traffic if
                 every other operation fused into them. The roofline below uses this one.

Components: an operation belongs to the outermost Flax module in its name stack (Flax names a
module's operations by its class; the transposed backward pass keeps the name), mapped to a label
by `STAGE_LABELS`; the optimiser's update is traced under `named_optimizer()`, so it is its own
component; anything else (LR degradation, losses, data handling) is "other".

Roofline: `Peak` holds a device's dense datasheet rates; `Count.bound_s(peak)` is the time no
implementation can beat: the sum over convolutions and matmuls of max(FLOPs / tensor rate of the
operand dtype, matmul_bytes / HBM bandwidth), every other operation assumed fused (free).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from typing import Mapping, Sequence

import numpy as np

OPTIMISER_SCOPE = "optimiser"

# Labels of the outermost Flax module of an operation, per stage (any other module: its class name).
STAGE_LABELS = {
    "sr": {"SRGenerator": "generator", "SRDiscriminator": "discriminator", "ViT": "ViT features",
           "SwapEncoder": "AE features", OPTIMISER_SCOPE: "optimiser"},
    "ae": {"SwapEncoder": "encoder", "SwapGenerator": "generator",
           "SwapDiscriminator": "discriminator", OPTIMISER_SCOPE: "optimiser"},
    "vit": {"PretextViT": "ViT", OPTIMISER_SCOPE: "optimiser"},
}
OTHER = "other"


# -- device peaks ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Peak:
  """Dense (no 2:4 sparsity) datasheet rates of one device, FLOP/s and bytes/s."""
  name: str
  tf32: float          # float32 operands on tensor cores (XLA's and cuDNN's default precision for f32)
  bf16: float
  fp32: float          # CUDA cores (Precision.HIGHEST)
  hbm: float
  source: str

  def rate(self, kind: str) -> float:
    return {"tf32": self.tf32, "bf16": self.bf16, "fp32": self.fp32}[kind]


# NVIDIA's datasheets give tensor rates "with sparsity"; dense is half (H100 SXM: TF32 989 / BF16 1,979
# TFLOPS with sparsity, FP32 67, HBM3 3.35 TB/s; H100 PCIe: 756 / 1,513, FP32 51, 2.0 TB/s; H200 SXM:
# the H100 SXM's compute on the same GH100 die, HBM3e 4.8 TB/s, 141 GB).
PEAKS = {
    "H200": Peak("NVIDIA H200 SXM", 494.5e12, 989.5e12, 67e12, 4.8e12,
                 "NVIDIA H200 datasheet (dense = half the sparse figure)"),
    "H100 SXM": Peak("NVIDIA H100 SXM", 494.5e12, 989.5e12, 67e12, 3.35e12,
                     "NVIDIA H100 datasheet (dense = half the sparse figure)"),
    "H100 PCIe": Peak("NVIDIA H100 PCIe", 378e12, 756.5e12, 51e12, 2.0e12,
                      "NVIDIA H100 datasheet (dense = half the sparse figure)"),
}


def peak_for(device_kind: str) -> Peak | None:
  """The datasheet peak of a device by its `device_kind` (e.g. "NVIDIA H200", "NVIDIA H100 80GB
  HBM3"), or None for a device without one here (CPUs, other GPUs, the H100 NVL)."""
  kind = device_kind.upper()
  if "H200" in kind:
    return PEAKS["H200"]
  if "H100" in kind and "NVL" not in kind:
    return PEAKS["H100 PCIe"] if "PCIE" in kind else PEAKS["H100 SXM"]
  return None


# -- the count --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Cost:
  flops: float = 0.0              # all operations, XLA's convention
  matmul_flops: float = 0.0       # convolutions and dot products only
  transcendentals: float = 0.0
  bytes: float = 0.0              # unfused: every operation's operands + result
  matmul_bytes: float = 0.0       # convolutions' and dot products' operands + results
  # (flops, bytes, "tf32" | "bf16" | "fp32") per convolution / dot product, for the roofline.
  ops: list = dataclasses.field(default_factory=list, repr=False)

  def add(self, other: "Cost") -> None:
    for f in ("flops", "matmul_flops", "transcendentals", "bytes", "matmul_bytes"):
      setattr(self, f, getattr(self, f) + getattr(other, f))
    self.ops.extend(other.ops)

  @property
  def intensity(self) -> float:
    """Convolution / matmul FLOPs per byte those operations must move."""
    return self.matmul_flops / self.matmul_bytes if self.matmul_bytes else 0.0

  def bound_s(self, peak: Peak) -> float:
    return sum(max(f / peak.rate(kind), b / peak.hbm) for f, b, kind in self.ops)

  def summary(self, peak: Peak | None = None) -> dict:
    out = {f: getattr(self, f) for f in ("flops", "matmul_flops", "transcendentals", "bytes",
                                         "matmul_bytes")}
    out["intensity"] = self.intensity
    if peak is not None:
      out["bound_s"] = self.bound_s(peak)
    return out


@dataclasses.dataclass
class Count:
  components: dict[str, Cost]
  notes: list[str]
  platform: str

  @property
  def total(self) -> Cost:
    t = Cost()
    for c in self.components.values():
      t.add(c)
    return t

  @property
  def flops(self) -> float:
    return self.total.flops

  def bound_s(self, peak: Peak) -> float:
    return self.total.bound_s(peak)

  def summary(self, peak: Peak | None = None) -> dict:
    """Plain numbers (JSON): per component and total."""
    return {"platform": self.platform, "notes": list(self.notes),
            "components": {k: c.summary(peak) for k, c in self.components.items()},
            "total": self.total.summary(peak)}

  def table(self, peak: Peak | None = None, per: float = 1.0, per_name: str = "step") -> str:
    """A markdown table per component (FLOPs and bytes divided by `per`, e.g. the slices of a step)."""
    head = (f"| component | GFLOP per {per_name} (conv + matmul) | other GFLOP | GB moved by conv + "
            f"matmul | GB unfused | FLOP/byte (conv + matmul) |")
    sep = "|---|---|---|---|---|---|"
    if peak is not None:
      head += f" roofline bound on {peak.name} (ms per {per_name}) |"
      sep += "---|"
    rows = [head, sep]
    items = sorted(self.components.items(), key=lambda kv: -kv[1].flops) + [("total", self.total)]
    for name, c in items:
      row = (f"| {name} | {c.matmul_flops / per / 1e9:,.1f} | {(c.flops - c.matmul_flops) / per / 1e9:,.2f}"
             f" | {c.matmul_bytes / per / 1e9:,.2f} | {c.bytes / per / 1e9:,.2f} | {c.intensity:,.0f} |")
      if peak is not None:
        row += f" {1e3 * c.bound_s(peak) / per:,.3f} |"
      rows.append(row)
    return "\n".join(rows)


# Primitives that run a sub-jaxpr on the equation's own operands (counted as their body).
_CALLS = ("jaxpr", "call_jaxpr", "fun_jaxpr")
_TRANSCENDENTAL = {"exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic", "erf", "erfc", "erf_inv",
                   "pow", "sqrt", "rsqrt", "cbrt", "sin", "cos", "tan", "atan2", "acosh", "asinh",
                   "atanh", "asin", "acos", "atan", "sinh", "cosh", "lgamma", "digamma"}
_ELEMENTWISE = {"add", "add_any", "sub", "mul", "div", "rem", "max", "min", "neg", "abs", "sign",
                "floor", "ceil", "round", "nextafter", "select_n", "eq", "ne", "lt", "le", "gt", "ge",
                "and", "or", "not", "xor", "shift_left", "shift_right_logical",
                "shift_right_arithmetic", "convert_element_type", "clamp", "is_finite", "square",
                "real", "imag", "conj", "complex", "population_count", "reduce_precision",
                "integer_pow"}
_REDUCE = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or",
           "reduce_xor", "argmax", "argmin"}
_NO_BYTES = {"platform_index"}


def _nbytes(aval) -> float:
  try:
    return float(math.prod(aval.shape)) * np.dtype(aval.dtype).itemsize
  except (TypeError, AttributeError):      # tokens, keys' opaque dtypes
    return 0.0


def _size(aval) -> float:
  return float(math.prod(getattr(aval, "shape", ())))


def _valid_positions(in_size: int, out_size: int, k_size: int, stride: int, pad_lo: int,
                     base_dil: int, win_dil: int) -> int:
  """(output, kernel tap) pairs of one spatial dimension whose input index is a real input element
  (hlo_cost_analysis.cc's GetConvolutionFlops)."""
  o = np.arange(out_size)
  total = 0
  for k in range(k_size):
    undilated = o * stride - pad_lo + k * win_dil
    ok = undilated % base_dil == 0 if base_dil > 1 else np.ones_like(o, bool)
    idx = undilated // base_dil
    total += int(np.count_nonzero(ok & (idx >= 0) & (idx < in_size)))
  return total


def conv_flops(eqn) -> float:
  p = eqn.params
  lhs, rhs = (v.aval for v in eqn.invars[:2])
  out = eqn.outvars[0].aval
  dn = p["dimension_numbers"]
  lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
  batch, cin = lhs.shape[lhs_spec[0]], lhs.shape[lhs_spec[1]]
  cout = out.shape[out_spec[1]]
  nsp = len(lhs_spec) - 2
  lhs_dil = p.get("lhs_dilation") or (1,) * nsp
  rhs_dil = p.get("rhs_dilation") or (1,) * nsp
  positions = 1
  for i in range(nsp):
    positions *= _valid_positions(lhs.shape[lhs_spec[2 + i]], out.shape[out_spec[2 + i]],
                                  rhs.shape[rhs_spec[2 + i]], p["window_strides"][i],
                                  p["padding"][i][0], lhs_dil[i], rhs_dil[i])
  fma = (cin // p["feature_group_count"]) * cout * (batch // p["batch_group_count"]) * positions
  return 2.0 * fma


def dot_flops(eqn) -> float:
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval
  width = math.prod(lhs.shape[d] for d in lhs_contract)
  return 2.0 * _size(eqn.outvars[0].aval) * width


def _integer_pow_muls(y: int) -> int:
  """Multiplies of jax's integer_pow lowering (square-and-multiply), plus one divide if y < 0."""
  n, first, e = 0, True, abs(y)
  while e > 0:
    if e & 1:
      n += 0 if first else 1
      first = False
    e >>= 1
    if e > 0:
      n += 1
  return n + (1 if y < 0 else 0)


def _matmul_kind(eqn) -> str:
  dtype = np.dtype(eqn.invars[0].aval.dtype)
  if dtype.itemsize <= 2:
    return "bf16"
  prec = eqn.params.get("precision")
  precs = prec if isinstance(prec, (tuple, list)) else (prec,)
  return "fp32" if any(str(q).upper().endswith("HIGHEST") for q in precs if q is not None) else "tf32"


def leaf_cost(eqn) -> tuple[Cost, str | None]:
  """The cost of one primitive equation (no sub-jaxpr), and a note if it is priced approximately."""
  name = eqn.primitive.name
  ins = [v.aval for v in eqn.invars]
  outs = [v.aval for v in eqn.outvars]
  out_elems = sum(_size(a) for a in outs)
  c = Cost()
  if name in _NO_BYTES:
    return c, None
  nbytes_in = sum(_nbytes(a) for a in ins)
  nbytes_out = sum(_nbytes(a) for a in outs)
  c.bytes = nbytes_in + nbytes_out
  if name in ("slice", "dynamic_slice"):
    c.bytes = 2 * nbytes_out + sum(_nbytes(a) for a in ins[1:])
  elif name == "dynamic_update_slice":
    c.bytes = 2 * _nbytes(ins[1]) + sum(_nbytes(a) for a in ins[2:])
  note = None
  if name in ("conv_general_dilated", "dot_general"):
    c.flops = c.matmul_flops = conv_flops(eqn) if name == "conv_general_dilated" else dot_flops(eqn)
    c.matmul_bytes = nbytes_in + nbytes_out
    c.ops.append((c.flops, c.matmul_bytes, _matmul_kind(eqn)))
  elif name in _TRANSCENDENTAL:
    c.transcendentals = out_elems
  elif name == "integer_pow":
    c.flops = out_elems * _integer_pow_muls(eqn.params["y"])
  elif name in _ELEMENTWISE:
    c.flops = out_elems
  elif name in _REDUCE or name.startswith("reduce_") and not name.startswith("reduce_window") and \
      name != "reduce_precision":
    c.flops = _size(ins[0]) - out_elems
  elif name.startswith("reduce_window") or name.startswith("cum"):
    window = math.prod(eqn.params.get("window_dimensions", ())) or _size(ins[0])
    c.flops = (window - 1) * out_elems if name.startswith("reduce_window") else _size(ins[0])
  elif name in ("select_and_scatter_add", "select_and_gather_add"):
    window = math.prod(eqn.params["window_dimensions"])
    source = _size(ins[0])
    c.flops = source * (window - 1) + source
  elif name == "fft":
    logs = math.prod(int(math.floor(math.log2(n))) for n in eqn.params["fft_lengths"])
    c.flops = 2 * 4 * logs * _size(ins[0])
  elif name in ("random_bits", "threefry2x32", "random_wrap", "random_unwrap", "random_seed",
                "random_fold_in", "random_split"):
    c.transcendentals = out_elems     # as XLA prices its RNG ops; threefry's integer ops not counted
    note = "random number generation priced as 1 transcendental per output element"
  return c, note


def _sub_jaxprs(eqn):
  from jax.extend.core import ClosedJaxpr, Jaxpr
  for key in _CALLS:
    sub = eqn.params.get(key)
    if isinstance(sub, ClosedJaxpr):
      return sub.jaxpr
    if isinstance(sub, Jaxpr):
      return sub
  return None


def _component(stack: str, labels: Mapping[str, str]) -> str:
  parts = [re.sub(r"^(?:[\w.]+\()*", "", p).rstrip(")") for p in stack.split("/") if p]
  for p in parts:
    if p in labels:
      return labels[p]
  for p in parts:
    if re.fullmatch(r"[A-Z][A-Za-z0-9_]*", p):
      return p
  return OTHER


class _Counter:
  def __init__(self, platform: str, labels: Mapping[str, str]):
    self.platform = {"gpu": "cuda"}.get(platform, platform)
    self.labels = dict(labels)
    self.components: dict[str, Cost] = {}
    self.notes: set[str] = set()

  def _charge(self, stack: str, cost: Cost, mult: float) -> None:
    if mult != 1:
      cost = Cost(cost.flops * mult, cost.matmul_flops * mult, cost.transcendentals * mult,
                  cost.bytes * mult, cost.matmul_bytes * mult,
                  [(f * mult, b * mult, k) for f, b, k in cost.ops])
    self.components.setdefault(_component(stack, self.labels), Cost()).add(cost)

  def _branch(self, eqn, producers) -> int | None:
    """The branch of a `cond` that `self.platform` takes, if the cond is a platform switch."""
    plats = eqn.params.get("branches_platforms")
    if plats is None and eqn.invars and eqn.invars[0] in producers:
      plats = producers[eqn.invars[0]].params.get("platforms")
    if plats is None:
      return None
    default = None
    for i, ps in enumerate(plats):
      if ps is None:
        default = i
      elif self.platform in ps:
        return i
    return default

  def walk(self, jaxpr, used_outs: Sequence[bool], prefix: str, mult: float) -> list[bool]:
    """Counts the live equations of `jaxpr` (those some used output depends on); returns which of its
    inputs are used."""
    from jax.extend.core import DropVar, Var
    live = {v for v, u in zip(jaxpr.outvars, used_outs) if u and isinstance(v, Var)}
    producers = {e.outvars[0]: e for e in jaxpr.eqns if e.primitive.name == "platform_index"}
    for eqn in reversed(jaxpr.eqns):
      outs = [isinstance(v, Var) and not isinstance(v, DropVar) and v in live for v in eqn.outvars]
      if not any(outs) and not eqn.effects:
        continue
      stack = "/".join(s for s in (prefix, str(eqn.source_info.name_stack)) if s)
      used_in = self.equation(eqn, outs, stack, mult, producers)
      live.update(v for v, u in zip(eqn.invars, used_in) if u and isinstance(v, Var))
    return [v in live for v in jaxpr.invars]

  def equation(self, eqn, outs, stack, mult, producers) -> list[bool]:
    name = eqn.primitive.name
    n_in = len(eqn.invars)
    if name == "cond":
      branches = [b.jaxpr for b in eqn.params["branches"]]
      pick = self._branch(eqn, producers)
      if pick is None and len(branches) > 1:
        # A data-dependent branch: the costliest one (an upper bound), counted on a scratch counter.
        best, best_flops = 0, -1.0
        for i, b in enumerate(branches):
          scratch = _Counter(self.platform, self.labels)
          scratch.walk(b, outs, stack, mult)
          f = sum(c.flops for c in scratch.components.values())
          if f > best_flops:
            best, best_flops = i, f
        pick = best
        self.notes.add("a data-dependent lax.cond counted as its costliest branch")
      used = self.walk(branches[pick or 0], outs, stack, mult)
      return [True] + used
    if name == "scan":
      body = eqn.params["jaxpr"].jaxpr
      self.walk(body, [True] * len(body.outvars), stack, mult * eqn.params["length"])
      return [True] * n_in
    if name == "while":
      for key in ("cond_jaxpr", "body_jaxpr"):
        sub = eqn.params[key].jaxpr
        self.walk(sub, [True] * len(sub.outvars), stack, mult)
      self.notes.add("a while loop's body counted once (its trip count is not static)")
      return [True] * n_in
    sub = _sub_jaxprs(eqn)
    if sub is not None:
      if len(sub.invars) == n_in and len(sub.outvars) == len(outs):
        return self.walk(sub, outs, stack, mult)
      self.walk(sub, [True] * len(sub.outvars), stack, mult)
      return [True] * n_in
    cost, note = leaf_cost(eqn)
    if note:
      self.notes.add(note)
    self._charge(stack, cost, mult)
    return [True] * n_in


def default_platform() -> str:
  """The lowering platform of JAX's default backend ("cpu", "cuda", "rocm", "tpu")."""
  import jax
  backend = jax.default_backend()
  return {"gpu": "cuda"}.get(backend, backend)


def count(closed_jaxpr, *, platform: str = "cuda", labels: Mapping[str, str] | None = None) -> Count:
  """The count of a closed jaxpr (`jax.make_jaxpr(f)(...)`, or `jax.jit(f).trace(...).jaxpr`), every
  output used; `labels` maps outermost Flax module class names (and `OPTIMISER_SCOPE`) to component
  names."""
  jaxpr = getattr(closed_jaxpr, "jaxpr", closed_jaxpr)
  counter = _Counter(platform, labels or {OPTIMISER_SCOPE: "optimiser"})
  counter.walk(jaxpr, [True] * len(jaxpr.outvars), "", 1.0)
  return Count(components=counter.components, notes=sorted(counter.notes), platform=counter.platform)


def count_fn(fn, *args, platform: str = "cuda", labels: Mapping[str, str] | None = None,
             **kwargs) -> Count:
  import jax
  return count(jax.make_jaxpr(fn)(*args, **kwargs), platform=platform, labels=labels)


@contextlib.contextmanager
def named_optimizer():
  """Inside: `TrainState.apply_gradients` traces under the name scope `OPTIMISER_SCOPE`, so the count
  can tell the optimiser's update from the rest (name scopes only label operations; the computation
  is the same)."""
  import jax
  from mrsr_jax.train.state import TrainState
  original = TrainState.apply_gradients

  def apply_gradients(self, *args, **kwargs):
    with jax.named_scope(OPTIMISER_SCOPE):
      return original(self, *args, **kwargs)

  TrainState.apply_gradients = apply_gradients
  try:
    yield
  finally:
    TrainState.apply_gradients = original


def xla_cost(stage_or_lowered) -> dict:
  """XLA's own cost analysis (flops, bytes accessed) of a `jax.stages.Lowered` or `Compiled`: a dict in
  jax 0.10, a list of one dict per module in some older versions (summed)."""
  cost = stage_or_lowered.cost_analysis()
  if isinstance(cost, dict):
    cost = [cost]
  out: dict[str, float] = {}
  for c in cost or []:
    for k in ("flops", "bytes accessed", "transcendentals"):
      out[k] = out.get(k, 0.0) + float(c.get(k, 0.0))
  return out


def fmt_rate(flops: float | None, seconds: float | None, peak_rate: float | None = None) -> str:
  """TFLOP/s (and % of `peak_rate`) for printing; "n/a" where a figure is missing."""
  if not flops or not seconds:
    return "n/a"
  rate = flops / seconds
  return f"{rate / 1e12:,.2f}" + (f" ({100 * rate / peak_rate:.0f}%)" if peak_rate else "")
