"""The FLOP counts behind the benchmarks' GFLOP/s: bench/bench_sr.py divides bench/flops.py's count of
the traced call (XLA's pricing; tests/test_flops.py checks it against XLA:CPU) by each framework's time,
and bench/roofline.py's convolution rows count FLOPs the same way (2 per multiply-add, taps on the zero
padding not counted), so a step's achieved rate and the kernels' attainable rates can be set against
each other."""

import importlib.util
import sys

import jax
import jax.numpy as jnp
import pytest
from conftest import ROOT
from jax import lax


def _load(name):
  sys.path.insert(0, str(ROOT / "bench"))
  spec = importlib.util.spec_from_file_location(f"mrsr_bench_{name}", ROOT / "bench" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


bench_sr, roofline = _load("bench_sr"), _load("roofline")


@pytest.mark.parametrize("b,h,w,ci,co,k", [(2, 12, 10, 8, 16, 3), (1, 9, 9, 4, 1, 9), (1, 5, 7, 3, 2, 5)])
def test_conv_flops_are_what_xla_cost_analysis_counts(b, h, w, ci, co, k):
  conv = lambda x, kern: lax.conv_general_dilated(x, kern, (1, 1), "SAME",
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
  traced = jax.jit(conv).trace(jnp.zeros((b, h, w, ci)), jnp.zeros((k, k, ci, co)))
  gflop = bench_sr.gflop(traced)
  assert gflop * 1e9 == pytest.approx(roofline.conv_flops(b, h, w, ci, co, k), rel=1e-9)
  assert gflop * 1e9 < 2.0 * b * h * w * ci * co * k * k      # the padding's taps are not counted


def test_matmul_flops_are_two_per_multiply_add():
  n = 64
  traced = jax.jit(jnp.dot).trace(jnp.zeros((n, n)), jnp.zeros((n, n)))
  assert bench_sr.gflop(traced) * 1e9 == pytest.approx(2.0 * n ** 3, rel=1e-9)
