"""Comparison networks trained beside a run and scored as rows of its report (`config.baselines`).

The paper's claim is comparative (Tables 1-2: SRCNN, VDSR, EDSR, RDN, ... against the proposed
method). A run whose config names baselines, e.g. the demo's `("srcnn",)`, trains each after its own
stages, into `<workdir>/baselines/<arch>/`, and `--mode=eval` adds one row per baseline next to
bicubic and ours. A baseline is trained exactly like the run's SR stage — the same data, crops, batch,
LR models, optimiser, schedule and number of steps — with its own network (`models.PRESETS[arch]` at
`config.baselines_size`) and its paper's pixel loss alone (`models.LOSS[arch]`: MSE for SRCNN and
VDSR, L1 for EDSR and RDN), so a row differs from ours only in what the comparison is about.
`bench/compare_methods.py` builds its rows with the same function.
"""

from __future__ import annotations

import os

import ml_collections

from mrsr_jax import errors
from mrsr_jax import models

# A baseline's loss: its paper's pixel term alone (no adversarial or feature terms: no D, no extractors).
_PIXEL_ONLY = dict(pixel_weight=1.0, adv_weight=0.0, lambda_vit=0.0, lambda_str=0.0, lambda_tex=0.0)


def config_for(config: ml_collections.ConfigDict, arch: str, size: str | None = None) -> ml_collections.ConfigDict:
  """`config` with the SR stage of baseline `arch` (its network at `size`, default
  `config.baselines_size`, and its paper's pixel loss alone); only the SR stage, no baselines of its own."""
  cfg = config.copy_and_resolve_references()
  size = size or config.baselines_size
  cfg.sr.arch = arch
  cfg.sr.model = ml_collections.ConfigDict(models.preset(arch, size))
  cfg.sr.loss.update(pixel=models.LOSS[arch], **_PIXEL_ONLY)
  cfg.sr.remat = False
  cfg.stages = ("sr",)
  cfg.baselines = ()
  return cfg


def workdir_for(workdir: str, arch: str) -> str:
  return os.path.join(workdir, "baselines", arch)


def check(config: ml_collections.ConfigDict) -> None:
  """One error naming the field for a baseline that is not a comparison network or a size it lacks."""
  names = tuple(config.baselines)
  known = [a for a in models.GENERATORS if a != "srgan"]
  for arch in names:
    if arch not in known:
      raise errors.UserError(f"config.baselines: {arch!r} is not a comparison network; expected some of "
                       f"{', '.join(repr(a) for a in known)}")
  if len(set(names)) != len(names):
    raise errors.UserError(f"config.baselines: {names} names a network twice")
  size = config.baselines_size
  for arch in names:
    if size not in models.PRESETS[arch]:
      raise errors.UserError(f"config.baselines_size = {size!r}: {arch!r} has sizes "
                       f"{', '.join(repr(s) for s in models.PRESETS[arch])}")
