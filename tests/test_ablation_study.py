"""bench/ablation_study.py: its rows are the losses they claim to be, and its table reports what the
runs measured (the study itself is far too long for the suite; these check its pure parts, in ms)."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def study():
  spec = importlib.util.spec_from_file_location("ablation_study",
                                                os.path.join(ROOT, "bench", "ablation_study.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


DEFAULT = dict(pixel_weight=1.0, adv_weight=1e-4, lambda_vit=0.01, lambda_str=0.01, lambda_tex=0.009,
               feature_target="hr")


PAPER = dict(pixel_weight=1.0, adv_weight=1e-3, lambda_vit=1.0, lambda_str=1.0, lambda_tex=0.9,
             feature_target="lr")


def test_rows_are_the_losses_they_name(study):
  from mrsr_jax.losses import TABLE_ABLATIONS
  rows = {name: loss for name, (_, loss) in study.rows(DEFAULT, PAPER).items()}
  # Eq. 9 exactly: no pixel term, L_adv weighted 1, the paper's lambdas, features of bicubic(LR).
  assert rows["eq9_lr"] == dict(pixel_weight=0.0, adv_weight=1.0, lambda_vit=1.0, lambda_str=1.0,
                                lambda_tex=0.9, feature_target="lr")
  assert rows["eq9_hr"] == dict(rows["eq9_lr"], feature_target="hr")
  assert rows["default"] == DEFAULT
  assert rows["l1"] == dict(DEFAULT, adv_weight=0.0, lambda_vit=0.0, lambda_str=0.0, lambda_tex=0.0)
  # Every ablation of Tables 1-2 but "full" (the default itself), on top of the default's weights.
  ablations = {n: l for n, l in rows.items() if n.startswith("abl_")}
  assert set(ablations) == {f"abl_{n}" for n in TABLE_ABLATIONS if n != "full"}
  for name, loss in ablations.items():
    paper = TABLE_ABLATIONS[name[4:]]
    for key, value in paper.items():
      assert loss[key] == (0.0 if value == 0.0 else DEFAULT[key]), (name, key)
    assert {k: loss[k] for k in ("pixel_weight", "adv_weight", "feature_target")} == \
        {k: DEFAULT[k] for k in ("pixel_weight", "adv_weight", "feature_target")}
    # The same row on the paper configs' loss: kept terms at the paper's weights.
    on_paper = rows[f"paper_cfg_{name[4:]}"]
    assert on_paper == {**PAPER, **{k: (0.0 if v == 0.0 else PAPER[k]) for k, v in paper.items()}}
    assert rows[f"paper_cfg_hr_{name[4:]}"] == dict(on_paper, feature_target="hr")
  assert rows["paper_cfg"] == PAPER
  assert rows["paper_cfg_hr"] == dict(PAPER, feature_target="hr")
  assert rows["adv"] == dict(DEFAULT, lambda_vit=0.0, lambda_str=0.0, lambda_tex=0.0)


def _results(study, default_psnr, l1_psnr):
  subjects = list(study.SUBJECTS.values())
  cell = lambda p: {"bicubic": {"psnr": p, "ssim": 0.9, "nmse": 0.03}}   # noqa: E731
  runs = {row: {str(seed): {s: cell(vals[seed][i]) for i, s in enumerate(subjects)} for seed in range(3)}
          for row, vals in (("default", default_psnr), ("l1", l1_psnr))}
  return {"meta": {"lr_models": ["bicubic"], "rows": {"default": ["", {}], "l1": ["", {}]}},
          "bicubic": {s: cell(20.0) for s in subjects}, "runs": runs}


def test_report_means_spreads_gains_and_paired_test(study):
  default = [[21.0, 22.0], [21.2, 22.2], [21.4, 22.4]]       # [seed][subject]
  l1 = [[20.5, 21.6], [20.6, 21.6], [21.0, 22.1]]
  text = study.report(_results(study, default, l1))
  flat = np.array(default).ravel()
  assert f"{flat.mean():.2f} ± {flat.std(ddof=1):.2f}" in text          # overall, over seeds x subjects
  assert f"{np.mean(flat - 20.0):+.2f} ± {np.std(flat - 20.0, ddof=1):.2f}" in text   # the gain
  per_val = np.array(default)[:, 0]
  assert f"{per_val.mean():.2f} ± {per_val.std(ddof=1):.2f}" in text    # per subject, over seeds
  from scipy import stats
  d = flat - np.array(l1).ravel()
  p = stats.ttest_rel(flat, np.array(l1).ravel()).pvalue
  assert f"{d.mean():+.2f} dB (t-test p={p:.3f}" in text and "n=6" in text
  assert "Best on val (IXI015)" in text and text.index("default +") < text.index("l1 +")


def test_paper_exact_loss_is_one_override_away(study):
  from mrsr_jax import api
  eq9 = api.load_config("demo:eq9").sr.loss
  paper_row = study.rows(DEFAULT, PAPER)["eq9_lr"][1]
  assert {k: eq9[k] for k in paper_row} == paper_row
  default = api.load_config("demo")
  assert {k: default.sr.loss[k] for k in DEFAULT} == DEFAULT      # what the study's "default" row is
  other = api.load_config("demo:eq9").to_dict()
  other["sr"]["loss"] = default.sr.loss.to_dict()
  assert other == default.to_dict()                                # only the loss differs
  with pytest.raises(ValueError, match="demo.py:bogus: unknown loss"):
    api.load_config("demo:bogus")
