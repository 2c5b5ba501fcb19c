"""Bad input to `run.py` training, as a user gives it: one `error:` line, exit 2, nothing half-written.

Drives run.py's `main(argv)` in-process (no interpreter start-up per case): bad flags and config files,
invalid numbers caught before any stage trains, reruns that would change how a workdir's checkpoints
were trained, unwritable workdirs and the library's OSError / NonFiniteLossError reports. Interrupted
runs (kill -9, NaN) are in test_train.py.
"""

import json
import os
import re
import shutil

import pytest
from conftest import snapshot

import run as run_py
from mrsr_jax import errors
from mrsr_jax.train import loop, pipeline


def cli(capsys, *args):
  """run.py's main in-process: (exit status, stderr lines that are not log records)."""
  rc = run_py.main(["run.py", *args])
  err = capsys.readouterr().err
  # absl log records start with a severity letter and a date ("I1125 22:20:08.48 ..."): not messages.
  lines = [l for l in err.splitlines() if l.strip() and not (l[:1] in "IWEF" and l[1:5].isdigit())]
  return rc, lines


@pytest.fixture
def tiny_cli(sample_data_dir):
  from conftest import ROOT
  return [f"--config={ROOT}/configs/tiny.py", f"--config.data_dir={sample_data_dir}"]


@pytest.fixture
def trained_copy(trained, tmp_path):
  """A copy of the session's trained workdir (vit, ae, sr checkpoints), safe to rerun into."""
  config, workdir, _ = trained
  copy = str(tmp_path / "run")
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("eval"))
  return config, copy


# -- the command line and the config file ------------------------------------------------------------
@pytest.mark.parametrize("make_file, extra, message", [
    (None, ["--config.nonexistent=1"], r"--config.nonexistent: .*tiny.py has no field 'nonexistent'"),
    (None, ["--config.sr.modle.features=16"], r"no field 'sr.modle'; did you mean config.sr.model\?"),
    (None, ["--config.sr.batch_size=abc"], r"--config.sr.batch_size=abc: invalid literal for int"),
    ("missing.py", [], r"--config=.*missing.py: no such file"),
    ("syntax.py", [], r"--config=.*syntax.py: syntax error at line 1"),
    ("no_get.py", [], r"--config=.*no_get.py: defines no get_config\(\) function"),
    ("raises.py", [], r"--config=.*raises.py: get_config\(\) failed \(line 2\): ZeroDivisionError"),
    (None, ["--mode=predict"], r"--mode=predict needs --input and --output"),
    (None, ["surplus"], r"unexpected arguments: \['surplus'\]"),
])
def test_bad_command_line_is_one_line(capsys, tmp_path, tiny_cli, make_file, extra, message):
  args = list(tiny_cli)
  if make_file:
    sources = {"syntax.py": "def get_config(:\n", "no_get.py": "x = 1\n",
               "raises.py": "def get_config():\n  return 1 / 0\n"}
    path = tmp_path / make_file
    if make_file in sources:
      path.write_text(sources[make_file])
    args[0] = f"--config={path}"
  workdir = tmp_path / "w"
  rc, lines = cli(capsys, *args, f"--workdir={workdir}", *extra)
  assert rc == 2
  assert len(lines) == 1 and lines[0].startswith("error: "), lines
  assert re.search(message, lines[0]), lines[0]
  assert not workdir.exists()


@pytest.mark.parametrize("override, message", [
    ("--config.sr.batch_size=-4", r"config.sr.batch_size = -4: must be an integer >= 1"),
    ("--config.sr.batch_size=4", r"config.sr.batch_size = 4: the global batch must be a multiple of "
                                 r"the 8 devices"),
    ("--config.ae.num_steps=0", r"config.ae.num_steps = 0: set it, or ae.num_epochs"),
    ("--config.crop_size=36", r"config.crop_size = 36: must be a multiple of 4×scale \(8\)"),
    ("--config.degradation=lanczos", r"config.degradation = 'lanczos': must be one of 'bicubic', "
                                     r"'gaussian', 'kspace'"),
    ("--config.hamming=True", r"config.hamming = True: applies to degradation='kspace' only"),
    ("--config.sr.model.norm=layer", r"config.sr.model.norm = 'layer': must be one of 'batch', 'none'"),
    ("--config.vit.pretext=jigsaw", r"config.vit.pretext = 'jigsaw': must be one of"),
    ("--config.sr.loss.feature_target=sr", r"config.sr.loss.feature_target = 'sr'"),
    ("--config.sr.learning_rate=nan", r"config.sr.learning_rate = nan: must be a finite number"),
    ("--config.dtype=int8", r"config.dtype = 'int8': must be one of 'float32', 'bfloat16'"),
    ("--config.sr.lr_schedule=linear", r"config.sr.lr_schedule = 'linear': must be one of 'constant', "
                                       r"'cosine'"),
    ("--config.stages=('sr','vit')", r"config.stages = \('sr', 'vit'\): must keep the pipeline order"),
    ("--config.sr.gd_update=sequential", r"config.sr.gd_update = 'sequential': must be one of "
                                         r"'simultaneous', 'alternating'"),
    ("--config.sr.disc_bn_in_g=frozen", r"config.sr.disc_bn_in_g = 'frozen': must be one of 'train', "
                                        r"'eval', 'joint'"),
    ("--config.sr.loss.ae_frame=crop", r"config.sr.loss.ae_frame = 'crop': must be one of 'ae', 'sr'"),
])
def test_invalid_field_stops_before_any_stage_trains(capsys, tmp_path, tiny_cli, override, message):
  """Fields of the last stage are checked before the first one trains (the workdir is not even made)."""
  workdir = tmp_path / "w"
  rc, lines = cli(capsys, *tiny_cli, f"--workdir={workdir}", override)
  assert rc == 2
  assert len(lines) == 1 and re.search(message, lines[0]), lines
  assert not workdir.exists()


