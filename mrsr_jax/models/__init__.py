"""The paper's networks in Flax Linen: UNETR's ViT and the full UNETR (with MONAI weight import), the
swapping autoencoder, the SRGAN-style SR generator and discriminator, and the comparison generators of
its Tables 1-2 (SRCNN, VDSR, EDSR, RDN), selected by `config.sr.arch` through `GENERATORS`."""

import dataclasses

from mrsr_jax import errors
from mrsr_jax.models.edsr import EDSR
from mrsr_jax.models.monai_import import convert_unetr_state_dict, convert_vit_state_dict
from mrsr_jax.models.rdn import RDN
from mrsr_jax.models.srcnn import SRCNN
from mrsr_jax.models.srgan import SRDiscriminator, SRGenerator
from mrsr_jax.models.swap_ae import SwapDiscriminator, SwapEncoder, SwapGenerator
from mrsr_jax.models.unetr import UNETR
from mrsr_jax.models.vdsr import VDSR
from mrsr_jax.models.vit import PretextViT, ViT, vit2d_params_from_3d, vit_feature
from mrsr_jax.models import edsr, rdn, srcnn, vdsr

# `config.sr.arch` -> the generator class the SR stage trains (`stage_sr.generator`).
GENERATORS = {"srgan": SRGenerator, "srcnn": SRCNN, "vdsr": VDSR, "edsr": EDSR, "rdn": RDN}

# The pixel loss each paper trained with (`config.sr.loss.pixel`): SRCNN and VDSR the mean squared
# error, EDSR and RDN L1 (both papers found it trains better than L2); ours L1 (docs/design.md).
LOSS = {"srcnn": "mse", "vdsr": "mse", "edsr": "l1", "rdn": "l1", "srgan": "l1"}

# The project's generator: "paper" is the paper configs' (configs/base.py: App. E's 16 blocks x 64,
# BatchNorm, residual over bicubic), "reduced" the demo's (configs/demo.py: 6 x 32).
_SRGAN_PRESETS = {
    "paper": dict(num_blocks=16, features=64, residual=True, norm="batch"),
    "reduced": dict(num_blocks=6, features=32, residual=True, norm="batch"),
}
PRESETS = {"srgan": _SRGAN_PRESETS, "srcnn": srcnn.PRESETS, "vdsr": vdsr.PRESETS, "edsr": edsr.PRESETS,
           "rdn": rdn.PRESETS}

# Generator fields that are not architecture (`config.sr.model`): set by the SR stage from
# `config.scale`, `config.dtype`, `config.sr.remat` and the backend, or Flax's own.
_NOT_MODEL_FIELDS = ("scale", "dtype", "param_dtype", "remat", "conv_impl", "parent", "name")


def check_arch(arch: str) -> type:
  """The generator class of `arch`, or one error listing the known ones."""
  if arch not in GENERATORS:
    raise errors.UserError(f"config.sr.arch = {arch!r}: unknown generator; expected one of "
                     f"{', '.join(repr(a) for a in GENERATORS)}")
  return GENERATORS[arch]


def model_fields(arch: str) -> dict:
  """{field: default} of the `config.sr.model` fields generator `arch` takes."""
  return {f.name: f.default for f in dataclasses.fields(check_arch(arch))
          if f.init and f.name not in _NOT_MODEL_FIELDS}


def check_model_fields(arch: str, fields) -> None:
  """One error naming every `config.sr.model` field `arch` does not have, with the valid ones."""
  valid = model_fields(arch)
  unknown = [k for k in fields if k not in valid]
  if unknown:
    raise errors.UserError(f"config.sr.model.{unknown[0]}: the {arch!r} generator (config.sr.arch) has no "
                     f"field{'s' if len(unknown) > 1 else ''} {', '.join(repr(k) for k in unknown)}; "
                     f"its fields are {', '.join(valid)} (configs/compare/ sets each generator's)")


def preset(arch: str, size: str) -> dict:
  """The `config.sr.model` fields of `arch` at `size`: "paper" (the published network) or "reduced"
  (a stated smaller one for CPU runs, about the cost of the demo's 6 x 32 generator); a copy."""
  check_arch(arch)
  if size not in PRESETS[arch]:
    raise errors.UserError(f"preset({arch!r}, {size!r}): unknown size; expected one of "
                     f"{', '.join(repr(s) for s in PRESETS[arch])}")
  return dict(PRESETS[arch][size])

__all__ = [
    "EDSR",
    "GENERATORS",
    "LOSS",
    "PRESETS",
    "PretextViT",
    "RDN",
    "SRCNN",
    "SRDiscriminator",
    "SRGenerator",
    "SwapDiscriminator",
    "SwapEncoder",
    "SwapGenerator",
    "UNETR",
    "VDSR",
    "ViT",
    "check_arch",
    "check_model_fields",
    "convert_unetr_state_dict",
    "convert_vit_state_dict",
    "model_fields",
    "preset",
    "vit2d_params_from_3d",
    "vit_feature",
]
