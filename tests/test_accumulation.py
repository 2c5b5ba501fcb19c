"""Gradient accumulation, rematerialisation and bf16 compute of the train step (issue 13).

The accumulated step must be the one-batch step: k microbatches of B/k give the update one batch of B
gives wherever the model lets that be exact (no BatchNorm, no per-batch randomness). The SR tests use
the BN-free generator (`sr.model.norm="none"`) and a BN-free discriminator (SRGAN's has BatchNorm,
whose batch statistics are per microbatch by design: docs/distributed.md). Tiny shapes throughout;
the tests that compile the step more than the default suite's budget allows are marked slow
(`pytest -m slow tests/test_accumulation.py`).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import assert_trees_equal

from mrsr_jax import config_check, features, sharding
from mrsr_jax.data import records
from mrsr_jax.models import srgan, swap_ae, vit as vit_lib
from mrsr_jax.train import loop, step as step_lib
from mrsr_jax.train.stage_ae import AEStage
from mrsr_jax.train.stage_sr import SRStage
from mrsr_jax.train.stage_vit import ViTStage


def tiny():
  from configs import tiny as tiny_cfg
  return tiny_cfg.get_config()


# -- how many microbatches --------------------------------------------------------------------------
@pytest.mark.parametrize("batch, devices, cap, k", [
    (256, 1, 0, 1),       # 0: no accumulation
    (256, 1, 64, 4),      # the paper's SR batch on one GPU
    (256, 8, 64, 1),      # ... on eight: 32 per device, under the cap
    (256, 2, 64, 2),
    (256, 16, 64, 1),
    (96, 1, 40, 3),       # 96 = 3 x 32: the fewest parts of at most 40
    (64, 1, 24, 4),       # 64 is no multiple of 24: 4 parts of 16
    (7, 1, 2, 7),         # a prime share: parts of 1
])
def test_microbatch_count(batch, devices, cap, k):
  assert step_lib.microbatch_count(batch, devices, cap) == k


def test_microbatch_count_rejects_an_indivisible_batch():
  with pytest.raises(ValueError, match="sr.batch_size 10 is not divisible by the 4 devices"):
    step_lib.microbatch_count(10, 4, 2, field="sr.batch_size")


def test_more_devices_fewer_microbatches_in_the_paper_configs():
  from configs import sr_fastmri_x2, sr_fastmri_x4, sr_ixi_x2, sr_ixi_x4
  for mod in (sr_ixi_x2, sr_ixi_x4, sr_fastmri_x2, sr_fastmri_x4):
    config = mod.get_config()
    for name in ("vit", "ae", "sr"):
      cfg = config[name]
      ks = [step_lib.microbatch_count(cfg.batch_size, n, cfg.microbatch_per_device) for n in (1, 2, 8, 16)
            if cfg.batch_size % n == 0]
      assert ks == sorted(ks, reverse=True), (mod.__name__, name, ks)
      assert ks[-1] == 1, (mod.__name__, name, ks)
    # The SR stage of a paper config accumulates on one GPU (its batch of 256 does not fit 80 GB).
    assert step_lib.microbatch_count(config.sr.batch_size, 1, config.sr.microbatch_per_device) > 1


def test_split_keeps_each_microbatch_on_every_device():
  """Microbatch i takes rows i*m.. of each device's block: no row changes device."""
  batch = jnp.arange(16)
  parts = step_lib.split_microbatches(batch, 2, 2)   # 2 devices with 8 rows each, 2 parts of 4
  np.testing.assert_array_equal(parts, [[0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]])


def test_config_fields_validated_and_resumable():
  config = tiny()
  config.sr.microbatch_per_device = -1
  with pytest.raises(ValueError, match=r"config.sr.microbatch_per_device = -1: must be an integer >= 0"):
    config_check.validate(config, num_devices=1)
  # They change how a step is held in memory, not what it computes: a resume may change them.
  assert config_check.resumable("sr.microbatch_per_device") and config_check.resumable("vit.remat")


