"""4× super-resolution on IXI brain (T1, T2, PD), Table 1: the paper's settings (4.1, App. B).

  python -m data_prep --dataset=ixi --manual_dir=/path/to/download --data_dir=data
  python run.py --config=configs/sr_ixi_x4.py --workdir=runs/ixi_x4
"""

from configs import base


def get_config():
  config = base.get_config()
  config.dataset = "ixi"
  config.scale = 4
  config.crop_size = 240
  config.eval.size = 240
  return config
