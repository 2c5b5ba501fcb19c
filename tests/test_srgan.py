"""The SR generator and discriminator (mrsr_jax/models/srgan.py): shapes, BatchNorm modes, gradients, bf16.

Small widths/depths keep it fast; the layer pattern is the same as the default configuration.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrsr_jax.models import SRDiscriminator, SRGenerator
from mrsr_jax.models.srgan import pixel_shuffle

SMALL_G = dict(num_blocks=2, features=16)


def _lr(n: int, m: int | None = None, batch: int = 2, seed: int = 0) -> jnp.ndarray:
  return jnp.asarray(np.random.RandomState(seed).rand(batch, n, m or n, 1), jnp.float32)


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("n", [17, 24])
def test_generator_shapes(scale, n):
  gen = SRGenerator(scale, **SMALL_G)
  x = _lr(n, n + 3)  # odd and non-square sizes too: fully convolutional
  variables = gen.init(jax.random.key(0), x, train=False)
  assert set(variables) == {"params", "batch_stats"}
  y = gen.apply(variables, x, train=False)
  assert y.shape == (2, scale * n, scale * (n + 3), 1) and y.dtype == jnp.float32
  # log2(s) upsampling stages.
  assert sum(k.startswith("up_") for k in variables["params"]) == int(np.log2(scale))


def test_default_generator_layout():
  gen = SRGenerator(4)
  shapes = jax.eval_shape(lambda x: gen.init(jax.random.key(0), x, train=False),
                          jax.ShapeDtypeStruct((1, 64, 64, 1), jnp.float32))
  p = shapes["params"]
  assert sum(k.startswith("res_") for k in p) == 16
  assert p["conv_in"]["kernel"].shape == (9, 9, 1, 64)
  assert p["res_0"]["conv1"]["kernel"].shape == (3, 3, 64, 64)
  assert p["up_0"]["kernel"].shape == (3, 3, 64, 256)
  assert p["conv_out"]["kernel"].shape == (9, 9, 64, 1)


@pytest.mark.parametrize("scale", [0, 1, 3, 8])
def test_bad_scale_raises(scale):
  with pytest.raises(ValueError, match=r"SRGenerator: scale must be one of \(2, 4\)"):
    SRGenerator(scale, **SMALL_G).init(jax.random.key(0), _lr(8), train=False)


def test_bad_input_raises():
  with pytest.raises(ValueError, match="single-channel"):
    SRGenerator(2, **SMALL_G).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
  with pytest.raises(ValueError, match="single-channel"):
    SRDiscriminator(8).init(jax.random.key(0), jnp.zeros((8, 8)), train=False)


def test_pixel_shuffle_matches_torch_definition():
  r, c = 2, 3
  x = np.random.RandomState(0).rand(2, 4, 5, c * r * r).astype(np.float32)
  y = np.asarray(pixel_shuffle(jnp.asarray(x), r))
  assert y.shape == (2, 8, 10, c)
  # torch: out[b, ch, h*r + i, w*r + j] = in[b, ch*r*r + i*r + j, h, w] (channels-last here).
  want = np.empty_like(y)
  for ch in range(c):
    for i in range(r):
      for j in range(r):
        want[:, i::r, j::r, ch] = x[..., ch * r * r + i * r + j]
  np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("module", ["generator", "discriminator"])
def test_batchnorm_updates_in_train_only(module):
  if module == "generator":
    model, x, conv, bn = SRGenerator(2, **SMALL_G), _lr(12), ("res_0", "conv1"), ("res_0", "bn1")
  else:
    model, x, conv, bn = SRDiscriminator(8), _lr(20), ("conv1",), ("bn1",)
  variables = model.init(jax.random.key(0), x, train=False)
  stats0 = variables["batch_stats"]

  @functools.partial(jax.jit, static_argnums=1)
  def run(variables, train):
    return model.apply(variables, x, train=train, mutable=["batch_stats", "intermediates"],
                       capture_intermediates=True)

  # Eval: running averages are used and nothing changes, even when asked to be mutable.
  y_eval, upd = run(variables, False)
  jax.tree.map(np.testing.assert_array_equal, upd["batch_stats"], stats0)
  # Train: batch statistics drive the output and every running average moves, with momentum 0.9:
  # new mean = 0.9 * 0 + 0.1 * (batch mean of the conv output feeding that BatchNorm).
  y_train, upd = run(variables, True)
  for a, b in zip(jax.tree.leaves(upd["batch_stats"]), jax.tree.leaves(stats0)):
    assert not np.allclose(a, b)
  pre_bn = upd["intermediates"]
  for k in conv:
    pre_bn = pre_bn[k]
  batch_mean = np.asarray(pre_bn["__call__"][0]).mean(axis=(0, 1, 2))
  new = upd["batch_stats"]
  for k in bn:
    new = new[k]
  np.testing.assert_allclose(new["mean"], 0.1 * batch_mean, rtol=1e-4, atol=1e-7)
  assert float(jnp.abs(y_train - y_eval).max()) > 1e-4


def test_discriminator_any_size():
  disc = SRDiscriminator(8)
  variables = disc.init(jax.random.key(0), _lr(32), train=False)
  for shape in ((33, 33), (64, 48), (17, 91)):
    logits = disc.apply(variables, _lr(*shape, batch=3), train=False)
    assert logits.shape == (3,) and logits.dtype == jnp.float32
  # SRGAN's widths: n64s1, then 64, 128, 128, 256, 256, 512, 512 (times features / 64), dense 1024, 1.
  full = jax.eval_shape(lambda x: SRDiscriminator().init(jax.random.key(0), x, train=False),
                        jax.ShapeDtypeStruct((1, 96, 96, 1), jnp.float32))["params"]
  assert [full[f"conv{i}"]["kernel"].shape[-1] for i in range(8)] == [64, 64, 128, 128, 256, 256, 512, 512]
  assert full["dense1"]["kernel"].shape == (512, 1024) and full["dense2"]["kernel"].shape == (1024, 1)


def test_gradients_finite():
  gen, disc = SRGenerator(4, **SMALL_G), SRDiscriminator(8)
  lr, hr = _lr(8), _lr(32, seed=1)
  vg = gen.init(jax.random.key(0), lr, train=False)
  vd = disc.init(jax.random.key(1), hr, train=False)

  @jax.jit
  def grads(pg, pd):
    def loss(pg, pd):
      sr, _ = gen.apply({"params": pg, "batch_stats": vg["batch_stats"]}, lr, train=True, mutable=["batch_stats"])
      fake, _ = disc.apply({"params": pd, "batch_stats": vd["batch_stats"]}, sr, train=True,
                           mutable=["batch_stats"])
      return jnp.abs(sr - hr).mean() + jax.nn.softplus(-fake).mean()
    return jax.grad(loss, argnums=(0, 1))(pg, pd)

  gg, gd = grads(vg["params"], vd["params"])
  for tree in (gg, gd):
    leaves = jax.tree.leaves(tree)
    assert all(np.isfinite(np.asarray(l)).all() for l in leaves)
    assert max(float(jnp.abs(l).max()) for l in leaves) > 0


def test_bf16_runs():
  x = _lr(12)
  gen16 = SRGenerator(2, dtype=jnp.bfloat16, **SMALL_G)
  vg = gen16.init(jax.random.key(0), x, train=False)
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(vg))
  y, upd = gen16.apply(vg, x, train=True, mutable=["batch_stats"])
  assert y.dtype == jnp.float32 and np.isfinite(np.asarray(y)).all()
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(upd))
  y32 = SRGenerator(2, **SMALL_G).apply(vg, x, train=False)
  y16 = gen16.apply(vg, x, train=False)
  assert float(jnp.abs(y16 - y32).max()) < 0.05 * float(jnp.abs(y32).max()) + 1e-2
  disc16 = SRDiscriminator(8, dtype=jnp.bfloat16)
  vd = disc16.init(jax.random.key(0), y, train=False)
  logits = disc16.apply(vd, y, train=False)
  assert logits.dtype == jnp.float32 and np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("norm", ["batch", "none"])
def test_residual_generator_starts_at_bicubic(scale, norm):
  """Untrained, residual=True gives exactly bicubic(LR), in train and eval mode (deviation row 27)."""
  from mrsr_jax.data import degrade
  gen = SRGenerator(scale, residual=True, norm=norm, **SMALL_G)
  x = _lr(16, 20, batch=3)
  variables = gen.init(jax.random.key(1), x, train=False)
  bicubic = np.asarray(degrade.upsample_bicubic(x, scale))
  eval_out = gen.apply(variables, x, train=False)
  train_out, _ = gen.apply(variables, x, train=True, mutable=["batch_stats"])
  np.testing.assert_array_equal(np.asarray(eval_out), bicubic)
  np.testing.assert_array_equal(np.asarray(train_out), bicubic)
  # ... and it is not frozen there: the output conv gets gradient at step 0.
  def loss(p):
    y, _ = gen.apply({**variables, "params": p}, x, train=True, mutable=["batch_stats"])
    return jnp.mean(jnp.abs(y - 0.5))
  g = jax.grad(loss)(variables["params"])
  assert float(jnp.abs(g["conv_out"]["kernel"]).max()) > 0


def test_norm_none_has_no_batchnorm():
  gen = SRGenerator(2, residual=True, norm="none", **SMALL_G)
  variables = gen.init(jax.random.key(0), _lr(8), train=False)
  assert set(variables) == {"params"}
  assert "bias" in variables["params"]["res_0"]["conv1"]
  with pytest.raises(ValueError, match="norm must be 'batch' or 'none'"):
    SRGenerator(2, norm="layer", **SMALL_G).init(jax.random.key(0), _lr(8), train=False)
