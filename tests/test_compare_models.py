"""The comparison generators of Tables 1-2 (SRCNN, VDSR, EDSR, RDN; mrsr_jax/models/): shapes, the
published parameter counts, the residual and pre-upsampling contracts, their selection by
`config.sr.arch` with the paper's pixel loss, and a checkpoint of one restored for evaluation."""

import importlib
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mrsr_jax import config_check, evaluate, losses, models, sharding
from mrsr_jax.data import degrade
from mrsr_jax.models import srgan
from mrsr_jax.train import checkpoints, loop, step as step_lib
from mrsr_jax.train import stage_sr

ARCHS = ("srcnn", "vdsr", "edsr", "rdn")
# Tiny networks of every arch: each field that shapes the network, at a few channels.
TINY = {"srcnn": dict(n1=4, n2=3), "vdsr": dict(num_layers=3, features=4),
        "edsr": dict(num_blocks=1, features=4), "rdn": dict(num_blocks=2, num_layers=2, growth=3, features=4)}


def _init(arch, scale, x, **fields):
  gen = models.GENERATORS[arch](scale=scale, **fields)
  # Under jit: one compile instead of one dispatch per op (the bicubic resize is many small ones).
  return gen, jax.jit(lambda x: gen.init(jax.random.key(0), x, train=False))(x)


def _count(arch, scale, channels=1, **fields):
  """Parameters of `arch` (shapes only: the 43M EDSR is never allocated)."""
  gen = models.GENERATORS[arch](scale=scale, channels=channels, **fields)
  shapes = jax.eval_shape(gen.init, jax.random.key(0), jnp.zeros((1, 8, 8, channels)), train=False)
  return sum(x.size for x in jax.tree.leaves(shapes["params"]))


# -- shapes, and the residual start ---------------------------------------------------------------
@pytest.mark.parametrize("scale", (2, 4))
@pytest.mark.parametrize("arch", ARCHS)
def test_output_shape_any_size_and_residual_starts_at_bicubic(arch, scale):
  """[B, N, M, 1] -> [B, sN, sM, 1] float32, N and M odd and different (bf16 compute too); with
  `residual=True` the untrained network's output is exactly bicubic(LR), in train mode as in eval."""
  x = jnp.asarray(np.random.default_rng(0).random((2, 7, 5, 1)), jnp.float32)
  gen, v = _init(arch, scale, x, **TINY[arch], residual=True)
  y = jax.jit(lambda v, x: gen.apply(v, x, train=True))(v, x)
  assert y.shape == (2, 7 * scale, 5 * scale, 1) and y.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(y), np.asarray(degrade.upsample_bicubic(x, scale)))
  bf16 = models.GENERATORS[arch](scale=scale, dtype=jnp.bfloat16, **TINY[arch])
  y = jax.eval_shape(lambda v, x: bf16.apply(v, x, train=False), v, x.astype(jnp.bfloat16))
  assert y.shape == (2, 7 * scale, 5 * scale, 1) and y.dtype == jnp.float32


@pytest.mark.parametrize("arch", ARCHS)
def test_bad_input_and_scale_are_one_error(arch):
  gen = models.GENERATORS[arch](scale=2, **TINY[arch])
  with pytest.raises(ValueError, match=r"expected a channels-last batch \[B, N, M, 1\], got \(1, 8, 8, 3\)"):
    gen.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
  gen = models.GENERATORS[arch](scale=3, **TINY[arch])
  with pytest.raises(ValueError, match=r"scale must be one of \(2, 4\), got 3"):
    gen.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)


# -- parameter counts ----------------------------------------------------------------------------------
# Each paper's network counted layer by layer, written from the papers and their authors' code, not
# from ours: conv(k, cin, cout) = k*k*cin*cout weights + cout biases.
def _conv(k, cin, cout, bias=True):
  return k * k * cin * cout + (cout if bias else 0)