def test_unwritable_workdir_is_one_line(capsys, tmp_path, tiny_cli):
  blocker = tmp_path / "a_file"
  blocker.write_text("user data\n")
  rc, lines = cli(capsys, *tiny_cli, f"--workdir={blocker}/run")
  assert rc == 2
  assert lines == [f"error: workdir {blocker}/run: cannot write {blocker}/run/config.json: "
                   f"Not a directory"]
  assert blocker.read_text() == "user data\n"


@pytest.mark.parametrize("exc", [
    PermissionError(13, "Permission denied", "/data/x.nii"), FileExistsError("out.nii exists"),
    IsADirectoryError(21, "Is a directory", "/tmp/out"), NotADirectoryError("data_dir is a file"),
    loop.NonFiniteLossError("[sr] non-finite loss at step 7: g_total=nan; stopping, ..."),
    # Bad input is errors.UserError (a ValueError); a plain ValueError / KeyError is a bug
    # (tests/test_errors.py: it keeps its traceback).
    errors.UserError("x.nii: not 3D"),
])
def test_library_errors_are_one_line(capsys, tmp_path, tiny_cli, monkeypatch, exc):
  """What the library raises for bad input reaches the user as `error: <message>`, exit 2."""
  def fail(*args, **kwargs):
    raise exc
  monkeypatch.setattr(pipeline, "train", fail)
  rc, lines = cli(capsys, *tiny_cli, f"--workdir={tmp_path}/w")
  assert rc == 2
  expected = {PermissionError: "/data/x.nii: Permission denied", IsADirectoryError: "/tmp/out: Is a "
              "directory", KeyError: "reconstruction_rss"}.get(type(exc), str(exc))
  assert lines == [f"error: {expected}"]


def test_a_bug_keeps_its_traceback(tmp_path, tiny_cli, monkeypatch):
  def bug(*args, **kwargs):
    raise ZeroDivisionError("a bug")
  monkeypatch.setattr(pipeline, "train", bug)
  with pytest.raises(ZeroDivisionError):
    run_py.main(["run.py", *tiny_cli, f"--workdir={tmp_path}/w"])


# -- reruns against a trained workdir ----------------------------------------------------------------
@pytest.mark.parametrize("record", ["config.json", "checkpoint meta"])
def test_rerun_with_another_model_stops_before_touching_anything(capsys, trained_copy, tiny_cli,
                                                                 record):
  _, workdir = trained_copy
  if record == "checkpoint meta":       # a workdir without config.json: the checkpoints' own record
    os.remove(os.path.join(workdir, "config.json"))
  before = snapshot(workdir)
  rc, lines = cli(capsys, *tiny_cli, f"--workdir={workdir}", "--config.sr.model.features=16",
                  "--config.scale=4", "--config.log_every_steps=1")
  assert rc == 2 and len(lines) == 1, lines
  assert "scale: 2 in the workdir, 4 asked; sr.model.features: 8 in the workdir, 16 asked." in lines[0]
  assert "log_every_steps" not in lines[0].split(". Only")[0]    # a resumable field is not a difference
  assert "Only these fields may change on a resume: data_dir, stages" in lines[0]
  assert snapshot(workdir) == before                    # config.json and every checkpoint untouched


def test_corrupt_config_json_is_reported_not_replaced(capsys, trained_copy, tiny_cli):
  _, workdir = trained_copy
  path = os.path.join(workdir, "config.json")
  with open(path, "w") as f:
    f.write('{"scale": 2,')                 # cut short
  rc, lines = cli(capsys, *tiny_cli, f"--workdir={workdir}")
  assert rc == 2 and len(lines) == 1, lines
  assert f"{path}: not valid JSON" in lines[0] and "restore it, or use a new workdir" in lines[0]
  assert open(path).read() == '{"scale": 2,'


