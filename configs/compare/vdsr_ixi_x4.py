"""VDSR (Kim et al., CVPR 2016): 20 conv layers x 64 on bicubic-upsampled LR, residual over it, MSE.

4x super-resolution on IXI at the paper's settings (configs/sr_ixi_x4.py: data, contrast argument,
schedule, budget), trained with its own paper's loss alone: a comparison row of Tables 1-2
(configs/compare/__init__.py says what differs from the paper config, mrsr_jax/models/vdsr.py the
network).

  python run.py --config=configs/compare/vdsr_ixi_x4.py --workdir=runs/compare/vdsr_ixi_x4        # T1
  python run.py --config=configs/compare/vdsr_ixi_x4.py:t2 --workdir=runs/compare/vdsr_ixi_x4_t2  # T2
"""

from mrsr_jax.configs import compare


def get_config(contrast: str = ""):
  return compare.method_config("vdsr", contrast)