def srcnn_count(c=1, n1=64, n2=32, f=(9, 1, 5), bias=True):
  # Dong et al. TPAMI 2016, Sec. 3.1-3.2 and 4.3 ("9-1-5 ... 8,032 parameters": weights only).
  return _conv(f[0], c, n1, bias) + _conv(f[1], n1, n2, bias) + _conv(f[2], n2, c, bias)


def vdsr_count(c=1, d=20, f=64):
  # Kim et al. CVPR 2016, Sec. 3.1; biases as in huangzehao/caffe-vdsr Train/VDSR_net.prototxt (the
  # Caffe port the VDSR project page lists): conv1 c->64, 18 x 64->64, conv20 64->c, all 3x3.
  return _conv(3, c, f) + (d - 2) * _conv(3, f, f) + _conv(3, f, c)


def upsampler_count(f, scale):
  return int(np.log2(scale)) * _conv(3, f, 4 * f)


def edsr_count(c, b, f, scale):
  # sanghyun-son/EDSR-PyTorch src/model/edsr.py + common.py: head, b ResBlocks (2 convs), body-end
  # conv, Upsampler (log2 s x conv f->4f), tail conv f->c; MeanShift is fixed and not counted.
  return _conv(3, c, f) + b * 2 * _conv(3, f, f) + _conv(3, f, f) + upsampler_count(f, scale) + _conv(3, f, c)


def rdn_count(c, d, cl, g, g0, scale):
  # yulunzhang/RDN RDN_TrainCode/code/model/RDN.lua (+ opts.lua: nDenseBlock 16, nDenseConv 8,
  # growthRate 64, nFeaSDB = nFeat = 64): SFE1, SFE2, each RDB's cl dense convs and 1x1 LFF, the 1x1
  # and 3x3 GFF, `upsample_wo_act` at nFeat, the final conv.
  rdb = sum(_conv(3, g0 + i * g, g) for i in range(cl)) + _conv(1, g0 + cl * g, g0)
  return (_conv(3, c, g0) + _conv(3, g0, g0) + d * rdb + _conv(1, d * g0, g0) + _conv(3, g0, g0)
          + upsampler_count(g0, scale) + _conv(3, g0, c))


def test_layer_by_layer_counts_give_the_published_numbers():
  """The counts above reproduce what the papers state: SRCNN 9-1-5 8,032 weights; VDSR ~665k; EDSR
  43M and EDSR-baseline 1.5M at 4x (RGB, EDSR paper Table 1); RDN ~22M (RGB)."""
  assert srcnn_count(bias=False) == 8_032
  assert round(vdsr_count(), -3) == 666_000
  assert round(edsr_count(3, 32, 256, 4) / 1e6) == 43
  assert round(edsr_count(3, 16, 64, 4) / 1e5) == 15
  assert round(rdn_count(3, 16, 8, 64, 64, 4) / 1e6) == 22


def test_published_parameter_counts_exactly():
  """Each model at its paper size, RGB where the paper trained on RGB, counts exactly as its paper's
  network (biases included)."""
  assert _count("srcnn", 2, **models.preset("srcnn", "paper")) == srcnn_count() == 8_129
  srcnn_weights = models.SRCNN(scale=2)
  shapes = jax.eval_shape(srcnn_weights.init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)
  assert sum(x.size for p, x in jax.tree_util.tree_leaves_with_path(shapes)
             if jax.tree_util.keystr(p).endswith("['kernel']")) == 8_032
  assert _count("vdsr", 4, **models.preset("vdsr", "paper")) == vdsr_count() == 665_921
  for scale in (2, 4):
    assert _count("edsr", scale, 3, **models.preset("edsr", "paper")) == edsr_count(3, 32, 256, scale)
    assert _count("edsr", scale, 3, **models.preset("edsr", "baseline")) == edsr_count(3, 16, 64, scale)
    assert _count("rdn", scale, 3, **models.preset("rdn", "paper")) == rdn_count(3, 16, 8, 64, 64, scale)
  assert edsr_count(3, 32, 256, 4) == 43_089_923
  assert edsr_count(3, 16, 64, 4) == 1_517_571
  assert rdn_count(3, 16, 8, 64, 64, 4) == 22_271_107


