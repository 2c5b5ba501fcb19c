"""The ViT (mrsr_jax/models/vit.py): 2D-from-3D equivalence, outputs, pretext head, mixed precision.

Real MR input: the T1 coronal slice that dipy ships (256 x 256, values in [0, 1]).
"""

from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrsr_jax.models import UNETR, PretextViT, ViT, vit2d_params_from_3d, vit_feature

SMALL = dict(hidden_size=32, mlp_dim=64, num_layers=3, num_heads=2)


def _mr_slice(size: tuple[int, int]) -> np.ndarray:
  """`[1, *size, 1]`: a centre crop of dipy's T1 slice."""
  spec = importlib.util.find_spec("dipy")
  if spec is None:
    pytest.skip("dipy (which ships the T1 slice) is not installed")
  path = os.path.join(os.path.dirname(spec.origin), "data", "files", "t1_coronal_slice.npy")
  if not os.path.exists(path):
    pytest.skip(f"dipy T1 slice not found at {path}")
  s = np.load(path).astype(np.float32)
  h0, w0 = (s.shape[0] - size[0]) // 2, (s.shape[1] - size[1]) // 2
  return s[h0:h0 + size[0], w0:w0 + size[1]][None, :, :, None]


def _init(model, shape, seed=0):
  return model.init(jax.random.key(seed), jnp.zeros(shape))["params"]


