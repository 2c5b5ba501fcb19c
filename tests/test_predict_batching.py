"""predict's batch plan (issue 13): a volume in as few generator calls as memory allows, same result."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrsr_jax import predict, sharding
from mrsr_jax.models import srgan


@pytest.fixture(scope="module")
def gen():
  model = srgan.SRGenerator(scale=2, num_blocks=1, features=8, residual=True)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 12, 12, 1)), train=False)
  # Non-zero output conv, so the generator adds something to the bicubic path.
  variables = jax.tree.map(lambda a: a + 0.01, variables)
  return lambda x: model.apply(variables, x, train=False)


def test_one_call_when_memory_allows(gen):
  mesh = sharding.make_mesh()          # the 8 emulated devices
  calls = []
  compiled, batch = predict.plan_batches(gen, (12, 12), 25, mesh, memory_bytes=2**40, max_per_device=0)
  # 25 slices over 8 devices: one call of 32 (4 per device), not two of 16 (the old fixed batch).
  assert batch == 32
  counting = lambda x: calls.append(x.shape) or compiled(x)
  slices = np.random.default_rng(0).random((25, 12, 12), np.float32)
  out = predict.super_resolve(counting, slices, batch, mesh)
  assert calls == [(32, 12, 12, 1)] and out.shape == (25, 24, 24)
  # The same values as the old fixed batches of 16 (two calls, the second padded).
  ref = predict.super_resolve(jax.jit(gen), slices, 16, mesh)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_memory_bound_gives_few_equal_calls(gen):
  mesh = sharding.make_mesh()
  call, full = predict.plan_batches(gen, (12, 12), 100, mesh, memory_bytes=2**40, max_per_device=0)
  spec = jax.ShapeDtypeStruct((full, 12, 12, 1), np.float32, sharding=sharding.data_sharding(mesh))
  need = predict._call_bytes(call.lower(spec).compile())   # XLA's figure for all 100 (13 per device)
  assert full == 104 and need > 0
  # Room for 5 of the 13 slices per device: 3 equal calls of 5 per device (15 >= 13), batch 40.
  _, batch = predict.plan_batches(gen, (12, 12), 100, mesh,
                                  memory_bytes=need / 2.5 / predict.MEMORY_FRACTION, max_per_device=0)
  assert batch % 8 == 0 and -(-100 // batch) == 3 and batch == 40


def test_cpu_devices_take_one_slice_per_call(gen):
  """On CPU devices the default plan is CPU_SLICES_PER_CALL slices per device and call, however much
  memory there is (XLA:CPU is faster per slice on small calls); a cap still leaves the memory rule."""
  mesh = sharding.make_mesh()
  assert mesh.devices.flat[0].platform == "cpu"
  compiled, batch = predict.plan_batches(gen, (12, 12), 25, mesh, memory_bytes=2**40)
  assert batch == 8 * predict.CPU_SLICES_PER_CALL == 8
  slices = np.random.default_rng(0).random((25, 12, 12), np.float32)
  out = predict.super_resolve(compiled, slices, batch, mesh)
  np.testing.assert_allclose(out, predict.super_resolve(jax.jit(gen), slices, 32, mesh), rtol=1e-5, atol=1e-6)
  _, capped = predict.plan_batches(gen, (12, 12), 25, mesh, memory_bytes=2**40, max_per_device=2)
  assert capped == 16


def test_volume_auto_batch_matches_fixed_batch(gen):
  mesh = sharding.make_mesh(jax.devices()[:2])
  vol = np.random.default_rng(1).random((12, 12, 9), np.float32) * 1000
  auto = predict.upsample_volume(gen, vol, 2, 2, 0, mesh)
  fixed = predict.upsample_volume(gen, vol, 2, 2, 4, mesh)
  assert auto.shape == (24, 24, 9)
  np.testing.assert_allclose(auto, fixed, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("bad", [-4, -1])
def test_bad_predict_batch_size_fails_before_compute(tmp_path, bad):
  # Checked before the input is read or a checkpoint restored (neither exists here); the old code
  # passed -4 / -1 to the divisibility check and blamed a "global batch size" (or read nothing for -1).
  from configs import tiny
  config = tiny.get_config()
  config.predict.batch_size = bad
  out = tmp_path / "out.nii"
  with pytest.raises(ValueError, match=r"predict\.batch_size: must be 0 .* got"):
    predict.predict_file(config, str(tmp_path / "no_run"), str(tmp_path / "in.nii"), str(out))
  assert not out.exists()


def _paper_generator(scale=4):
  """The paper configs' generator (16 blocks of 64 features) with random weights, as a loaded one."""
  from configs import base
  from mrsr_jax.train.stage_sr import generator
  config = base.get_config()
  config.scale = scale
  model = generator(config)
  shapes = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 8, 8, 1)), train=False), jax.random.key(0))
  return model, shapes