def test_reduced_parameter_counts():
  """The stated CPU sizes (each model file's PRESETS["reduced"]), one channel."""
  assert models.preset("vdsr", "reduced") == dict(num_layers=6, features=32, residual=True)
  assert models.preset("edsr", "reduced") == dict(num_blocks=6, features=32, res_scale=1.0, residual=False)
  assert models.preset("rdn", "reduced") == dict(num_blocks=3, num_layers=4, growth=16, features=32,
                                                 residual=False)
  for scale in (2, 4):
    assert _count("srcnn", scale, **models.preset("srcnn", "reduced")) == srcnn_count() == 8_129
    assert _count("vdsr", scale, **models.preset("vdsr", "reduced")) == vdsr_count(1, 6, 32) == 37_601
    assert _count("edsr", scale, **models.preset("edsr", "reduced")) == edsr_count(1, 6, 32, scale)
    assert _count("rdn", scale, **models.preset("rdn", "reduced")) == rdn_count(1, 3, 4, 16, 32, scale)
  assert edsr_count(1, 6, 32, 2) == 157_825 and rdn_count(1, 3, 4, 16, 32, 4) == 202_465


def test_presets_and_losses_registry():
  assert set(models.GENERATORS) == set(models.LOSS) == {"srgan", *ARCHS}
  assert models.LOSS == {"srcnn": "mse", "vdsr": "mse", "edsr": "l1", "rdn": "l1", "srgan": "l1"}
  assert models.preset("srgan", "reduced") == dict(num_blocks=6, features=32, residual=True, norm="batch")
  assert models.preset("srgan", "paper")["num_blocks"] == 16
  p = models.preset("edsr", "paper")
  p["num_blocks"] = 1                       # a copy: the registry is not changed through it
  assert models.preset("edsr", "paper")["num_blocks"] == 32
  with pytest.raises(ValueError, match=r"preset\('edsr', 'huge'\): unknown size; expected one of 'paper'"):
    models.preset("edsr", "huge")


# -- what the networks compute -------------------------------------------------------------------------
@pytest.mark.parametrize("arch, first", [("srcnn", "conv1"), ("vdsr", "conv_0")])
def test_pre_upsampling_networks_see_the_bicubic_input(arch, first):
  """SRCNN and VDSR run on bicubic(LR) at the HR size: their first conv's input is exactly it."""
  x = jnp.asarray(np.random.default_rng(2).random((1, 5, 7, 1)), jnp.float32)
  gen, v = _init(arch, 4, x, **TINY[arch])

  def first_conv_input(v, x):
    seen = {}

    def record(next_fun, args, kwargs, context):
      if isinstance(context.module, nn.Conv) and context.method_name == "__call__":
        seen.setdefault(context.module.name, args[0])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
      gen.apply(v, x, train=False)
    return seen[first]

  np.testing.assert_array_equal(np.asarray(jax.jit(first_conv_input)(v, x)),
                                np.asarray(degrade.upsample_bicubic(x, 4)))


@pytest.mark.parametrize("arch", ARCHS)
def test_every_conv_is_the_projects_conv(arch, monkeypatch):
  """Every kernel comes from `srgan.Conv` (looked up when the model runs), as the project's generator's,
  computed the model's `conv_impl` way (blocks included)."""
  made = []
  real = srgan.Conv

  def counting(*args, **kwargs):
    made.append(kwargs["impl"])
    return real(*args, **kwargs)

  monkeypatch.setattr(srgan, "Conv", counting)
  x = jnp.zeros((1, 6, 6, 1))
  gen = models.GENERATORS[arch](scale=2, conv_impl="cpu", **TINY[arch])
  v = jax.eval_shape(gen.init, jax.random.key(0), x, train=False)
  kernels = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(v["params"])
             if jax.tree_util.keystr(p).endswith("['kernel']")]
  assert len(kernels) == len(made) > 0 and set(made) == {"cpu"}