# -- k microbatches of B/k == one batch of B --------------------------------------------------------
class _DiscWithoutBN(nn.Module):
  """A discriminator without BatchNorm (the step's interface), so the SR step can be exact."""

  @nn.compact
  def __call__(self, x, *, train):
    x = nn.leaky_relu(nn.Conv(4, (3, 3), strides=(2, 2))(x), 0.2)
    x = nn.leaky_relu(nn.Conv(8, (3, 3), strides=(2, 2))(x), 0.2)
    return nn.Dense(1)(jnp.mean(x, axis=(1, 2)))[:, 0]


def _frozen(config, mesh):
  m = config.crop_size
  img = jnp.zeros((1, m, m, 1), jnp.float32)
  return sharding.replicate({
      "vit": features.vit_module(config, m).init(jax.random.key(1), img)["params"],
      "ae_enc": features.ae_encoder(config).init(jax.random.key(2), features.ae_frame(config, img)
                                                 if hasattr(features, "ae_frame") else img)["params"]},
      mesh)


def _one_step(stage, mesh, frozen, hr, labels=None):
  """(Adam's first moment = 0.1 * grads, new BN stats, metrics, microbatches) of one step."""
  init, _ = loop.init_state(stage, mesh)
  state = init(jax.random.key(0))
  k = stage.microbatches(mesh.devices.size)
  step = step_lib.compile_step(stage.update, mesh, k)
  labels = np.zeros(len(hr), np.int32) if labels is None else labels
  new, metrics = step(state, sharding.to_global({"hr": hr, "label": labels}, mesh), jax.random.key(3),
                      frozen)
  mu = {net: [s.mu for s in jax.tree.leaves(opt, is_leaf=_is_adam) if _is_adam(s)]
        for net, opt in new.opt_state.items()}
  assert int(new.step) == 1       # one update, one step, whatever the accumulation
  return jax.device_get((mu, new.batch_stats, metrics)), k


def _is_adam(s):
  return isinstance(s, optax.ScaleByAdamState)


