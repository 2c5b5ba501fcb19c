"""The paper's comparison methods (Tables 1-2: SRCNN, VDSR, EDSR, RDN), each trained as a paper-scale
SR run of this pipeline: `configs/compare/<method>_ixi_x4.py`.

Each is `configs/sr_ixi_x4.py` (the same data, contrast argument, LR model, schedule, batch and step
budget, and microbatching unless the network needs more memory) with
  * `sr.arch` = the method and `sr.model` = its published size (`mrsr_jax.models.preset(arch, "paper")`);
  * the loss its paper trained with and nothing else: the pixel term alone (`pixel_weight` 1, its form
    `sr.loss.pixel` = `models.LOSS[arch]`, L1 or MSE), no L_adv (so no discriminator step) and no
    feature terms (so no ViT / AE stage: `stages=("sr",)`).

  python run.py --config=configs/compare/edsr_ixi_x4.py --workdir=runs/compare/edsr_ixi_x4
  python run.py --config=configs/compare/edsr_ixi_x4.py --workdir=runs/compare/edsr_ixi_x4 --mode=eval
  python bench/memory.py --config=configs/compare/edsr_ixi_x4.py --stage=sr   # memory per device
"""

import ml_collections

from mrsr_jax.configs import sr_ixi_x4

METHODS = ("srcnn", "vdsr", "edsr", "rdn")


def method_config(arch: str, contrast: str = "", microbatch_per_device: int | None = None):
  """The paper SR config with `arch`'s published network and its paper's pixel loss alone.
  `microbatch_per_device`: the SR stage's, when the network needs smaller microbatches than the
  paper config's generator to fit one 80 GB card (bench/memory.py)."""
  from mrsr_jax import models
  if arch not in METHODS:
    raise ValueError(f"configs/compare: unknown method {arch!r}; expected one of {', '.join(METHODS)}")
  config = sr_ixi_x4.get_config(contrast)
  config.stages = ("sr",)
  config.sr.arch = arch
  config.sr.model = ml_collections.ConfigDict(models.preset(arch, "paper"))
  config.sr.loss.update(adv_weight=0.0, lambda_vit=0.0, lambda_str=0.0, lambda_tex=0.0,
                        pixel_weight=1.0, pixel=models.LOSS[arch])
  if microbatch_per_device is not None:
    config.sr.microbatch_per_device = microbatch_per_device
  return config
