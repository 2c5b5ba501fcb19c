"""cpu_conv.conv_general_dilated: the same convolution and gradients as lax's, whatever the shape."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from mrsr_jax.models import cpu_conv, srgan

DN = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize("b,n,ci,co,k,s,padding", [
    (2, 12, 4, 16, 3, 1, "SAME"),     # widening (the upsampling conv, D's widening convs)
    (2, 16, 8, 1, 9, 1, "SAME"),      # 9x9 to one channel (the output conv): im2col of dy
    (1, 12, 48, 1, 9, 1, "SAME"),     # ... with enough input channels for the shift-sum forward (eigen)
    (2, 12, 1, 8, 9, 1, "SAME"),      # one input channel (the input conv)
    (2, 16, 4, 4, 3, 2, "SAME"),      # strided, even size (pads (0, 1))
    (1, 15, 3, 5, 3, 2, "SAME"),      # strided, odd size
    (2, 17, 3, 4, 3, 3, "VALID"),     # stride 3: one tap per phase
    (1, 14, 2, 3, 5, 2, ((1, 2), (0, 1))),  # 5x5 stride 2, explicit asymmetric pads: 3 and 2 taps per phase
    (1, 9, 2, 2, 1, 2, "SAME"),       # 1x1 stride 2: phases without taps
    (2, 10, 3, 6, 3, 1, "VALID"),     # no padding
    (2, 10, 6, 2, 3, 1, ((2, 0), (1, 1))),  # explicit, asymmetric
])
@pytest.mark.parametrize("eigen", [False, True], ids=["ynnpack", "eigen"])
def test_values_and_gradients_match_lax(b, n, ci, co, k, s, padding, eigen):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((b, n, n, ci), np.float32))
  w = jnp.asarray(rng.standard_normal((k, k, ci, co), np.float32))
  dn = lax.conv_dimension_numbers(x.shape, w.shape, DN)

  def loss(conv):
    return lambda x, w: jnp.sum(jnp.sin(conv(x, w, (s, s), padding, dimension_numbers=dn)))

  want = jax.jit(jax.value_and_grad(loss(lax.conv_general_dilated), argnums=(0, 1)))(x, w)
  # Both kernel-gradient choices: the one for YNNPACK's convolutions and the one for the train step's
  # Eigen convolutions (compiled with the options compile_step uses, where this jaxlib has them).
  conv = functools.partial(cpu_conv.conv_general_dilated, eigen=eigen)
  got = jax.jit(jax.value_and_grad(loss(conv), argnums=(0, 1)),
                compiler_options=cpu_conv.train_compiler_options() if eigen else None)(x, w)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-4)   # a sum of sines: cancellation
  for g, r in zip(got[1], want[1]):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(r))))


def _srgan_grads(conv_impl):
  """Generator + discriminator gradients of a small GAN loss with the models' `conv_impl`."""
  gen = srgan.SRGenerator(scale=2, num_blocks=1, features=8, conv_impl=conv_impl)
  disc = srgan.SRDiscriminator(features=4, conv_impl=conv_impl)
  rng = np.random.default_rng(1)
  lr = jnp.asarray(rng.random((2, 16, 16, 1), np.float32))
  hr = jnp.asarray(rng.random((2, 32, 32, 1), np.float32))
  gv = gen.init(jax.random.key(0), lr, train=False)
  dv = disc.init(jax.random.key(1), hr, train=False)

  def loss(gp, dp):
    sr, _ = gen.apply({**gv, "params": gp}, lr, train=True, mutable=["batch_stats"])
    logits, _ = disc.apply({**dv, "params": dp}, jnp.concatenate([hr, sr]), train=True,
                           mutable=["batch_stats"])
    return jnp.mean(jnp.abs(sr - hr)) + jnp.mean(jax.nn.softplus(logits))

  return jax.jit(jax.grad(loss, argnums=(0, 1)))(gv["params"], dv["params"])


def test_srgan_train_gradients_unchanged():
  """Generator + discriminator gradients with conv_impl="cpu" (cpu_conv) equal those with "xla"."""
  fast, plain = _srgan_grads("cpu"), _srgan_grads("xla")
  assert jax.tree.structure(fast) == jax.tree.structure(plain)
  for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(plain)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * (1 + float(jnp.max(jnp.abs(b)))))


