"""Tests of mrsr_jax.data.degrade on real MR slices (dipy's T1 slice, nilearn's MNI template)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrsr_jax.data import degrade


def _dipy_slice() -> np.ndarray:
  """dipy's 256 x 256 coronal T1 slice, scaled to [0, 1], float32."""
  dipy = pytest.importorskip("dipy")
  path = os.path.join(os.path.dirname(dipy.__file__), "data", "files", "t1_coronal_slice.npy")
  if not os.path.exists(path):
    pytest.skip(f"dipy does not ship {path}")
  x = np.load(path).astype(np.float32)
  return x / x.max()


def _mni_slice() -> np.ndarray:
  """An axial slice of nilearn's MNI152 T1 template, cropped to 192 x 232, scaled to [0, 1]."""
  nilearn = pytest.importorskip("nilearn")
  nib = pytest.importorskip("nibabel")
  path = os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data",
                      "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
  if not os.path.exists(path):
    pytest.skip(f"nilearn does not ship {path}")
  vol = np.asarray(nib.load(path).dataobj, dtype=np.float32)
  x = vol[2:194, :232, 90]
  return x / x.max()


def _nhwc(x: np.ndarray) -> jax.Array:
  return jnp.asarray(x)[None, :, :, None]


def _band_limited(x: np.ndarray, scale: int) -> np.ndarray:
  """A positive real image whose spectrum lies inside the block `downsample(kspace)` keeps.

  Frequencies |f| <= (n/s - 1) // 2 per axis: a Hermitian-symmetric band strictly inside the kept
  block (the block's unpaired Nyquist bin is excluded), so the image is real; a constant offset (DC
  only) makes it positive, so the magnitude the degradation takes changes nothing.
  """
  h, w = x.shape
  k = np.fft.fftshift(np.fft.fft2(x.astype(np.float64)))
  fy, fx = np.arange(h) - h // 2, np.arange(w) - w // 2
  band = (np.abs(fy)[:, None] <= (h // scale - 1) // 2) & (np.abs(fx)[None, :] <= (w // scale - 1) // 2)
  y = np.fft.ifft2(np.fft.ifftshift(k * band))
  assert np.abs(y.imag).max() < 1e-10
  y = y.real
  return (y - y.min() + 0.1).astype(np.float32)


@pytest.mark.parametrize("method,hamming", [("bicubic", False), ("gaussian", False), ("kspace", False),
                                            ("kspace", True)])
@pytest.mark.parametrize("scale", [2, 4])
def test_shapes_and_dtype(method, hamming, scale):
  hr = jnp.ones((3, 32, 48, 2), jnp.bfloat16)
  # Jitted, as the pipelines call it: op by op, `gaussian` compiles each of its many small ops (60-85 s
  # per case on a loaded 2-core machine, against ~5 s for one compile).
  lr, hr_out = jax.jit(degrade.make_pair, static_argnums=(1, 2, 3))(hr, scale, method, hamming)
  assert lr.shape == (3, 32 // scale, 48 // scale, 2) and lr.dtype == jnp.float32
  assert hr_out.shape == hr.shape and hr_out.dtype == jnp.float32
  up = degrade.upsample_bicubic(lr, scale)
  assert up.shape == (3, 32, 48, 2) and up.dtype == jnp.float32
  assert degrade.upsample_kspace(lr, scale).shape == (3, 32, 48, 2)


def test_jit():
  x = _nhwc(_dipy_slice())
  f = jax.jit(degrade.downsample, static_argnums=(1, 2, 3))
  np.testing.assert_allclose(f(x, 4, "kspace", True), degrade.downsample(x, 4, "kspace", True), atol=1e-6)


def test_bad_input():
  with pytest.raises(ValueError, match="not divisible by scale 4"):
    degrade.downsample(jnp.zeros((1, 30, 32, 1)), 4)
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    degrade.downsample(jnp.zeros((30, 32)), 2)
  with pytest.raises(ValueError, match="unknown degradation 'nearest'"):
    degrade.downsample(jnp.zeros((1, 32, 32, 1)), 2, method="nearest")
  with pytest.raises(ValueError, match="Hamming"):
    degrade.downsample(jnp.zeros((1, 32, 32, 1)), 2, method="bicubic", hamming=True)
  with pytest.raises(ValueError, match="positive integer"):
    degrade.downsample(jnp.zeros((1, 32, 32, 1)), 2.0)


@pytest.mark.parametrize("size,scale", [((256, 256), 2), ((256, 256), 4), ((192, 232), 4), ((18, 30), 3)])
def test_kspace_exact_on_band_limited_image(size, scale):
  x = _dipy_slice()
  h, w = size
  x = x[:h, :w] if h > 32 else x[100:100 + h, 100:100 + w]  # the small case from inside the head
  y = _band_limited(x, scale)
  assert y.std() > 0.01  # real structure left, not a constant
  lr = np.asarray(degrade.downsample(_nhwc(y), scale, method="kspace"))[0, :, :, 0]
  # Band-limited to the kept block: the LR image is the exact decimation ...
  np.testing.assert_allclose(lr, y[::scale, ::scale], atol=2e-6)
  # ... and zero-filling k-space gives the HR image back.
  up = np.asarray(degrade.upsample_kspace(jnp.asarray(lr)[None, :, :, None], scale))[0, :, :, 0]
  np.testing.assert_allclose(up, y, atol=2e-6)


def test_kspace_loses_what_lies_outside_the_band():
  # The converse, so the exactness above is not vacuous: a real slice is not band-limited.
  x = _dipy_slice()
  lr = degrade.downsample(_nhwc(x), 2, method="kspace")
  up = np.asarray(degrade.upsample_kspace(lr, 2))[0, :, :, 0]
  assert np.abs(up - x).max() > 0.05


@pytest.mark.parametrize("method,hamming", [("bicubic", False), ("gaussian", False), ("kspace", False),
                                            ("kspace", True)])
@pytest.mark.parametrize("scale", [2, 4])
def test_constant_image_stays_constant(method, hamming, scale):
  hr = jnp.full((2, 40, 24, 1), 0.7, jnp.float32)
  lr = jax.jit(degrade.downsample, static_argnums=(1, 2, 3))(hr, scale, method, hamming)   # see above
  np.testing.assert_allclose(lr, 0.7, atol=1e-6)
  np.testing.assert_allclose(degrade.upsample_bicubic(lr, scale), 0.7, atol=1e-6)


def test_hamming_smooths():
  # The window attenuates high frequencies: less total variation, same mean.
  x = _nhwc(_dipy_slice())
  plain = np.asarray(degrade.downsample(x, 2, "kspace"))
  smooth = np.asarray(degrade.downsample(x, 2, "kspace", hamming=True))
  tv = lambda a: np.abs(np.diff(a, axis=1)).sum() + np.abs(np.diff(a, axis=2)).sum()
  assert tv(smooth) < 0.9 * tv(plain)
  np.testing.assert_allclose(smooth.mean(), plain.mean(), rtol=0.05)


# Measured on these slices: max |ours - torch| = 2.4e-7 (float32 round-off), border included.
TORCH_ATOL = 1e-6


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("which", ["dipy", "mni"])
def test_bicubic_matches_torch_antialiased(scale, which):
  torch = pytest.importorskip("torch")
  x = _dipy_slice() if which == "dipy" else _mni_slice()
  t = torch.from_numpy(np.ascontiguousarray(x))[None, None]
  ref = torch.nn.functional.interpolate(t, scale_factor=1 / scale, mode="bicubic", antialias=True,
                                        align_corners=False)[0, 0].numpy()
  ours = np.asarray(degrade.downsample(_nhwc(x), scale, "bicubic"))[0, :, :, 0]
  assert ours.shape == ref.shape
  np.testing.assert_allclose(ours, ref, atol=TORCH_ATOL)
  # Upsampling (the bicubic baseline) too.
  ref_up = torch.nn.functional.interpolate(torch.from_numpy(ref)[None, None], scale_factor=scale,
                                           mode="bicubic", antialias=True, align_corners=False)[0, 0].numpy()
  ours_up = np.asarray(degrade.upsample_bicubic(jnp.asarray(ref)[None, :, :, None], scale))[0, :, :, 0]
  np.testing.assert_allclose(ours_up, ref_up, atol=TORCH_ATOL)


@pytest.mark.parametrize("scale", [2, 4])
def test_bicubic_matches_pil(scale):
  image = pytest.importorskip("PIL.Image")
  x = _dipy_slice()
  h, w = x.shape
  ref = np.asarray(image.fromarray(x, mode="F").resize((w // scale, h // scale), image.BICUBIC))
  ours = np.asarray(degrade.downsample(_nhwc(x), scale, "bicubic"))[0, :, :, 0]
  np.testing.assert_allclose(ours, ref, atol=TORCH_ATOL)


@pytest.mark.parametrize("scale,atol", [(2, 1e-6), (4, 2e-5)])
def test_gaussian_matches_scikit_image_resize(scale, atol):
  """`gaussian` is scikit-image's resize(order=3, anti_aliasing=True), border included."""
  transform = pytest.importorskip("skimage.transform")
  x = _dipy_slice()
  ref = transform.resize(x, (x.shape[0] // scale, x.shape[1] // scale), order=3, anti_aliasing=True,
                         mode="reflect", clip=False)
  ours = np.asarray(degrade.downsample(_nhwc(x), scale, method="gaussian"))[0, :, :, 0]
  np.testing.assert_allclose(ours, ref, atol=atol)
  # Not the project's bicubic under another name: the two LR models differ visibly.
  assert np.abs(ours - np.asarray(degrade.downsample(_nhwc(x), scale))[0, :, :, 0]).max() > 0.01


def test_random_downsample_draws_each_family_per_example():
  x = jnp.asarray(np.repeat(_nhwc(_dipy_slice()), 64, axis=0))
  lr = np.asarray(degrade.random_downsample(x, 2, jax.random.key(3),
                                            weights={"bicubic": 1, "gaussian": 1, "kspace": 1}))
  ref = {m: np.asarray(degrade.downsample(x[:1], 2, m))[0] for m in degrade.METHODS}
  # k-space LR of a crop is taken on its mirror extension (no wrap-around ringing at the borders).
  ext = np.concatenate([x[:1], x[:1, ::-1]], axis=1)
  ext = np.concatenate([ext, ext[:, :, ::-1]], axis=2)
  ref["kspace"] = np.asarray(degrade.downsample(jnp.asarray(ext), 2, "kspace"))[0, :128, :128]
  # On a slice whose borders are background (no wrap-around edge to remove) the two agree closely.
  np.testing.assert_allclose(ref["kspace"], np.asarray(degrade.downsample(x[:1], 2, "kspace"))[0], atol=5e-3)
  which = [[m for m in ref if np.abs(lr[i] - ref[m]).max() < 1e-5] for i in range(len(lr))]
  assert all(len(w) == 1 for w in which)          # every example is exactly one of the three
  counts = {m: sum(w == [m] for w in which) for m in ref}
  assert all(c >= 10 for c in counts.values()), counts
  # Deterministic in the key, and the same under jit (as the train step calls it).
  again = jax.jit(lambda x, k: degrade.random_downsample(
      x, 2, k, weights={"bicubic": 1, "gaussian": 1, "kspace": 1}, sigma_jitter=0.0))(x, jax.random.key(3))
  np.testing.assert_allclose(lr, np.asarray(again), atol=1e-6)
  # Jittered kernels and noise: not any of the fixed LR models any more, still non-negative.
  noisy = np.asarray(degrade.random_downsample(x, 2, jax.random.key(3), weights={"gaussian": 1},
                                               sigma_jitter=0.5, noise_std=0.02))
  assert noisy.min() >= 0 and np.abs(noisy - ref["gaussian"]).max(axis=(1, 2, 3)).min() > 1e-3


def test_random_downsample_bad_weights():
  x = jnp.zeros((2, 16, 16, 1))
  with pytest.raises(ValueError, match="unknown degradations"):
    degrade.random_downsample(x, 2, jax.random.key(0), weights={"lanczos": 1.0})
  with pytest.raises(ValueError, match="at least one > 0"):
    degrade.random_downsample(x, 2, jax.random.key(0), weights={"bicubic": 0.0})
