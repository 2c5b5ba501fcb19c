"""The config schema (mrsr_jax/config_schema.py) is the one source of the configuration: every field the
code reads is declared there, the default config, the resume list and docs/config.md come from it, and
what a field's doc says is what the code does."""

import ast
import pathlib

import pytest

from mrsr_jax import config_check, config_schema

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCHEMA = config_schema.SCHEMA

# Methods and attributes of ConfigDict itself, not fields.
_CONFIGDICT_API = {"get", "items", "keys", "values", "update", "copy_and_resolve_references", "to_dict",
                   "to_json", "to_json_best_effort", "lock", "unlock", "ignore_type", "is_locked",
                   "is_type_safe", "get_type", "get_oneway_ref", "get_ref", "iteritems", "iterkeys",
                   "itervalues"}
# A stage's sub-config (`self.cfg = config[self.name]`) or a part of one (`cfg = self.cfg.loss`).
_STAGE_ROOTS = ("cfg",)
_CONFIG_ROOTS = ("config",)


def _chain(node: ast.Attribute) -> tuple[str, list[str]] | None:
  """('config', ['sr', 'loss', 'pixel']) for `config.sr.loss.pixel` / `self.config.sr...`; None if
  the chain does not start at a config."""
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
    if isinstance(node, ast.Attribute) and node.attr in _CONFIG_ROOTS + _STAGE_ROOTS and isinstance(
        node.value, ast.Name) and node.value.id in ("self", "stage"):
      return node.attr, parts[::-1]
  if isinstance(node, ast.Name) and node.id in _CONFIG_ROOTS + _STAGE_ROOTS:
    return node.id, parts[::-1]
  return None


def config_reads(path: pathlib.Path) -> list[tuple[int, str, str]]:
  """(line, root, dotted field) of each outermost `config.a.b` / `cfg.a` chain in `path`."""
  tree = ast.parse(path.read_text(), str(path))
  inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
  out = []
  for node in ast.walk(tree):
    if not isinstance(node, ast.Attribute) or id(node) in inner:
      continue
    found = _chain(node)
    if found is None:
      continue
    root, parts = found
    while parts and parts[-1] in _CONFIGDICT_API:
      parts = parts[:-1]
    if parts and not any(p in _CONFIGDICT_API for p in parts):
      out.append((node.lineno, root, ".".join(parts)))
  return out


def _declared(root: str, field: str) -> bool:
  if root == "config":
    return SCHEMA.is_declared(field)
  # A stage's sub-config, or a group inside one: some declared name ends with the chain.
  return any(SCHEMA.is_declared(f"{prefix}.{field}")
             for prefix in {e.name for e in SCHEMA.groups} | set(config_schema.STAGE_NAMES))


# Sections a config file adds to the base config for code of its own (nothing rejects an undeclared
# field): issue 25's through-plane model reads `config.through_plane.*`, which configs/through_plane.py
# defines. A read of such a section must name a field that config has.
EXTRA_SECTIONS = {"through_plane": "through_plane"}


def _extra_section_has(field: str) -> bool:
  from mrsr_jax import config_loader
  top, _, rest = field.partition(".")
  node = config_loader.load(EXTRA_SECTIONS[top])[top]
  for part in rest.split(".") if rest else ():
    if not hasattr(node, "keys") or part not in node:
      return False
    node = node[part]
  return True


def _code_files() -> list[pathlib.Path]:
  files = [ROOT / "run.py", *sorted((ROOT / "mrsr_jax").rglob("*.py")), *sorted((ROOT / "bench").glob("*.py"))]
  # The through-plane subpackage reads its own section (see EXTRA_SECTIONS) through local names.
  return [f for f in files if "through_plane" not in f.relative_to(ROOT).parts[:2]]


def test_every_config_field_read_in_the_code_is_declared():
  files = _code_files()
  assert len(files) > 40
  reads = [(f, line, root, field) for f in files for line, root, field in config_reads(f)]
  assert len(reads) > 200          # the scan sees the code's reads (an empty scan would pass)
  undeclared = [f"{f.relative_to(ROOT)}:{line}: {root}.{field}" for f, line, root, field in reads
                if not _declared(root, field)
                and not (root == "config" and field.split(".")[0] in EXTRA_SECTIONS and _extra_section_has(field))]
  assert not undeclared, "config fields read but not declared in mrsr_jax/config_schema.py:\n" + "\n".join(
      undeclared)