def test_cosine_schedule_fixes_the_sr_length(capsys, trained_copy, tiny_cli):
  """A cosine decay spans the stage: its steps already taken assumed that length."""
  _, workdir = trained_copy
  path = os.path.join(workdir, "config.json")
  recorded = json.load(open(path))
  recorded["sr"]["lr_schedule"] = "cosine"
  with open(path, "w") as f:
    json.dump(recorded, f)
  rc, lines = cli(capsys, *tiny_cli, f"--workdir={workdir}", "--config.sr.lr_schedule=cosine",
                  "--config.sr.num_steps=8")
  assert rc == 2 and len(lines) == 1, lines
  assert "changes how its checkpoints (vit, ae, sr) were trained" in lines[0]
  assert "sr.num_steps: 4 in the workdir, 8 asked." in lines[0]


def test_rerun_changing_only_resumable_fields_resumes(capsys, trained_copy, tiny_cli, sample_data_dir,
                                                      tmp_path):
  """Moved data, other logging and checkpoint periods, eval settings: the completed stages are
  skipped (nothing retrained) and config.json records the new values."""
  config, workdir = trained_copy
  moved = str(tmp_path / "moved_data")
  shutil.copytree(sample_data_dir, moved)
  ckpts = {s: snapshot(os.path.join(workdir, s, "checkpoints")) for s in ("vit", "ae", "sr")}
  rc, lines = cli(capsys, *tiny_cli, f"--workdir={workdir}", f"--config.data_dir={moved}",
                  "--config.log_every_steps=1", "--config.checkpoint_every_steps=3",
                  "--config.eval.batch_size=16")
  assert rc == 0, lines
  for s, snap in ckpts.items():
    assert snapshot(os.path.join(workdir, s, "checkpoints")) == snap
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert saved["data_dir"] == moved and saved["log_every_steps"] == 1
  assert saved["eval"]["batch_size"] == 16


def test_sr_against_features_of_another_model_stops_at_start(capsys, trained, tiny_cli, tmp_path):
  _, features, _ = trained
  workdir = tmp_path / "sr_only"
  rc, lines = cli(capsys, *tiny_cli, f"--workdir={workdir}", "--config.stages=('sr',)",
                  f"--config.sr.features_workdir={features}", "--config.vit.model.hidden_size=64")
  assert rc == 2 and len(lines) == 1, lines
  assert (f"sr.features_workdir {features}: its vit and ae stage(s) were trained with another model"
          in lines[0])
  assert "vit.model.hidden_size: 32 there, 64 asked" in lines[0]
  assert not workdir.exists()


def test_sr_against_a_features_workdir_without_checkpoints_stops_at_start(capsys, tiny_cli, tmp_path):
  workdir, empty = tmp_path / "sr_only", tmp_path / "nothing_trained"
  empty.mkdir()
  rc, lines = cli(capsys, *tiny_cli, f"--workdir={workdir}", "--config.stages=('sr',)",
                  f"--config.sr.features_workdir={empty}")
  assert rc == 2 and len(lines) == 1, lines
  assert "the SR loss needs its vit and ae checkpoint(s), and it has none" in lines[0]
  assert not workdir.exists()


def test_restore_of_a_checkpoint_that_does_not_fit_is_one_error(trained):
  """Second line of defence behind the config check (e.g. a checkpoint of another code version):
  the arrays that differ, named, before orbax reads anything."""
  from mrsr_jax import sharding
  from mrsr_jax.train import checkpoints
  from mrsr_jax.train.stage_sr import SRStage
  config, workdir, _ = trained
  other = config.copy_and_resolve_references()
  other.sr.model.features = 16
  _, abstract = loop.init_state(SRStage(other, workdir), sharding.make_mesh())
  mngr = checkpoints.manager(os.path.join(workdir, "sr", "checkpoints"))
  try:
    with pytest.raises(ValueError, match=r"the checkpoint does not fit the model this config builds "
                                         r"\(.*: \(8,\) saved, \(16,\) here"):
      checkpoints.restore(mngr, abstract)
  finally:
    mngr.close()


# -- metrics.jsonl -----------------------------------------------------------------------------------
def test_metrics_are_flushed_per_write_and_truncated_to_the_resumed_step(tmp_path):
  path = str(tmp_path / "sr" / "metrics.jsonl")
  writer = loop.JsonlWriter(path)
  for step in (2, 4, 6):
    writer.write_scalars(step, {"sr/g_total": 0.5})
  # Not closed (as after kill -9): every record is already on disk.
  assert [json.loads(l)["step"] for l in open(path)] == [2, 4, 6]
  with open(path, "a") as f:
    f.write('{"step": 8, "sr/g_to')            # a write cut short by the kill
  writer.close()
  loop.truncate_metrics(path, 4)               # resumed from the checkpoint of step 4
  assert [json.loads(l)["step"] for l in open(path)] == [2, 4]
  loop.truncate_metrics(path, 0)               # no checkpoint: training restarts at 0
  assert open(path).read() == ""