def _assert_same(a, b):
  (mu_a, stats_a, m_a), (mu_b, stats_b, m_b) = a, b
  for key in m_a:
    np.testing.assert_allclose(m_a[key], m_b[key], rtol=1e-5, atol=1e-6, err_msg=key)
  scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(mu_a))
  assert scale > 0
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(mu_a)[0], jax.tree.leaves(mu_b)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path))
  for x, y in zip(jax.tree.leaves(stats_a), jax.tree.leaves(stats_b)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def _sr_config(**sr):
  config = tiny()
  # No BN in G; one LR model (no per-example random draw); the plain generator (a residual one starts
  # at bicubic with a zero output conv, where most gradients vanish) and the HR target, so every term
  # of Eq. 9 has a gradient.
  config.sr.model.update(norm="none", residual=False)
  for family in ("bicubic", "gaussian", "kspace"):
    config.sr.lr_mix[family] = 0.0
  config.sr.loss.feature_target = "hr"
  config.sr.update(sr)
  return config


def _sr_stage(config):
  stage = SRStage(config, "/nonexistent")
  stage.disc = _DiscWithoutBN()
  return stage


def test_sr_accumulated_step_equals_one_batch():
  """Simultaneous G/D update on two devices: 2 microbatches of 2 per device give one batch's
  gradients and losses, the AE-feature terms included (the ViT term is left out to keep the compile
  small: it is a per-example mean like them)."""
  mesh = sharding.make_mesh(jax.devices()[:2])
  config = _sr_config()
  config.sr.loss.lambda_vit = 0.0
  frozen = _frozen(config, mesh)
  hr = np.random.default_rng(0).random((8, config.crop_size, config.crop_size, 1), np.float32)
  one, k1 = _one_step(_sr_stage(config), mesh, frozen, hr)
  config.sr.microbatch_per_device = 2
  acc, k2 = _one_step(_sr_stage(config), mesh, frozen, hr)
  assert (k1, k2) == (1, 2)
  assert set(one[0]) == {"gen", "disc"} and one[2]["g_str"] > 0 and one[2]["g_tex"] > 0
  _assert_same(one, acc)


@pytest.mark.slow   # two or more full compiles of the step (~20-45 s CPU)
def test_sr_alternating_accumulated_equals_one_batch():
  """SRGAN's order (D steps first, G against the updated D): under accumulation D's update is
  complete before G's gradients are taken, as in one batch."""
  mesh = sharding.make_mesh(jax.devices()[:1])
  loss = dict(lambda_vit=0.0, lambda_str=0.0, lambda_tex=0.0)   # the ordering is what is tested
  config = _sr_config(gd_update="alternating")
  config.sr.loss.update(loss)
  config.sr.batch_size = 4
  hr = np.random.default_rng(1).random((4, config.crop_size, config.crop_size, 1), np.float32)
  one, _ = _one_step(_sr_stage(config), mesh, {}, hr)
  config = _sr_config(gd_update="alternating", microbatch_per_device=2)
  config.sr.loss.update(loss)
  config.sr.batch_size = 4
  acc, k = _one_step(_sr_stage(config), mesh, {}, hr)
  assert k == 2
  _assert_same(one, acc)


@pytest.mark.slow   # two or more full compiles of the step (~20-45 s CPU)
def test_sr_batchnorm_statistics_move_once_per_microbatch():
  """With SRGAN's BatchNorm each microbatch is normalised by its own statistics and the running
  averages move once per microbatch: the accumulated step's statistics are those of the stage's
  gradient function run on the microbatches in turn (documented in docs/distributed.md)."""
  mesh = sharding.make_mesh(jax.devices()[:1])
  config = tiny()
  config.sr.update(microbatch_per_device=2)
  config.sr.loss.update(lambda_vit=0.0, lambda_str=0.0, lambda_tex=0.0)
  stage = SRStage(config, "/nonexistent")
  hr = jnp.asarray(np.random.default_rng(2).random((4, config.crop_size, config.crop_size, 1),
                                                   np.float32))
  state = stage.init(jax.random.key(0))
  rng = jax.random.key(3)
  batch = {"hr": hr, "label": jnp.zeros((4,), jnp.int32)}
  new, _ = jax.jit(lambda s, b: stage.update(s, b, rng, {}, microbatches=2))(state, batch)
  grads = jax.jit(lambda st, part, key: stage.grads(st, part, key, {}))
  stats, after = state.batch_stats, []
  for i in range(2):
    part = {"hr": hr[2 * i:2 * i + 2], "label": batch["label"][:2]}
    _, upd, _ = grads(state.replace(batch_stats=stats), part, jax.random.fold_in(rng, i))
    stats = {**stats, **upd}
    after.append(stats)
  for x, y in zip(jax.tree.leaves(new.batch_stats), jax.tree.leaves(after[1])):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  # Twice, not once: the first microbatch alone leaves other statistics.
  assert not np.allclose(jax.tree.leaves(after[0])[0], jax.tree.leaves(new.batch_stats)[0])


@pytest.mark.slow   # two or more full compiles of the step (~20-45 s CPU)
def test_ae_accumulated_step_equals_one_batch():
  """The AE has no BatchNorm and swaps textures within pairs (2j, 2j+1), so microbatches of an even
  size swap the same textures as one batch: exact."""
  mesh = sharding.make_mesh(jax.devices()[:1])
  config = tiny()
  hr = np.random.default_rng(3).random((8, config.ae.crop_size, config.ae.crop_size, 1), np.float32)
  one, _ = _one_step(AEStage(config, "/nonexistent"), mesh, {}, hr)
  config.ae.update(microbatch_per_device=4, remat=True)
  acc, k = _one_step(AEStage(config, "/nonexistent"), mesh, {}, hr)
  assert k == 2
  _assert_same(one, acc)


def test_vit_accumulated_step_equals_one_batch(monkeypatch):
  """The classification pretext (no per-batch masking) with dropout 0: exact."""
  monkeypatch.setattr(records, "read_info", lambda *_: {"labels": ["a", "b", "c"]})
  mesh = sharding.make_mesh(jax.devices()[:1])
  config = tiny()
  config.vit.pretext = "classify"
  hr = np.random.default_rng(4).random((8, config.crop_size, config.crop_size, 1), np.float32)
  labels = np.array([0, 1, 2, 0, 1, 2, 0, 1], np.int32)
  one, _ = _one_step(ViTStage(config, "/nonexistent"), mesh, {}, hr, labels)
  config.vit.update(microbatch_per_device=2, remat=True)
  acc, k = _one_step(ViTStage(config, "/nonexistent"), mesh, {}, hr, labels)
  assert k == 4
  _assert_same(one, acc)


# -- remat: the same parameters, the same values and gradients ----------------------------------------
def _grads(module, variables, loss):
  return jax.jit(jax.grad(lambda p: loss(module, {**variables, "params": p})))(variables["params"])


@pytest.mark.parametrize("name", [
    "sr_generator", "vit", "swap_encoder",
    # The same `_blocks` helper as the encoder's: slow only for the suite's time budget.
    pytest.param("swap_generator", marks=pytest.mark.slow),
    pytest.param("swap_discriminator", marks=pytest.mark.slow)])
def test_remat_same_params_and_gradients(name):
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 1))
  if name == "sr_generator":       # with BatchNorm in train mode: statistics recomputed alike
    make = lambda r: srgan.SRGenerator(scale=2, num_blocks=2, features=8, remat=r)
    args, kw = (x[:, ::2, ::2],), dict(train=False)
    loss = lambda m, v: jnp.sum(m.apply(v, x[:, ::2, ::2], train=True, mutable=["batch_stats"])[0] ** 2)
  elif name == "vit":
    make = lambda r: vit_lib.ViT(img_size=(16, 16), patch_size=4, hidden_size=8, mlp_dim=16,
                                 num_layers=2, num_heads=2, remat=r)
    args, kw = (x,), {}
    loss = lambda m, v: jnp.sum(m.apply(v, x)[0] ** 2)
  elif name == "swap_generator":
    make = lambda r: swap_ae.SwapGenerator(features=(4, 4, 8, 8), texture_dim=4, remat=r)
    z_s, z_t = jax.random.normal(jax.random.key(1), (2, 4, 4, 2)), jax.random.normal(jax.random.key(2), (2, 4))
    args, kw = (z_s, z_t), {}
    loss = lambda m, v: jnp.sum(m.apply(v, z_s, z_t) ** 2)
  else:
    cls = swap_ae.SwapEncoder if name == "swap_encoder" else swap_ae.SwapDiscriminator
    make = lambda r: cls(remat=r)
    args, kw = (x,), {}
    loss = lambda m, v: sum(jnp.sum(o ** 2) for o in jax.tree.leaves(m.apply(v, x)))
  plain = make(False).init(jax.random.key(3), *args, **kw)
  remat = make(True).init(jax.random.key(3), *args, **kw)
  assert jax.tree.structure(plain) == jax.tree.structure(remat)   # checkpoints load either way
  g0, g1 = _grads(make(False), plain, loss), _grads(make(True), plain, loss)
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g0))
  assert scale > 0
  # Round-off is relative to the gradient's scale, not to each leaf's: the ViT's final LayerNorm scale
  # has gradients ~100 while its blocks' are ~5e-3, and float32 cancellation leaves ~1e-6 (1e-8 of the
  # scale) in those (measured with XLA's CPU code at level 0, conftest). A remat that recomputed
  # anything else would move a block's gradient by its own size, ~1e3 times this tolerance.
  atol = max(1e-6, 1e-7 * scale)
  assert_trees_equal(g0, g1, lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol))


