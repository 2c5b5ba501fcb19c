"""The whole training pipeline: the stages the config names, in order, each resumed or skipped.

`train(config, workdir)` is what `run.py --mode=train` calls and what a notebook can call directly.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from mrsr_jax import sharding
from mrsr_jax.data import records
from mrsr_jax.train import loop
from mrsr_jax.train.stage_ae import AEStage
from mrsr_jax.train.stage_sr import SRStage
from mrsr_jax.train.stage_vit import ViTStage

STAGES = {"vit": ViTStage, "ae": AEStage, "sr": SRStage}


def validate(config: ml_collections.ConfigDict, mesh=None) -> None:
  """Fails at start, with the field named, on a config that cannot run."""
  unknown = [s for s in config.stages if s not in STAGES]
  if unknown:
    raise ValueError(f"config.stages: unknown stage(s) {unknown}; choose from {list(STAGES)}")
  order = [s for s in STAGES if s in config.stages]
  if list(config.stages) != order:
    raise ValueError(f"config.stages must keep the pipeline order {list(STAGES)}, got {list(config.stages)}")
  if config.scale not in (2, 4):
    raise ValueError(f"config.scale must be 2 or 4, got {config.scale}")
  if config.degradation not in ("bicubic", "kspace"):
    raise ValueError(f"config.degradation must be 'bicubic' or 'kspace', got '{config.degradation}'")
  if config.sr.loss.feature_target not in ("lr", "hr"):
    raise ValueError(f"config.sr.loss.feature_target must be 'lr' or 'hr', got '{config.sr.loss.feature_target}'")
  try:
    jnp.dtype(config.dtype)
  except TypeError:
    raise ValueError(f"config.dtype '{config.dtype}' is not a dtype (float32 or bfloat16)") from None
  if config.crop_size % (4 * config.scale) or config.crop_size % config.vit.model.patch_size:
    raise ValueError(f"config.crop_size {config.crop_size} must be a multiple of 4×scale "
                     f"({4 * config.scale}) and of the ViT patch ({config.vit.model.patch_size})")
  if config.ae.crop_size % 16:
    raise ValueError(f"config.ae.crop_size {config.ae.crop_size} must be a multiple of 16 (4 poolings)")
  mesh = mesh or sharding.make_mesh()
  for name in config.stages:
    sharding.check_batch_size(config[name].batch_size, mesh)
  records.list_shards(loop.dataset_dir(config), "train")   # missing shards: fail now, clearly


def train(config: ml_collections.ConfigDict, workdir: str, mesh=None, *,
          extra_losses=None) -> dict:
  """Runs every stage in `config.stages`; returns {stage: final TrainState}.

  `extra_losses` ({name: (weight, fn)}) adds user terms to the SR loss; see stage_sr.SRStage.
  """
  mesh = mesh or sharding.make_mesh()
  validate(config, mesh)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  states = {}
  for name in config.stages:
    logging.info("=== stage %s ===", name)
    stage = (SRStage(config, workdir, extra_losses) if name == "sr"
             else STAGES[name](config, workdir))
    states[name] = loop.train_stage(stage, mesh)
  return states