def test_paper_vit_trained_from_scratch_is_warned(caplog):
  """A paper config without vit.init_checkpoint trains UNETR's ViT-B/16 from scratch where the paper
  fine-tunes a pre-trained one: validation logs one warning saying so. Not for the small demo / test
  ViTs (no such weights exist for them), nor with a checkpoint, nor when the ViT stage does not run."""
  import logging
  from configs import demo, sr_fastmri_x4, sr_ixi_x2, tiny
  from mrsr_jax import config_check

  def warnings(config):
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      config_check.validate(config, num_devices=1)
    return [r.getMessage() for r in caplog.records if "vit.init_checkpoint is not set" in r.getMessage()]

  for paper in (sr_ixi_x2, sr_fastmri_x4):
    found = warnings(paper.get_config())
    assert len(found) == 1 and "pre-trained" in found[0] and "from scratch" in found[0], found
  with_weights = sr_ixi_x2.get_config()
  with_weights.vit.init_checkpoint = "/weights/UNETR_model_best_acc.pt"
  sr_only = sr_ixi_x2.get_config()
  sr_only.stages = ("sr",)
  for quiet in (demo.get_config(), tiny.get_config(), with_weights, sr_only):
    assert warnings(quiet) == []


def test_paper_config_contrast_argument(capsys, tmp_path):
  """IXI paper configs train one contrast (default T1, as Table 1's columns and the paper's 48,000-slice
  set), picked after ':'; fastMRI ones both contrasts (Table 2's one column); an unknown name is one
  line naming the choices, before anything is made."""
  from conftest import ROOT
  from mrsr_jax import api
  assert api.load_config("sr_ixi_x2").contrast == "t1"
  assert api.load_config("sr_ixi_x4:t2").contrast == "t2"
  assert api.load_config("sr_ixi_x4:all").contrast == ""          # the dataset's default set: all three
  assert api.load_config("sr_fastmri_x2").contrast == ""          # PD and FS-PD
  assert api.load_config("sr_fastmri_x4:fspd").contrast == "fspd"
  ablation = api.load_config("ablation_str_vit:ixi_x2:pd")
  assert (ablation.contrast, ablation.sr.features_workdir) == ("pd", "runs/ixi_x2_pd")
  assert api.load_config("ablation_vit:ixi_x4").sr.features_workdir == "runs/ixi_x4"
  rc, lines = cli(capsys, f"--config={ROOT}/configs/sr_ixi_x2.py:t3", f"--workdir={tmp_path}/w")
  assert rc == 2 and len(lines) == 1, lines
  assert re.search(r"sr_ixi_x2.py:t3: .*unknown contrast 't3'.*choose one of t1, t2, pd, all", lines[0])
  assert not (tmp_path / "w").exists()


def test_a_contrast_the_dataset_does_not_have_is_named(capsys, tmp_path, tiny_cli):
  """`--config.contrast=0` on the sample (one set, no builder configs): one line naming
  config.contrast and why, not "no prepared dataset; build it with --dataset=sample/0" (a command
  data_prep refuses; found by the config fuzzer), before the workdir is made."""
  rc, lines = cli(capsys, *tiny_cli, f"--workdir={tmp_path}/w", "--config.contrast=0")
  assert rc == 2 and len(lines) == 1, lines
  assert re.search(r"sample/0: config.contrast='0', but sample has no builder configs \(contrasts\): it "
                   r"is one set, prepared in .*sample; read it with config.contrast=''", lines[0]), lines[0]
  assert not (tmp_path / "w").exists()


def test_classify_pretext_on_a_one_label_set_stops_before_training(capsys, tmp_path, tiny_cli, monkeypatch):
  """vit.pretext='classify' on a set of one dataset/contrast label (one IXI contrast, as the paper
  configs now train) would train nothing (cross-entropy 0 for one class): one line, before the workdir
  is made."""
  from mrsr_jax.data import records
  real = records.read_info
  monkeypatch.setattr(records, "read_info", lambda d: {**real(d), "labels": ["sample/T1"]})
  workdir = tmp_path / "w"
  rc, lines = cli(capsys, *tiny_cli, f"--workdir={workdir}", "--config.vit.pretext=classify")
  assert rc == 2 and len(lines) == 1, lines
  assert re.search(r"vit.pretext='classify' needs slices of at least two labels .*\['sample/T1'\]"
                   r".*use vit.pretext='masked_patch'", lines[0]), lines[0]
  assert not workdir.exists()
