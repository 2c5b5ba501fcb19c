"""2× super-resolution on IXI brain, Tables 1–2 (T1, PD; T2): the paper's settings (4.1, App. B).

One model per contrast, as the paper reports them and as its training set implies (48,000 slices =
one contrast's 500 volumes × 96): the argument after ':' picks the contrast, t1 (the default), t2 or
pd; `all` pools the three in one model (configs/contrast.py, docs/paper_deviations.md). Each
contrast's set is prepared on its own (the same subjects in the same splits):

  python -m data_prep --dataset=ixi/t1 --manual_dir=/path/to/download --data_dir=data   # ixi/t2, ixi/pd
  python run.py --config=configs/sr_ixi_x2.py --workdir=runs/ixi_x2               # T1
  python run.py --config=configs/sr_ixi_x2.py:t2 --workdir=runs/ixi_x2_t2         # T2 (PD: :pd)
"""

from mrsr_jax.configs import paper


def get_config(contrast: str = ""):
  return paper.paper_config("ixi", 2, contrast)