def test_edsr_residual_scaling_multiplies_each_block():
  """res_scale s: each block adds s * its branch; with the branches' output doubled by s = 2 the
  blocks' contribution (output minus the res_scale=0 output) doubles."""
  x = jnp.asarray(np.random.default_rng(3).random((1, 6, 6, 1)), jnp.float32)
  fields = dict(num_blocks=1, features=4)
  _, v = _init("edsr", 2, x, **fields)

  outs = jax.jit(lambda v: [models.EDSR(scale=2, res_scale=s, **fields).apply(v, x, train=False)
                            for s in (0.0, 1.0, 2.0)])(v)
  out = dict(zip((0.0, 1.0, 2.0), map(np.asarray, outs)))
  np.testing.assert_allclose(out[2.0] - out[0.0], 2 * (out[1.0] - out[0.0]), rtol=1e-4, atol=1e-5)
  assert np.abs(out[1.0] - out[0.0]).max() > 1e-4


# -- the pixel loss ----------------------------------------------------------------------------------
def test_pixel_term_l1_and_mse_by_hand():
  rng = np.random.default_rng(4)
  sr, hr = rng.random((2, 6, 6, 1), np.float32), rng.random((2, 6, 6, 1), np.float32)
  zero = dict(adv_weight=0.0, lambda_vit=0.0, lambda_str=0.0, lambda_tex=0.0, pixel_weight=0.5)
  by_hand = {"l1": np.mean(np.abs(sr - hr)), "mse": np.mean((sr - hr) ** 2)}
  assert by_hand["l1"] != pytest.approx(by_hand["mse"], rel=0.1)
  for form, want in by_hand.items():
    for weights in ({**zero, "pixel": form}, ml_collections.ConfigDict({**zero, "pixel": form})):
      total, terms = losses.sr_generator_loss(sr=sr, hr=hr, fake_logits=None, feats_sr={},
                                              feats_target={}, weights=weights)
      np.testing.assert_allclose(terms["pixel"], want, rtol=1e-6)
      np.testing.assert_allclose(total, 0.5 * want, rtol=1e-6)
  _, terms = losses.sr_generator_loss(sr=sr, hr=hr, fake_logits=None, feats_sr={}, feats_target={},
                                      weights=zero)        # no `pixel` field: L1, as before it existed
  np.testing.assert_allclose(terms["pixel"], by_hand["l1"], rtol=1e-6)
  with pytest.raises(ValueError, match=r"sr.loss.pixel = 'l2': must be one of 'l1', 'mse'"):
    losses.sr_generator_loss(sr=sr, hr=hr, fake_logits=None, feats_sr={}, feats_target={},
                             weights={**zero, "pixel": "l2"})


# -- selected by config, trained by the SR stage ------------------------------------------------------
def _config(arch, **model):
  """configs/tiny.py with `arch` at a tiny size and its paper's pixel loss alone, one LR model."""
  from configs import tiny
  config = tiny.get_config()
  config.stages = ("sr",)
  config.sr.arch = arch
  config.sr.model = ml_collections.ConfigDict({**TINY.get(arch, {}), **model})
  config.sr.loss.update(adv_weight=0.0, lambda_vit=0.0, lambda_str=0.0, lambda_tex=0.0, pixel_weight=1.0,
                        pixel=models.LOSS[arch])
  for family in ("bicubic", "gaussian", "kspace"):
    config.sr.lr_mix[family] = 0.0
  return config


_STEPS = {}