def require_train_compiler_options():
  """The CPU train-step options are active: the jaxlib this project requires (jax >= 0.10.2,
  pyproject.toml) accepts them. Not a skip: a jaxlib that dropped or renamed the experimental option
  would make every CPU train step silently ~1.25x slower (docs/benchmarks.md), and this says so."""
  assert cpu_conv.train_compiler_options() == cpu_conv.TRAIN_COMPILER_OPTIONS, (
      f"jaxlib {jax.__version__}'s CPU compiler rejects {cpu_conv.TRAIN_COMPILER_OPTIONS}: CPU train "
      "steps compile with XLA's defaults; update cpu_conv.TRAIN_COMPILER_OPTIONS for this jaxlib")


def test_train_compiler_options_are_active():
  require_train_compiler_options()


def _kernel_grad_ops(text: str) -> list[str]:
  """The kernel-gradient convolutions of a compiled HLO text: windows as large as an image."""
  return [line for line in text.splitlines()
          if " convolution(" in line and "window={size=16x16" in line]


def test_kernel_gradient_follows_the_convolution_library():
  """For Eigen's convolutions (eigen=True) the widening conv's kernel gradient is XLA's own (a
  convolution whose window is the image), for YNNPACK's the im2col matrix product; the CPU train-step
  options keep convolutions off YNNPACK (no YNNPACK fusion around a convolution)."""
  require_train_compiler_options()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 16, 16, 4), np.float32))
  w = jnp.asarray(rng.standard_normal((3, 3, 4, 16), np.float32))
  def grad(eigen):
    return jax.grad(lambda w: jnp.sum(cpu_conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN,
                                                                    eigen=eigen) ** 2))
  plain = jax.jit(grad(False)).lower(w).compile().as_text()
  eigen = jax.jit(grad(True), compiler_options=cpu_conv.train_compiler_options()).lower(w).compile().as_text()
  assert not _kernel_grad_ops(plain) and " dot(" in plain
  assert len(_kernel_grad_ops(eigen)) == 1
  assert not any("__ynn_fusion" in line and "convolution" in line for line in eigen.splitlines()
                 if line.lstrip().startswith("ROOT"))


def test_train_compiler_options_fall_back_when_rejected(monkeypatch):
  """A jaxlib without the option: {} and steps compile with XLA's defaults (no error)."""
  monkeypatch.setattr(cpu_conv, "TRAIN_COMPILER_OPTIONS", {"xla_cpu_no_such_option_at_all": "1"})
  cpu_conv.train_compiler_options.cache_clear()
  try:
    assert cpu_conv.train_compiler_options() == {}
  finally:
    cpu_conv.train_compiler_options.cache_clear()


def test_compile_step_compiles_cpu_steps_for_eigen_convolutions():
  """The train-step compile (every stage's) on CPU: compiled with the options, for which cpu_conv's
  default kernels (eigen=None: the options are supported) are chosen, so the widening conv's kernel
  gradient is XLA's own convolution."""
  require_train_compiler_options()
  from mrsr_jax import sharding
  from mrsr_jax.train import step as step_lib
  mesh = sharding.make_mesh()
  n = mesh.devices.size

  def update(w, batch, rng, frozen):
    loss = lambda w: jnp.mean(cpu_conv.conv_general_dilated(batch["x"], w, (1, 1), "SAME", dimension_numbers=DN) ** 2)
    value, g = jax.value_and_grad(loss)(w)
    return w - 0.1 * g, {"loss": value}

  w = jnp.ones((3, 3, 4, 16), jnp.float32)
  batch = sharding.to_global({"x": np.ones((n, 16, 16, 4), np.float32)}, mesh)
  step = step_lib.compile_step(update, mesh)
  text = step.lower(w, batch, jax.random.key(0), {}).compile().as_text()
  assert len(_kernel_grad_ops(text)) == 1


def test_few_output_conv_forward_is_a_matrix_product_in_train_steps():
  """The 9x9 -> 1 channel output conv's forward: a convolution for YNNPACK's convolutions (eigen=False:
  YNNPACK runs it fastest), a matrix product + shifted sum for Eigen's (its convolution is 1.7x slower)."""
  require_train_compiler_options()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 16, 16, 64), np.float32))   # 64 channels, as the generator's
  w = jnp.asarray(rng.standard_normal((9, 9, 64, 1), np.float32))

  def fwd(eigen):
    return lambda x, w: cpu_conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN, eigen=eigen)
  plain = jax.jit(fwd(False)).lower(x, w).compile().as_text()
  f = jax.jit(fwd(True), compiler_options=cpu_conv.train_compiler_options())
  shifted = f.lower(x, w).compile().as_text()
  got = f(x, w)
  assert " convolution(" in plain and " convolution(" not in shifted
  np.testing.assert_allclose(got, lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN),
                             rtol=1e-4, atol=1e-4)
