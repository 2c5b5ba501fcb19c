"""Test-size variant of the demo: a few steps of every stage, seconds on CPU."""

from mrsr_jax.configs import base, demo


def get_config():
  config = demo.get_config()
  config.crop_size = 32
  config.log_every_steps = 2
  config.image_every_steps = 4
  config.checkpoint_every_steps = 2
  config.vit.model.update(hidden_size=32, mlp_dim=64, num_layers=1, num_heads=2)
  config.vit.batch_size = 8
  config.vit.num_steps = 3
  config.ae.model.update(features=(8, 8, 4, 4), structure_channels=2, texture_dim=8)
  config.ae.crop_size = 32
  config.ae.batch_size = 8
  config.ae.num_steps = 3
  config.sr.model.update(num_blocks=1, features=8)
  config.sr.disc_features = 4
  config.sr.batch_size = 8
  config.sr.num_steps = 4
  # The paper's Eq. 9 weights (the demo scales them down for PSNR at its size): tests exercise every
  # term at full weight. A constant rate: the demo's 100 warm-up steps would leave 4 steps at ~0.
  # The demo's random LR models stay.
  config.sr.loss = base.get_config().sr.loss
  config.sr.lr_schedule = "constant"
  config.sr.warmup_steps = 0
  config.baselines = ()   # tests that train a baseline name it (tests/test_baselines.py)
  config.eval.size = 64
  config.eval.batch_size = 8
  return config
