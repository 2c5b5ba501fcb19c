"""4× super-resolution on fastMRI knee (PD, FS-PD), Table 2: the paper's settings (4.1, App. B).

  python -m data_prep --dataset=fastmri --manual_dir=/path/to/download --data_dir=data
  python run.py --config=configs/sr_fastmri_x4.py --workdir=runs/fastmri_x4
"""

from configs import base


def get_config():
  config = base.get_config()
  config.dataset = "fastmri"
  config.scale = 4
  config.crop_size = 320
  config.eval.size = 320
  return config
