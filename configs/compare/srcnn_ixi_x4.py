"""SRCNN (Dong et al., TPAMI 2016): the 9-1-5 network, n1 = 64, n2 = 32, on bicubic-upsampled LR, MSE.

4x super-resolution on IXI at the paper's settings (configs/sr_ixi_x4.py: data, contrast argument,
schedule, budget), trained with its own paper's loss alone: a comparison row of Tables 1-2
(configs/compare/__init__.py says what differs from the paper config, mrsr_jax/models/srcnn.py the
network).

  python run.py --config=configs/compare/srcnn_ixi_x4.py --workdir=runs/compare/srcnn_ixi_x4        # T1
  python run.py --config=configs/compare/srcnn_ixi_x4.py:t2 --workdir=runs/compare/srcnn_ixi_x4_t2  # T2
"""

from mrsr_jax.configs import compare


def get_config(contrast: str = ""):
  return compare.method_config("srcnn", contrast)
