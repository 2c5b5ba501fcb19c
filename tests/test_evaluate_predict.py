"""Evaluation report and prediction on a tiny trained workdir, with real MR volumes."""

import json
import os
import subprocess
import sys

import h5py
import nibabel as nib
import numpy as np
import pytest

from mrsr_jax import evaluate, predict
from mrsr_jax.data import degrade, pipeline, records
from mrsr_jax.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def nibabel_anatomical():
  return os.path.join(os.path.dirname(nib.__file__), "tests", "data", "anatomical.nii")


@pytest.fixture(scope="module")
def report(trained):
  config, workdir, _ = trained
  return evaluate.evaluate(config, workdir)


def test_eval_writes_every_file(report, trained):
  _, workdir, _ = trained
  out = os.path.join(workdir, "eval")
  for name in ("results.md", "results.csv", "results.json", "loss_curves_sr.png",
               "loss_curves_ae.png", "loss_curves_vit.png"):
    assert os.path.getsize(os.path.join(out, name)) > 0, name
  assert any(f.startswith("fig2_") and f.endswith(".png") for f in os.listdir(out))
  saved = json.load(open(os.path.join(out, "results.json")))
  assert saved["rows"]["ours"]["step"] == trained[0].sr.num_steps
  assert set(saved["results"]) == {"bicubic", "ours"}
  md = open(os.path.join(out, "results.md")).read()
  assert "| bicubic |" in md and "| ours |" in md


def test_bicubic_row_equals_independent_computation(report, trained):
  """Recompute the bicubic row with numpy/skimage volume by volume, outside the jitted eval."""
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
        vols.setdefault((labels[int(lab)], subj.decode()), []).append(img[..., 0])
  per_label = {}
  for (label, _), slices in vols.items():
    hr = np.stack(slices)
    bic = np.asarray(degrade.upsample_bicubic(
        degrade.downsample(hr[..., None], config.scale), config.scale))[..., 0]
    dr = hr.max()
    mse = np.mean((bic.astype(np.float64) - hr) ** 2)
    ssim = np.mean([structural_similarity(h, p, data_range=dr, win_size=7) for h, p in zip(hr, bic)])
    per_label.setdefault(label, []).append(
        (10 * np.log10(dr ** 2 / mse), ssim, np.sum((bic - hr) ** 2) / np.sum(hr ** 2)))
  for label, vals in per_label.items():
    got = report["results"]["bicubic"][label]
    want = np.mean(np.asarray(vals), axis=0)
    np.testing.assert_allclose([got["psnr"], got["ssim"], got["nmse"]], want, rtol=1e-4)
    assert got["num_volumes"] == len(vals)


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
  assert np.isfinite(data_out).all() and data_out.min() >= 0


def test_predict_maps_intensities_back(trained, tmp_path, monkeypatch):
  """With bicubic standing in for the (4-step, untrained) generator, the output is the input's
  bicubic upsampling in scanner units: normalisation and its inverse are exact."""
  config, workdir, _ = trained
  s = config.scale
  monkeypatch.setattr(evaluate, "load_generator", lambda cfg, wd, mesh: (
      lambda lr: degrade.upsample_bicubic(lr, s), {"workdir": wd, "step": 0}))
  src = nibabel_anatomical()
  out = str(tmp_path / "bicubic.nii")
  predict.predict_file(config, workdir, src, out, slice_axis=2)
  data_in = np.asarray(nib.load(src).dataobj, np.float32)
  data_out = np.asarray(nib.load(out).dataobj, np.float32)
  assert data_out.dtype == np.float32 or np.issubdtype(nib.load(out).get_data_dtype(), np.integer)
  # Expected: the normalised slices (robust max → 1), bicubic-upsampled, clipped at 0, times the
  # stored scale, rounded to the input's integer type.
  from data_prep import volumes
  norm, scale = volumes.robust_normalise(np.moveaxis(data_in, 2, 0))
  up = np.asarray(degrade.upsample_bicubic(norm[..., None], s))[..., 0]
  want = np.moveaxis(np.clip(up, 0, None) * scale, 0, 2)
  np.testing.assert_allclose(data_out, want, rtol=1e-4, atol=1.0)
  assert 0.9 * data_in.mean() < data_out.mean() < 1.1 * data_in.mean()


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
  res = predict.predict_file(config, workdir, lr_path, str(tmp_path / "out.nii"), reference=hr_path,
                             slice_axis=2)
  assert np.isfinite(res["psnr"]) and 0 < res["ssim"] <= 1 and res["nmse"] >= 0


def test_predict_fastmri_h5(trained, tmp_path):
  config, workdir, _ = trained
  vol = np.asarray(nib.load(nibabel_anatomical()).dataobj, np.float32)[:32, :40, :6]
  path = str(tmp_path / "file1000001.h5")
  with h5py.File(path, "w") as f:
    f.create_dataset("reconstruction_esc", data=np.moveaxis(vol, 2, 0))
    f.attrs["acquisition"] = "CORPD_FBK"
  out = str(tmp_path / "knee.nii.gz")
  predict.predict_file(config, workdir, path, out)
  img = nib.load(out)
  assert img.shape == (32 * config.scale, 40 * config.scale, 6)


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


def test_predict_cli_errors_cleanly(trained, tmp_path):
  """Through run.py: wrong scale for the checkpoint and a workdir without one exit non-zero, one line."""
  config, workdir, _ = trained
  out = tmp_path / "o.nii.gz"
  base = [sys.executable, os.path.join(ROOT, "run.py"), "--config", os.path.join(ROOT, "configs/tiny.py"),
          f"--config.data_dir={config.data_dir}", "--mode=predict", f"--input={nibabel_anatomical()}",
          f"--output={out}"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run(base + [f"--workdir={workdir}", "--config.scale=4"], capture_output=True,
                     text=True, env=env, timeout=300)
  assert r.returncode != 0 and "trained for scale 2, not 4" in r.stderr
  r = subprocess.run(base + [f"--workdir={tmp_path / 'empty'}"], capture_output=True, text=True,
                     env=env, timeout=300)
  assert r.returncode != 0 and "no trained SR checkpoint" in r.stderr
  assert not out.exists()