@pytest.mark.parametrize("limit_gib,several", [(16, True), (141, False)])
def test_plan_follows_the_devices_free_memory(monkeypatch, limit_gib, several):
  """A 256-slice volume of 64² slices at 4x (256² output; 46 GiB on an H200 in one call): on a card
  whose memory_stats() says 16 GiB it is planned as several equal calls that fit half of it, on a
  141 GiB one (an H200) as one call. The device's memory figures are faked; XLA's figure for the call
  is this machine's."""
  model, shapes = _paper_generator()
  mesh = sharding.make_mesh(jax.devices()[:1])
  variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  gen = predict.Generator(model, variables)
  device = type(jax.devices()[0])
  monkeypatch.setattr(device, "memory_stats", lambda self: {"bytes_limit": limit_gib * 2**30,
                                                              "bytes_in_use": 2**30})
  call, batch = predict.plan_batches(gen, (64, 64), 256, mesh, max_per_device=0)   # an accelerator's plan
  calls = -(-256 // batch)
  if several:
    assert calls > 1 and calls * batch - 256 < calls            # equal calls, least padding
    spec = jax.ShapeDtypeStruct((batch, 64, 64, 1), np.float32, sharding=sharding.data_sharding(mesh))
    need = predict._call_bytes(call.lower(spec).compile())
    assert need <= predict.MEMORY_FRACTION * (limit_gib - 1) * 2**30
  else:
    assert batch == 256


def _count_compiles():
  from tests.test_no_recompile import count_compiles
  return count_compiles()


def test_second_volume_and_second_load_compile_nothing(gen):
  """upsample_volume reuses its compiled functions: a second volume of the same shape (other values),
  and the same generator config loaded again with other weights (a new Generator, as every
  predict_file call makes), run without a single compilation, planned or fixed batch."""
  model = srgan.SRGenerator(scale=2, num_blocks=1, features=8, residual=True)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 12, 12, 1)), train=False)
  mesh = sharding.make_mesh(jax.devices()[:2])
  rng = np.random.default_rng(3)
  vols = [rng.random((12, 12, 9), np.float32) * 1000 for _ in range(3)]
  for batch in (0, 4):
    first = predict.upsample_volume(predict.Generator(model, variables), vols[0], 2, 2, batch, mesh)
    other = jax.tree.map(lambda a: a + 0.01, variables)
    with _count_compiles() as seen:
      again = predict.upsample_volume(predict.Generator(model, variables), vols[1], 2, 2, batch, mesh)
      reloaded = predict.upsample_volume(predict.Generator(model, other), vols[2], 2, 2, batch, mesh)
    assert seen == [], f"batch {batch}: recompiled {seen}"
    assert first.shape == again.shape == reloaded.shape == (24, 24, 9)
  # The same callable (the api's and eval's lr -> sr functions) is reused too.
  with _count_compiles() as seen:
    predict.upsample_volume(gen, vols[0], 2, 2, 0, mesh)
  with _count_compiles() as seen:
    predict.upsample_volume(gen, vols[1], 2, 2, 0, mesh)
  assert seen == []


def test_volume_matches_the_host_side_formula(gen):
  """SR(clip(x)) + bicubic(x - clip(x)) in normalised units, back to scanner units and floored, as
  the docstring says, computed here on the host from the generator's own output."""
  from mrsr_jax.data import degrade, volumes
  mesh = sharding.make_mesh(jax.devices()[:2])
  vol = np.random.default_rng(4).random((12, 12, 6), np.float32) * 1000 - 50   # negatives, and a top 0.5%
  out = predict.upsample_volume(gen, vol, 2, 2, 2, mesh)
  slices = np.moveaxis(vol, 2, 0)
  norm, unit = volumes.robust_normalise(slices)
  excess = slices / np.float32(unit) - norm
  sr = np.asarray(gen(jnp.asarray(norm[..., None])))[..., 0]
  sr = sr + np.asarray(degrade.upsample_bicubic(jnp.asarray(excess[..., None]), 2))[..., 0]
  want = np.maximum(sr * np.float32(unit), np.float32(min(0.0, float(vol.min()))))
  np.testing.assert_allclose(np.moveaxis(out, 2, 0), want, rtol=1e-5, atol=1e-3)
  assert np.any(excess > 0) and np.any(excess < 0)   # both sides of the clip are exercised
