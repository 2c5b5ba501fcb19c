"""Checks a run config before anything runs: its numbers and options, and a rerun against its workdir.

`validate(config, ...)` checks every field each stage of `config.stages` will use (and the ViT / AE
model fields the SR loss builds its extractors from), so a bad value stops the run at start with the
field named, not after earlier stages have trained.

`check_workdir(config, workdir)` compares a rerun with the config the workdir was trained with
(`<workdir>/config.json`, else the config saved beside each stage's checkpoints). Once a stage has a
checkpoint, the fields that decide what its saved state is and how it was trained are fixed; only
`RESUMABLE` fields may change (to extend training, move the data, log or evaluate differently). A
mismatch raises `ConfigMismatchError` naming every differing field, before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Iterable, Mapping

import ml_collections

from mrsr_jax import errors
from mrsr_jax import config_schema
from mrsr_jax.config_schema import STAGE_NAMES, fail as _fail

# Fields that may differ between the run that wrote a workdir's checkpoints and a rerun that resumes
# them (`resumable=True` in mrsr_jax/config_schema.py). Everything else is fixed once a stage it
# concerns has a checkpoint; a field added to the configs later is fixed until declared resumable.
# A group name covers its whole sub-config.
RESUMABLE = config_schema.SCHEMA.resumable()

# Top-level fields only the SR stage uses (the LR model); other top-level fields concern every stage.
_SR_ONLY = ("scale", "degradation", "hamming")

# What the SR stage's frozen extractors must agree on with the workdir that trained them.
FEATURE_FIELDS = {"vit": ("crop_size", "vit.model", "vit.pretext", "vit.num_bins"),
                  "ae": ("crop_size", "ae.model", "ae.crop_size")}


class ConfigMismatchError(errors.UserError):
  """A rerun's config disagrees with the config its workdir's checkpoints were trained with."""


# -- field values ------------------------------------------------------------------------------------
def _get(config, field: str) -> Any:
  node = config
  for part in field.split("."):
    if part not in node:
      raise errors.UserError(f"config.{field} is missing (the config file must define it; "
                       f"configs/base.py's get_config() has every field)")
    node = node[part]
  return node


def validate(config: ml_collections.ConfigDict, *, num_devices: int, num_processes: int = 1) -> None:
  """Raises ValueError naming the first field of `config` that training cannot run with: each
  declared field's own check (config_schema), then the rules that relate fields to each other."""
  stages = _check_stages(config)
  for field in config_schema.FIELDS:
    if field.check is not None and (field.stage is None or field.stage in stages):
      field.check(field.name, _get(config, field.name))
  _check_shapes(config)
  _check_batches(config, stages, num_devices=num_devices, num_processes=num_processes)
  if "sr" in stages:
    _sr_model(config)
  if "vit" in stages:
    warn_unpretrained_vit(config)


def _check_stages(config) -> tuple[str, ...]:
  field = config_schema.SCHEMA.by_name["stages"]
  stages = _get(config, "stages")
  field.check("stages", stages)
  unknown = [s for s in stages if s not in STAGE_NAMES]
  if unknown:
    _fail("stages", tuple(stages), f"unknown stage(s) {unknown}; choose from {list(STAGE_NAMES)}")
  if list(stages) != [s for s in STAGE_NAMES if s in stages]:
    _fail("stages", tuple(stages), f"must keep the pipeline order {list(STAGE_NAMES)}")
  return tuple(stages)


def _check_shapes(config) -> None:
  """The LR model and the crops: what the networks' shapes need of each other."""
  if config.hamming and config.degradation != "kspace":
    _fail("hamming", True, "applies to degradation='kspace' only")
  heads, hidden = config.vit.model.num_heads, config.vit.model.hidden_size
  if hidden % heads:
    _fail("vit.model.hidden_size", hidden, f"must be a multiple of vit.model.num_heads ({heads})")
  crop, scale, patch = config.crop_size, config.scale, config.vit.model.patch_size
  if crop % (4 * scale) or crop % patch:
    _fail("crop_size", crop, f"must be a multiple of 4×scale ({4 * scale}) and of the ViT patch "
          f"vit.model.patch_size ({patch})")
  ae_crop = _get(config, "ae.crop_size") or crop
  if ae_crop <= 0 or ae_crop % 16:
    _fail("ae.crop_size", ae_crop, "must be a positive multiple of 16 (the encoder's 4 poolings)")


def _check_batches(config, stages, *, num_devices: int, num_processes: int) -> None:
  """Each trained stage's batch against the devices and readers, and its length."""
  readers = config.input_readers or num_processes
  if readers % num_processes:
    _fail("input_readers", readers, f"must be a multiple of the {num_processes} processes")
  for name in stages:
    batch = config[name].batch_size
    if batch % num_devices:
      _fail(f"{name}.batch_size", batch, f"the global batch must be a multiple of the {num_devices} "
            f"devices")
    if batch % readers:
      _fail(f"{name}.batch_size", batch, f"the global batch must be a multiple of the {readers} input "
            f"readers (config.input_readers)")
    if not config[name].num_steps and not config[name].num_epochs:
      _fail(f"{name}.num_steps", config[name].num_steps,
            f"set it, or {name}.num_epochs, to a positive number")


