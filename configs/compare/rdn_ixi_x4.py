"""RDN (Zhang et al., CVPR 2018): D = 16 residual dense blocks of C = 8 layers, G = G0 = 64, L1.

4x super-resolution on IXI at the paper's settings (configs/sr_ixi_x4.py: data, contrast argument,
schedule, budget), trained with its own paper's loss alone: a comparison row of Tables 1-2
(configs/compare/__init__.py says what differs from the paper config, mrsr_jax/models/rdn.py the
network).

  python run.py --config=configs/compare/rdn_ixi_x4.py --workdir=runs/compare/rdn_ixi_x4        # T1
  python run.py --config=configs/compare/rdn_ixi_x4.py:t2 --workdir=runs/compare/rdn_ixi_x4_t2  # T2
"""

from mrsr_jax.configs import compare


def get_config(contrast: str = ""):
  # RDN keeps 1.28 GiB per 240^2 slice for the backward pass (bench/memory.py, lowered for a GPU:
  # D x C concatenated feature maps at the LR size), so the paper config's microbatches of 64 would
  # need ~82 GiB: microbatches of 32 (~41 GiB) fit an 80 GB card. EDSR (0.57 GiB per slice), VDSR
  # (0.55) and SRCNN (0.07) keep the paper config's 64.
  return compare.method_config("rdn", contrast, microbatch_per_device=32)
