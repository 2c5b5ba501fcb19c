"""The paper's runs (Tables 1–2, Sec. 4.1, App. B) as one template: dataset × scale.

configs/sr_{ixi,fastmri}_x{2,4}.py are each one call of `paper_config`, so `--config=configs/sr_ixi_x4.py`
and its `:<contrast>` argument (configs/contrast.py) keep working; everything else is base.py's.
"""

import ml_collections

from mrsr_jax.configs import base, contrast as contrast_lib

# What a dataset changes: its slice size (IXI's 240² sub-volume, fastMRI's 320² knee) and whether the
# stage lengths are base.py's step counts (IXI: 100 epochs of the paper's one-contrast 48,000 slices) or
# 100 epochs of the prepared set (fastMRI: the prepared set is the paper's; paper_deviations.md row 31).
DATASETS = {"ixi": dict(size=240, epochs_of_prepared_set=False),
            "fastmri": dict(size=320, epochs_of_prepared_set=True)}

# One 80 GB GPU holds each stage's step at the paper's global batch of 256 by splitting each device's
# share into microbatches of at most these sizes (gradients accumulated; docs/distributed.md, "Memory");
# more GPUs, fewer microbatches, and none once a GPU's share is this small. The SR generator's
# activations grow with the LR size, so its microbatch depends on dataset and scale (bench/memory.py).
MICROBATCH = {"vit": 32, "ae": 64}
SR_MICROBATCH = {("ixi", 2): 32, ("ixi", 4): 64, ("fastmri", 2): 16, ("fastmri", 4): 32}


def paper_config(dataset: str, scale: int, contrast: str = "") -> ml_collections.ConfigDict:
  """`scale`× SR on `dataset` ("ixi" or "fastmri") at the paper's settings; `contrast` is the
  argument after ':' of `--config` (configs/contrast.py)."""
  config = base.get_config()
  config.dataset = dataset
  config.contrast = contrast_lib.select(dataset, contrast)
  config.scale = scale
  config.crop_size = config.eval.size = DATASETS[dataset]["size"]
  for stage, microbatch in MICROBATCH.items():
    config[stage].microbatch_per_device = microbatch
  config.sr.microbatch_per_device = SR_MICROBATCH[(dataset, scale)]
  if DATASETS[dataset]["epochs_of_prepared_set"]:
    config.ae.num_steps = config.sr.num_steps = 0     # num_epochs (100) of the prepared set
  return config
