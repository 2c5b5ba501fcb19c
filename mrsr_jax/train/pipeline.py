"""The whole training pipeline: the stages the config names, in order, each resumed or skipped.

`train(config, workdir)` is what `run.py --mode=train` calls and what a notebook can call directly.
"""

from __future__ import annotations

import os

import jax
import ml_collections
from absl import logging

from mrsr_jax import baselines, config_check, sharding
from mrsr_jax.data import records
from mrsr_jax.train import loop
from mrsr_jax.train.stage_ae import AEStage
from mrsr_jax.train.stage_sr import SRStage
from mrsr_jax.train.stage_vit import ViTStage, num_pretext_classes

STAGES = {"vit": ViTStage, "ae": AEStage, "sr": SRStage}


def validate(config: ml_collections.ConfigDict, mesh=None) -> None:
  """Fails at start, with the field named, on a config that cannot run (every stage's fields are
  checked before the first one trains), or on a missing or empty prepared training split."""
  mesh = mesh or sharding.make_mesh()
  config_check.validate(config, num_devices=mesh.devices.size, num_processes=jax.process_count())
  baselines.check(config)
  records.check_split(loop.dataset_dir(config), "train")   # not prepared / empty: fail now, clearly
  if "vit" in config.stages:
    num_pretext_classes(config)    # a 'classify' pretext on a one-label set: fail now, not train nothing


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """<workdir>/config.json: the config the workdir's checkpoints are trained with. Replaced atomically
  (a kill never leaves half a record), and only when it changes."""
  path = os.path.join(workdir, "config.json")
  text = config.to_json_best_effort(indent=2)
  try:
    os.makedirs(workdir, exist_ok=True)
    if os.path.isfile(path):
      with open(path) as f:
        if f.read() == text:
          return
    tmp = f"{path}.tmp{os.getpid()}"
    try:
      with open(tmp, "w") as f:
        f.write(text)
      os.replace(tmp, path)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
  except OSError as e:
    raise type(e)(f"workdir {workdir}: cannot write {path}: "
                  f"{e.strerror or e}") from None


def train(config: ml_collections.ConfigDict, workdir: str, mesh=None, *,
          extra_losses=None) -> dict:
  """Runs every stage in `config.stages`; returns {stage: final TrainState}.

  `extra_losses` ({name: (weight, fn)}) adds user terms to the SR loss; see stage_sr.SRStage.
  """
  mesh = mesh or sharding.make_mesh()
  validate(config, mesh)
  # Before anything is written: a rerun that would change how the workdir's checkpoints were trained
  # stops here, its config.json and checkpoints untouched.
  config_check.check_workdir(config, workdir)
  if jax.process_index() == 0:
    write_config(config, workdir)
  states = {}
  for name in config.stages:
    logging.info("=== stage %s ===", name)
    stage = (SRStage(config, workdir, extra_losses) if name == "sr"
             else STAGES[name](config, workdir))
    states[name] = loop.train_stage(stage, mesh)
  # The comparison networks of the run's report (config.baselines), each an SR stage of its own in
  # <workdir>/baselines/<arch>/, resumed or skipped like the stages above; they go with the SR stage
  # (an invocation that trains only the ViT and the AE trains none).
  for arch in (config.baselines if "sr" in config.stages else ()):
    logging.info("=== baseline %s ===", arch)
    states[f"baseline_{arch}"] = train(baselines.config_for(config, arch), baselines.workdir_for(workdir, arch),
                                       mesh)["sr"]
  return states
