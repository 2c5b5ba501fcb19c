"""Parity of mrsr_jax.metrics with scikit-image and fastMRI's evaluate.py, on real MR slices."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrsr_jax import metrics
from mrsr_jax.data import degrade

skm = pytest.importorskip("skimage.metrics", reason="scikit-image (test extra) is the reference")


def _dipy_slice() -> np.ndarray:
  """dipy's 256 x 256 coronal T1 slice in its stored units (float32)."""
  dipy = pytest.importorskip("dipy")
  path = os.path.join(os.path.dirname(dipy.__file__), "data", "files", "t1_coronal_slice.npy")
  if not os.path.exists(path):
    pytest.skip(f"dipy does not ship {path}")
  return np.load(path).astype(np.float32)


def _mni_volume(n: int = 6) -> np.ndarray:
  """n axial slices [n, 196, 232] of nilearn's MNI152 T1 template, in its units (0..255)."""
  nilearn = pytest.importorskip("nilearn")
  nib = pytest.importorskip("nibabel")
  path = os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data",
                      "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
  if not os.path.exists(path):
    pytest.skip(f"nilearn does not ship {path}")
  vol = np.asarray(nib.load(path).dataobj, dtype=np.float32)
  return np.moveaxis(vol[:196, :232, 70:70 + 4 * n:4], -1, 0)


def _degraded(x: np.ndarray, scale: int, method: str = "bicubic") -> np.ndarray:
  """The bicubic-baseline reconstruction of `x` [..., H, W] from its 1/scale LR copy."""
  flat = jnp.asarray(x.reshape(-1, *x.shape[-2:]))[..., None]
  lr = degrade.downsample(flat, scale, method)
  return np.asarray(degrade.upsample_bicubic(lr, scale))[..., 0].reshape(x.shape)


@pytest.fixture(scope="module")
def pairs():
  """(pred, target, data_range) on real slices, two scales, two sources, two intensity units."""
  out = []
  x = _dipy_slice()
  for scale in (2, 4):
    out.append((_degraded(x, scale), x, float(x.max())))
  vol = _mni_volume(3)
  for i, scale in enumerate((2, 4, 4)):
    method = "kspace" if i == 2 else "bicubic"
    out.append((_degraded(vol[i], scale, method), vol[i], 255.0))
  return out


def test_ssim_matches_skimage(pairs):
  for pred, target, dr in pairs:
    ref = skm.structural_similarity(target, pred, data_range=dr, win_size=7)
    ours = float(metrics.ssim(pred, target, dr))
    assert abs(ours - ref) < 1e-4, (ours, ref)
    assert 0.5 < ours < 0.9999  # a real degradation, not an identity


def test_psnr_matches_skimage(pairs):
  for pred, target, dr in pairs:
    ref = skm.peak_signal_noise_ratio(target, pred, data_range=dr)
    ours = float(metrics.psnr(pred, target, dr))
    assert abs(ours - ref) < 1e-4, (ours, ref)


def test_nmse_matches_numpy(pairs):
  for pred, target, _ in pairs:
    gt, pr = target.astype(np.float64), pred.astype(np.float64)
    ref = np.linalg.norm(gt - pr) ** 2 / np.linalg.norm(gt) ** 2
    np.testing.assert_allclose(float(metrics.nmse(pred, target)), ref, rtol=1e-4)


def test_ssim_other_window_and_noise():
  x = _dipy_slice()[64:192, 64:192]
  rng = np.random.default_rng(0)
  y = (x + rng.normal(0, 0.05, x.shape)).astype(np.float32)
  for win in (3, 11):
    ref = skm.structural_similarity(x, y, data_range=1.0, win_size=win)
    np.testing.assert_allclose(float(metrics.ssim(y, x, 1.0, win_size=win)), ref, atol=1e-4)