def _step(arch):
  """One SR-stage train step of `arch` (tiny, residual) on one device, once per arch and session:
  (config, HR batch, state before, state after, metrics)."""
  if arch not in _STEPS:
    config = _config(arch, residual=True)
    hr = np.random.default_rng(5).random((config.sr.batch_size, 32, 32, 1)).astype(np.float32)
    mesh = sharding.make_mesh(jax.devices()[:1])
    stage = stage_sr.SRStage(config, "/nonexistent")
    init, _ = loop.init_state(stage, mesh)
    state = init(jax.random.key(0))
    before = jax.device_get(state)          # the step donates `state`
    step = step_lib.compile_step(stage.update, mesh, stage.microbatches(1))
    batch = sharding.to_global({"hr": hr, "label": np.zeros(len(hr), np.int32)}, mesh)
    new, metrics = step(state, batch, jax.random.key(3), stage.frozen(mesh))
    _STEPS[arch] = (config, hr, before, new, jax.device_get(metrics))
  return _STEPS[arch]


# A full SR-step compile each (~10-20 s CPU): EDSR (also the checkpoint and api tests') in the quick
# run, the others with -m slow (the MSE form is also checked through api.loss_breakdown below).
@pytest.mark.parametrize("arch", [pytest.param("srcnn", marks=pytest.mark.slow),
                                  pytest.param("vdsr", marks=pytest.mark.slow), "edsr",
                                  pytest.param("rdn", marks=pytest.mark.slow)])
