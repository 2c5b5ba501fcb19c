"""Shared by the ablation configs: one row of Tables 1–2 is just a setting of the λ weights.

Each ablation config takes the base run as its argument (default ixi_x4), and after a second ':' the
base run's contrast (configs/contrast.py; default the paper config's), e.g.
  python run.py --config=configs/ablation_vit.py:fastmri_x2 --workdir=runs/fastmri_x2_vit \
      --config.sr.features_workdir=runs/fastmri_x2
  python run.py --config=configs/ablation_vit.py:ixi_x4:t2 --workdir=runs/ixi_x4_t2_vit  # features: runs/ixi_x4_t2
Only the SR stage runs: the frozen ViT and AE come from the full run's workdir (`features_workdir`),
so every row of a table compares SR networks trained against the very same feature extractors.
"""

import importlib

from mrsr_jax.losses import TABLE_ABLATIONS


def ablation_config(row: str, run: str):
  run, _, contrast = (run or "ixi_x4").partition(":")
  try:
    module = importlib.import_module(f"mrsr_jax.configs.sr_{run}")
  except ModuleNotFoundError:
    raise ValueError(f"unknown base run '{run}' (ixi_x2, ixi_x4, fastmri_x2, fastmri_x4)") from None
  config = module.get_config(contrast)
  config.sr.loss.update(TABLE_ABLATIONS[row])
  config.stages = ("sr",)
  config.sr.features_workdir = f"runs/{run}_{contrast}" if contrast else f"runs/{run}"
  return config
