"""config.baselines: comparison networks trained beside a run, alike but for their network and loss,
and scored as rows of its report (mrsr_jax/baselines.py)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from conftest import snapshot


def test_config_for_changes_only_the_network_and_the_loss():
  from configs import demo

  from mrsr_jax import baselines, models
  config = demo.get_config()
  for arch in ("srcnn", "vdsr", "edsr", "rdn"):
    cfg = baselines.config_for(config, arch, "reduced")
    assert cfg.sr.arch == arch
    assert dict(cfg.sr.model) == models.PRESETS[arch]["reduced"]
    # The paper's pixel loss alone: no D (adv 0), no frozen extractors (every lambda 0).
    assert dict(cfg.sr.loss) == dict(config.sr.loss, pixel={"srcnn": "mse", "vdsr": "mse"}.get(arch, "l1"),
                                     pixel_weight=1.0, adv_weight=0.0, lambda_vit=0.0, lambda_str=0.0,
                                     lambda_tex=0.0)
    assert cfg.stages == ("sr",) and cfg.baselines == ()
    # Everything the comparison is not about is the run's own.
    for field in ("scale", "crop_size", "data_dir", "seed"):
      assert cfg[field] == config[field]
    for field in ("batch_size", "num_steps", "learning_rate", "lr_schedule", "warmup_steps", "weight_decay"):
      assert cfg.sr[field] == config.sr[field], field
    assert cfg.sr.lr_mix.to_dict() == config.sr.lr_mix.to_dict()
  # The run's config is not changed by deriving a baseline from it.
  assert config.sr.get("arch", "srgan") == "srgan" and config.sr.loss.adv_weight == 1e-4


@pytest.mark.parametrize("names,size,match", [
    (("srgan",), "reduced", "not a comparison network"),
    (("srcnn", "nope"), "reduced", "'nope' is not a comparison network"),
    (("vdsr", "vdsr"), "reduced", "names a network twice"),
    (("edsr",), "huge", "baselines_size = 'huge'"),
])
def test_bad_baselines_are_one_clear_error(names, size, match):
  from configs import demo

  from mrsr_jax import baselines
  config = demo.get_config()
  config.baselines = names
  config.baselines_size = size
  with pytest.raises(ValueError, match=match):
    baselines.check(config)


def test_a_finished_run_trains_its_baselines_and_reports_them(trained, tmp_path):
  """Adding a baseline to a finished run trains only the baseline (the run's stages are skipped,
  their checkpoints untouched) and --mode=eval scores it as a row next to bicubic and ours."""
  from mrsr_jax import baselines, evaluate
  from mrsr_jax.train import pipeline
  config, workdir, _ = trained
  run = str(tmp_path / "run")
  # Not its eval/: test_evaluate_predict writes that report, maybe at this moment on another worker.
  shutil.copytree(workdir, run, ignore=shutil.ignore_patterns("eval"))
  before = snapshot(run)
  cfg = config.copy_and_resolve_references()
  cfg.baselines = ("srcnn",)
  cfg.baselines_size = "reduced"
  states = pipeline.train(cfg, run)
  after = snapshot(run)
  # The run's stages (checkpoints, metrics) untouched; its config.json records the new baselines field.
  def stage_files(snap):
    return {k: v for k, v in snap.items() if k.split(os.sep)[0] in ("vit", "ae", "sr")}
  assert stage_files(before) and stage_files(after) == stage_files(before), "the run's stages changed"
  base_dir = baselines.workdir_for(run, "srcnn")
  with open(os.path.join(base_dir, "config.json")) as f:
    recorded = json.load(f)
  assert recorded["sr"]["arch"] == "srcnn" and recorded["sr"]["loss"]["pixel"] == "mse"
  assert recorded["sr"]["loss"]["adv_weight"] == 0.0 and recorded["sr"]["num_steps"] == config.sr.num_steps
  assert int(states["baseline_srcnn"].step) == config.sr.num_steps
  # The baseline's generator is SRCNN's (its 9x9 -> 1x1 -> 5x5 layers), not ours.
  params = states["baseline_srcnn"].params["gen"]
  assert sorted(params) == ["conv1", "conv2", "conv3"], sorted(params)

  report = evaluate.evaluate(cfg, run)
  rows = report["results"]
  assert list(rows) == ["bicubic", "ours", "srcnn"]
  (contrast,) = rows["srcnn"]
  srcnn, bicubic = rows["srcnn"][contrast], rows["bicubic"][contrast]
  assert np.isfinite([srcnn["psnr"], srcnn["ssim"], srcnn["nmse"]]).all()
  assert srcnn["psnr"] != bicubic["psnr"]   # a trained SRCNN is not the bicubic baseline
  with open(os.path.join(run, "eval", "results.md")) as f:
    assert "| srcnn |" in f.read()
