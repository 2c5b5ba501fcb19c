"""The whole pipeline on the bundled real sample data at small sizes (minutes on 2 CPU cores).

  python -m data_prep --dataset=sample --data_dir=data
  python run.py --config=configs/demo.py --workdir=runs/demo
  python run.py --config=configs/demo.py --workdir=runs/demo --mode=eval
"""

from configs import base


def get_config():
  config = base.get_config()
  config.dataset = "sample"
  config.scale = 2
  config.crop_size = 64
  config.log_every_steps = 25
  config.image_every_steps = 200
  config.checkpoint_every_steps = 200

  config.vit.model.update(hidden_size=96, mlp_dim=192, num_layers=2, num_heads=4)
  config.vit.batch_size = 8
  config.vit.num_steps = 100

  config.ae.model.update(features=(16, 16, 8, 8), structure_channels=4, texture_dim=32)
  config.ae.crop_size = 64
  config.ae.batch_size = 8
  config.ae.num_steps = 100
  config.ae.num_epochs = 0

  config.sr.model.update(num_blocks=4, features=32)
  config.sr.disc_features = 16
  config.sr.batch_size = 16
  config.sr.num_steps = 600
  config.sr.num_epochs = 0
  config.sr.learning_rate = 1e-3
  config.sr.weight_decay = 1e-4

  config.eval.size = 128
  config.eval.batch_size = 16
  return config
