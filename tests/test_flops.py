"""bench/flops.py: the FLOP count every bench tool divides by, checked against XLA:CPU's own cost analysis
of the same graph (per operation exactly, a whole train step within 1%), with convolutions counted
whatever backend the graph is lowered for, dead code and the other platform's branches left out, an
accumulation loop counted once per microbatch, and the roofline bound from the device's datasheet."""

import importlib.util
import sys

import jax
import jax.numpy as jnp
import pytest
from conftest import ROOT
from jax import lax

sys.path.insert(0, str(ROOT / "bench"))
import flops  # noqa: E402  (bench/flops.py: the module bench/memory.py imports)

_spec = importlib.util.spec_from_file_location("mrsr_bench_memory_for_flops", ROOT / "bench" / "memory.py")
memory = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = memory
_spec.loader.exec_module(memory)


def _xla_flops(fn, *args, platform="cpu"):
  return flops.xla_cost(jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)))["flops"]


def _ours(fn, *args, platform="cpu"):
  return flops.count(jax.jit(fn).trace(*args).jaxpr, platform=platform).flops


CONVS = [  # (lhs shape NHWC, kernel HWIO, strides, padding, lhs_dilation, rhs_dilation, feature groups)
    ((2, 12, 10, 8), (3, 3, 8, 16), (1, 1), "SAME", None, None, 1),
    ((1, 9, 9, 4), (9, 9, 4, 1), (1, 1), "SAME", None, None, 1),
    ((2, 11, 13, 4), (3, 3, 4, 6), (2, 2), "SAME", None, None, 1),          # strided (D's convs)
    ((2, 7, 7, 4), (3, 3, 4, 6), (1, 1), ((2, 1), (0, 3)), (2, 2), None, 1),  # lhs-dilated (a dx of a stride)
    ((2, 12, 12, 4), (3, 3, 4, 6), (1, 1), "VALID", None, (2, 3), 1),     # rhs-dilated (a dw of a stride)
    ((2, 10, 10, 8), (3, 3, 2, 8), (1, 1), "SAME", None, None, 4),        # grouped
]


