"""Evaluation report and prediction on a tiny trained workdir, with real MR volumes."""

import json
import os
import sys

import h5py
import nibabel as nib
import numpy as np
import pytest

from mrsr_jax import evaluate, inference, predict
from mrsr_jax.data import degrade, pipeline, records
from mrsr_jax.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def nibabel_anatomical():
  return os.path.join(os.path.dirname(nib.__file__), "tests", "data", "anatomical.nii")


@pytest.fixture(scope="module")
def report(trained):
  config, workdir, _ = trained
  return evaluate.evaluate(config, workdir)


def decoded_png(path):
  """The PNG's RGB pixels in [0, 1], decoded (a truncated or empty file raises)."""
  import matplotlib.image
  return np.asarray(matplotlib.image.imread(path), np.float64)[..., :3]


def test_eval_writes_every_file(report, trained):
  _, workdir, _ = trained
  out = os.path.join(workdir, "eval")
  for name in ("results.md", "results.csv", "results.json"):
    assert os.path.getsize(os.path.join(out, name)) > 0, name
  dpi = 90   # figures._save
  for stage in ("sr", "ae", "vit"):
    # One panel per logged series, four to a row (figures.loss_curves): the figure's pixel size says
    # how many panels it holds; each has a curve in matplotlib's first colour.
    with open(os.path.join(workdir, stage, "metrics.jsonl")) as f:
      keys = {k for r in map(json.loads, f) for k in r if k != "step" and "steps_per_sec" not in k
              and "uptime" not in k}
    cols, rows = min(len(keys), 4), -(-len(keys) // 4)
    png = decoded_png(os.path.join(out, f"loss_curves_{stage}.png"))
    assert png.shape[:2] == (round(2.6 * rows * dpi), round(3.4 * cols * dpi)), (stage, len(keys))
    c0 = np.all(np.abs(png - np.asarray([0x1f, 0x77, 0xb4]) / 255) < 0.1, axis=-1)
    assert c0.sum() > 50 * len(keys), stage
  figs = [f for f in os.listdir(out) if f.startswith("fig2_") and f.endswith(".png")]
  assert figs
  for name in figs:
    # Fig. 2: HR, bicubic and ours side by side (3 columns), each over its detail, the error map and
    # its detail (4 rows): MR slices in grey, error maps in colour (inferno), HR's error rows blank.
    png = decoded_png(os.path.join(out, name))
    assert png.shape[:2] == (round((2.3 * 4 + 0.6) * dpi), round(2.4 * 3 * dpi)), name
    spread = png.max(-1) - png.min(-1)
    grey = (spread < 0.02) & (png.mean(-1) > 0.05) & (png.mean(-1) < 0.95)
    colour = spread > 0.3
    assert grey.mean() > 0.05 and colour.mean() > 0.02, (name, grey.mean(), colour.mean())
  saved = json.load(open(os.path.join(out, "results.json")))
  assert saved["rows"]["ours"]["step"] == trained[0].sr.num_steps
  assert set(saved["results"]) == {"bicubic", "ours"}
  md = open(os.path.join(out, "results.md")).read()
  assert "| bicubic |" in md and "| ours |" in md


def test_bicubic_row_equals_independent_computation(report, trained):
  """Recompute the bicubic row on the LR of every LR model with numpy/skimage, volume by volume,
  outside the jitted eval; the model's gain must be its PSNR / SSIM minus these."""
  from skimage.metrics import structural_similarity
  config, _, _ = trained
  ds_dir = loop.dataset_dir(config)
  labels = records.read_info(ds_dir)["labels"]
  vols = {}
  ds = pipeline.create_dataset(ds_dir, "test", global_batch_size=8, crop_size=config.eval.size,
                               seed=0, train=False)
  for b in ds.as_numpy_iterator():
    for img, lab, subj, m in zip(b["hr"], b["label"], b["subject"], b["mask"]):
      if m:
        vols.setdefault((labels[int(lab)], subj.decode() if isinstance(subj, bytes) else str(subj)), []).append(img[..., 0])
  assert report["lr_models"] == list(evaluate.lr_models(config))
  for method in report["lr_models"]:
    per_label = {}
    for (label, _), slices in vols.items():
      hr = np.stack(slices)
      bic = np.asarray(degrade.upsample_bicubic(
          degrade.downsample(hr[..., None], config.scale, method=method), config.scale))[..., 0]
      dr = hr.max()
      mse = np.mean((bic.astype(np.float64) - hr) ** 2)
      ssim = np.mean([structural_similarity(h, p, data_range=dr, win_size=7) for h, p in zip(hr, bic)])
      per_label.setdefault(label, []).append(
          (10 * np.log10(dr ** 2 / mse), ssim, np.sum((bic - hr) ** 2) / np.sum(hr ** 2)))
    for label, vals in per_label.items():
      got = report["robustness"][method]["bicubic"][label]
      want = np.mean(np.asarray(vals), axis=0)
      np.testing.assert_allclose([got["psnr"], got["ssim"], got["nmse"]], want, rtol=1e-4, err_msg=method)
      assert got["num_volumes"] == len(vals)
      ours = report["robustness"][method]["ours"][label]
      assert ours["psnr_gain"] == pytest.approx(ours["psnr"] - got["psnr"])
      assert ours["ssim_gain"] == pytest.approx(ours["ssim"] - got["ssim"])
      assert "psnr_gain" not in got


def test_robustness_table_one_column_per_lr_model(report, trained):
  """The matched LR model's robustness numbers are the main table's; every LR model gets its
  column group in results.md and its lines in results.csv; the LR models really differ."""
  config, workdir, _ = trained
  methods = evaluate.lr_models(config)
  assert config.degradation in methods and len(methods) >= 2
  assert set(report["robustness"]) == set(methods)
  assert report["robustness"][config.degradation] == report["results"]
  out = os.path.join(workdir, "eval")
  saved = json.load(open(os.path.join(out, "results.json")))
  assert saved["robustness"][config.degradation] == saved["results"]
  bic = {m: report["robustness"][m]["bicubic"] for m in methods}
  label = next(iter(report["results"]["bicubic"]))
  assert len({round(bic[m][label]["psnr"], 6) for m in methods}) == len(methods)
  md = open(os.path.join(out, "results.md")).read()
  header = next(l for l in md.splitlines() if l.startswith("| contrast | row |"))
  for m in methods:
    assert f"| {m}{' (matched)' if m == config.degradation else ''} PSNR / SSIM | gain" in header, m
  assert header.count("PSNR / SSIM") == len(methods)
  import csv
  lines = list(csv.DictReader(open(os.path.join(out, "results.csv"))))
  assert {(l["lr_model"], l["row"]) for l in lines} == {(m, r) for m in methods for r in ("bicubic", "ours")}
  for l in lines:
    v = report["robustness"][l["lr_model"]][l["row"]][l["contrast"]]
    assert float(l["psnr"]) == pytest.approx(v["psnr"], rel=1e-12)
    assert (l["psnr_gain"] == "") == (l["row"] == "bicubic")
  # The paper-protocol table keeps its layout: one line per row, one cell per contrast.
  assert "| bicubic | " in md and "| ours | " in md


def test_eval_rejects_unknown_lr_model_before_compute(trained, tmp_path):
  config, workdir, _ = trained
  cfg = config.copy_and_resolve_references()
  cfg.eval.lr_models = ("bicubic", "nearest")
  # An empty workdir: the check must come before looking for a checkpoint.
  with pytest.raises(ValueError, match=r"config.eval.lr_models: unknown LR model\(s\) \['nearest'\]"):
    evaluate.evaluate(cfg, str(tmp_path))
  assert not os.path.exists(tmp_path / "eval")


def test_predict_real_nifti(trained, tmp_path):
  config, workdir, _ = trained
  src = nibabel_anatomical()
  out = str(tmp_path / "sr.nii.gz")
  predict.predict_file(config, workdir, src, out)
  a, b = nib.load(src), nib.load(out)
  s = config.scale
  in_plane = [i for i in range(3) if b.shape[i] != a.shape[i]]
  assert len(in_plane) == 2
  for i in range(3):
    assert b.shape[i] == (a.shape[i] * s if i in in_plane else a.shape[i])
    want_zoom = a.header.get_zooms()[i] / (s if i in in_plane else 1)
    assert b.header.get_zooms()[i] == pytest.approx(want_zoom, rel=1e-5)
  # Same world extent: the outer voxel corners map to the same points (within half an output voxel).
  for corner in np.ndindex(2, 2, 2):
    c_in = np.asarray([(-0.5 if c == 0 else n - 0.5) for c, n in zip(corner, a.shape)])
    c_out = np.asarray([(-0.5 if c == 0 else n - 0.5) for c, n in zip(corner, b.shape)])
    w_in = a.affine @ np.append(c_in, 1)
    w_out = b.affine @ np.append(c_out, 1)
    assert np.linalg.norm(w_in - w_out) < 0.5 * min(b.header.get_zooms()[:3]) + 1e-6
  assert nib.aff2axcodes(a.affine) == nib.aff2axcodes(b.affine)
  data_out = np.asarray(b.dataobj, np.float32)
  # Undershoot floored at 0, or at the input's minimum (anatomical.nii has a few negative voxels).
  assert np.isfinite(data_out).all() and data_out.min() >= min(0, np.asarray(a.dataobj).min())


def test_predict_maps_intensities_back(trained, tmp_path, monkeypatch):
  """With bicubic standing in for the (4-step, untrained) generator, the output is the input's
  bicubic upsampling in scanner units over its whole range: the normalisation, the bicubic path for
  what the clip at the 99.5th percentile removed (anatomical.nii's maximum is 2.3x that percentile)
  and the way back are exact. float32, since super-resolved values are not the input's integers."""
  config, workdir, _ = trained
  s = config.scale
  monkeypatch.setattr(inference, "load_generator", lambda cfg, wd, mesh: (
      lambda lr: degrade.upsample_bicubic(lr, s), {"workdir": wd, "step": 0}))
  src = nibabel_anatomical()
  out = str(tmp_path / "bicubic.nii")
  predict.predict_file(config, workdir, src, out, slice_axis=2)
  data_in = np.asarray(nib.load(src).dataobj, np.float32)
  img = nib.load(out)
  assert img.get_data_dtype() == np.float32
  data_out = np.asarray(img.dataobj, np.float32)
  # Expected: bicubic of the input slices, undershoot floored at min(0, input minimum).
  up = np.asarray(degrade.upsample_bicubic(np.moveaxis(data_in, 2, 0)[..., None], s))[..., 0]
  want = np.moveaxis(np.maximum(up, min(0.0, float(data_in.min()))), 0, 2)
  assert data_in.max() > 2 * np.percentile(data_in, 99.5)
  np.testing.assert_allclose(data_out, want, rtol=1e-5, atol=1e-5 * data_in.max())
  assert data_out.max() == pytest.approx(want.max(), rel=1e-5)


def test_predict_with_reference_scores(trained, tmp_path):
  config, workdir, _ = trained
  ref = nib.load(nibabel_anatomical())
  data = np.asarray(ref.dataobj, np.float32)[:32, :40, :]   # in-plane multiple of the scale
  hr_path, lr_path = str(tmp_path / "hr.nii"), str(tmp_path / "lr.nii")
  s = config.scale
  affine = ref.affine.copy()
  nib.save(nib.Nifti1Image(data, affine), hr_path)
  lr = np.stack([np.asarray(degrade.downsample(data[None, :, :, k, None], s))[0, ..., 0]
                 for k in range(data.shape[2])], axis=-1)
  nib.save(nib.Nifti1Image(lr, predict.upsampled_affine(affine, (0, 1), 1) @ np.diag([s, s, 1, 1])),
           lr_path)
  out_path = str(tmp_path / "out.nii")
  res = predict.predict_file(config, workdir, lr_path, out_path, reference=hr_path, slice_axis=2)
  # The scores are those of the written file against the reference file, recomputed here from the two
  # files alone in fastMRI's convention (data range = the reference's maximum; PSNR and NMSE over the
  # volume, SSIM the mean over slices) with numpy and scikit-image, not with mrsr_jax.metrics.
  from skimage.metrics import structural_similarity
  got = np.asarray(nib.load(out_path).dataobj, np.float64)
  hr = np.asarray(nib.load(hr_path).dataobj, np.float64)
  assert got.shape == hr.shape and not np.array_equal(got, hr)
  dr = hr.max()
  mse = np.mean((got - hr) ** 2)
  np.testing.assert_allclose(res["psnr"], 10 * np.log10(dr ** 2 / mse), rtol=1e-6)
  np.testing.assert_allclose(res["nmse"], np.sum((got - hr) ** 2) / np.sum(hr ** 2), rtol=1e-6)
  ssim = np.mean([structural_similarity(hr[..., k], got[..., k], data_range=dr, win_size=7)
                  for k in range(hr.shape[2])])
  np.testing.assert_allclose(res["ssim"], ssim, rtol=1e-4)


def test_predict_fastmri_h5(trained, tmp_path, monkeypatch):
  config, workdir, _ = trained
  s = config.scale
  vol = np.asarray(nib.load(nibabel_anatomical()).dataobj, np.float32)[:32, :40, :6]
  path = str(tmp_path / "file1000001.h5")
  with h5py.File(path, "w") as f:
    f.create_dataset("reconstruction_esc", data=np.moveaxis(vol, 2, 0))   # fastMRI: [slices, x, y]
    f.attrs["acquisition"] = "CORPD_FBK"
  out = str(tmp_path / "knee.nii.gz")
  predict.predict_file(config, workdir, path, out)
  img = nib.load(out)
  assert img.shape == (32 * s, 40 * s, 6)
  # The stored slices are what is super-resolved, each in place: with bicubic standing in for the
  # generator the output is each h5 slice's bicubic upsampling, in the file's units (a transposed,
  # reordered or rescaled read would not be).
  monkeypatch.setattr(inference, "load_generator", lambda cfg, wd, mesh: (
      lambda lr: degrade.upsample_bicubic(lr, s), {"workdir": wd, "step": 0}))
  out = str(tmp_path / "knee_bicubic.nii.gz")
  predict.predict_file(config, workdir, path, out)
  with h5py.File(path) as f:
    stored = np.asarray(f["reconstruction_esc"], np.float32)
  want = np.asarray(degrade.upsample_bicubic(stored[..., None], s))[..., 0]
  want = np.moveaxis(np.maximum(want, min(0.0, float(stored.min()))), 0, -1)
  np.testing.assert_allclose(np.asarray(nib.load(out).dataobj, np.float32), want, rtol=1e-5,
                             atol=1e-5 * float(stored.max()))


@pytest.mark.parametrize("kind,message", [
    ("text", "not a"),
    ("nan", "NaN/Inf"),
    ("4d", "choose a frame"),
])
def test_predict_bad_inputs_fail_without_output(trained, tmp_path, kind, message):
  config, workdir, _ = trained
  if kind == "text":
    src = tmp_path / "bad.nii.gz"
    src.write_text("this is not a volume")
  else:
    data = np.random.default_rng(0).random((8, 8, 4) + ((3,) if kind == "4d" else ()), np.float32)
    if kind == "nan":
      data[0, 0, 0] = np.nan
    src = tmp_path / f"{kind}.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(src))
  out = tmp_path / "out.nii.gz"
  with pytest.raises(ValueError, match=message):
    predict.predict_file(config, workdir, str(src), str(out))
  assert not out.exists() and not any(p.name.startswith(".partial") for p in tmp_path.iterdir())


def test_predict_cli_errors_cleanly(trained, tmp_path, capsys):
  """Through run.py (its main in-process: the same argument handling and error lines as a fresh
  interpreter, without one's start-up): wrong scale for the checkpoint and a workdir without one exit
  non-zero with one line, and write nothing."""
  import run as run_py
  config, workdir, _ = trained
  out = tmp_path / "o.nii.gz"
  base = ["run.py", "--config", os.path.join(ROOT, "configs/tiny.py"), f"--config.data_dir={config.data_dir}",
          "--mode=predict", f"--input={nibabel_anatomical()}", f"--output={out}"]
  for args, message in (([f"--workdir={workdir}", "--config.scale=4"], "trained for scale 2, not 4"),
                        ([f"--workdir={tmp_path / 'empty'}"], "no trained SR checkpoint")):
    capsys.readouterr()
    rc = run_py.main(base + args)
    # absl log records start with a severity letter and a date ("I1125 22:20:08.48 ..."): not messages.
    lines = [l for l in capsys.readouterr().err.splitlines()
             if l.strip() and not (l[:1] in "IWEF" and l[1:5].isdigit())]
    assert rc != 0 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (rc, lines)
  assert not out.exists()
