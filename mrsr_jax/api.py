"""The package from a notebook (or Colab): configs, data, networks, the SR loss, training, pictures.

  from mrsr_jax import api
  config = api.load_config("demo", data_dir="data")
  api.prepare_sample_data(config)                       # the bundled real MR sample, once
  api.train(config, "runs/full")                        # ViT, autoencoder, SR GAN
  api.train_sr(config, "runs/vit", features_workdir="runs/full", loss="vit")   # an ablation row
  report = api.evaluate(config, "runs/full", ablation_workdirs={"vit": "runs/vit"})

Every function is a thin layer over the pieces `run.py` uses (configs/*.py, data_prep, the tf.data
pipeline, the stages, `losses.sr_generator_loss`, `evaluate`), so a notebook computes exactly what the
command line does. A loss term of your own plugs into the SR step without editing the package:

  def edge(*, sr, hr, **unused):     # called with sr, hr, lr, feats_sr, feats_target (keywords)
    return jnp.mean(jnp.abs(jnp.diff(sr, axis=1) - jnp.diff(hr, axis=1)))
  api.train_sr(config, "runs/edge", features_workdir="runs/full", extra_losses={"edge": (0.5, edge)})

It is traced into the same jit-compiled, data-parallel step as the built-in terms (so it must be a
JAX function of its arrays) and logged as `sr/g_edge` in `<workdir>/sr/metrics.jsonl`.

Workdirs resume: a stage whose checkpoints already reach its step count is skipped, so re-running a
cell is cheap. Pass `restart=True` to `train` / `train_sr` after changing a setting for the same
workdir, or use a new workdir per experiment.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mrsr_jax import errors
from mrsr_jax import evaluate as evaluate_lib
from mrsr_jax import config_loader, features, inference, losses, metrics, sharding
from mrsr_jax.data import degrade, pipeline, records
from mrsr_jax.train import loop
from mrsr_jax.train import pipeline as train_pipeline
from mrsr_jax.train.stage_ae import AEStage
from mrsr_jax.train.stage_sr import LossTerm, SRStage, generator, make_lr
from mrsr_jax.train.stage_vit import ViTStage
from mrsr_jax.train.state import TrainState

__all__ = [
    "ALL_FEATURES", "LossBreakdown", "LossTerm", "Networks", "TABLE_ABLATIONS", "build_networks",
    "compare_runs", "count_params", "evaluate", "find_configs_dir", "get_batch", "init_networks",
    "load_config", "load_feature_extractors", "loss_breakdown", "loss_table", "plot_curves",
    "prepare_sample_data", "read_curves", "show_images", "super_resolve", "train", "train_sr",
    "with_loss",
]

TABLE_ABLATIONS = losses.TABLE_ABLATIONS
# The frozen features Eq. 9 can use: f_ViT (Eq. 8) and the autoencoder's structure / texture codes (Eq. 7).
ALL_FEATURES = ("vit", "z_s", "z_t")
# Eq. 9's terms as `losses.sr_generator_loss` names them, and the config.sr.loss field weighing each.
TERM_WEIGHTS = {"adv": "adv_weight", "vit": "lambda_vit", "str": "lambda_str", "tex": "lambda_tex",
                "pixel": "pixel_weight"}
ExtraLosses = Mapping[str, tuple[float, LossTerm]]


# -- configs ----------------------------------------------------------------------------------------
def find_configs_dir() -> pathlib.Path:
  """The folder of the run configs (the package `mrsr_jax.configs`: a clone's configs/, or the
  installed copy)."""
  return config_loader.configs_dir()


def load_config(name: str = "demo", *, data_dir: str | None = None,
                overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
  """A run config by name (`"demo"`, `"tiny"`, `"sr_ixi_x4"`, `"ablation_vit:ixi_x2"`,
  `"compare.edsr_ixi_x4"`) or by path, loaded as run.py loads `--config` (mrsr_jax/config_loader.py).

  Args:
    name: a file of `configs/` without `.py`, or the path of any `get_config()` file; `:arg` after
      it is passed to `get_config(arg)`, as on the command line of run.py.
    data_dir: where the shards are (`<data_dir>/<config.dataset>/`); default: the config's.
    overrides: dotted fields to set, e.g. `{"sr.num_steps": 200, "sr.loss.lambda_vit": 0.0}`.

  Returns:
    A fresh ConfigDict (changing it changes nothing else).
  """
  return config_loader.load(name, data_dir=data_dir, overrides=overrides, what="load_config: ")


def with_loss(config: ml_collections.ConfigDict, loss: str | Mapping[str, float]
              ) -> ml_collections.ConfigDict:
  """A copy of `config` with the SR loss weights of a Table 1–2 row (`"full"`, `"vit"`, `"tex+str"`,
  ...) or with the given `config.sr.loss` fields, e.g. `{"lambda_tex": 0.5, "pixel_weight": 0.0}`."""
  config = config.copy_and_resolve_references()
  if isinstance(loss, str):
    if loss not in TABLE_ABLATIONS:
      raise errors.UserError(f"loss '{loss}' is not a row of Tables 1-2 (rows: {', '.join(TABLE_ABLATIONS)})")
    loss = TABLE_ABLATIONS[loss]
  for key, value in loss.items():
    if key not in config.sr.loss:
      raise errors.UserError(f"loss weight '{key}' is not a field of config.sr.loss "
                       f"({', '.join(sorted(config.sr.loss.keys()))})")
    config.sr.loss[key] = value
  return config


# -- data -------------------------------------------------------------------------------------------
def prepare_sample_data(config_or_data_dir: ml_collections.ConfigDict | str = "data") -> str:
  """Builds the bundled real-MR sample shards unless already there: six IXI T1 subjects bundled with
  data_prep (split by subject) plus nilearn / dipy / nibabel volumes for training.

  Takes a config (its `data_dir`) or a folder; returns the shard directory `<data_dir>/sample`.
  """
  if isinstance(config_or_data_dir, ml_collections.ConfigDict):
    if config_or_data_dir.dataset != "sample":
      raise errors.UserError(f"prepare_sample_data: config.dataset is '{config_or_data_dir.dataset}', not "
                       f"'sample'; build those shards with `python -m data_prep "
                       f"--dataset={config_or_data_dir.dataset} --manual_dir=... --data_dir=...`")
    data_dir = config_or_data_dir.data_dir
  else:
    data_dir = config_or_data_dir
  data_dir = os.path.expanduser(str(data_dir))
  dataset_dir = os.path.join(data_dir, "sample")
  try:
    for split in ("train", "val", "test"):
      records.list_shards(dataset_dir, split)
    records.read_info(dataset_dir)
    return dataset_dir
  except (FileNotFoundError, ValueError):
    pass
  from data_prep import __main__ as data_prep_main
  rc = data_prep_main.main(["--dataset=sample", f"--data_dir={data_dir}", "--no_progress"])
  if rc != 0:
    raise RuntimeError(f"data_prep --dataset=sample --data_dir={data_dir} failed (exit status {rc}); "
                       f"see the messages above")
  return dataset_dir


def get_batch(config: ml_collections.ConfigDict, *, split: str = "test", batch_size: int | None = None,
              index: int = 0) -> dict[str, np.ndarray]:
  """One batch of `split` as numpy: HR crops and the LR inputs made from them as in training.

  Held-out splits give centre crops in a fixed order (batch `index` of one pass, padding rows
  dropped); `"train"` gives the random crops of the training stream. Crops are `config.crop_size`,
  the size the SR loss and its frozen ViT work at.

  Returns:
    {"hr" [B, M, M, 1], "lr" [B, M/s, M/s, 1] (`config.degradation`), "bicubic" [B, M, M, 1] (the
    bicubic baseline), "label", "subject", "slice_index", "orientation" (each slice's two axis codes
    for `show_images`, "" where the data do not carry them)}.
  """
  batch_size = batch_size or config.sr.batch_size
  train = split == "train"
  ds = pipeline.create_dataset(loop.dataset_dir(config), split, global_batch_size=batch_size,
                               crop_size=config.crop_size, seed=config.seed, train=train,
                               process_index=0, process_count=1)
  for i, batch in enumerate(pipeline.iterate(ds)):
    if i == index:
      break
  else:
    raise errors.UserError(f"get_batch: split '{split}' has fewer than {index + 1} batches of {batch_size}")
  keep = batch["mask"]
  hr = batch["hr"][keep].astype(np.float32)
  lr = np.asarray(make_lr(config, jnp.asarray(hr)))
  orientation = np.asarray(evaluate_lib._orientations(batch))[keep]
  return {"hr": hr, "lr": lr, "bicubic": np.asarray(degrade.upsample_bicubic(lr, config.scale)),
          "label": batch["label"][keep], "subject": batch["subject"][keep],
          "slice_index": batch["slice_index"][keep], "orientation": orientation}


# -- networks ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Networks:
  """The Flax modules of the three stages, as the config builds them."""
  vit: Any               # PretextViT: UNETR's 2D ViT with the self-supervised head (stage 1)
  ae_encoder: Any        # SwapEncoder: slice -> (structure z_s, texture z_t) (stage 2)
  ae_generator: Any      # SwapGenerator: (z_s, z_t) -> slice
  ae_discriminator: Any  # SwapDiscriminator
  sr_generator: Any      # SRGenerator: LR -> SR (stage 3)
  sr_discriminator: Any  # SRDiscriminator


def _stages(config, workdir: str = "") -> dict[str, loop.Stage]:
  return {"vit": ViTStage(config, workdir), "ae": AEStage(config, workdir), "sr": SRStage(config, workdir)}


def build_networks(config: ml_collections.ConfigDict) -> Networks:
  """The modules of the three networks (uninitialised: use `init_networks` for parameters)."""
  s = _stages(config)
  return Networks(vit=s["vit"].model, ae_encoder=s["ae"].enc, ae_generator=s["ae"].gen,
                  ae_discriminator=s["ae"].disc, sr_generator=s["sr"].gen, sr_discriminator=s["sr"].disc)


def init_networks(config: ml_collections.ConfigDict, *, stages: Sequence[str] = ("vit", "ae", "sr"),
                  seed: int | None = None, mesh=None) -> dict[str, TrainState]:
  """Freshly initialised train states of `stages` ("vit", "ae", "sr"), exactly as training starts
  them (params per network under `state.params`, e.g. `state.params["gen"]` of "sr")."""
  mesh = mesh or sharding.make_mesh()
  seed = config.seed if seed is None else seed
  all_stages = _stages(config)
  unknown = [s for s in stages if s not in all_stages]
  if unknown:
    raise errors.UserError(f"init_networks(stages): unknown stage(s) {unknown}; choose from {list(all_stages)}")
  out = {}
  for name in stages:
    init, _ = loop.init_state(all_stages[name], mesh)
    out[name] = init(jax.random.key(seed))
  return out


def count_params(tree: Any) -> int:
  """Number of scalars in a params pytree (or a TrainState's `params`)."""
  if isinstance(tree, TrainState):
    tree = tree.params
  return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


# -- frozen feature extractors ----------------------------------------------------------------------
def load_feature_extractors(config: ml_collections.ConfigDict, workdir: str, *,
                            which: Sequence[str] = ALL_FEATURES, mesh=None) -> dict[str, Any]:
  """The frozen ViT / autoencoder-encoder params of `workdir`'s trained "vit" and "ae" stages.

  The same restore the SR stage does (`SRStage.frozen`). `which` picks features among
  `ALL_FEATURES` ("vit" needs the ViT stage, "z_s" / "z_t" the autoencoder); all by default, so
  every term of Eq. 9 can be computed whatever the config's weights.

  Returns:
    {"vit": ViT params, "ae_enc": encoder params} (the keys `features.extract` reads).
  """
  unknown = set(which) - set(ALL_FEATURES)
  if unknown:
    raise errors.UserError(f"load_feature_extractors(which): unknown features {sorted(unknown)}; "
                     f"choose from {ALL_FEATURES}")
  config = config.copy_and_resolve_references()
  config.sr.features_workdir = str(workdir)
  stage = SRStage(config, str(workdir))
  stage.which = set(which)
  return stage.frozen(mesh or sharding.make_mesh())


# -- the SR loss (Eq. 9) ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LossBreakdown:
  """Eq. 9 on one batch, term by term.

  terms: the unweighted value of every term that could be computed (`adv`, `vit`, `str`, `tex`,
    `pixel`, and each extra term), whether or not the config's weights use it.
  weights: each term's weight in the objective (0 = not in it).
  total: the objective sum(weight * term), as the SR training step minimises it.
  """
  terms: dict[str, float]
  weights: dict[str, float]
  total: float

  @property
  def weighted(self) -> dict[str, float]:
    return {k: self.weights.get(k, 0.0) * v for k, v in self.terms.items()}

  def __str__(self) -> str:
    return loss_table({"batch": self})


def super_resolve(config: ml_collections.ConfigDict, source: str | TrainState, lr: Any, *,
                  mesh=None) -> np.ndarray:
  """SR images [B, M, M, 1] of LR inputs [B, M/s, M/s, 1] by a generator in inference mode.

  `source` is a workdir (its latest SR checkpoint) or an SR-stage TrainState (e.g. from
  `init_networks(config)["sr"]` or `train_sr`).
  """
  lr = jnp.asarray(lr, jnp.float32)
  if isinstance(source, TrainState):
    variables = {"params": source.params["gen"], "batch_stats": source.batch_stats["gen"]}

    def build():
      gen = generator(config.copy_and_resolve_references())
      return jax.jit(lambda v, x: gen.apply(v, x.astype(gen.dtype), train=False).astype(jnp.float32))

    return np.asarray(_cached(("generate", _config_key(config)), build)(variables, lr), np.float32)
  apply, _ = inference.load_generator(config, str(source), mesh or sharding.make_mesh())
  return np.asarray(apply(lr), np.float32)   # an inference.Generator: compiled once per config and shape


# Compiled helpers by (what, config, ...): a notebook calls them again and again with new values of
# the same shapes, and each fresh closure would otherwise be traced and compiled anew.
_JIT_CACHE: dict[tuple, Callable] = {}


def _config_key(config: ml_collections.ConfigDict) -> str:
  return config.to_json_best_effort(sort_keys=True)


def _cached(key: tuple, build: Callable[[], Callable]) -> Callable:
  if key not in _JIT_CACHE:
    if len(_JIT_CACHE) >= 16:
      _JIT_CACHE.pop(next(iter(_JIT_CACHE)))
    _JIT_CACHE[key] = build()
  return _JIT_CACHE[key]


def loss_breakdown(config: ml_collections.ConfigDict, batch: Mapping[str, Any], frozen: Mapping[str, Any],
                   sr_state: TrainState, *, sr: Any = None, extra_losses: ExtraLosses | None = None
                   ) -> LossBreakdown:
  """Every term of L_SR (Eq. 9, plus the pixel term and any extra terms) for one batch.

  The LR input and the feature target are made from `batch["hr"]` as in the SR step (`lr`: the
  bicubic-upsampled LR input, the paper's choice, or `hr`, per `config.sr.loss.feature_target`);
  features come from `features.extract` with `frozen`, and the terms from
  `losses.sr_generator_loss`. Networks run in inference mode (BatchNorm running statistics).

  Args:
    config: the run config; its `sr.loss` weights make the total.
    batch: a dict with "hr" [B, M, M, 1] (e.g. from `get_batch`).
    frozen: feature extractors from `load_feature_extractors`; a term whose features are missing
      is left out of `terms` (and must then have weight 0).
    sr_state: an SR-stage TrainState: its generator makes the SR images, its discriminator the
      logits of L_adv.
    sr: images to score instead of the generator's output (e.g. `batch["bicubic"]` or `batch["hr"]`).
    extra_losses: {name: (weight, fn)} user terms, called as in training:
      fn(sr=, hr=, lr=, feats_sr=, feats_target=) -> scalar.
  """
  if "hr" not in batch:
    raise errors.UserError(f"loss_breakdown(batch): needs an 'hr' entry, got keys {sorted(batch)}")
  extra = dict(extra_losses or {})
  which = set()
  if "vit" in frozen:
    which.add("vit")
  if "ae_enc" in frozen:
    which |= {"z_s", "z_t"}
  weights = {t: float(config.sr.loss[f]) for t, f in TERM_WEIGHTS.items()}
  missing = [t for t, feat in (("vit", "vit"), ("str", "z_s"), ("tex", "z_t"))
             if weights[t] and feat not in which]
  if missing:
    raise errors.UserError(f"loss_breakdown: the config weighs {missing} but `frozen` has no features for "
                     f"them; load them with load_feature_extractors(config, workdir)")
  # Weight 1 for every term we have inputs for: `sr_generator_loss` then returns all of them unweighted.
  every = {"adv_weight": 1.0, "pixel_weight": 1.0, "lambda_vit": float("vit" in which),
           "lambda_str": float("z_s" in which), "lambda_tex": float("z_t" in which),
           "pixel": config.sr.loss.pixel}     # the pixel term's form (L1 or MSE)
  hr = jnp.asarray(batch["hr"], jnp.float32)
  sr = None if sr is None else jnp.asarray(sr, jnp.float32)
  if sr is not None and sr.shape != hr.shape:
    raise errors.UserError(f"loss_breakdown(sr): shape {sr.shape} differs from the HR batch {hr.shape}")
  for name, spec in extra.items():
    if not (isinstance(spec, tuple) and len(spec) == 2 and callable(spec[1])):
      raise errors.UserError(f"extra_losses['{name}'] must be a (weight, function) pair, got {spec!r}")
  key = ("breakdown", _config_key(config), frozenset(which),
         tuple((name, float(w), fn) for name, (w, fn) in extra.items()))
  compute = _cached(key, lambda: jax.jit(
      _breakdown_fn(config.copy_and_resolve_references(), which, every, extra)))
  # Only the arrays go in: a TrainState also carries its optimiser, which would make every run's
  # state a new static argument and cost a recompilation.
  nets = {k: {"params": sr_state.params[k], "batch_stats": sr_state.batch_stats[k]} for k in ("gen", "disc")}
  terms, total = jax.device_get(compute(nets, dict(frozen), hr, sr))
  weights.update({name: float(w) for name, (w, _) in extra.items()})
  return LossBreakdown(terms={k: float(v) for k, v in terms.items()},
                       weights={k: weights[k] for k in terms}, total=float(total))


def _breakdown_fn(config, which: set[str], every: dict[str, float], extra: dict[str, tuple]):
  """(nets, frozen, hr, sr or None) -> (unweighted terms, total): the body of `loss_breakdown`;
  `nets` = {"gen": variables, "disc": variables} of the SR stage."""
  stage = SRStage(config, "")
  cfg = config.sr.loss

  def compute(nets, frozen, hr, sr):
    lr = make_lr(config, hr)
    if sr is None:
      sr = stage.gen.apply(nets["gen"], lr.astype(stage.dtype), train=False).astype(jnp.float32)
    logits = stage.disc.apply(nets["disc"], sr.astype(stage.dtype), train=False).astype(jnp.float32)
    target = degrade.upsample_bicubic(lr, config.scale) if cfg.feature_target == "lr" else hr
    feats_sr = features.extract(config, frozen, sr, which)
    feats_target = features.extract(config, frozen, target, which)
    kwargs = dict(sr=sr, hr=hr, fake_logits=logits, feats_sr=feats_sr, feats_target=feats_target)
    _, terms = losses.sr_generator_loss(**kwargs, weights=every)
    total, _ = losses.sr_generator_loss(**kwargs, weights=cfg)
    for name, (weight, fn) in extra.items():
      terms[name] = jnp.asarray(fn(sr=sr, hr=hr, lr=lr, feats_sr=feats_sr, feats_target=feats_target),
                                jnp.float32)
      if terms[name].shape != ():
        raise errors.UserError(f"extra loss '{name}' must return a scalar, got shape {terms[name].shape}")
      total = total + weight * terms[name]
    terms.pop("total")
    return terms, total

  return compute


def loss_table(breakdowns: Mapping[str, LossBreakdown]) -> str:
  """A Markdown table: one row per breakdown (unweighted terms and the weighted total), then the
  weights. In a notebook: `IPython.display.Markdown(api.loss_table({...}))`."""
  if not breakdowns:
    raise errors.UserError("loss_table: no breakdowns given")
  names = list(dict.fromkeys(k for b in breakdowns.values() for k in b.terms))
  lines = ["| | " + " | ".join(f"L_{n}" for n in names) + " | total |",
           "|---|" + "---:|" * (len(names) + 1)]
  for row, b in breakdowns.items():
    cells = [f"{b.terms[n]:.4f}" if n in b.terms else "–" for n in names]
    lines.append(f"| {row} | " + " | ".join(cells) + f" | {b.total:.4f} |")
  weight_rows = {row: tuple(b.weights.get(n, 0.0) for n in names) for row, b in breakdowns.items()}
  if len(set(weight_rows.values())) == 1:   # one objective for all rows: one weight row
    weight_rows = {"": next(iter(weight_rows.values()))}
  for row, ws in weight_rows.items():
    lines.append(f"| *weight{' (' + row + ')' if row else ''}* | " + " | ".join(f"*{w:g}*" for w in ws)
                 + " | |")
  return "\n".join(lines)


# -- training ---------------------------------------------------------------------------------------
def train(config: ml_collections.ConfigDict, workdir: str, *, stages: Sequence[str] | None = None,
          extra_losses: ExtraLosses | None = None, restart: bool = False, mesh=None
          ) -> dict[str, TrainState]:
  """Trains the stages of `config.stages` (or `stages`, e.g. `("vit", "ae")`) into `workdir`.

  What `run.py --mode=train` does. `extra_losses` = {name: (weight, fn)} adds user terms to the SR
  loss (see the module docstring). Stages already trained in `workdir` are skipped (resumed);
  `restart=True` deletes their checkpoints and logs first.

  Returns:
    {stage: final TrainState}.
  """
  config = config.copy_and_resolve_references()
  if stages is not None:
    config.stages = tuple(stages)
  if restart and jax.process_index() == 0:
    for name in config.stages:
      shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
  return train_pipeline.train(config, str(workdir), mesh, extra_losses=extra_losses)


def train_sr(config: ml_collections.ConfigDict, workdir: str, *, features_workdir: str,
             loss: str | Mapping[str, float] | None = None, extra_losses: ExtraLosses | None = None,
             num_steps: int | None = None, restart: bool = False, mesh=None) -> TrainState:
  """Trains only the SR GAN into `workdir`, against the frozen ViT / autoencoder of `features_workdir`.

  How the rows of Tables 1–2 are compared: every SR run sees the very same feature extractors.

  Args:
    config: the run config.
    workdir: where this run's checkpoints and `sr/metrics.jsonl` go.
    features_workdir: a workdir with trained "vit" and "ae" stages (those the loss needs).
    loss: a row of Tables 1–2 (`"full"`, `"vit"`, `"tex+vit"`, `"str+vit"`, `"tex+str"`) or a
      mapping of `config.sr.loss` fields; default: the config's weights.
    extra_losses: {name: (weight, fn)} user terms, fn(sr=, hr=, lr=, feats_sr=, feats_target=) ->
      scalar, added to the loss inside the compiled step and logged as `sr/g_<name>`.
    num_steps: SR steps (default: the config's).
    restart: delete this workdir's SR checkpoints and logs first.

  Returns:
    The final SR TrainState.
  """
  if loss is not None:
    config = with_loss(config, loss)
  config = config.copy_and_resolve_references()
  config.sr.features_workdir = str(features_workdir)
  config.baselines = ()      # only the SR GAN: a config's comparison networks are `train`'s
  if num_steps is not None:
    config.sr.num_steps = int(num_steps)
  return train(config, workdir, stages=("sr",), extra_losses=extra_losses, restart=restart,
               mesh=mesh)["sr"]


# -- evaluation and pictures ------------------------------------------------------------------------
def evaluate(config: ml_collections.ConfigDict, workdir: str, *,
             ablation_workdirs: Mapping[str, str] | None = None, mesh=None) -> dict[str, Any]:
  """The paper's evaluation on `config.eval.split`: bicubic, this run and each ablation run as rows.

  Writes `<workdir>/eval/` (results.md / .csv / .json, Fig. 2 panels, loss curves) and returns the
  report; `report["results"][row][contrast]["psnr"]` etc. (fastMRI's volume-level convention).
  """
  config = config.copy_and_resolve_references()
  if ablation_workdirs is not None:
    config.eval.ablation_workdirs = tuple((str(k), str(v)) for k, v in ablation_workdirs.items())
  return evaluate_lib.evaluate(config, str(workdir), mesh)


def read_curves(workdir: str, stage: str = "sr") -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{metric: (steps, values)} of a stage's logged scalars, e.g. "sr/g_total", "sr/g_vit", "sr/d_loss"."""
  from mrsr_jax import figures
  path = os.path.join(str(workdir), stage, "metrics.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"read_curves: {path} does not exist; train the '{stage}' stage in "
                            f"{workdir} first")
  return figures.read_metrics(path)


def plot_curves(runs: Mapping[str, str], *, stage: str = "sr", keys: Sequence[str] | None = None,
                path: str | None = None):
  """Training curves of several runs, one panel per logged metric, one line per run.

  Args:
    runs: {label: workdir}.
    stage: whose `metrics.jsonl` to read.
    keys: metrics without the stage prefix (e.g. ["g_total", "g_pixel", "d_loss"]); default: every
      loss term any run logged.
    path: also save the figure there (PNG).

  Returns:
    The matplotlib Figure.
  """
  import matplotlib.pyplot as plt
  curves = {label: read_curves(wd, stage) for label, wd in runs.items()}
  prefix = f"{stage}/"
  if keys is None:
    keys = sorted({k[len(prefix):] for c in curves.values() for k in c
                   if k.startswith(prefix) and ("loss" in k or k[len(prefix):].startswith("g_"))})
  if not keys:
    raise errors.UserError(f"plot_curves: no '{stage}' metrics to plot in {dict(runs)}")
  cols = min(len(keys), 4)
  rows = -(-len(keys) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
  colours = {label: f"C{i}" for i, label in enumerate(curves)}   # one colour per run in every panel
  for ax, key in zip(axes.ravel(), keys):
    for label, c in curves.items():
      if prefix + key in c:
        steps, values = c[prefix + key]
        ax.plot(steps, values, color=colours[label], marker="." if len(steps) < 20 else None)
    ax.set_title(key, fontsize=10)
    ax.set_xlabel("step", fontsize=8)
  for ax in axes.ravel()[len(keys):]:
    ax.axis("off")
  handles = [plt.Line2D([], [], color=colours[label], label=label) for label in curves]
  fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=9, frameon=False)
  fig.tight_layout(rect=(0, 0, 1, 0.95))
  if path:
    _save(fig, path)
  return fig


def show_images(images: Mapping[str, Any], *, reference: Any = None, index: int = 0,
                title: str = "", orientation: Any = "", path: str | None = None):
  """Images side by side in display orientation (grey, [0, 1]), each with a zoomed detail below; with
  `reference`, each titled with its PSNR to it and its absolute error (and the error's detail) shown
  below on one colour scale. Zero padding is cropped away (`figures.comparison_figure`).

  Args:
    images: {title: image}; an image is [H, W], [H, W, 1] or a batch [B, H, W, 1] (item `index` shown).
    reference: the ground truth, same form (e.g. the HR batch); PSNR uses its maximum as the range.
    orientation: the slice's two axis codes (e.g. `batch["orientation"]`: one per batch item, item
      `index` used), turned to superior-up radiological display; "" shows the images as stored.
    path: also save the figure there (PNG).

  Returns:
    The matplotlib Figure.
  """
  from mrsr_jax import figures
  pick = lambda x: _as_image(x, index)
  if not isinstance(orientation, (str, bytes)):
    orientation = np.asarray(orientation).reshape(-1)[index]
  fig = figures.comparison_figure({k: pick(v) for k, v in images.items()},
                                  reference=None if reference is None else pick(reference),
                                  orientation=orientation, title=title)
  if path:
    _save(fig, path)
  return fig


def compare_runs(config: ml_collections.ConfigDict, batch: Mapping[str, Any],
                 runs: Mapping[str, str | TrainState], *, index: int = 0, path: str | None = None,
                 mesh=None) -> tuple[Any, dict[str, float]]:
  """Super-resolves `batch["lr"]` with each run and shows LR, bicubic, each run and HR side by side.

  Returns:
    (Figure, {"bicubic": dB, run: dB, ...}): PSNR to HR averaged over the batch's images, each
    image's own maximum as the data range (a slice-level number; `evaluate` gives the paper's
    volume-level one).
  """
  hr = np.asarray(batch["hr"], np.float32)
  lr = np.asarray(batch["lr"], np.float32)
  preds = {"bicubic": np.asarray(batch.get("bicubic", degrade.upsample_bicubic(lr, config.scale)))}
  for name, source in runs.items():
    preds[name] = super_resolve(config, source, lr, mesh=mesh)
  psnr = {name: float(np.mean(np.asarray(metrics.psnr(p, hr)))) for name, p in preds.items()}
  s = config.scale
  lr_big = np.repeat(np.repeat(lr, s, axis=1), s, axis=2)   # nearest neighbour: the pixels the SR sees
  fig = show_images({"LR (nearest)": lr_big, **preds, "HR": hr}, reference=hr, index=index,
                    title=f"{s}× SR, image {index} of the batch", orientation=batch.get("orientation", ""),
                    path=path)
  return fig, psnr


def _as_image(x: Any, index: int) -> np.ndarray:
  x = np.asarray(x, np.float32)
  if x.ndim == 4:
    x = x[index]
  if x.ndim == 3 and x.shape[-1] == 1:
    x = x[..., 0]
  if x.ndim != 2:
    raise errors.UserError(f"show_images: expected [H, W], [H, W, 1] or [B, H, W, 1], got shape {x.shape}")
  return x


def _save(fig, path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=90, bbox_inches="tight")
