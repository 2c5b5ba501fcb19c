"""Tests of mrsr_jax.losses against hand / numpy computations, and of the gradient paths of L_SR."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mrsr_jax import losses


def _log_sigmoid_np(x):
  """log(sigmoid(x)) in float64, stable for any x."""
  x = np.asarray(x, np.float64)
  return np.where(x >= 0, -np.log1p(np.exp(-np.abs(x))), x - np.log1p(np.exp(-np.abs(x))))


def test_l1():
  x = np.array([[1.0, -2.0], [3.0, 0.5]], np.float32)
  y = np.array([[0.0, 0.0], [1.0, 1.0]], np.float32)
  assert float(losses.l1(x, y)) == pytest.approx((1 + 2 + 2 + 0.5) / 4)
  assert losses.l1(x.astype(jnp.bfloat16), y).dtype == jnp.float32
  with pytest.raises(ValueError, match="shapes differ"):
    losses.l1(x, y[:1])


def test_adversarial_losses_are_minus_log_sigmoid():
  logits = np.array([-3.0, -0.5, 0.0, 0.2, 4.0], np.float32)
  # -log D(G) with D = sigmoid(logit).
  ref_g = np.mean(-np.log(1.0 / (1.0 + np.exp(-logits.astype(np.float64)))))
  assert float(losses.generator_adv_loss(logits)) == pytest.approx(ref_g, rel=1e-6)
  real = np.array([2.0, -1.0, 0.3], np.float32)
  fake = np.array([-2.0, 0.7], np.float32)
  sig = lambda v: 1.0 / (1.0 + np.exp(-v.astype(np.float64)))
  ref_d = np.mean(-np.log(sig(real))) + np.mean(-np.log(1.0 - sig(fake)))
  assert float(losses.discriminator_loss(real, fake)) == pytest.approx(ref_d, rel=1e-6)


def test_adversarial_losses_large_logits():
  big = np.array([-1e4, -88.0, 88.0, 1e4, 3e38], np.float32)
  g = losses.generator_adv_loss(big)
  assert np.isfinite(float(g))
  assert float(g) == pytest.approx(np.mean(-_log_sigmoid_np(big.astype(np.float64))), rel=1e-6)
  d = losses.discriminator_loss(big, -big)
  ref = np.mean(-_log_sigmoid_np(big)) + np.mean(-_log_sigmoid_np(big))
  assert float(d) == pytest.approx(ref, rel=1e-6)
  # Gradients stay finite and saturate at the right values (-1 or 0 per element, over the mean).
  grad = np.asarray(jax.grad(losses.generator_adv_loss)(jnp.asarray(big)))
  assert np.all(np.isfinite(grad))
  np.testing.assert_allclose(grad, [-1 / 5, -1 / 5, 0, 0, 0], atol=1e-7)


def test_cosine_loss_matches_numpy():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(3, 4, 4, 8)).astype(np.float32)  # a z_s-like batch
  b = rng.normal(size=(3, 4, 4, 8)).astype(np.float32)
  af, bf = a.reshape(3, -1).astype(np.float64), b.reshape(3, -1).astype(np.float64)
  cos = np.sum(af * bf, 1) / (np.linalg.norm(af, axis=1) * np.linalg.norm(bf, axis=1))
  assert float(losses.cosine_loss(a, b)) == pytest.approx(np.mean(1 - cos), rel=1e-5)
  assert float(losses.cosine_loss(a, a)) == pytest.approx(0.0, abs=1e-6)
  assert float(losses.cosine_loss(a, -a)) == pytest.approx(2.0, abs=1e-6)
  assert float(losses.cosine_loss(a, 3.0 * a)) == pytest.approx(0.0, abs=1e-6)  # scale-free
  # The batch mean is over items, not one cosine of the flattened batch.
  a2 = np.stack([a[0], a[1]])
  b2 = np.stack([a[0], -a[1]])
  assert float(losses.cosine_loss(a2, b2)) == pytest.approx(1.0, abs=1e-6)


def test_cosine_loss_gradients_finite_at_equal_and_zero():
  rng = np.random.default_rng(1)
  a = jnp.asarray(rng.normal(size=(2, 16)).astype(np.float32))
  g_equal = jax.grad(losses.cosine_loss)(a, a)
  assert np.all(np.isfinite(g_equal))
  np.testing.assert_allclose(g_equal, 0.0, atol=1e-6)  # the minimum
  zero = jnp.zeros_like(a)
  g_zero_a = jax.grad(losses.cosine_loss, argnums=0)(zero, a)
  g_zero_b = jax.grad(losses.cosine_loss, argnums=1)(zero, a)
  assert np.all(np.isfinite(g_zero_a)) and np.all(np.isfinite(g_zero_b))
  assert np.all(np.isfinite(jax.grad(losses.cosine_loss)(zero, zero)))
  assert float(losses.cosine_loss(zero, a)) == pytest.approx(1.0)
  # Without the guard (plain norms) the gradient at 0 is NaN: the eps is what makes it finite.
  def unguarded(x, y):
    return jnp.mean(1 - jnp.sum(x * y, -1) / (jnp.linalg.norm(x, axis=-1) * jnp.linalg.norm(y, axis=-1)))
  assert not np.all(np.isfinite(jax.grad(unguarded)(zero, a)))


def test_disentangle_loss_eq6():
  rng = np.random.default_rng(2)
  x = rng.uniform(size=(2, 8, 8, 1)).astype(np.float32)
  recon = rng.uniform(size=(2, 8, 8, 1)).astype(np.float32)
  rec_logits = rng.normal(size=(2, 1)).astype(np.float32)
  swap_logits = rng.normal(size=(2, 1)).astype(np.float32)
  total, parts = losses.disentangle_loss(x, recon, rec_logits, swap_logits)
  rec = np.mean(np.abs(x - recon))
  adv = np.mean(-_log_sigmoid_np(rec_logits))
  swap = np.mean(-_log_sigmoid_np(swap_logits))
  assert float(parts["rec"]) == pytest.approx(rec, rel=1e-6)
  assert float(parts["adv"]) == pytest.approx(adv, rel=1e-6)
  assert float(parts["swap"]) == pytest.approx(swap, rel=1e-6)
  assert float(total) == pytest.approx(rec + 0.7 * adv + 0.7 * swap, rel=1e-6)
  assert float(parts["total"]) == float(total)
  total2, _ = losses.disentangle_loss(x, recon, rec_logits, swap_logits, w_adv=0.0, w_swap=2.0)
  assert float(total2) == pytest.approx(rec + 2.0 * swap, rel=1e-6)


def _feats(rng, b=2):
  return {
      "vit": rng.normal(size=(b, 12)).astype(np.float32),
      "z_s": rng.normal(size=(b, 4, 4, 8)).astype(np.float32),
      "z_t": rng.normal(size=(b, 16)).astype(np.float32),
  }


def _np_cos_loss(a, b):
  a = a.reshape(a.shape[0], -1).astype(np.float64)
  b = b.reshape(b.shape[0], -1).astype(np.float64)
  return np.mean(1 - np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))


def test_sr_generator_loss_eq9_by_hand():
  rng = np.random.default_rng(3)
  sr = rng.uniform(size=(2, 8, 8, 1)).astype(np.float32)
  hr = rng.uniform(size=(2, 8, 8, 1)).astype(np.float32)
  logits = rng.normal(size=(2, 1)).astype(np.float32)
  fs, ft = _feats(rng), _feats(rng)
  weights = {"adv_weight": 1e-3, "lambda_vit": 1.0, "lambda_str": 0.5, "lambda_tex": 0.9, "pixel_weight": 2.0}
  total, parts = losses.sr_generator_loss(sr=sr, hr=hr, fake_logits=logits, feats_sr=fs, feats_target=ft,
                                          weights=weights)
  ref = {
      "adv": np.mean(-_log_sigmoid_np(logits)),
      "vit": _np_cos_loss(fs["vit"], ft["vit"]),
      "str": _np_cos_loss(fs["z_s"], ft["z_s"]),
      "tex": _np_cos_loss(fs["z_t"], ft["z_t"]),
      "pixel": np.mean(np.abs(sr - hr)),
  }
  assert set(parts) == set(ref) | {"total"}
  for k, v in ref.items():
    assert float(parts[k]) == pytest.approx(v, rel=1e-5), k
  ref_total = (1e-3 * ref["adv"] + ref["vit"] + 0.5 * ref["str"] + 0.9 * ref["tex"] + 2.0 * ref["pixel"])
  assert float(total) == pytest.approx(ref_total, rel=1e-5)
  assert total.dtype == jnp.float32


def test_sr_generator_loss_defaults_and_configdict():
  rng = np.random.default_rng(4)
  sr, hr = rng.uniform(size=(2, 8, 8, 1)), rng.uniform(size=(2, 8, 8, 1))
  logits = rng.normal(size=(2, 1))
  fs, ft = _feats(rng), _feats(rng)
  kw = dict(sr=sr, hr=hr, fake_logits=logits, feats_sr=fs, feats_target=ft)
  total_default, parts = losses.sr_generator_loss(**kw)
  expected = (parts["adv"] + parts["vit"] + parts["str"] + 0.9 * parts["tex"] + parts["pixel"])
  assert float(total_default) == pytest.approx(float(expected), rel=1e-6)
  cfg = ml_collections.ConfigDict({"lambda_vit": 1.0, "lambda_str": 1.0, "lambda_tex": 0.9,
                                   "adv_weight": 1.0, "pixel_weight": 1.0})
  total_cfg, _ = losses.sr_generator_loss(weights=cfg, **kw)
  assert float(total_cfg) == pytest.approx(float(total_default), rel=1e-6)


@pytest.mark.parametrize("row", sorted(losses.TABLE_ABLATIONS))
def test_ablation_rows_skip_zero_weight_terms(row):
  lambdas = losses.TABLE_ABLATIONS[row]
  rng = np.random.default_rng(5)
  fs, ft = _feats(rng), _feats(rng)
  key_of = {"lambda_vit": "vit", "lambda_str": "z_s", "lambda_tex": "z_t"}
  # Features of a dropped term are not even supplied: computing its loss would raise.
  for name, w in lambdas.items():
    if w == 0:
      del fs[key_of[name]], ft[key_of[name]]
  weights = {**lambdas, "pixel_weight": 0.0, "adv_weight": 0.0}
  fn = jax.jit(lambda fs, ft: losses.sr_generator_loss(sr=None, hr=None, fake_logits=None, feats_sr=fs,
                                                      feats_target=ft, weights=weights))
  total, parts = fn(fs, ft)
  term_of = {"lambda_vit": "vit", "lambda_str": "str", "lambda_tex": "tex"}
  kept = {term_of[n] for n, w in lambdas.items() if w != 0}
  assert set(parts) == kept | {"total"}
  expected = sum(lambdas[n] * float(parts[term_of[n]]) for n in lambdas if lambdas[n] != 0)
  assert float(total) == pytest.approx(expected, rel=1e-5)


def test_traced_weights_compute_every_term():
  # Weights that are jit arguments cannot be tested for 0 at trace time: every term is computed.
  rng = np.random.default_rng(8)
  fs, ft = _feats(rng), _feats(rng)
  sr, hr = rng.uniform(size=(2, 8, 8, 1)), rng.uniform(size=(2, 8, 8, 1))
  logits = rng.normal(size=(2, 1))
  weights = {**losses.TABLE_ABLATIONS["vit"], "adv_weight": 0.0, "pixel_weight": 1.0}
  fn = jax.jit(lambda w: losses.sr_generator_loss(sr=sr, hr=hr, fake_logits=logits, feats_sr=fs,
                                                 feats_target=ft, weights=w))
  total, parts = fn(weights)
  assert set(parts) == {"adv", "vit", "str", "tex", "pixel", "total"}
  assert float(total) == pytest.approx(float(parts["vit"] + parts["pixel"]), rel=1e-6)


def test_table_ablations_rows():
  assert losses.TABLE_ABLATIONS["full"] == losses.PAPER_LAMBDAS == {
      "lambda_vit": 1.0, "lambda_str": 1.0, "lambda_tex": 0.9}
  assert set(losses.TABLE_ABLATIONS) == {"full", "tex+vit", "str+vit", "vit", "tex+str"}
  for row, lam in losses.TABLE_ABLATIONS.items():
    used = {t for t in ("vit", "str", "tex") if lam[f"lambda_{t}"] != 0}
    assert used == (set(row.split("+")) if row != "full" else {"vit", "str", "tex"})


def test_missing_inputs_with_nonzero_weight():
  rng = np.random.default_rng(6)
  fs, ft = _feats(rng), _feats(rng)
  del ft["z_t"]
  with pytest.raises(ValueError, match=r"feats_target.*'z_t'"):
    losses.sr_generator_loss(sr=None, hr=None, fake_logits=None, feats_sr=fs, feats_target=ft,
                             weights={"adv_weight": 0.0, "pixel_weight": 0.0})
  with pytest.raises(ValueError, match="fake_logits"):
    losses.sr_generator_loss(sr=None, hr=None, fake_logits=None, feats_sr=fs, feats_target=fs,
                             weights={"pixel_weight": 0.0})


class _TinyGenerator(nn.Module):
  """LR [B, 4, 4, 1] -> SR [B, 8, 8, 1]: a conv then nearest upsampling (stands in for the SRGAN G)."""

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3))(x)
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return nn.Conv(1, (3, 3))(nn.relu(x))


class _TinyExtractor(nn.Module):
  """A frozen 'ViT + AE': image -> (f_vit [B, 6], z_s [B, 4, 4, 2], z_t [B, 5])."""

  @nn.compact
  def __call__(self, y):
    h = nn.Conv(2, (3, 3), strides=(2, 2))(y)
    flat = h.reshape(h.shape[0], -1)
    return {"vit": nn.Dense(6)(flat), "z_s": h, "z_t": nn.Dense(5)(jnp.tanh(flat))}


def test_frozen_extractors_get_no_gradient():
  """The SR step differentiates w.r.t. the generator's params only; the extractor's are closed over."""
  rng = np.random.default_rng(7)
  hr = jnp.asarray(rng.uniform(size=(2, 8, 8, 1)).astype(np.float32))
  lr = hr[:, ::2, ::2, :]
  gen, ext = _TinyGenerator(), _TinyExtractor()
  gen_params = gen.init(jax.random.key(0), lr)
  ext_params = ext.init(jax.random.key(1), hr)
  weights = {"adv_weight": 0.0, "pixel_weight": 0.0, **losses.PAPER_LAMBDAS}  # feature terms only

  def loss_fn(g_params, e_params):
    sr = gen.apply(g_params, lr)
    target = jnp.repeat(jnp.repeat(lr, 2, axis=1), 2, axis=2)  # feature_target="lr": LR brought to M x M
    total, _ = losses.sr_generator_loss(sr=sr, hr=hr, fake_logits=None, feats_sr=ext.apply(e_params, sr),
                                        feats_target=ext.apply(e_params, target), weights=weights)
    return total

  g_grads = jax.grad(loss_fn, argnums=0)(gen_params, ext_params)
  # The gradient is the generator's tree only, and the feature losses reach every generator leaf
  # through the frozen extractor.
  assert jax.tree.structure(g_grads) == jax.tree.structure(gen_params)
  for leaf in jax.tree.leaves(g_grads):
    assert np.all(np.isfinite(leaf)) and np.abs(leaf).max() > 0
  # What differentiating w.r.t. the extractor would give is non-zero, so freezing is a real choice
  # made by argnums=0, not a property of the loss that would hide a bug.
  e_grads = jax.grad(loss_fn, argnums=1)(gen_params, ext_params)
  assert max(float(np.abs(x).max()) for x in jax.tree.leaves(e_grads)) > 0
  # And the argnums=0 computation never builds a cotangent for the extractor's params: its jaxpr has
  # as many outputs as the generator has leaves.
  jaxpr = jax.make_jaxpr(jax.grad(loss_fn, argnums=0))(gen_params, ext_params)
  assert len(jaxpr.jaxpr.outvars) == len(jax.tree.leaves(gen_params))
  # A small step along those gradients lowers the feature loss with the extractor unchanged.
  new_gen = jax.tree.map(lambda p, g: p - 0.05 * g, gen_params, g_grads)
  assert float(loss_fn(new_gen, ext_params)) < float(loss_fn(gen_params, ext_params))


def test_ae_frame_pads_sr_images_to_the_autoencoders_training_frame():
  """`sr.loss.ae_frame="ae"`: the AE encoder of L_str / L_tex sees SR output and target centre
  zero-padded to `ae.crop_size`, as the pipeline padded its training slices (IXI: 240² in 256²);
  "sr": the SR crop as it is. A frame already that large is never cropped."""
  from configs import tiny
  from mrsr_jax import features
  config = tiny.get_config()
  config.ae.crop_size = 48
  rng = np.random.default_rng(3)
  images = jnp.asarray(rng.uniform(size=(2, 32, 32, 1)).astype(np.float32))
  enc = features.ae_encoder(config)
  frozen = {"ae_enc": enc.init(jax.random.key(0), jnp.zeros((1, 48, 48, 1)))["params"]}
  which = {"z_s", "z_t"}

  def direct(x):
    z_s, z_t = enc.apply({"params": frozen["ae_enc"]}, x)
    return {"z_s": z_s, "z_t": z_t}

  config.sr.loss.ae_frame = "ae"
  padded = features.extract(config, frozen, images, which)
  ref = direct(jnp.pad(images, ((0, 0), (8, 8), (8, 8), (0, 0))))
  # 32² in a 48² frame: 8 pixels a side, half a cell of the encoder's fourth pooling (IXI's 240² in
  # 256² likewise), so z_t is pooled over another grid than without the frame.
  assert padded["z_s"].shape == (2, 12, 12, config.ae.model.structure_channels)
  for k in which:
    np.testing.assert_allclose(padded[k], ref[k], rtol=1e-5, atol=1e-6)
  big = jnp.asarray(rng.uniform(size=(2, 64, 64, 1)).astype(np.float32))
  np.testing.assert_array_equal(features.extract(config, frozen, big, which)["z_t"], direct(big)["z_t"])

  config.sr.loss.ae_frame = "sr"
  plain = features.extract(config, frozen, images, which)
  assert plain["z_s"].shape == (2, 8, 8, config.ae.model.structure_channels)
  np.testing.assert_allclose(plain["z_t"], direct(images)["z_t"], rtol=1e-5, atol=1e-6)
  assert not np.allclose(plain["z_t"], padded["z_t"], rtol=1e-3, atol=1e-5)   # the choice matters

  config.sr.loss.ae_frame = "crop"
  with pytest.raises(ValueError, match="sr.loss.ae_frame must be 'ae' or 'sr'"):
    features.extract(config, frozen, images, which)