def _checkpoints(jaxpr, n=0):
  """How many rematerialised (jax.checkpoint) calls the traced step holds."""
  for eqn in jaxpr.eqns:
    n += eqn.primitive.name in ("checkpoint", "remat", "remat2")
    for param in eqn.params.values():
      for sub in (param if isinstance(param, (tuple, list)) else (param,)):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          n = _checkpoints(inner, n)
  return n


def _abstract_update_args(config, name):
  """(stage, (state, batch, rng, frozen)) of stage `name` as shapes, to trace its update without
  compiling or running it."""
  stage = {"vit": ViTStage, "ae": AEStage, "sr": SRStage}[name](config, "/nonexistent")
  state = jax.eval_shape(stage.init, jax.random.key(0))
  c, b = stage.crop_size, stage.batch_size
  batch = {"hr": jax.ShapeDtypeStruct((b, c, c, 1), jnp.float32),
           "label": jax.ShapeDtypeStruct((b,), jnp.int32)}
  frozen = _frozen(config, sharding.make_mesh(jax.devices()[:1])) if name == "sr" else {}
  return stage, (state, batch, jax.random.key(0), frozen)


@pytest.mark.parametrize("name", ["vit", "ae", "sr"])
def test_remat_field_reaches_the_stage_networks(name):
  """`<stage>.remat` rematerialises the stage's blocks in its step (for SR also the frozen ViT and AE
  encoder blocks the loss differentiates through); off, nothing is. Traced, not compiled."""
  config = tiny()
  counts = []
  for remat in (False, True):
    config[name].remat = remat
    stage, args = _abstract_update_args(config, name)
    counts.append(_checkpoints(jax.make_jaxpr(stage.update)(*args).jaxpr))
  m = config.sr.model.num_blocks
  want = {"vit": config.vit.model.num_layers,                       # transformer blocks
          "ae": 4 + 4 + 5,                                          # encoder, generator, discriminator
          "sr": m + config.vit.model.num_layers + 4}[name]          # G's blocks, frozen ViT and encoder
  assert counts[0] == 0
  assert counts[1] >= want, counts