def test_batched_shapes_jit_and_data_range_per_image():
  vol = _mni_volume(4)
  pred = _degraded(vol, 2)
  f = jax.jit(lambda p, t, dr: (metrics.psnr(p, t, dr), metrics.ssim(p, t, dr), metrics.nmse(p, t)))
  drs = vol.max(axis=(1, 2))
  p, s, n = f(pred, vol, drs)
  assert p.shape == s.shape == n.shape == (4,)
  for i in range(4):
    assert abs(float(s[i]) - skm.structural_similarity(vol[i], pred[i], data_range=float(drs[i]))) < 1e-4
    assert abs(float(p[i]) - skm.peak_signal_noise_ratio(vol[i], pred[i], data_range=float(drs[i]))) < 1e-4
  # [B, H, W, 1] and a [2, 2, H, W] batch give the same per-image values.
  p1, s1, n1 = f(pred[..., None], vol[..., None], drs)
  np.testing.assert_allclose(s1, s, atol=1e-6)
  np.testing.assert_allclose(p1, p, atol=1e-5)
  s2 = metrics.ssim(pred.reshape(2, 2, *pred.shape[1:]), vol.reshape(2, 2, *vol.shape[1:]), drs.reshape(2, 2))
  np.testing.assert_allclose(np.asarray(s2).reshape(-1), s, atol=1e-6)
  # None = each target's own maximum.
  np.testing.assert_allclose(metrics.psnr(pred, vol), p, atol=1e-5)


def test_identical_images():
  x = _dipy_slice()
  assert float(metrics.ssim(x, x, 1.0)) == pytest.approx(1.0, abs=1e-6)
  assert float(metrics.nmse(x, x)) == 0.0
  assert np.isinf(float(metrics.psnr(x, x, 1.0)))


def test_bad_input():
  with pytest.raises(ValueError, match="shapes differ"):
    metrics.ssim(np.zeros((8, 8)), np.zeros((8, 9)), 1.0)
  with pytest.raises(ValueError, match="smaller than the 7x7 window"):
    metrics.ssim(np.zeros((5, 8)), np.zeros((5, 8)), 1.0)
  with pytest.raises(ValueError, match="odd"):
    metrics.ssim(np.zeros((8, 8)), np.zeros((8, 8)), 1.0, win_size=6)
  with pytest.raises(ValueError, match=r"volume_metrics\(target_vol\)"):
    metrics.volume_metrics(np.zeros((8, 8)), np.zeros((8, 8)))


def _fastmri_reference(gt: np.ndarray, pred: np.ndarray) -> dict:
  """fastMRI's evaluate.py (psnr, ssim, nmse with maxval = gt.max()), written out with skimage."""
  gt, pred = gt.astype(np.float64), pred.astype(np.float64)
  maxval = gt.max()
  ssim = np.mean([skm.structural_similarity(gt[i], pred[i], data_range=maxval) for i in range(gt.shape[0])])
  return {
      "psnr": skm.peak_signal_noise_ratio(gt, pred, data_range=maxval),
      "ssim": ssim,
      "nmse": np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2,
  }


def test_volume_metrics_fastmri_convention():
  vol = _mni_volume(5)
  pred = _degraded(vol, 4)
  ours = metrics.volume_metrics(pred, vol)
  ref = _fastmri_reference(vol, pred)
  for k in ("psnr", "ssim", "nmse"):
    assert abs(ours[k] - ref[k]) < 1e-4 * max(1.0, abs(ref[k])), (k, ours[k], ref[k])
  # The volume's maximum is the data_range: a slice-wise maximum would give a different SSIM.
  per_slice_max = np.mean([float(metrics.ssim(pred[i], vol[i], None)) for i in range(len(vol))])
  assert abs(per_slice_max - ours["ssim"]) > 1e-4


def test_accumulator_volume_and_slice_means():
  acc = metrics.MetricsAccumulator()
  # Volume "a" has 3 slices, "b" has 1; the padded last row is masked out.
  acc.update(np.array([b"a", b"a", b"b"]), {"psnr": np.array([30.0, 32.0, 40.0]), "ssim": jnp.array([0.9, 0.8, 0.7])})
  acc.update(["a", "b"], {"psnr": [34.0, 999.0], "ssim": [1.0, 999.0]}, mask=[True, False])
  res = acc.result()
  assert res["num_volumes"] == 2 and res["num_slices"] == 4
  assert res["psnr"] == pytest.approx((32.0 + 40.0) / 2)
  assert res["psnr_slice"] == pytest.approx((30 + 32 + 34 + 40) / 4)
  assert res["ssim"] == pytest.approx((0.9 + 0.7) / 2)
  assert acc.per_volume()["a"]["ssim"] == pytest.approx(0.9)
  with pytest.raises(ValueError, match=r"metrics\['psnr'\]"):
    acc.update(["a"], {"psnr": [1.0, 2.0]})
