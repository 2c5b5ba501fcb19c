"""bench/compare_methods.py: its rows are the networks and losses they name, studies run in parallel
merge into one, and its table reports what the runs measured (the study itself is far too long for
the suite; these check its pure parts)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import ROOT  # noqa: F401  (puts the repository on sys.path)


@pytest.fixture(scope="module")
def cm():
  from bench import compare_methods
  return compare_methods


PAPER = dict(pixel_weight=1.0, adv_weight=1e-3, lambda_vit=1.0, lambda_str=1.0, lambda_tex=0.9,
             feature_target="lr")


def test_rows_are_the_networks_and_losses_they_name(cm):
  from configs import demo
  base = demo.get_config()
  cfg = cm.method_config(base, "vdsr", "reduced", PAPER)
  assert cfg.sr.arch == "vdsr" and cfg.sr.loss.pixel == "mse" and cfg.sr.loss.adv_weight == 0.0
  assert cfg.sr.num_steps == base.sr.num_steps and cfg.crop_size == base.crop_size
  assert cm.method_config(base, "edsr", "reduced", PAPER).sr.loss.pixel == "l1"
  ours = cm.method_config(base, "ours", "reduced", PAPER)
  assert ours.sr.get("arch", "srgan") == "srgan" and dict(ours.sr.loss) == dict(base.sr.loss)
  paper = cm.method_config(base, "ours_paper", "reduced", PAPER)
  assert {k: paper.sr.loss[k] for k in PAPER} == PAPER
  assert dict(paper.sr.model) == dict(base.sr.model)


def _study(split: str, psnr: dict[str, float], fingerprint="f"):
  """One split, one seed, one 2x held-out subject 'S<split>' per split; bicubic at 20 dB."""
  subj = f"S{split}"
  cell = lambda p: {"bicubic": {"psnr": p, "ssim": 0.5, "nmse": 0.1}}  # noqa: E731
  return {"meta": {"fingerprint": fingerprint, "methods": {m: m for m in psnr}, "scales": [2],
                   "lr_models": ["bicubic"], "wall_s": 10.0, "started": "t", "command": f"c{split}",
                   "commit": "x", "scale_note": "n", "machine": "m"},
          "subjects": {split: {"test": subj}},
          "bicubic": {split: {"2": {subj: cell(20.0)}}},
          "runs": {split: {"2": {m: {"0": {subj: cell(p)}} for m, p in psnr.items()}}},
          "costs": {}, "info": {split: {"2": {m: {"0": {"load": [1.0]}} for m in psnr}}}}


def test_merge_unites_splits_and_refuses_other_settings(cm, tmp_path):
  a, b = tmp_path / "a", tmp_path / "b"
  for d, study in ((a, _study("0", {"vdsr": 21.0, "ours": 20.5})), (b, _study("1", {"vdsr": 22.0, "ours": 21.0}))):
    d.mkdir()
    (d / "compare.json").write_text(json.dumps(study))
  merged = cm.merge([str(a), str(b)])
  assert set(merged["subjects"]) == {"0", "1"} and set(merged["runs"]) == {"0", "1"}
  assert list(merged["meta"]["methods"]) == ["vdsr", "ours"]        # METHODS order
  text = cm.report(merged)
  # Overall gains over bicubic: vdsr (+1, +2) -> +1.50 ± 0.71; ours (+0.5, +1) -> +0.75 ± 0.35.
  row = next(line for line in text.splitlines() if line.startswith("| vdsr | 2 |"))
  assert "+1.50 ± 0.71" in row, row
  row = next(line for line in text.splitlines() if line.startswith("| ours | 2 |"))
  assert "+0.75 ± 0.35" in row, row
  # The best row of the column is vdsr, ahead of ours by 0.75 dB on the paired subjects.
  best = next(line for line in text.splitlines() if line.startswith("| bicubic | vdsr"))
  assert "+0.75 dB" in best, best
  (b / "compare.json").write_text(json.dumps(_study("1", {"vdsr": 22.0}, fingerprint="other")))
  with pytest.raises(SystemExit, match="different settings"):
    cm.merge([str(a), str(b)])


def test_paired_tests_cell(cm):
  from bench import seeded_study
  assert seeded_study.paired_tests(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == "identical"
  assert "n=1, no test" in seeded_study.paired_tests(np.array([2.0]), np.array([1.0]))
  assert seeded_study.paired_tests(np.array([2.0, 3.0, 4.5]), np.array([1.0, 2.0, 3.0])).startswith("+1.17 dB")