def _sr_model(config) -> None:
  """`sr.arch` and the `sr.model` fields of that generator (mrsr_jax/models/), each by its kind: a
  size >= 1 (int), a scale factor > 0 (float), a switch (bool); plus the choices some fields have."""
  from mrsr_jax import models
  arch = _get(config, "sr.arch")
  models.check_arch(arch)
  models.check_model_fields(arch, config.sr.model)
  for name, default in models.model_fields(arch).items():
    field = f"sr.model.{name}"
    if name not in config.sr.model:
      continue                                 # the generator's default
    if name == "channels":
      check = config_schema.Choice(1)          # the MR slices are single-channel
    elif name == "norm":
      check = config_schema.Choice("batch", "none")
    elif isinstance(default, bool):
      check = config_schema.BOOL
    elif isinstance(default, int):
      check = config_schema.Int(2 if (arch, name) == ("vdsr", "num_layers") else 1)
    elif isinstance(default, float):
      check = config_schema.Real(low_open=True)
    else:
      continue
    check(field, config.sr.model[name])
  if config.sr.remat and "remat" not in {f.name for f in dataclasses.fields(models.GENERATORS[arch])}:
    _fail("sr.remat", True, f"the {arch!r} generator (sr.arch) has no blocks to rematerialise")


# UNETR's ViT-B/16 (App. B): the ViT whose pretrained MONAI weights `vit.init_checkpoint` loads.
PAPER_VIT = dict(patch_size=16, hidden_size=768, mlp_dim=3072, num_layers=12, num_heads=12)


def warn_unpretrained_vit(config: ml_collections.ConfigDict) -> bool:
  """Logs a warning (and returns True) when the ViT stage will fine-tune the paper's ViT from scratch.

  The paper fine-tunes UNETR's ViT *pre-trained* for MR segmentation (3.2); no weights ship with this
  package, so without `vit.init_checkpoint` the "fine-tuning" is the ViT's whole training, and L_ViT
  compares features of a different network than the paper's. The warning is tied to the ViT's size,
  not to a config's name: a ViT of UNETR's ViT-B/16 size is the one such a checkpoint exists for (the
  paper configs, or a user's config at the paper's size); the small demo / test ViTs have none."""
  model = config.vit.model
  if config.vit.init_checkpoint or any(model.get(k) != v for k, v in PAPER_VIT.items()):
    return False
  from absl import logging
  logging.warning(
      "vit.init_checkpoint is not set: the paper fine-tunes UNETR's ViT pre-trained for MR "
      "segmentation (Sec. 3.2); this run trains the ViT-B/16 from scratch on its own slices with the "
      "'%s' pretext, so L_ViT compares features of another network than the paper's. Pass "
      "--config.vit.init_checkpoint=/path/to/UNETR_model.pt (a MONAI UNETR state dict) for the "
      "paper's setting.", config.vit.pretext)
  return True


# -- a rerun against its workdir ---------------------------------------------------------------------
def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"sr.model.features": 64, ...} of a (JSON-decoded) config."""
  out = {}
  for k, v in tree.items():
    path = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(flatten(v, path + "."))
    else:
      out[path] = v
  return out


def as_json_tree(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as config.json stores it (tuples as lists, references resolved)."""
  return json.loads(config.to_json_best_effort())


# Exceptions to RESUMABLE: the SR cosine schedule decays over the stage's whole length, so its steps
# already taken assumed that length.
_LENGTH_FIELDS = ("sr.num_steps", "sr.num_epochs")
RESUMABLE_NOTE = ("(sr.num_steps / sr.num_epochs not with sr.lr_schedule='cosine': its decay spans "
                  "the stage)")


def resumable(field: str, recorded: Mapping[str, Any] | None = None,
              asked: Mapping[str, Any] | None = None) -> bool:
  if field in _LENGTH_FIELDS and "cosine" in ((recorded or {}).get("sr.lr_schedule"),
                                              (asked or {}).get("sr.lr_schedule")):
    return False
  return any(field == p or field.startswith(p + ".") for p in RESUMABLE)


def concerns(field: str, stage: str) -> bool:
  """Whether `field` decides what `stage`'s checkpoints hold or how they were trained."""
  top = field.split(".", 1)[0]
  if top in STAGE_NAMES:
    # The SR stage's loss is computed with the ViT and AE the vit/ae fields describe.
    return top == stage or (stage == "sr" and top in ("vit", "ae"))
  if top in _SR_ONLY:
    return stage == "sr"
  return True    # dataset, seed, dtype, crop_size, grad_clip_norm, and any new top-level field