def _perturb(params, seed=1):
  """Random LayerNorm scales/biases too, so a wrongly shared or dropped parameter shows."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [l + 0.05 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])


def test_2d_from_3d_equals_3d_on_slab_of_identical_slices():
  x2 = _mr_slice((64, 48))
  assert x2.std() > 0.1  # real anatomy, not a blank crop
  vit3 = ViT((64, 48, 16), **SMALL)
  vit2 = ViT((64, 48), **SMALL)
  params3 = _perturb(_init(vit3, (1, 64, 48, 16, 1)))
  params2 = vit2d_params_from_3d(params3, (64, 48))
  assert params2["patch_embedding"]["patch_embeddings"]["kernel"].shape == (16, 16, 1, 32)
  assert params2["patch_embedding"]["position_embeddings"].shape == (1, 12, 32)
  x3 = np.repeat(x2[:, :, :, None, :], 16, axis=3)  # 16 copies along depth, the last spatial axis
  with jax.default_matmul_precision("highest"):
    out3, hid3 = vit3.apply({"params": params3}, jnp.asarray(x3))
    out2, hid2 = vit2.apply({"params": params2}, jnp.asarray(x2))
  np.testing.assert_allclose(out2, out3, atol=1e-4, rtol=1e-4)
  for a, b in zip(hid2, hid3):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
  # ... and the equivalence is specific: the same 2D model on another slice gives another answer.
  with jax.default_matmul_precision("highest"):
    other, _ = vit2.apply({"params": params2}, jnp.asarray(x2[:, ::-1]))
  assert np.abs(np.asarray(other) - np.asarray(out2)).max() > 1e-2


def test_2d_from_3d_position_plane_and_interpolation():
  vit3 = ViT((32, 32, 48), **SMALL)  # grid (2, 2, 3)
  params3 = _init(vit3, (1, 32, 32, 48, 1))
  pos3 = np.asarray(params3["patch_embedding"]["position_embeddings"]).reshape(2, 2, 3, 32)
  # Same in-plane grid: exactly the middle depth plane (index 1 of 3).
  same = vit2d_params_from_3d(params3, (32, 32), grid3d=(2, 2, 3))
  np.testing.assert_array_equal(same["patch_embedding"]["position_embeddings"][0], pos3[:, :, 1].reshape(4, 32))
  # Everything but the patch embedding is shared untouched.
  assert same["blocks_2"] is params3["blocks_2"] and same["norm"] is params3["norm"]
  # Larger 2D grid: linear resize of that plane; its mean is preserved and the 2D model runs.
  big = vit2d_params_from_3d(params3, (64, 96), grid3d=(2, 2, 3))
  pos2 = np.asarray(big["patch_embedding"]["position_embeddings"]).reshape(4, 6, 32)
  np.testing.assert_allclose(pos2.mean(axis=(0, 1)), pos3[:, :, 1].mean(axis=(0, 1)), atol=1e-6)
  out, _ = ViT((64, 96), **SMALL).apply({"params": big}, jnp.zeros((1, 64, 96, 1)))
  assert out.shape == (1, 24, 32)
  # A cube is inferred without grid3d (the 96^3 UNETR case); an ambiguous N must be spelled out.
  cube = _init(ViT((32, 32, 32), **SMALL), (1, 32, 32, 32, 1))
  assert vit2d_params_from_3d(cube, (32, 32))["patch_embedding"]["position_embeddings"].shape == (1, 4, 32)
  with pytest.raises(ValueError, match="pass grid3d"):
    vit2d_params_from_3d(params3, (48, 48))  # N = 12: neither a cube nor 3x3 x depth
  with pytest.raises(ValueError, match="does not hold"):
    vit2d_params_from_3d(params3, (32, 32), grid3d=(2, 2, 2))
  with pytest.raises(ValueError, match="not a ViT param tree"):
    vit2d_params_from_3d({"foo": 1}, (32, 32))


def test_hidden_states_and_feature():
  vit = ViT((48, 32, 32), **SMALL)
  x = jnp.asarray(np.random.RandomState(0).rand(2, 48, 32, 32, 1), jnp.float32)
  params = _init(vit, x.shape)
  out, hidden = vit.apply({"params": params}, x)
  assert out.shape == (2, 12, 32) and out.dtype == jnp.float32
  assert len(hidden) == 3 and all(h.shape == (2, 12, 32) for h in hidden)
  # `out` is the LayerNorm'ed last block (zero mean, unit variance per token at init scale/bias 1/0).
  np.testing.assert_allclose(np.asarray(out).mean(-1), 0.0, atol=1e-5)
  assert not np.allclose(hidden[-1], out)
  f = vit_feature(out)
  assert f.shape == (2, 32)
  np.testing.assert_allclose(f, np.asarray(out).mean(axis=1), atol=1e-6)
  # The default (paper) configuration: 12 states of [B, 216, 768] at 96^3; shapes only.
  full = ViT((96, 96, 96))
  shp = jax.eval_shape(lambda: full.init_with_output(jax.random.key(0), jnp.zeros((1, 96, 96, 96, 1)))[0])
  out_s, hidden_s = shp
  assert out_s.shape == (1, 216, 768) and len(hidden_s) == 12


def test_bad_inputs_raise():
  vit = ViT((32, 32), **SMALL)
  with pytest.raises(ValueError, match=r"ViT: input must be channels-last \[B, 32, 32, 1\]"):
    vit.init(jax.random.key(0), jnp.zeros((1, 1, 32, 32)))
  with pytest.raises(ValueError, match="divisible by num_heads"):
    ViT((32, 32), hidden_size=30, num_heads=4).init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
  with pytest.raises(ValueError, match="vit_feature"):
    vit_feature(jnp.zeros((2, 3)))


@pytest.mark.parametrize("per_token", [True, False])
def test_pretext_head_is_zero_and_only_head_learns_first(per_token):
  cfg = dict(img_size=(32, 32), **SMALL)
  model = PretextViT(vit=cfg, num_classes=5, per_token=per_token)
  x = jnp.asarray(_mr_slice((32, 32)))
  params = model.init(jax.random.key(0), x)["params"]
  assert set(params) == {"vit", "head"}
  # params["vit"] is a plain ViT tree.
  plain = _init(ViT(**cfg), x.shape)
  assert jax.tree.structure(params["vit"]) == jax.tree.structure(plain)
  logits = model.apply({"params": params}, x)
  assert logits.shape == ((1, 4, 5) if per_token else (1, 5))
  np.testing.assert_array_equal(logits, 0.0)

  def loss(p):
    lg = model.apply({"params": p}, x)
    return -jnp.mean(jax.nn.log_softmax(lg)[..., 0])

  np.testing.assert_allclose(loss(params), np.log(5), rtol=1e-6)
  g = jax.grad(loss)(params)
  assert float(jnp.abs(g["head"]["kernel"]).max()) > 0
  assert all(float(jnp.abs(l).max()) == 0 for l in jax.tree.leaves(g["vit"]))


def test_bf16_runs():
  cfg = dict(img_size=(32, 32, 32), **SMALL)
  x = jnp.asarray(np.random.RandomState(0).rand(1, 32, 32, 32, 1), jnp.float32)
  params = _init(ViT(**cfg), x.shape)
  out32, _ = ViT(**cfg).apply({"params": params}, x)
  vit16 = ViT(**cfg, dtype=jnp.bfloat16)
  out16, hidden16 = vit16.apply({"params": params}, x)
  assert out16.dtype == jnp.float32 and hidden16[0].dtype == jnp.float32
  assert np.isfinite(np.asarray(out16)).all()
  # Measured (jax 0.10.2, CPU): RMS error 0.8% of the float32 output's RMS, max error 0.8% of its
  # largest value (bf16's 8-bit mantissa rounds each op by up to 0.4%); the bounds are twice / three
  # times that (atol=0.1 was 3% of the largest value). Some error there must be: a model that ignored
  # its dtype would give none.
  err = np.asarray(out16, np.float64) - np.asarray(out32, np.float64)
  rms = lambda v: float(np.sqrt(np.mean(np.square(v))))
  assert 1e-3 < rms(err) / rms(np.asarray(out32)) < 0.016, rms(err) / rms(np.asarray(out32))
  assert np.abs(err).max() < 0.025 * float(np.abs(out32).max())
  # Params stay float32 under bf16 compute.
  p16 = _init(vit16, x.shape)
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(p16))
  pre = PretextViT(vit=dict(cfg, dtype=jnp.bfloat16), num_classes=3, per_token=False)
  v = pre.init(jax.random.key(0), x)
  assert pre.apply(v, x).dtype == jnp.float32


def test_dropout_only_in_train():
  vit = ViT((32, 32), dropout_rate=0.5, **SMALL)
  x = jnp.asarray(_mr_slice((32, 32)))
  params = _init(vit, x.shape)
  a, _ = vit.apply({"params": params}, x)
  b, _ = vit.apply({"params": params}, x)
  np.testing.assert_array_equal(a, b)
  c, _ = vit.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(3)})
  assert np.abs(np.asarray(c) - np.asarray(a)).max() > 1e-3


def test_unetr_shapes_options_and_bf16():
  """The full UNETR without MONAI at hand (parity itself is in test_monai_parity.py)."""
  cfg = dict(out_channels=3, feature_size=4, hidden_size=32, mlp_dim=64, num_heads=2)
  x = jnp.asarray(_mr_slice((32, 48)))
  model, model16 = UNETR((32, 48), **cfg), UNETR((32, 48), dtype=jnp.bfloat16, **cfg)
  # Random params from the init shapes (compiling UNETR's init costs ~20 s on a busy 2-core CPU).
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  assert set(shapes) == {"params"}
  rng = np.random.RandomState(0)
  variables = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.randn(*s.shape), jnp.float32), shapes)
  logits, logits16 = jax.jit(lambda v: (model.apply(v, x), model16.apply(v, x)))(variables)
  assert logits.shape == (1, 32, 48, 3) and logits.dtype == jnp.float32
  # bf16 compute with the same float32 params: runs, float32 logits, close to the float32 ones.
  assert logits16.dtype == jnp.float32 and np.isfinite(np.asarray(logits16)).all()
  assert float(jnp.abs(logits16 - logits).max()) < 0.05 * float(jnp.abs(logits).max()) + 0.05
  # Plain (non-residual) conv blocks, MONAI's res_block=False: no 1x1 projections; 3D shapes.
  basic = UNETR((32, 32, 16), res_block=False, **cfg)
  shapes = jax.eval_shape(lambda: basic.init_with_output(jax.random.key(0), jnp.zeros((1, 32, 32, 16, 1))))
  out, p = shapes[0], shapes[1]["params"]
  assert "conv3" not in p["decoder5"]["conv_block"] and "conv3" in variables["params"]["decoder5"]["conv_block"]
  assert out.shape == (1, 32, 32, 16, 3)
  with pytest.raises(ValueError, match="multiple of 16"):
    UNETR((32, 40), **cfg).init(jax.random.key(0), jnp.zeros((1, 32, 40, 1)))
  with pytest.raises(ValueError, match="norm_name"):
    UNETR((32, 32), norm_name="batch", **cfg).init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
