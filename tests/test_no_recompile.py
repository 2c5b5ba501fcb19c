"""Fixed shapes, one compilation: the SR train step and batched prediction never recompile.

A recompilation mid-training costs as much as many steps (tens of seconds at full size on CPU) and is
easy to cause by accident (a weak-typed scalar, a Python int that changes, a sharding that differs
between the initial and the updated state, a last prediction batch of another size). Counted two ways:
XLA backend compilations reported through `jax.monitoring` while the calls run, and the jitted
function's own cache size.
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrsr_jax import features, predict, sharding
from mrsr_jax.train import loop, step as step_lib
from mrsr_jax.train.stage_sr import SRStage, generator

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compiles():
  """Yields a list that collects one entry per XLA backend compilation inside the block."""
  seen = []

  def listener(event, duration, **kwargs):
    if event == BACKEND_COMPILE:
      seen.append(kwargs.get("fun_name", "?"))

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield seen
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


@pytest.fixture(scope="module")
def config():
  from configs import tiny
  return tiny.get_config()


def _frozen(config, mesh):
  """Random frozen ViT / AE-encoder params, so the step computes every term of Eq. 9."""
  m = config.crop_size
  img = jnp.zeros((1, m, m, 1), jnp.float32)
  vit = features.vit_module(config, m).init(jax.random.key(1), img)["params"]
  ae = features.ae_encoder(config).init(jax.random.key(2), img)["params"]
  return sharding.replicate({"vit": vit, "ae_enc": ae}, mesh)


def test_sr_train_step_compiles_once(config):
  # Two devices: the batch is sharded and the state replicated as on any mesh, at a quarter of the
  # eight-device compile time.
  mesh = sharding.make_mesh(jax.devices()[:2])
  stage = SRStage(config, "/tmp/unused")
  assert stage.which == {"vit", "z_s", "z_t"}          # the full loss, feature terms included
  init, _ = loop.init_state(stage, mesh)
  state = init(jax.random.key(0))
  frozen = _frozen(config, mesh)
  step = step_lib.compile_step(stage.update, mesh)
  rng = np.random.default_rng(0)
  b, m = stage.batch_size, stage.crop_size
  # Inputs made before counting: only the step's own compilations are counted.
  batches = [sharding.to_global({"hr": rng.random((b, m, m, 1), np.float32),
                                 "label": np.zeros((b,), np.int32)}, mesh) for _ in range(4)]
  keys = [step_lib.step_rng(0, i) for i in range(4)]

  # Compiled ahead of the first step, as the loop does to log the compile time: the step's only
  # compilation.
  with count_compiles() as ahead:
    seconds, cached = step_lib.compile_timed(step, state, batches[0], keys[0], frozen)
  assert seconds > 0 and (ahead or cached)    # compiled, or loaded from a persistent cache
  with count_compiles() as first:
    state, metrics = step(state, batches[0], keys[0], frozen)
    jax.block_until_ready(metrics)
  assert first == [], f"the first step compiled again after compile_timed: {first}"
  with count_compiles() as later:
    for batch, key in zip(batches[1:], keys[1:]):
      state, metrics = step(state, batch, key, frozen)
    host = jax.device_get(metrics)
  assert later == [], f"steps 2-4 recompiled: {later}"
  assert step._cache_size() == 1
  assert int(jax.device_get(state.step)) == 4
  assert np.isfinite(host["g_total"]) and np.isfinite(host["d_loss"])


def test_predict_batches_compile_once(config):
  mesh = sharding.make_mesh()
  gen = generator(config)
  m = 16
  variables = gen.init(jax.random.key(0), jnp.zeros((1, m, m, 1)), train=False)
  apply_fn = jax.jit(lambda x: gen.apply(variables, x, train=False))
  batch = mesh.devices.size
  slices = np.random.default_rng(0).random((2 * batch + 3, m, m), np.float32)   # last batch padded

  with count_compiles() as seen:
    out = predict.super_resolve(apply_fn, slices, batch, mesh)
  assert out.shape == (slices.shape[0], config.scale * m, config.scale * m)
  assert len(seen) == 1, f"expected one compilation for all {len(slices)} slices, got {seen}"
  with count_compiles() as again:   # another volume, another slice count: same batch shape
    predict.super_resolve(apply_fn, slices[:batch + 1], batch, mesh)
  assert again == []
  assert apply_fn._cache_size() == 1