def _show(value: Any) -> str:
  return repr(value) if isinstance(value, str) else json.dumps(value)


def differences(recorded: Mapping[str, Any], asked: Mapping[str, Any], fields: Iterable[str],
                where: str = "in the workdir") -> list[str]:
  """'sr.model.features: 64 in the workdir, 16 asked' for each of `fields` that differs."""
  out = []
  for f in sorted(set(fields)):
    a, b = recorded.get(f, IMPLIED.get(f, _ABSENT)), asked.get(f, IMPLIED.get(f, _ABSENT))
    if a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)):
      continue
    out.append(f"{f}: {'absent' if a is _ABSENT else _show(a)} {where}, "
               f"{'absent' if b is _ABSENT else _show(b)} asked")
  return out


_ABSENT = object()

# Fields added after workdirs were written, and the value their absence meant (what the code did
# before them; `absent=` in config_schema): a workdir trained before `sr.arch` existed trained the
# "srgan" generator with an L1 pixel term, so resuming it with the defaults is no change.
IMPLIED = config_schema.SCHEMA.implied()


def read_config_json(path: str) -> dict[str, Any]:
  try:
    with open(path) as f:
      tree = json.load(f)
  except json.JSONDecodeError as e:
    raise errors.UserError(f"{path}: not valid JSON ({e}); it records how this workdir was trained: restore "
                     f"it, or use a new workdir") from None
  if not isinstance(tree, dict):
    raise errors.UserError(f"{path}: not a config (a JSON object expected)")
  return tree


def trained_stages(workdir: str) -> list[str]:
  """The stages with at least one complete checkpoint in `workdir`."""
  from mrsr_jax.train import checkpoints
  return [s for s in STAGE_NAMES
          if checkpoints.latest_step(os.path.join(workdir, s, "checkpoints")) is not None]


def recorded_config(workdir: str, stages: Iterable[str]) -> tuple[dict[str, Any], str] | None:
  """(flat recorded config, where it came from) of a workdir whose `stages` have checkpoints."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    return flatten(read_config_json(path)), path
  # A workdir without config.json (deleted, or written by an older version): each checkpoint also
  # stores the config it was trained with.
  from mrsr_jax.train import checkpoints
  for stage in stages:
    directory = os.path.join(workdir, stage, "checkpoints")
    meta = checkpoints.read_meta(directory)
    if isinstance(meta.get("config"), str):
      return flatten(json.loads(meta["config"])), f"the checkpoint meta in {directory}"
  return None


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises ConfigMismatchError if `config` changes a field fixed by a checkpoint in `workdir`, or
  disagrees with the ViT / AE of `sr.features_workdir` that the SR stage will load. Reads only."""
  asked = flatten(as_json_tree(config))
  trained = trained_stages(workdir) if os.path.isdir(workdir) else []
  if trained:
    found = recorded_config(workdir, trained)
    if found is not None:
      recorded, source = found
      fields = [f for f in set(recorded) | set(asked)
                if not resumable(f, recorded, asked) and any(concerns(f, s) for s in trained)]
      diff = differences(recorded, asked, fields)
      if diff:
        raise ConfigMismatchError(
            f"{workdir}: this rerun changes how its checkpoints ({', '.join(trained)}) were trained "
            f"({source}): {'; '.join(diff)}. Only these fields may change on a resume: "
            f"{', '.join(RESUMABLE)} {RESUMABLE_NOTE}. Pass the workdir's values, use a new "
            f"--workdir, or delete the stage folders to retrain them.")

  features_dir = config.sr.features_workdir if "sr" in config.stages else ""
  if features_dir and os.path.abspath(features_dir) != os.path.abspath(workdir):
    from mrsr_jax import features
    needed = features.needed(config.sr.loss)
    used = [s for s, uses in (("vit", "vit" in needed), ("ae", bool(needed & {"z_s", "z_t"}))) if uses]
    have = trained_stages(features_dir) if os.path.isdir(features_dir) else []
    missing = [s for s in used if s not in have]
    if missing:
      raise FileNotFoundError(
          f"sr.features_workdir {features_dir}: the SR loss needs its {' and '.join(missing)} "
          f"checkpoint(s), and it has none: train them there first, or point sr.features_workdir at "
          f"a workdir that has them")
    present = used
    found = recorded_config(features_dir, present) if present else None
    if found is not None:
      recorded, source = found
      fields = [f for f in set(recorded) | set(asked)
                if any(f == p or f.startswith(p + ".") for s in present for p in FEATURE_FIELDS[s])]
      diff = differences(recorded, asked, fields, where="there")
      if diff:
        raise ConfigMismatchError(
            f"sr.features_workdir {features_dir}: its {' and '.join(present)} stage(s) were trained "
            f"with another model ({source}): {'; '.join(diff)}. Pass its values or point "
            f"sr.features_workdir at a workdir trained with this config.")
