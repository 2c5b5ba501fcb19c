"""4× super-resolution on IXI brain, Tables 1–2 (T1, PD; T2): the paper's settings (4.1, App. B).

One model per contrast, as the paper reports them and as its training set implies (48,000 slices =
one contrast's 500 volumes × 96): the argument after ':' picks the contrast, t1 (the default), t2 or
pd; `all` pools the three in one model (configs/contrast.py, docs/paper_deviations.md). Each
contrast's set is prepared on its own (the same subjects in the same splits):

  python -m data_prep --dataset=ixi/t1 --manual_dir=/path/to/download --data_dir=data   # ixi/t2, ixi/pd
  python run.py --config=configs/sr_ixi_x4.py --workdir=runs/ixi_x4               # T1
  python run.py --config=configs/sr_ixi_x4.py:t2 --workdir=runs/ixi_x4_t2         # T2 (PD: :pd)
"""

from configs import base, contrast as contrast_lib


def get_config(contrast: str = ""):
  config = base.get_config()
  config.dataset = "ixi"
  config.contrast = contrast_lib.select("ixi", contrast)
  config.scale = 4
  config.crop_size = 240
  config.eval.size = 240
  # One 80 GB GPU holds this step at the paper's global batch of 256 by splitting each device's share
  # into microbatches of at most these sizes (gradients accumulated; docs/distributed.md, "Memory");
  # more GPUs, fewer microbatches, and none once a GPU's share is this small.
  config.vit.microbatch_per_device = 32
  config.ae.microbatch_per_device = 64
  config.sr.microbatch_per_device = 64
  return config
