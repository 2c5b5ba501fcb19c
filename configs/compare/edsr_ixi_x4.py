"""EDSR (Lim et al., CVPRW 2017): 32 residual blocks x 256, res_scale 0.1, sub-pixel upsampler, L1.

4x super-resolution on IXI at the paper's settings (configs/sr_ixi_x4.py: data, contrast argument,
schedule, budget), trained with its own paper's loss alone: a comparison row of Tables 1-2
(configs/compare/__init__.py says what differs from the paper config, mrsr_jax/models/edsr.py the
network).

  python run.py --config=configs/compare/edsr_ixi_x4.py --workdir=runs/compare/edsr_ixi_x4        # T1
  python run.py --config=configs/compare/edsr_ixi_x4.py:t2 --workdir=runs/compare/edsr_ixi_x4_t2  # T2
"""

from mrsr_jax.configs import compare


def get_config(contrast: str = ""):
  return compare.method_config("edsr", contrast)