def test_one_sr_step_per_arch_with_its_papers_pixel_loss(arch):
  """Built from config.sr.arch by the SR stage; a residual generator starts at bicubic, so the step's
  pixel term is the paper's loss (MSE or L1) of bicubic(LR) against HR, computed here with numpy;
  without L_adv the discriminator takes no step and logs no loss."""
  config, hr, before, after, metrics = _step(arch)
  config_check.validate(config, num_devices=1)
  assert isinstance(stage_sr.generator(config), models.GENERATORS[arch])
  bic = np.asarray(degrade.upsample_bicubic(degrade.downsample(jnp.asarray(hr), config.scale), config.scale))
  diff = bic - hr
  want = np.mean(diff ** 2) if models.LOSS[arch] == "mse" else np.mean(np.abs(diff))
  np.testing.assert_allclose(metrics["g_pixel"], want, rtol=1e-5)
  assert "d_loss" not in metrics and np.isfinite(metrics["g_total"])
  moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                       before.params["gen"], after.params["gen"])
  assert any(jax.tree.leaves(moved))
  for a, b in zip(jax.tree.leaves(before.params["disc"]), jax.tree.leaves(after.params["disc"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_api_loss_breakdown_reports_the_configs_pixel_form():
  """`api.loss_breakdown` computes the pixel term in the config's form (L1 or MSE)."""
  from mrsr_jax import api
  config, hr, _, state, _ = _step("edsr")
  bic = np.asarray(degrade.upsample_bicubic(jnp.asarray(hr[:, ::2, ::2]), 2))
  for form, want in (("mse", np.mean((bic - hr) ** 2)), ("l1", np.mean(np.abs(bic - hr)))):
    cfg = config.copy_and_resolve_references()
    cfg.sr.loss.pixel = form
    out = api.loss_breakdown(cfg, {"hr": hr}, {}, state, sr=bic)
    np.testing.assert_allclose(out.terms["pixel"], want, rtol=1e-5)


def test_unknown_arch_and_field_are_one_error_each():
  config = _config("edsr")
  config.sr.model.norm = "none"           # an srgan field
  for check in (lambda: stage_sr.generator(config), lambda: config_check.validate(config, num_devices=1)):
    with pytest.raises(ValueError, match=r"config.sr.model.norm: the 'edsr' generator \(config.sr.arch\) "
                                         r"has no field 'norm'; its fields are num_blocks, features, "
                                         r"res_scale, residual, channels"):
      check()
  config = _config("edsr")
  config.sr.arch = "esrgan"
  for check in (lambda: stage_sr.generator(config), lambda: config_check.validate(config, num_devices=1)):
    with pytest.raises(ValueError, match=r"config.sr.arch = 'esrgan': unknown generator; expected one of "
                                         r"'srgan', 'srcnn', 'vdsr', 'edsr', 'rdn'"):
      check()


def test_field_values_and_remat_checked_per_arch():
  config = _config("edsr", res_scale=0.0)
  with pytest.raises(ValueError, match=r"config.sr.model.res_scale = 0.0: must be a finite number > 0"):
    config_check.validate(config, num_devices=1)
  config = _config("rdn", growth=0)
  with pytest.raises(ValueError, match=r"config.sr.model.growth = 0: must be an integer >= 1"):
    config_check.validate(config, num_devices=1)
  config = _config("vdsr", num_layers=1)
  with pytest.raises(ValueError, match=r"config.sr.model.num_layers = 1: must be an integer >= 2"):
    config_check.validate(config, num_devices=1)
  config = _config("srcnn", channels=3)
  with pytest.raises(ValueError, match=r"config.sr.model.channels = 3: must be one of 1"):
    config_check.validate(config, num_devices=1)
  config = _config("vdsr")
  config.sr.remat = True
  with pytest.raises(ValueError, match=r"config.sr.remat = True: the 'vdsr' generator .* has no blocks"):
    config_check.validate(config, num_devices=1)
  with pytest.raises(ValueError, match=r"config.sr.remat = True: the 'vdsr' generator \(config.sr.arch\) "
                                       r"has no blocks to rematerialise \(these have: srgan, edsr, rdn\)"):
    stage_sr.generator(config)


def test_workdirs_older_than_sr_arch_resume_as_srgan_with_l1():
  """A workdir recorded before `sr.arch` / `sr.loss.pixel` existed trained the srgan generator with an
  L1 pixel term: resuming it with those values is no change, with others it is one."""
  recorded = {"sr.model.features": 8}
  fields = ("sr.arch", "sr.loss.pixel", "sr.model.features")
  same = {"sr.arch": "srgan", "sr.loss.pixel": "l1", "sr.model.features": 8}
  assert config_check.differences(recorded, same, fields) == []
  other = {**same, "sr.arch": "edsr", "sr.loss.pixel": "mse"}
  assert config_check.differences(recorded, other, fields) == [
      "sr.arch: 'srgan' in the workdir, 'edsr' asked", "sr.loss.pixel: 'l1' in the workdir, 'mse' asked"]


@pytest.mark.slow   # two gradient compiles per arch (~15 s CPU each)
@pytest.mark.parametrize("arch", ("edsr", "rdn"))
def test_remat_same_outputs_and_gradients(arch):
  x = jnp.asarray(np.random.default_rng(6).random((1, 6, 6, 1)), jnp.float32)
  gen, v = _init(arch, 2, x, **TINY[arch])
  remat = models.GENERATORS[arch](scale=2, remat=True, **TINY[arch])
  assert jax.tree.structure(remat.init(jax.random.key(0), x, train=False)) == jax.tree.structure(v)

  def grads(g):
    return jax.jit(jax.grad(lambda p: jnp.sum(g.apply({"params": p}, x, train=True) ** 2)))(v["params"])

  for a, b in zip(jax.tree.leaves(grads(gen)), jax.tree.leaves(grads(remat))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(np.abs(a).max()))


# -- the paper-scale configs ---------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_compare_configs_are_the_paper_sr_config_with_the_method(arch):
  from configs import sr_ixi_x4
  config = importlib.import_module(f"configs.compare.{arch}_ixi_x4").get_config()
  paper = sr_ixi_x4.get_config()
  config_check.validate(config, num_devices=1)
  assert config.stages == ("sr",) and config.sr.arch == arch
  assert dict(config.sr.model) == models.preset(arch, "paper")
  assert dict(config.sr.loss) == {**dict(paper.sr.loss), "adv_weight": 0.0, "lambda_vit": 0.0,
                                  "lambda_str": 0.0, "lambda_tex": 0.0, "pixel_weight": 1.0,
                                  "pixel": models.LOSS[arch]}
  for field in ("dataset", "contrast", "scale", "crop_size", "degradation"):
    assert config[field] == paper[field]
  for field in ("batch_size", "num_steps", "num_epochs", "learning_rate", "lr_schedule", "warmup_steps",
                "weight_decay", "b1", "b2", "lr_mix"):
    assert config.sr[field] == paper.sr[field], field
  # Memory only (bench/memory.py: RDN's dense blocks need smaller microbatches on an 80 GB card).
  assert config.sr.microbatch_per_device == (32 if arch == "rdn" else paper.sr.microbatch_per_device)
  assert importlib.import_module(f"configs.compare.{arch}_ixi_x4").get_config("t2").contrast == "t2"
  # The paper-size generator builds from it (shapes only).
  gen = stage_sr.generator(config)
  assert gen.conv_impl == srgan.backend_conv_impl()        # the project's convolutions on this backend
  jax.eval_shape(gen.init, jax.random.key(0), jnp.zeros((1, 60, 60, 1)), train=False)


def test_compare_configs_load_through_run_py():
  """run.py's loader takes them (with an override), as `python run.py --config=...` would."""
  import run as run_cli
  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "compare", "rdn_ixi_x4.py")
  config = run_cli.load_config_file(path)
  run_cli.check_overrides(config, [f"--config={path}", "--config.sr.model.num_blocks=2"], path)
  assert config.sr.arch == "rdn"


# -- a trained checkpoint of a comparison network --------------------------------------------------------
def test_checkpoint_of_a_comparison_network_loads_for_evaluation(tmp_path):
  """An EDSR SR-stage checkpoint is restored by `evaluate.load_generator` (what eval, predict and the
  api use) into the same network: its output is the trained state's."""
  config, hr, _, state, _ = _step("edsr")
  workdir = str(tmp_path)
  mngr = checkpoints.manager(os.path.join(workdir, "sr", "checkpoints"))
  checkpoints.save(mngr, 1, state, {"stage": "sr", "num_steps": 1, "config": config.to_json_best_effort()})
  mngr.wait_until_finished()
  mngr.close()
  apply, info = evaluate.load_generator(config, workdir, sharding.make_mesh(jax.devices()[:1]))
  assert info["step"] == 1
  lr = jnp.asarray(hr[:2, ::2, ::2])
  want = models.EDSR(scale=2, residual=True, **TINY["edsr"]).apply({"params": state.params["gen"]}, lr,
                                                                  train=False)
  np.testing.assert_allclose(np.asarray(apply(lr)), np.asarray(want), rtol=1e-6, atol=1e-7)
  # The config a workdir records (config.json, as evaluate's ablation rows read it) builds it too.
  recorded = ml_collections.ConfigDict(config_check.as_json_tree(config))
  assert isinstance(stage_sr.generator(recorded), models.EDSR)


@pytest.mark.slow   # trains the SR stage (4 steps), then a whole evaluation and a prediction (~1 min CPU)
def test_a_comparison_network_trains_evaluates_and_predicts(sample_data_dir, tmp_path):
  """run.py's three modes end to end for a non-srgan arch (RDN, tiny): train (SR stage only, pixel
  loss alone), the evaluation report (its 'ours' row is RDN) and a NIfTI prediction."""
  import nibabel as nib
  from mrsr_jax import predict
  from mrsr_jax.train import pipeline
  config = _config("rdn")
  config.data_dir = sample_data_dir
  workdir = str(tmp_path / "rdn")
  states = pipeline.train(config, workdir)
  assert set(states) == {"sr"} and int(states["sr"].step) == config.sr.num_steps
  report = evaluate.evaluate(config, workdir)
  ours = report["robustness"][config.degradation]["ours"]
  assert ours and all(np.isfinite(v["psnr"]) for v in ours.values())
  src = os.path.join(os.path.dirname(nib.__file__), "tests", "data", "anatomical.nii")
  out = str(tmp_path / "sr.nii.gz")
  predict.predict_file(config, workdir, src, out)
  a, b = nib.load(src), nib.load(out)
  in_plane = [i for i in range(3) if b.shape[i] != a.shape[i]]
  assert len(in_plane) == 2 and all(b.shape[i] == config.scale * a.shape[i] for i in in_plane)
  assert np.isfinite(np.asarray(b.dataobj)).all()
