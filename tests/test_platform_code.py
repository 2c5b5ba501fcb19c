"""Platform code in its place (issue 22): CPU-only convolution kernels only in models built for a CPU
backend, chosen when the model is built, so the step lowered for CUDA holds no CPU path and every
trace of a model (train step, eval, predict, api) is the same code."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrsr_jax import features, sharding
from mrsr_jax.models import srgan
from mrsr_jax.train import loop, step as step_lib
from mrsr_jax.train.stage_sr import SRStage, generator


@pytest.fixture(scope="module")
def config():
  from configs import tiny
  return tiny.get_config()


def test_conv_impl_follows_the_backend():
  assert srgan.backend_conv_impl("cpu") == "cpu"
  for accelerator in ("gpu", "cuda", "rocm", "tpu"):
    assert srgan.backend_conv_impl(accelerator) == "xla"
  assert srgan.backend_conv_impl() == "cpu"            # the tests' backend
  with pytest.raises(ValueError, match=r"conv_impl must be one of \('xla', 'cpu'\), got 'gpu'"):
    srgan.SRGenerator(scale=2, num_blocks=1, features=8, conv_impl="gpu").init(
        jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)


def test_every_trace_builds_the_same_generator(config, monkeypatch):
  """Training's generator and discriminator, and the generator eval / predict / the api build
  (`generator(config)`), carry the backend's conv_impl, on a CPU backend and on an accelerator."""
  stage = SRStage(config, "/tmp/unused")
  assert stage.gen == generator(config) and stage.gen.conv_impl == "cpu" == stage.disc.conv_impl
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  stage = SRStage(config, "/tmp/unused")
  assert stage.gen == generator(config) and stage.gen.conv_impl == "xla" == stage.disc.conv_impl


def _cuda_step_text(stage: SRStage) -> str:
  """The stage's compiled-for-training step (compile_step, as the loop builds it), lowered for CUDA
  on this CPU-only machine, with each op's source location and name scope."""
  mesh = sharding.make_mesh(jax.devices()[:2])
  _, state = loop.init_state(stage, mesh)
  b, m = stage.batch_size, stage.crop_size
  data = sharding.data_sharding(mesh)
  batch = {"hr": jax.ShapeDtypeStruct((b, m, m, 1), jnp.float32, sharding=data),
           "label": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=data)}
  img = jnp.zeros((1, m, m, 1), jnp.float32)
  frozen = jax.eval_shape(lambda: {
      "vit": features.vit_module(stage.config, m).init(jax.random.key(1), img)["params"],
      "ae_enc": features.ae_encoder(stage.config).init(jax.random.key(2), img)["params"]})
  step = step_lib.compile_step(stage.update, mesh)
  lowered = step.trace(state, batch, step_lib.step_rng(0, 0), frozen).lower(lowering_platforms=("cuda",))
  return lowered.as_text(debug_info=True)


def test_step_lowered_for_cuda_has_no_cpu_path(config, monkeypatch):
  """An SR stage built where JAX's backend is a GPU: its train step lowered for CUDA contains no op
  of cpu_conv.py (its ops carry the `cpu_conv` name scope and that file as location). The same stage
  built on a CPU backend does contain them (the check can see them)."""
  assert stage_has_cpu_ops(SRStage(config, "/tmp/unused"))
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  gpu_stage = SRStage(config, "/tmp/unused")
  text = _cuda_step_text(gpu_stage)
  assert "cpu_conv" not in text
  assert text.count("stablehlo.convolution") > 0      # the convolutions are there, XLA's own


def stage_has_cpu_ops(stage: SRStage) -> bool:
  return "cpu_conv" in _cuda_step_text(stage)


def test_cpu_and_xla_generators_agree(config):
  """The two conv_impls compute the same function (inference mode)."""
  lr = jnp.asarray(np.random.default_rng(0).random((2, 16, 16, 1), np.float32))
  cpu = generator(config)
  xla = cpu.clone(conv_impl="xla")
  variables = cpu.init(jax.random.key(0), lr, train=False)
  variables = jax.tree.map(lambda a: a + 0.01, variables)   # a non-zero output conv
  np.testing.assert_allclose(cpu.apply(variables, lr, train=False), xla.apply(variables, lr, train=False),
                             rtol=1e-4, atol=1e-5)
