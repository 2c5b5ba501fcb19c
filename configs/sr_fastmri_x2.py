"""2× super-resolution on fastMRI knee (PD, FS-PD), Table 2: the paper's settings (4.1, App. B).

One model on PD and FS-PD together, as Table 2's one fastMRI column (the default, `both`); `:pd` or
`:fspd` after the file name trains on one contrast (configs/contrast.py, docs/paper_deviations.md).
data_prep keeps every PD / FS-PD volume of fastMRI's train and val folders, not the paper's 227 + 24
pairs (see there).

  python -m data_prep --dataset=fastmri --manual_dir=/path/to/download --data_dir=data
  python run.py --config=configs/sr_fastmri_x2.py --workdir=runs/fastmri_x2
"""

from configs import base, contrast as contrast_lib


def get_config(contrast: str = ""):
  config = base.get_config()
  config.dataset = "fastmri"
  config.contrast = contrast_lib.select("fastmri", contrast)
  config.scale = 2
  config.crop_size = 320
  config.eval.size = 320
  # One 80 GB GPU holds this step at the paper's global batch of 256 by splitting each device's share
  # into microbatches of at most these sizes (gradients accumulated; docs/distributed.md, "Memory");
  # more GPUs, fewer microbatches, and none once a GPU's share is this small.
  config.vit.microbatch_per_device = 32
  config.ae.microbatch_per_device = 64
  config.sr.microbatch_per_device = 16
  # 100 epochs of the prepared set, as the paper (base.py's step counts are IXI's; paper_deviations.md row 31).
  config.ae.num_steps = config.sr.num_steps = 0
  return config
