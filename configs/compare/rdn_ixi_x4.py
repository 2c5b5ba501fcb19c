"""RDN (Zhang et al., CVPR 2018): D = 16 residual dense blocks of C = 8 layers, G = G0 = 64, L1.

4x super-resolution on IXI at the paper's settings (configs/sr_ixi_x4.py: data, contrast argument,
schedule, budget), trained with its own paper's loss alone: a comparison row of Tables 1-2
(configs/compare/__init__.py says what differs from the paper config, mrsr_jax/models/rdn.py the
network).

  python run.py --config=configs/compare/rdn_ixi_x4.py --workdir=runs/compare/rdn_ixi_x4        # T1
  python run.py --config=configs/compare/rdn_ixi_x4.py:t2 --workdir=runs/compare/rdn_ixi_x4_t2  # T2
"""

from configs import compare


def get_config(contrast: str = ""):
  return compare.method_config("rdn", contrast)