# -- bf16 compute --------------------------------------------------------------------------------------
def _matmuls(jaxpr, out):
  """(primitive, operand dtype) of every convolution and matrix product, sub-jaxprs included."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
      out.append((eqn.primitive.name, str(eqn.invars[0].aval.dtype), eqn.invars[0].aval.size))
    for param in eqn.params.values():
      for sub in (param if isinstance(param, (tuple, list)) else (param,)):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          _matmuls(inner, out)
  return out


@pytest.mark.parametrize("name", ["vit", "ae", "sr"])
def test_bfloat16_computes_in_bf16_and_keeps_float32_state(name, monkeypatch):
  """config.dtype="bfloat16": every convolution and matrix product of the networks takes bf16
  operands (the only float32 ones are the LR model's resize matrices, the AE's per-sample
  demodulation and the losses' small reductions); params, optimiser state, BN statistics and losses
  stay float32. Traced, not compiled."""
  config = tiny()
  config.dtype = "bfloat16"
  config.vit.pretext = "masked_patch"
  stage, args = _abstract_update_args(config, name)
  jaxpr = jax.make_jaxpr(stage.update)(*args)
  ops = _matmuls(jaxpr.jaxpr, [])
  bf16 = [o for o in ops if o[1] == "bfloat16"]
  f32 = [o for o in ops if o[1] == "float32"]
  convs = [o for o in ops if o[0] == "conv_general_dilated"]
  assert convs and all(o[1] == "bfloat16" for o in convs), convs
  # The float32 products are small next to the networks' (LR resize matrices, demodulation).
  assert sum(o[2] for o in f32) < 0.01 * sum(o[2] for o in bf16), f32
  new, metrics = jax.eval_shape(stage.update, *args)
  for tree in (new.params, new.opt_state, new.batch_stats, metrics):
    for leaf in jax.tree.leaves(tree):
      assert leaf.dtype in (jnp.float32, jnp.int32), leaf
