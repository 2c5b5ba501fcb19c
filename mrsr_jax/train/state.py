"""Train state of a stage: several networks, each with its own optimiser, in one pytree.

The GAN stages update a generator and a discriminator in the same compiled step; the ViT stage has a
single network. One state type serves all three, so the step, the sharding and the checkpoints are
written once.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import struct


class TrainState(struct.PyTreeNode):
  step: jax.Array
  params: dict[str, Any]           # {network name: params}
  opt_state: dict[str, Any]        # {network name: optax state}
  batch_stats: dict[str, Any]      # {network name: BatchNorm statistics} (empty for networks without BN)
  txs: dict[str, optax.GradientTransformation] = struct.field(pytree_node=False)

  @classmethod
  def create(cls, params: Mapping[str, Any], txs: Mapping[str, optax.GradientTransformation],
             batch_stats: Mapping[str, Any] | None = None) -> "TrainState":
    params = dict(params)
    return cls(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state={k: txs[k].init(v) for k, v in params.items()},
        batch_stats=dict(batch_stats or {}),
        txs=dict(txs))

  def apply_gradients(self, grads: Mapping[str, Any], batch_stats: Mapping[str, Any] | None = None
                      ) -> "TrainState":
    """Updates the networks named in `grads` (others untouched) and advances the step."""
    params, opt_state = dict(self.params), dict(self.opt_state)
    for name, g in grads.items():
      updates, opt_state[name] = self.txs[name].update(g, self.opt_state[name], self.params[name])
      params[name] = optax.apply_updates(self.params[name], updates)
    new_stats = dict(self.batch_stats)
    new_stats.update(batch_stats or {})
    return self.replace(step=self.step + 1, params=params, opt_state=opt_state, batch_stats=new_stats)


def make_optimizer(learning_rate: float, *, b1: float = 0.9, b2: float = 0.999,
                   weight_decay: float = 0.0, grad_clip_norm: float = 0.0
                   ) -> optax.GradientTransformation:
  """Adam(W). Weight decay is decoupled (AdamW): with Adam's adaptive scaling an L2 term of 0.1 as in
  the paper's "Adam with weight decay 0.1" would be rescaled per parameter; see paper_deviations.md."""
  tx = optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay) if weight_decay else (
      optax.adam(learning_rate, b1=b1, b2=b2))
  if grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
  return tx
