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
  # 100 epochs of the prepared set, as the paper (base.py's step counts are IXI's; paper_deviations.md row 31).
  config.ae.num_steps = config.sr.num_steps = 0
  return config
