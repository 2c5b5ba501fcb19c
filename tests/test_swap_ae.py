"""The swapping autoencoder (mrsr_jax/models/swap_ae.py): shapes, modulation, gradients, bf16.

Real MR input: crops of the T1 coronal slice that dipy ships.
"""

from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrsr_jax.models import SwapDiscriminator, SwapEncoder, SwapGenerator
from mrsr_jax.models.swap_ae import ModulatedConv


def _mr_batch(size: tuple[int, int], batch: int = 2) -> jnp.ndarray:
  spec = importlib.util.find_spec("dipy")
  if spec is None:
    pytest.skip("dipy (which ships the T1 slice) is not installed")
  path = os.path.join(os.path.dirname(spec.origin), "data", "files", "t1_coronal_slice.npy")
  if not os.path.exists(path):
    pytest.skip(f"dipy T1 slice not found at {path}")
  s = np.load(path).astype(np.float32)
  h, w = size
  crops = [s[40 + 16 * i:40 + 16 * i + h, 30:30 + w] if h <= 200 else s[:h, :w] for i in range(batch)]
  return jnp.asarray(np.stack(crops)[..., None])


def _init_all(x, **kw):
  enc, gen, disc = SwapEncoder(**kw), SwapGenerator(**kw), SwapDiscriminator(**kw)
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  pe = enc.init(k1, x)["params"]
  z_s, z_t = enc.apply({"params": pe}, x)
  pg = gen.init(k2, z_s, z_t)["params"]
  pd = disc.init(k3, x)["params"]
  return (enc, gen, disc), (pe, pg, pd)


def test_paper_sizes_256():
  # Shapes only (jax.eval_shape: no compute), at the paper's 256 x 256.
  x = jax.ShapeDtypeStruct((2, 256, 256, 1), jnp.float32)
  enc, gen, disc = SwapEncoder(), SwapGenerator(), SwapDiscriminator()
  key = jax.random.key(0)
  pe = jax.eval_shape(enc.init, key, x)["params"]
  z_s, z_t = jax.eval_shape(lambda p, x: enc.apply({"params": p}, x), pe, x)
  assert z_s.shape == (2, 64, 64, 8) and z_t.shape == (2, 256)
  pg = jax.eval_shape(gen.init, key, z_s, z_t)["params"]
  y = jax.eval_shape(lambda p, a, b: gen.apply({"params": p}, a, b), pg, z_s, z_t)
  assert y.shape == (2, 256, 256, 1) and y.dtype == jnp.float32
  pd = jax.eval_shape(disc.init, key, x)["params"]
  assert jax.eval_shape(lambda p, y: disc.apply({"params": p}, y), pd, y).shape == (2,)
  # The encoder's four blocks have 64, 64, 32, 32 filters, the generator's 32, 32, 64, 64.
  assert [pe[f"conv{i}"]["kernel"].shape[-1] for i in range(1, 5)] == [64, 64, 32, 32]
  assert [pg[f"block{i}"]["kernel"].shape[-1] for i in range(1, 5)] == [32, 32, 64, 64]
  # A real 256 x 256 slice through the encoder (the cheap part) for finite codes.
  z_s, z_t = enc.apply({"params": enc.init(key, _mr_batch((256, 256), 1))["params"]}, _mr_batch((256, 256), 1))
  assert np.isfinite(np.asarray(z_s)).all() and np.isfinite(np.asarray(z_t)).all()


def test_other_sizes_and_bad_inputs():
  x = _mr_batch((48, 80), batch=3)
  (enc, gen, disc), (pe, pg, pd) = _init_all(x, dtype=jnp.float32)
  z_s, z_t = enc.apply({"params": pe}, x)
  assert z_s.shape == (3, 12, 20, 8)
  assert gen.apply({"params": pg}, z_s, z_t).shape == (3, 48, 80, 1)
  assert disc.apply({"params": pd}, jnp.ones((3, 37, 53, 1))).shape == (3,)  # any size for D
  with pytest.raises(ValueError, match="multiples of 16"):
    enc.apply({"params": pe}, jnp.ones((1, 40, 48, 1)))
  with pytest.raises(ValueError, match=r"\[B, H, W, 1\]"):
    enc.apply({"params": pe}, jnp.ones((1, 48, 48)))
  with pytest.raises(ValueError, match="z_t"):
    gen.apply({"params": pg}, z_s, z_t[:, :10])