def test_the_scan_finds_an_undeclared_read(tmp_path):
  code = tmp_path / "m.py"
  code.write_text("def f(config, self):\n  return config.sr.loss.lambda_vit + config.sr.nonexistent"
                  " + self.cfg.warmup_steps + config.sr.model.anything + config.get('x')\n")
  reads = config_reads(code)
  assert sorted((r, f) for _, r, f in reads) == [("cfg", "warmup_steps"), ("config", "sr.loss.lambda_vit"),
                                                ("config", "sr.model.anything"), ("config", "sr.nonexistent")]
  assert [f for _, r, f in reads if not _declared(r, f)] == ["sr.nonexistent"]


def test_docs_config_md_is_generated_from_the_schema():
  path = ROOT / "docs" / "config.md"
  assert path.read_text() == SCHEMA.reference(), (
      "docs/config.md is stale: python -m mrsr_jax.config_schema > docs/config.md")


def test_default_config_is_every_declared_field_at_its_default():
  from configs import base
  config = base.get_config()
  flat = config_check.flatten(config_check.as_json_tree(config))
  declared = {f.name for f in SCHEMA.fields}
  open_fields = {k for k in flat if k.startswith("sr.model.")}
  assert set(flat) - open_fields == declared
  for field in SCHEMA.fields:
    value = config
    for part in field.name.split("."):
      value = value[part]
    assert value == field.default and type(value) is type(field.default), field.name
  assert dict(config.sr.model) == config_schema.SR_MODEL_DEFAULT


def test_resumable_fields_come_from_the_schema():
  assert "input_cache" in config_check.RESUMABLE
  assert config_check.resumable("eval.batch_size") and config_check.resumable("sr.num_steps")
  assert not config_check.resumable("sr.loss.lambda_vit") and not config_check.resumable("scale")
  assert set(config_check.IMPLIED) == {"sr.arch", "sr.loss.pixel", "sr.loss.ae_frame", "baselines_size"}


def test_complete_fills_what_an_older_config_lacks_with_what_its_absence_meant():
  import ml_collections
  from configs import tiny
  old = ml_collections.ConfigDict(config_check.as_json_tree(tiny.get_config()))
  del old.sr.loss["ae_frame"], old.sr["arch"], old["input_cache"], old.sr["lr_mix"]
  config = config_schema.complete(old)
  assert config.sr.loss.ae_frame == "sr" and config.sr.arch == "srgan" and config.input_cache is False
  assert dict(config.sr.lr_mix) == {k: 0.0 for k in config.sr.lr_mix}
  assert config.sr.model.num_blocks == tiny.get_config().sr.model.num_blocks   # kept


@pytest.mark.parametrize("num_steps,num_epochs,want", [(7, 2, 7), (0, 2, 11), (0, 1, 6)])
def test_a_positive_num_steps_wins_over_num_epochs(num_steps, num_epochs, want):
  """As config_schema documents (base.py once said the opposite): num_epochs counts only at num_steps=0."""
  from configs import tiny
  from mrsr_jax.train import loop

  class Stage(loop.Stage):
    name = "vit"
    init = grads = None

  config = tiny.get_config()
  config.vit.update(num_steps=num_steps, num_epochs=num_epochs, batch_size=8)
  info = {"splits": {"train": {"num_examples": 41}}}   # ceil(epochs x 41 / 8)
  assert Stage(config, "unused").num_steps(info) == want
  doc = SCHEMA.by_name["vit.num_epochs"].doc
  assert "only when num_steps is 0" in doc


def test_validate_reports_a_missing_field():
  from configs import tiny
  config = tiny.get_config()
  del config.sr["gd_update"]
  with pytest.raises(ValueError, match=r"config.sr.gd_update is missing"):
    config_check.validate(config, num_devices=1)


def test_the_paper_configs_are_one_template():
  from configs import paper, sr_fastmri_x2, sr_fastmri_x4, sr_ixi_x2, sr_ixi_x4
  for module, (dataset, scale) in ((sr_ixi_x2, ("ixi", 2)), (sr_ixi_x4, ("ixi", 4)),
                                   (sr_fastmri_x2, ("fastmri", 2)), (sr_fastmri_x4, ("fastmri", 4))):
    for contrast in ("", "pd"):
      assert module.get_config(contrast).to_json() == paper.paper_config(dataset, scale, contrast).to_json()


def test_extend_declares_a_section_of_ones_own():
  extra = SCHEMA.extend([config_schema.Group("through_plane", "a section"),
                         config_schema.Field("through_plane.factor", 4, "a field", config_schema.Int(2))])
  config = extra.default_config()
  assert config.through_plane.factor == 4 and extra.is_declared("through_plane.factor")
  assert not SCHEMA.is_declared("through_plane.factor")
  with pytest.raises(ValueError, match="declared twice"):
    SCHEMA.extend([config_schema.Field("scale", 2, "again")])