@pytest.mark.parametrize("lhs,rhs,strides,padding,lhs_dil,rhs_dil,groups", CONVS)
def test_conv_forward_and_gradients_are_priced_as_xla_prices_them(lhs, rhs, strides, padding, lhs_dil,
                                                                    rhs_dil, groups):
  def conv(x, k):
    return lax.conv_general_dilated(x, k, strides, padding, lhs_dilation=lhs_dil, rhs_dilation=rhs_dil,
                                    feature_group_count=groups,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
  x, k = jnp.zeros(lhs), jnp.zeros(rhs)
  assert _ours(conv, x, k) == _xla_flops(conv, x, k)
  # The gradients: transposed convolutions, batch-grouped kernel gradients of grouped convolutions.
  grads = lambda x_, k_, g: jax.vjp(conv, x_, k_)[1](g)
  g = jnp.zeros(jax.eval_shape(conv, x, k).shape)
  assert _ours(grads, x, k, g) == _xla_flops(grads, x, k, g)


def test_dot_general_and_elementwise_ops():
  def f(a, b):
    h = jnp.einsum("bij,bjk->bik", a, b)
    return jnp.tanh(h).sum() + (h ** 3).mean() + jnp.maximum(h, 0).max()
  a, b = jnp.zeros((3, 16, 32)), jnp.zeros((3, 32, 8))
  assert _ours(f, a, b) == pytest.approx(_xla_flops(f, a, b), rel=1e-9)
  assert flops.count_fn(f, a, b).total.matmul_flops == 2 * 3 * 16 * 8 * 32


def test_dead_code_is_not_counted():
  """A kernel gradient's jaxpr still holds the forward convolution and the input gradient, which no
  output reads; XLA drops them, and so does the count."""
  conv = lambda x, k: lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
  dw = jax.grad(lambda x, k: conv(x, k).sum(), argnums=1)
  x, k = jnp.zeros((2, 16, 16, 8)), jnp.zeros((3, 3, 8, 8))
  one_conv = _ours(conv, x, k)
  assert _ours(dw, x, k) == pytest.approx(_xla_flops(dw, x, k), rel=1e-9)
  assert _ours(dw, x, k) < 1.5 * one_conv


def test_platform_branches_follow_the_lowering_platform():
  def f(a, b):
    return lax.platform_dependent(a, b, cpu=lambda a_, b_: a_ * b_, default=lambda a_, b_: a_ @ b_)
  a = jnp.zeros((64, 64))
  for platform in ("cpu", "cuda"):
    assert _ours(f, a, a, platform=platform) == _xla_flops(f, a, a, platform=platform)
  assert _ours(f, a, a, platform="cuda") == 2 * 64 ** 3
  assert _ours(f, a, a, platform="cpu") == 64 ** 2


def test_a_scan_counts_its_body_once_per_iteration():
  def f(x, w):
    def body(c, _):
      return jnp.tanh(c @ w), None
    return lax.scan(body, x, None, length=5)[0]
  x, w = jnp.zeros((4, 32)), jnp.zeros((32, 32))
  assert flops.count_fn(f, x, w).total.matmul_flops == 5 * 2 * 4 * 32 * 32


@pytest.fixture(scope="module")
def tiny_sr():
  config = memory.load_named_config(str(ROOT / "configs" / "tiny.py"))
  info = memory.synthetic_info(config)
  return config, info, memory.make_stage(config, "sr", info)


def _traced_step(stage, info, batch, microbatches=1):
  from mrsr_jax import sharding
  from mrsr_jax.train import step as step_lib
  mesh = sharding.make_mesh(jax.devices()[:1])
  state = jax.eval_shape(stage.init, jax.random.key(0))
  with memory._abstract_sources(info):
    frozen = stage.frozen(mesh)
  c = stage.crop_size
  shapes = {"hr": jax.ShapeDtypeStruct((batch, c, c, 1), jnp.float32),
            "label": jax.ShapeDtypeStruct((batch,), jnp.int32)}
  rng = jax.eval_shape(lambda: step_lib.step_rng(0, 0))
  step = step_lib.compile_step(stage.update, mesh, microbatches)
  with flops.named_optimizer():
    return step.trace(state, shapes, rng, frozen)


def test_the_sr_train_step_agrees_with_xla_cpu_and_splits_into_components(tiny_sr):
  """The whole SR step (G, D, frozen ViT and AE features, optimiser) as a GPU runs it: XLA:CPU's cost
  analysis of the CUDA-lowered module and the count agree within 1%; the components add up."""
  _, info, stage = tiny_sr
  traced = _traced_step(stage, info, 4)
  count = flops.count(traced.jaxpr, platform="cuda", labels=flops.STAGE_LABELS["sr"])
  xla = flops.xla_cost(traced.lower(lowering_platforms=("cuda",)))
  assert count.flops == pytest.approx(xla["flops"], rel=0.01)
  assert count.total.transcendentals == pytest.approx(xla["transcendentals"], rel=0.01)
  assert set(count.components) >= {"generator", "discriminator", "ViT features", "AE features", "optimiser"}
  for name in ("generator", "discriminator", "ViT features", "AE features"):
    assert count.components[name].matmul_flops > 0, name
  assert count.components["optimiser"].matmul_flops == 0 < count.components["optimiser"].flops
  assert sum(c.flops for c in count.components.values()) == pytest.approx(count.flops, rel=1e-12)
  assert count.total.matmul_bytes <= count.total.bytes


def test_an_accumulating_step_counts_every_microbatch(tiny_sr):
  """XLA's cost analysis counts a loop body once (one microbatch's FLOPs); the count is the step's."""
  _, info, stage = tiny_sr
  whole = flops.count(_traced_step(stage, info, 8).jaxpr).flops
  split = _traced_step(stage, info, 8, microbatches=2)
  assert flops.count(split.jaxpr).flops == pytest.approx(whole, rel=0.02)
  assert flops.xla_cost(split.lower(lowering_platforms=("cuda",)))["flops"] < 0.6 * whole


def test_memory_tool_reports_the_count(tiny_sr):
  _, info, stage = tiny_sr
  _, fig = memory.compile_step_from_shapes(stage, 2, platform="cpu", info=info,
                                           peak=flops.PEAKS["H200"])
  assert fig.flops == pytest.approx(sum(c["flops"] for c in fig.components.values()), rel=1e-12)
  assert fig.flops == pytest.approx(fig.xla_flops, rel=0.06)       # XLA:CPU's optimised module
  assert all(c["bound_s"] >= 0 for c in fig.components.values())
  assert fig.components["generator"]["bound_s"] > 0


def test_roofline_bound_and_device_peaks():
  n = 4096
  a = jnp.zeros((n, n))
  h200 = flops.peak_for("NVIDIA H200")
  assert h200.hbm == 4.8e12 and h200.tf32 == pytest.approx(494.5e12) and h200.bf16 == pytest.approx(989.5e12)
  assert flops.peak_for("NVIDIA H100 80GB HBM3").hbm == 3.35e12
  assert flops.peak_for("NVIDIA H100 PCIe").hbm == 2.0e12
  assert flops.peak_for("cpu") is None and flops.peak_for("NVIDIA H100 NVL") is None
  f32 = flops.count_fn(jnp.dot, a, a)
  assert f32.bound_s(h200) == pytest.approx(2 * n ** 3 / h200.tf32)          # compute-bound
  bf = flops.count_fn(jnp.dot, a.astype(jnp.bfloat16), a.astype(jnp.bfloat16))
  assert bf.bound_s(h200) == pytest.approx(2 * n ** 3 / h200.bf16)
  v = jnp.zeros((n,))
  mv = flops.count_fn(jnp.dot, a, v)                                            # memory-bound
  assert mv.bound_s(h200) == pytest.approx((n * n + 2 * n) * 4 / h200.hbm)
  assert mv.total.intensity == pytest.approx(2 * n * n / ((n * n + 2 * n) * 4))
