"""Every run-config field, declared once: name, default, check, whether a resume may change it, doc.

The other views of the configuration are derived from `FIELDS` and never written by hand:
  * the default config, `default_config()` (what `configs/base.py`'s `get_config()` returns, and what
    every run config starts from);
  * the value checks of `config_check.validate` (each field's `check`, applied when `stage` is trained
    or, for `stage=None`, always), beside the few rules that relate two fields (kept in config_check);
  * the fields a resumed workdir may change, `config_check.RESUMABLE` (`resumable=True`);
  * the field reference docs/config.md, `python -m mrsr_jax.config_schema > docs/config.md` (a test
    checks the file is current).

So the code reads `config.sr.warmup_steps`, never `config.sr.get("warmup_steps", 0)`: a field always
exists, with its default here. A config recorded by an older version (a workdir's config.json) may lack
fields added since; `complete()` fills them with what their absence meant (`absent`).

A field is added here, with its one line of doc, and then read as `config.<name>` in the code;
tests/test_config_schema.py fails on a field read that is not declared. A config file may still add
fields of its own (nothing rejects an undeclared field); code that reads them declares them with
`Schema.extend`, e.g. a subpackage's own settings.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable, Sequence

import ml_collections

from mrsr_jax import errors

STAGE_NAMES = ("vit", "ae", "sr")


class _Same:
  def __repr__(self):
    return "<the default>"


SAME = _Same()   # `Field.absent` when a config without the field meant its default


# -- checks: each raises ValueError("config.<name> = <value>: <what it must be>") -------------------
def fail(name: str, value: Any, need: str) -> None:
  raise errors.UserError(f"config.{name} = {value!r}: {need}")


@dataclasses.dataclass(frozen=True)
class Int:
  min_value: int

  def __call__(self, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < self.min_value:
      fail(name, value, f"must be an integer >= {self.min_value}")

  def describe(self) -> str:
    return f"integer >= {self.min_value}" if self.min_value > -2**63 else "integer"


@dataclasses.dataclass(frozen=True)
class Real:
  low: float = 0.0
  high: float = math.inf
  low_open: bool = False
  high_open: bool = False

  def range(self) -> str:
    if math.isinf(self.high):
      return f"{'>' if self.low_open else '>='} {self.low:g}"
    return (f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
            f"{')' if self.high_open else ']'}")

  def __call__(self, name: str, value: Any) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = (ok and (value > self.low if self.low_open else value >= self.low)
          and (value < self.high if self.high_open else value <= self.high))
    if not ok:
      fail(name, value, f"must be a finite number {self.range()}")

  def describe(self) -> str:
    return f"number {self.range()}"


class Choice:
  """One of `choices`; or of `choices()` when a callable (a registry another module owns)."""

  def __init__(self, *choices: Any, of: Callable[[], Iterable[Any]] | None = None):
    self._choices, self._of = choices, of

  @property
  def choices(self) -> tuple[Any, ...]:
    return tuple(self._of()) if self._of else self._choices

  def __call__(self, name: str, value: Any) -> None:
    if value not in self.choices:
      fail(name, value, f"must be one of {', '.join(repr(c) for c in self.choices)}")

  def describe(self) -> str:
    return "one of " + ", ".join(f"`{c!r}`" for c in self.choices)


BOOL = Choice(False, True)


@dataclasses.dataclass(frozen=True)
class Custom:
  """A check written out: `test(value)` true when the value is good, else `need` is the message."""
  test: Callable[[Any], bool]
  need: str
  summary: str

  def __call__(self, name: str, value: Any) -> None:
    if not self.test(value):
      fail(name, value, self.need)

  def describe(self) -> str:
    return self.summary


def _positive_ints(n: int) -> Callable[[Any], bool]:
  return lambda v: (isinstance(v, (tuple, list)) and len(v) == n
                    and all(isinstance(f, int) and not isinstance(f, bool) and f > 0 for f in v))


def _stages_ok(v: Any) -> bool:
  return not isinstance(v, str) and isinstance(v, (tuple, list)) and len(v) > 0


# -- the declaration ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Field:
  name: str                       # dotted path, e.g. "sr.loss.lambda_vit"
  default: Any
  doc: str                        # one line
  check: Callable[[str, Any], None] | None = None   # None: read as given (checked where it is used)
  resumable: bool = False         # a rerun of a trained workdir may change it
  stage: str | None = None        # checked only when this stage trains; None: always
  absent: Any = SAME              # what an older config without the field meant

  @property
  def implied(self) -> Any:
    return self.default if self.absent is SAME else self.absent


@dataclasses.dataclass(frozen=True)
class Group:
  """A sub-config. `open`: its fields are not declared here (`sr.model`: the generator `sr.arch`
  names declares them, mrsr_jax/models/); a resumable group makes every field under it resumable."""
  name: str
  doc: str
  resumable: bool = False
  open: bool = False


def _stage_fields(stage: str, *, batch_size: int, num_steps: int, num_epochs: int | float,
                  learning_rate: float, extra: Sequence[Field] = ()) -> list[Field]:
  """The fields every training stage has, in the order its sub-config lists them."""
  return [
      Field(f"{stage}.batch_size", batch_size, "global batch (split over devices and input readers)",
            Int(1), stage=stage),
      Field(f"{stage}.num_steps", num_steps, "stage length in steps; 0: `num_epochs` of the prepared "
            "train split (a positive value wins over num_epochs)", Int(0), resumable=True, stage=stage),
      Field(f"{stage}.num_epochs", num_epochs, "stage length in epochs of the train split, used only "
            "when num_steps is 0", Real(), resumable=True, stage=stage),
      Field(f"{stage}.learning_rate", learning_rate, "peak learning rate", Real(low_open=True),
            stage=stage),
      *extra,
  ]


def _memory_fields(stage: str) -> list[Field]:
  # How a step is computed in memory, not what it computes: they follow the hardware (resumable).
  return [
      Field(f"{stage}.microbatch_per_device", 0, "split each device's share of the batch into "
            "microbatches of at most this many slices, gradients accumulated (0: no split; "
            "docs/distributed.md)", Int(0), resumable=True, stage=stage),
      Field(f"{stage}.remat", False, "recompute block activations in the backward pass instead of "
            "storing them", BOOL, resumable=True, stage=stage),
  ]


FIELDS_AND_GROUPS: tuple[Field | Group, ...] = (
    # Data: shards written by `python -m data_prep --dataset=<dataset> --data_dir=<data_dir>`.
    Field("dataset", "ixi", "dataset folder under data_dir: ixi, fastmri or sample",
          Custom(lambda v: isinstance(v, str) and bool(v), "must name the dataset folder under data_dir",
                 "non-empty string")),
    Field("data_dir", "data", "where the prepared datasets are", resumable=True),
    Field("contrast", "", "builder config read (`<data_dir>/<dataset>/<contrast>/`): '' every contrast; "
          "ixi: t1 / t2 / pd, fastmri: pd / fspd"),
    Field("scale", 4, "SR factor; LR is made from HR on the fly (data/degrade.py)", Choice(2, 4)),
    Field("degradation", "bicubic", "how LR is made: 'bicubic' (the paper's protocol), 'gaussian' or "
          "'kspace' (MRI-realistic)", Choice("bicubic", "gaussian", "kspace")),
    Field("hamming", False, "Hamming window on the kept k-space band (degradation='kspace' only)", BOOL),
    Field("crop_size", 240, "HR training crop M (a multiple of 4 x scale and of the ViT patch)", Int(1)),
    Field("seed", 0, "seed of initialisation, data order and random LR", Int(-2**63)),
    Field("stages", ("vit", "ae", "sr"), "the stages this invocation trains, in pipeline order",
          Custom(_stages_ok, f"must be a non-empty tuple of {STAGE_NAMES}",
                 "non-empty tuple of 'vit', 'ae', 'sr'"), resumable=True),
    Field("dtype", "float32", "compute dtype; 'bfloat16' for mixed precision (params stay float32)",
          Choice("float32", "bfloat16")),
    Field("grad_clip_norm", 0.0, "global gradient-norm clip (0: none)", Real()),
    Field("input_readers", 0, "data readers (0: one per process); fix it to make batches independent "
          "of the process count", Int(0), resumable=True),
    Field("input_cache", False, "keep decoded training slices in host RAM after the first epoch "
          "(~0.23 MB per 240^2 slice; docs/benchmarks.md)", BOOL, resumable=True),
    # Logging and checkpoints (all stages).
    Field("log_every_steps", 50, "scalar summaries every N steps", Int(1), resumable=True),
    Field("image_every_steps", 1000, "image summaries every N steps (0: none)", Int(0), resumable=True),
    Field("checkpoint_every_steps", 1000, "checkpoint every N steps (and at the end)", Int(1),
          resumable=True),
    Field("keep_checkpoints", 3, "checkpoints kept per stage", Int(1), resumable=True),

    # Stage 1: self-supervised fine-tuning of UNETR's ViT (paper 3.2, 4.1).
    Group("vit", "stage 1: self-supervised fine-tuning of UNETR's ViT (paper 3.2, 4.1)"),
    Group("vit.model", "the ViT (UNETR's ViT-B/16 by default; App. B)"),
    Field("vit.model.patch_size", 16, "patch size", Int(1)),
    Field("vit.model.hidden_size", 768, "token width K (a multiple of num_heads)", Int(1)),
    Field("vit.model.mlp_dim", 3072, "MLP width", Int(1)),
    Field("vit.model.num_layers", 12, "transformer blocks", Int(1)),
    Field("vit.model.num_heads", 12, "attention heads", Int(1)),
    Field("vit.model.dropout_rate", 0.0, "dropout", Real(high=1.0, high_open=True)),
    Field("vit.pretext", "masked_patch", "self-supervised task: 'masked_patch' (more stable, 3.2) or "
          "'classify' (the dataset/contrast label)", Choice("masked_patch", "classify"), stage="vit"),
    Field("vit.mask_ratio", 0.5, "fraction of patches masked", Real(low_open=True, high=1.0),
          stage="vit"),
    Field("vit.num_bins", 8, "masked-patch target: mean intensity quantised to this many bins",
          Int(2), stage="vit"),
    Field("vit.init_checkpoint", "", "optional MONAI UNETR state dict (.pt) to start from"),
    *_stage_fields("vit", batch_size=6, num_steps=20_000, num_epochs=0, learning_rate=1e-4, extra=[
        Field("vit.weight_decay", 1e-4, "AdamW weight decay", Real(), stage="vit")]),
    *_memory_fields("vit"),

    # Stage 2: swapping autoencoder (paper 3.3, App. A).
    Group("ae", "stage 2: the swapping autoencoder (paper 3.3, App. A)"),
    Group("ae.model", "the encoder / generator widths and code sizes"),
    Field("ae.model.features", (64, 64, 32, 32), "the encoder's four block widths",
          Custom(_positive_ints(4), "must be 4 positive integers (the encoder's block widths)",
                 "4 positive integers")),
    Field("ae.model.structure_channels", 8, "channels of the structure code z_s", Int(1)),
    Field("ae.model.texture_dim", 256, "length of the texture code z_t", Int(1)),
    Field("ae.crop_size", 256, "AE input size, slices padded to it (0: crop_size); a multiple of 16"),
    # Lengths: the paper's 100 epochs of its 48,000-slice IXI training set (one contrast), so pooling
    # contrasts does not triple them (paper_deviations.md row 31).
    *_stage_fields("ae", batch_size=16, num_steps=300_000, num_epochs=100, learning_rate=2e-4, extra=[
        Field("ae.b1", 0.5, "Adam beta1", Real(high=1.0, high_open=True), stage="ae"),
        Field("ae.b2", 0.999, "Adam beta2", Real(high=1.0, high_open=True), stage="ae"),
        Field("ae.w_adv", 0.7, "weight of L_adv (Eq. 6)", Real(), stage="ae"),
        Field("ae.w_swap", 0.7, "weight of L_swap (Eq. 6)", Real(), stage="ae")]),
    *_memory_fields("ae"),

    # Stage 3: the SR GAN (paper 3.3 end, 4.1, App. E).
    Group("sr", "stage 3: the SR GAN (paper 3.3 end, 4.1, App. E)"),
    Group("sr.model", "the fields of the generator `sr.arch` names (mrsr_jax/models/: srgan's "
          "num_blocks, features, residual, norm by default)", open=True),
    Field("sr.arch", "srgan", "the generator: 'srgan' (the paper's) or a comparison method 'srcnn', "
          "'vdsr', 'edsr', 'rdn' (configs/compare/)", stage="sr", absent="srgan"),
    Field("sr.disc_features", 64, "discriminator width", Int(1), stage="sr"),
    *_stage_fields("sr", batch_size=256, num_steps=18_750, num_epochs=100, learning_rate=1e-4, extra=[
        Field("sr.lr_schedule", "constant", "'constant' or 'cosine' (decay to 1% over the stage)",
              Choice("constant", "cosine"), stage="sr"),
        Field("sr.warmup_steps", 0, "linear warm-up from 0, both schedules", Int(0), stage="sr"),
        Field("sr.b1", 0.9, "Adam beta1", Real(high=1.0, high_open=True), stage="sr"),
        Field("sr.b2", 0.999, "Adam beta2", Real(high=1.0, high_open=True), stage="sr"),
        Field("sr.weight_decay", 0.1, "AdamW weight decay", Real(), stage="sr")]),
    # LR models drawn per training example (data/degrade.py random_downsample); all family weights 0:
    # every LR is made by `degradation`, the paper's protocol.
    Group("sr.lr_mix", "training LR models drawn per example (all weights 0: `degradation` only)"),
    Field("sr.lr_mix.bicubic", 0.0, "relative probability of bicubic LR", Real(), stage="sr"),
    Field("sr.lr_mix.gaussian", 0.0, "relative probability of Gaussian + spline LR", Real(), stage="sr"),
    Field("sr.lr_mix.kspace", 0.0, "relative probability of k-space-truncated LR", Real(), stage="sr"),
    Field("sr.lr_mix.sigma_jitter", 0.0, "the Gaussian kernel's width scaled by U(1 - j, 1 + j)",
          Real(high=1.0, high_open=True), stage="sr"),
    Field("sr.lr_mix.hamming_prob", 0.0, "chance a k-space LR is Hamming-windowed", Real(high=1.0),
          stage="sr"),
    Field("sr.lr_mix.noise_std", 0.0, "largest Gaussian noise level added to LR", Real(), stage="sr"),
    Field("sr.features_workdir", "", "workdir whose vit/ae checkpoints feed the SR loss ('' this one)",
          Custom(lambda v: isinstance(v, str), "must be a path (or '' for this workdir)", "path or ''"),
          stage="sr"),
    Group("sr.loss", "the SR generator's loss, Eq. 9 (docs/paper_deviations.md)"),
    Field("sr.loss.adv_weight", 1e-3, "weight of L_adv (Eq. 9 has 1); 0: no discriminator at all",
          Real(), stage="sr"),
    Field("sr.loss.lambda_vit", 1.0, "lambda_1, the ViT-feature term", Real(), stage="sr"),
    Field("sr.loss.lambda_str", 1.0, "lambda_2, the structure-code term", Real(), stage="sr"),
    Field("sr.loss.lambda_tex", 0.9, "lambda_3, the texture-code term", Real(), stage="sr"),
    Field("sr.loss.pixel_weight", 1.0, "pixel term to HR (Eq. 9 has none: 0 is the paper-exact loss)",
          Real(), stage="sr"),
    Field("sr.loss.pixel", "l1", "the pixel term's form: 'l1' or 'mse'",
          Choice(of=lambda: __import__("mrsr_jax.losses", fromlist=["_"]).PIXEL_LOSSES),
          stage="sr", absent="l1"),
    Field("sr.loss.feature_target", "lr", "compare SR's features with those of the LR input (the "
          "paper) or of the HR slice ('hr')", Choice("lr", "hr"), stage="sr"),
    Field("sr.loss.ae_frame", "ae", "how the AE encoder sees SR images: 'ae' zero-padded to "
          "ae.crop_size (its training frame) or 'sr' the crop as it is", Choice("ae", "sr"),
          stage="sr", absent="sr"),
    Field("sr.gd_update", "simultaneous", "G and D from the same state, or 'alternating' (D first, "
          "SRGAN's order)", Choice("simultaneous", "alternating"), stage="sr"),
    Field("sr.disc_bn_in_g", "train", "D's BatchNorm in G's loss: 'train' (the fake batch's stats), "
          "'eval' (running stats) or 'joint' (D on [HR; SR])", Choice("train", "eval", "joint"),
          stage="sr"),
    *_memory_fields("sr"),

    # Comparison networks trained after the stages (mrsr_jax/baselines.py).
    Field("baselines", (), "comparison networks ('srcnn', 'vdsr', 'edsr', 'rdn') trained after the "
          "stages in <workdir>/baselines/<arch>/ and scored by --mode=eval", resumable=True),
    Field("baselines_size", "paper", "'paper' (the published networks) or 'reduced' (CPU-sized)",
          resumable=True, absent="reduced"),

    # Evaluation (--mode=eval) and prediction (--mode=predict): used after training only.
    Group("eval", "--mode=eval: the report (checked by evaluate.py)", resumable=True),
    Field("eval.split", "test", "the split scored"),
    Field("eval.batch_size", 32, "slices per evaluation batch (a multiple of the devices)"),
    Field("eval.size", 240, "slices centre-padded / cropped to this (a multiple of scale)"),
    Field("eval.lr_models", ("bicubic", "gaussian", "kspace"), "LR models the report scores on, one "
          "column each (the config's degradation always included; () for it alone)"),
    Field("eval.ablation_workdirs", (), "(name, workdir) pairs of ablation runs added as rows"),
    Field("eval.num_figure_slices", 3, "volumes shown in the Fig. 2 panels"),
    Group("predict", "--mode=predict", resumable=True),
    Field("predict.batch_size", 0, "slices per generator call; 0: as few calls as memory allows "
          "(predict.plan_batches), else a multiple of the devices"),
)

# srgan's generator at the paper's size (App. E): `sr.model`'s default.
SR_MODEL_DEFAULT = dict(num_blocks=16, features=64, residual=True, norm="batch")


class Schema:
  """The declared fields and groups, and what is derived from them."""

  def __init__(self, entries: Sequence[Field | Group], open_defaults: dict[str, dict] | None = None):
    self.entries = tuple(entries)
    self.fields = tuple(e for e in entries if isinstance(e, Field))
    self.groups = tuple(e for e in entries if isinstance(e, Group))
    self.by_name = {e.name: e for e in entries}
    self.open_defaults = dict(open_defaults or {})

  def extend(self, entries: Sequence[Field | Group]) -> "Schema":
    """This schema with more fields (a config that adds its own section, and the code reading it)."""
    clash = [e.name for e in entries if e.name in self.by_name]
    if clash:
      raise errors.UserError(f"config fields declared twice: {clash}")
    return Schema(self.entries + tuple(entries), self.open_defaults)

  def default_config(self) -> ml_collections.ConfigDict:
    """A fresh ConfigDict of every field at its default (sub-configs in declaration order)."""
    config = ml_collections.ConfigDict()
    for entry in self.entries:
      *parents, leaf = entry.name.split(".")
      node = config
      for part in parents:
        node = node[part]
      if isinstance(entry, Group):
        node[leaf] = ml_collections.ConfigDict(self.open_defaults.get(entry.name, {}))
      else:
        node[leaf] = entry.default
    return config

  def is_declared(self, path: str) -> bool:
    """Whether `path` (dotted) is a declared field or group, or lies under an open group."""
    parts = path.split(".")
    for i in range(1, len(parts) + 1):
      entry = self.by_name.get(".".join(parts[:i]))
      if entry is None:
        return False
      if isinstance(entry, Group) and entry.open:
        return True
    return True

  def resumable(self) -> tuple[str, ...]:
    """Resumable names, a resumable group standing for every field under it."""
    groups = [g.name for g in self.groups if g.resumable]
    return tuple(e.name for e in self.entries if e.resumable
                 and not any(e.name.startswith(g + ".") for g in groups))

  def implied(self) -> dict[str, Any]:
    """{field: what its absence meant} for the fields declared with `absent`."""
    return {f.name: f.absent for f in self.fields if f.absent is not SAME}

  def complete(self, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` (e.g. read back from an older workdir's config.json) with every declared field it
    lacks set to what that absence meant; fields it has are kept. Changes `config` and returns it."""
    for entry in self.entries:
      *parents, leaf = entry.name.split(".")
      node = config
      for part in parents:
        node = node[part]
      if leaf in node:
        continue
      node[leaf] = (ml_collections.ConfigDict(self.open_defaults.get(entry.name, {}))
                    if isinstance(entry, Group) else entry.implied)
    return config

  def reference(self) -> str:
    """docs/config.md: a table per sub-config, one row per field."""
    lines = ["# Config fields", "",
             "Generated from `mrsr_jax/config_schema.py` (`python -m mrsr_jax.config_schema > "
             "docs/config.md`); tests/test_config_schema.py checks it is current. Every field can be "
             "overridden on the command line, e.g. `--config.sr.loss.lambda_vit=0`. *Resume*: a rerun "
             "of a trained workdir may change it (`mrsr_jax/config_check.py`). *Checked*: the rule "
             "`validate` applies (when the named stage trains, for stage fields).", ""]
    header = ["| field | default | checked | resume | |", "|---|---|---|---|---|"]
    section = None      # the top-level group of the table being written ("" for top-level fields)
    for entry in self.entries:
      top = entry.name.split(".")[0] if "." in entry.name or isinstance(entry, Group) else ""
      if top != section:
        title = (f"`{top}`: {self.by_name[top].doc}" if top else
                 "Top level" if section is None else "Top level (continued)")
        lines += ([""] if section is not None else []) + [f"## {title}", ""] + header
        section = top
      if isinstance(entry, Group):
        if entry.name == top:
          continue
        if entry.open:
          lines.append(f"| `{entry.name}.*` | {_md(self.open_defaults.get(entry.name, {}))} | by "
                       f"`sr.arch` |  | {entry.doc} |")
        else:
          lines.append(f"| **`{entry.name}`** |  |  | {'yes' if entry.resumable else ''} | {entry.doc} |")
        continue
      resumable = entry.resumable or self.by_name.get(top, entry).resumable
      check = entry.check.describe() if entry.check else ""
      if check and entry.stage:
        check += f" ({entry.stage})"
      lines.append(f"| `{entry.name}` | {_md(entry.default)} | {check} | {'yes' if resumable else ''} "
                   f"| {entry.doc} |")
    return "\n".join(lines) + "\n"


def _md(value: Any) -> str:
  return "`" + repr(value).replace("|", "\\|") + "`"


SCHEMA = Schema(FIELDS_AND_GROUPS, open_defaults={"sr.model": SR_MODEL_DEFAULT})
FIELDS = SCHEMA.fields


def default_config() -> ml_collections.ConfigDict:
  """Every field at its default: the paper's hyper-parameters (Sec. 4.1, App. B)."""
  return SCHEMA.default_config()


def complete(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  return SCHEMA.complete(config)


if __name__ == "__main__":
  print(SCHEMA.reference(), end="")
