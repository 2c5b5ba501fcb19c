"""cpu_conv.conv_general_dilated: the same convolution and gradients as lax's, whatever the shape."""

import flax.linen as nn
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
    (2, 12, 1, 8, 9, 1, "SAME"),      # one input channel (the input conv)
    (2, 16, 4, 4, 3, 2, "SAME"),      # strided, even size (pads (0, 1))
    (1, 15, 3, 5, 3, 2, "SAME"),      # strided, odd size
    (2, 17, 3, 4, 3, 3, "VALID"),     # stride 3: one tap per phase
    (1, 14, 2, 3, 5, 2, ((1, 2), (0, 1))),  # 5x5 stride 2, explicit asymmetric pads: 3 and 2 taps per phase
    (1, 9, 2, 2, 1, 2, "SAME"),       # 1x1 stride 2: phases without taps
    (2, 10, 3, 6, 3, 1, "VALID"),     # no padding
    (2, 10, 6, 2, 3, 1, ((2, 0), (1, 1))),  # explicit, asymmetric
])
def test_values_and_gradients_match_lax(b, n, ci, co, k, s, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((b, n, n, ci), np.float32))
  w = jnp.asarray(rng.standard_normal((k, k, ci, co), np.float32))
  dn = lax.conv_dimension_numbers(x.shape, w.shape, DN)

  def loss(conv):
    return lambda x, w: jnp.sum(jnp.sin(conv(x, w, (s, s), padding, dimension_numbers=dn)))

  want = jax.jit(jax.value_and_grad(loss(lax.conv_general_dilated), argnums=(0, 1)))(x, w)
  got = jax.jit(jax.value_and_grad(loss(cpu_conv.conv_general_dilated), argnums=(0, 1)))(x, w)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  for g, r in zip(got[1], want[1]):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(r))))


def test_srgan_train_gradients_unchanged(monkeypatch):
  """Generator + discriminator gradients with cpu_conv equal those with plain nn.Conv."""
  gen, disc = srgan.SRGenerator(scale=2, num_blocks=1, features=8), srgan.SRDiscriminator(features=4)
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

  fast = jax.jit(jax.grad(loss, argnums=(0, 1)))(gv["params"], dv["params"])
  monkeypatch.setattr(srgan, "Conv", nn.Conv)
  plain = jax.jit(jax.grad(loss, argnums=(0, 1)))(gv["params"], dv["params"])
  assert jax.tree.structure(fast) == jax.tree.structure(plain)
  for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(plain)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * (1 + float(jnp.max(jnp.abs(b)))))
