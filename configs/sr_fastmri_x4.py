"""4× super-resolution on fastMRI knee (PD, FS-PD), Table 2: the paper's settings (4.1, App. B).

One model on PD and FS-PD together, as Table 2's one fastMRI column (the default, `both`); `:pd` or
`:fspd` after the file name trains on one contrast (configs/contrast.py, docs/paper_deviations.md).
data_prep keeps every PD / FS-PD volume of fastMRI's train and val folders, not the paper's 227 + 24
pairs (see there).

  python -m data_prep --dataset=fastmri --manual_dir=/path/to/download --data_dir=data
  python run.py --config=configs/sr_fastmri_x4.py --workdir=runs/fastmri_x4
"""

from mrsr_jax.configs import paper


def get_config(contrast: str = ""):
  return paper.paper_config("fastmri", 4, contrast)