def test_structure_and_texture_both_drive_the_generator():
  x = _mr_batch((64, 64))
  (enc, gen, _), (pe, pg, _) = _init_all(x)
  z_s, z_t = enc.apply({"params": pe}, x)
  assert float(jnp.abs(z_t[0] - z_t[1]).max()) > 0  # two different crops give two textures
  own = gen.apply({"params": pg}, z_s, z_t)
  swapped = gen.apply({"params": pg}, z_s, z_t[::-1])  # G(z_s^1, z_t^2): the L_swap input
  assert swapped.shape == own.shape
  assert float(jnp.abs(swapped - own).max()) > 1e-4
  other_structure = gen.apply({"params": pg}, z_s[::-1], z_t)
  assert float(jnp.abs(other_structure - own).max()) > 1e-4


def test_modulated_conv_is_stylegan2_per_sample_kernel():
  """The shared-kernel form equals convolving each sample with its own modulated, demodulated kernel."""
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(3, 9, 7, 5), jnp.float32)
  z = jnp.asarray(rng.randn(3, 16), jnp.float32)
  mod = ModulatedConv(6)
  p = mod.init(jax.random.key(0), x, z)["params"]
  p = jax.tree.map(lambda a: a + 0.1 * jnp.asarray(rng.randn(*a.shape), jnp.float32), p)
  with jax.default_matmul_precision("highest"):
    got = mod.apply({"params": p}, x, z)
    s = z @ p["style"]["kernel"] + p["style"]["bias"]  # [B, in]

    def one(xi, si):
      w = p["kernel"] * si[None, None, :, None]
      w = w / jnp.sqrt(jnp.sum(w ** 2, axis=(0, 1, 2), keepdims=True) + 1e-8)
      return jax.lax.conv_general_dilated(xi[None], w, (1, 1), "SAME",
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))[0] + p["bias"]

    want = jax.vmap(one)(x, s)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  # Demodulation: scaling a sample's style by a constant leaves its output unchanged.
  p2 = jax.tree.map(lambda a: a, p)
  p2["style"] = {k: 3.0 * v for k, v in p["style"].items()}
  with jax.default_matmul_precision("highest"):
    np.testing.assert_allclose(mod.apply({"params": p2}, x, z), got, atol=1e-5, rtol=1e-5)


def test_gradients_finite_and_nonzero():
  x = _mr_batch((32, 32))
  (enc, gen, disc), params = _init_all(x)

  def loss(params):
    pe, pg, pd = params
    z_s, z_t = enc.apply({"params": pe}, x)
    rec = gen.apply({"params": pg}, z_s, z_t)
    swap = gen.apply({"params": pg}, z_s, z_t[::-1])
    adv = jax.nn.softplus(-disc.apply({"params": pd}, rec)).mean()
    l_swap = jax.nn.softplus(-disc.apply({"params": pd}, swap)).mean()
    return jnp.abs(rec - x).mean() + 0.7 * adv + 0.7 * l_swap  # Eq. 6's shape

  g = jax.jit(jax.grad(loss))(params)
  leaves = jax.tree.leaves(g)
  assert all(np.isfinite(np.asarray(l)).all() for l in leaves)
  for name, tree in zip(("encoder", "generator", "discriminator"), g):
    assert float(max(jnp.abs(l).max() for l in jax.tree.leaves(tree))) > 0, name


def test_bf16_runs_params_only():
  x = _mr_batch((32, 48))
  (enc, gen, disc), (pe, pg, pd) = _init_all(x, dtype=jnp.bfloat16)
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves((pe, pg, pd)))
  z_s, z_t = enc.apply({"params": pe}, x)
  y = gen.apply({"params": pg}, z_s, z_t)
  d = disc.apply({"params": pd}, y)
  for a in (z_s, z_t, y, d):
    assert a.dtype == jnp.float32 and np.isfinite(np.asarray(a)).all()
  # Same params in float32 agree loosely (bf16 has ~3 significant digits).
  y32 = SwapGenerator().apply({"params": pg}, *SwapEncoder().apply({"params": pe}, x))
  assert float(jnp.abs(y - y32).max()) < 0.05 * float(jnp.abs(y32).max()) + 1e-2
  # Only "params": no batch statistics anywhere in the autoencoder.
  assert set(SwapEncoder().init(jax.random.key(0), x)) == {"params"}
