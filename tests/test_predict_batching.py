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
  compiled, full = predict.plan_batches(gen, (12, 12), 100, mesh, memory_bytes=2**40, max_per_device=0)
  need = predict._call_bytes(compiled)             # XLA's figure for all 100 (13 per device) at once
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
