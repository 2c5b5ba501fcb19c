"""Through-plane super-resolution (issue 25): the slice profile against independent computations, the
one-axis generators, the output geometry against nibabel world coordinates, fusion, refusals, resume and
data-parallel training (8 emulated devices, tests/conftest.py)."""

import math
import os

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
from scipy import integrate, ndimage

from conftest import assert_agree_but_for_reduction_order, run_two_processes

from mrsr_jax import sharding
from mrsr_jax.train import checkpoints
from mrsr_jax.through_plane import apply as tp_apply
from mrsr_jax.through_plane import model as tp_model
from mrsr_jax.through_plane import profile
from mrsr_jax.through_plane import train as tp_train


# -- the slice profile ------------------------------------------------------------------------------
def _reflect(i, n):
  i = np.mod(i, 2 * n)
  return np.where(i >= n, 2 * n - 1 - i, i)


def _integrated(signal, centre, thickness, kind):
  """lr = integral f(x) h(x - centre) dx by adaptive quadrature of the piecewise-constant signal
  (half-sample reflected past its ends) against the profile written out from its definition."""
  n = len(signal)
  f = lambda x: signal[_reflect(int(math.floor(x)), n)]
  if kind == "gaussian":
    sigma = thickness / (2 * math.sqrt(2 * math.log(2)))
    h = lambda x: math.exp(-0.5 * (x / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    lo, hi = centre - 8 * sigma, centre + 8 * sigma
  else:
    h = lambda x: 1.0 / thickness if abs(x) <= thickness / 2 else 0.0
    lo, hi = centre - thickness / 2, centre + thickness / 2
  breaks = [b for b in range(int(math.floor(lo)), int(math.ceil(hi)) + 1) if lo < b < hi]
  value, _ = integrate.quad(lambda x: f(x) * h(x - centre), lo, hi, points=breaks or None, limit=200)
  return value


@pytest.mark.parametrize("kind,thickness,spacing,first", [
    ("gaussian", 3.0, 3.0, 1.5),      # integer ratio, thickness = spacing
    ("gaussian", 2.0, 3.7, 0.9),      # a gap, non-integer spacing and centre
    ("rect", 2.5, 3.5, 1.75),         # rect, non-integer
    ("rect", 4.0, 6.0, 2.0),          # rect with a gap
])
def test_profile_matrix_matches_quadrature(kind, thickness, spacing, first):
  rng = np.random.default_rng(0)
  signal = rng.random(23)
  d = profile.profile_matrix(len(signal), thickness=thickness, spacing=spacing, profile=kind,
                             first_centre=first)
  assert d.shape[0] == math.floor(23 / spacing)
  np.testing.assert_allclose(d.sum(axis=1), 1.0, atol=1e-12)
  want = [_integrated(signal, first + k * spacing, thickness, kind) for k in range(d.shape[0])]
  np.testing.assert_allclose(d @ signal, want, atol=2e-6)


def test_rect_profile_at_an_integer_ratio_is_the_block_mean():
  x = np.random.default_rng(1).random(24)
  d = profile.profile_matrix(24, thickness=4, spacing=4, profile="rect")
  np.testing.assert_allclose(d @ x, x.reshape(6, 4).mean(axis=1), atol=1e-12)


def test_gaussian_fwhm_is_the_thickness():
  # A fine sampling (pixels 1/20 of the thickness unit) of one thick slice's weights: the width at half
  # maximum, measured on the weights, is the thickness.
  d = profile.profile_matrix(400, thickness=100.0, spacing=400.0, profile="gaussian", first_centre=200.0)
  w = d[0] / d[0].max()
  above = np.flatnonzero(w >= 0.5)
  assert abs((above[-1] - above[0] + 1) - 100) <= 2


def test_spline_upsampling_is_scipy_map_coordinates():
  x = np.random.default_rng(2).random((2, 7, 5, 1)).astype(np.float32)
  for f in (2, 3, 4):
    got = np.asarray(tp_model.spline_upsample_rows(jnp.asarray(x), f))[..., 0]
    pos = tp_model.output_positions(7, f)
    want = np.stack([np.stack([ndimage.map_coordinates(x[b, :, w, 0].astype(np.float64), [pos],
                                                       order=3, mode="mirror") for w in range(5)], -1)
                     for b in range(2)])
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("thickness,spacing", [(3.0, 3.0), (2.5, 2.5), (2.0, 3.4)])
def test_training_pairs_are_aligned(thickness, spacing):
  """A linear ramp survives any symmetric profile, the spline resampling and the spline upsampling
  unchanged: the upsampled degraded ramp equals the ramp on the rows it covers (output row j = fine row
  j), away from the mirrored ends."""
  g = profile.Geometry(thickness, spacing)
  matrix, rows = g.training_matrix(96)
  ramp = np.arange(96, dtype=np.float64) + 0.5
  lr = matrix.astype(np.float64) @ ramp
  up = np.asarray(tp_model.spline_upsample_rows(jnp.asarray(lr[None, :, None, None], jnp.float32),
                                                g.factor))[0, :, 0, 0]
  assert len(up) == rows and rows <= 96 and rows >= 96 - 2 * math.ceil(spacing)
  inner = slice(30, rows - 30)     # the mirrored ends bend the ramp; a shift by 0.1 row would fail
  np.testing.assert_allclose(up[inner], ramp[:rows][inner], atol=2e-3)


def test_integer_factor():
  assert [profile.integer_factor(s) for s in (2.0, 3.98, 2.5, 3.0, 4.7)] == [2, 4, 2, 3, 4]


# -- the generators ---------------------------------------------------------------------------------
def test_pixel_shuffle_rows():
  x = jnp.arange(2 * 3 * 2 * 6, dtype=jnp.float32).reshape(2, 3, 2, 6)   # 2 channels x r = 3
  y = np.asarray(tp_model.pixel_shuffle_rows(x, 3))
  assert y.shape == (2, 9, 2, 2)
  assert y[1, 3 * 2 + 1, 1, 1] == float(x[1, 2, 1, 1 * 3 + 1])


@pytest.mark.parametrize("arch", ["srgan", "vdsr"])
def test_untrained_generators_are_the_spline(arch):
  fields = dict(num_blocks=1, features=4) if arch == "srgan" else dict(num_layers=3, features=4)
  g = tp_model.build(arch, 3, fields)
  x = jnp.asarray(np.random.default_rng(3).random((2, 5, 9, 1)), jnp.float32)
  v = tp_train._model_init(g)(jax.random.key(0))
  y = jax.jit(lambda v, x: g.apply(v, x, train=False))(v, x)
  assert y.shape == (2, 15, 9, 1)
  np.testing.assert_allclose(y, tp_model.spline_upsample_rows(x, 3), atol=1e-6)


# -- geometry of a volume ---------------------------------------------------------------------------
def _oblique(zooms, origin=(-40.0, 12.0, 7.0)):
  c, s = math.cos(0.4), math.sin(0.4)
  rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, math.cos(0.3), -math.sin(0.3)],
                                                                [0, math.sin(0.3), math.cos(0.3)]])
  a = np.eye(4)
  a[:3, :3] = rot * np.asarray(zooms, float)
  a[:3, 3] = origin
  return a


def _image(data, affine):
  img = nib.Nifti1Image(np.asarray(data, np.float32), affine)
  img.set_qform(affine, code=1)
  img.set_sform(affine, code=1)
  return img


@pytest.mark.parametrize("axis,zooms,factor", [
    (0, (3.0, 1.0, 1.0), 3), (2, (1.1, 1.1, 4.4), 4), (1, (1.0, 2.5, 1.0), 2)])
def test_output_affine_places_every_voxel(axis, zooms, factor):
  shape = [12, 12, 12]
  shape[axis] = 6
  affine = _oblique(zooms)
  img = _image(np.ones(shape), affine)
  acq = tp_apply.acquisition("x.nii", img.affine, img.header)
  assert acq.axis == axis and acq.geometry.factor == factor
  m = len(profile.resample_matrix(6, acq.geometry.spacing, factor))
  out_shape = list(shape)
  out_shape[axis] = factor * m
  out = tp_apply.output_image(np.zeros(out_shape, np.float32), img.header, acq)
  out_aff = out.affine
  np.testing.assert_allclose(out.header.get_qform(), out_aff, atol=1e-4)    # qform holds it too
  spacing_out = np.sqrt((out_aff[:3, :3] ** 2).sum(0))
  np.testing.assert_allclose(spacing_out[axis], acq.output_spacing, rtol=1e-6)
  np.testing.assert_allclose(np.delete(spacing_out, axis), np.delete(zooms, axis), rtol=1e-6)
  # Every output voxel j along the slice axis: its world position is the input's at voxel coordinate
  # (j - (f - 1) / 2) * output_spacing / spacing; with an integer ratio and odd f, output voxel
  # f k + (f - 1) / 2 *is* input voxel k.
  ijk = np.stack(np.meshgrid(*[np.arange(n) for n in out_shape], indexing="ij"), -1).reshape(-1, 3)
  world_out = nib.affines.apply_affine(out_aff, ijk)
  src = ijk.astype(float)
  src[:, axis] = (src[:, axis] - (factor - 1) / 2) * acq.output_spacing / acq.spacing
  np.testing.assert_allclose(world_out, nib.affines.apply_affine(affine, src), atol=1e-4)
  if factor == 3:
    k = np.arange(6)
    idx = np.zeros((6, 3), int)
    idx[:, axis] = 3 * k + 1
    src_idx = np.zeros((6, 3), int)
    src_idx[:, axis] = k
    np.testing.assert_allclose(nib.affines.apply_affine(out_aff, idx),
                               nib.affines.apply_affine(affine, src_idx), atol=1e-4)


def test_uncoded_transforms_are_mapped_too():
  """A transform with code 0 ("unknown") is still written for the output's grid, not left as the
  input's (a tool that reads it anyway must not see a grid voxels off)."""
  affine = _oblique((1.0, 1.0, 4.0))
  img = nib.Nifti1Image(np.ones((8, 8, 5), np.float32), affine)    # nibabel: sform code 2, qform 0
  assert img.header["qform_code"] == 0
  acq = tp_apply.acquisition("x.nii", img.affine, img.header)
  out = tp_apply.output_image(np.zeros((8, 8, 20), np.float32), img.header, acq)
  assert out.header["qform_code"] == 0
  np.testing.assert_allclose(out.header.get_qform(), out.header.get_sform(), atol=1e-4)
  np.testing.assert_allclose(out.header.get_sform(), affine @ tp_apply.slice_axis_matrix(2, acq), atol=1e-6)


@pytest.mark.parametrize("axis,ratio", [(0, 3.0), (2, 3.0), (1, 2.5)])
def test_linear_anatomy_comes_out_at_its_world_position(axis, ratio):
  """A volume that is a linear function of world position, acquired thick along `axis` on an oblique
  grid: the untrained networks (= spline, which reproduces linear functions) from both orientations,
  fused, written through the output affine, give back the function at each output voxel's world
  position. Wrong affines, transposes or orientation bookkeeping all break this."""
  zooms = [1.0, 1.0, 1.0]
  zooms[axis] = ratio               # 2.5: resampled to 2 mm, then x2
  affine = _oblique(zooms)
  shape = [10, 9, 8]
  shape[axis] = 16
  coef = np.array([0.3, -0.2, 0.5])
  ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
  data = 50.0 + nib.affines.apply_affine(affine, ijk) @ coef
  img = _image(data, affine)
  acq = tp_apply.acquisition("x.nii", img.affine, img.header)
  model = tp_model.build("vdsr", acq.geometry.factor, dict(num_layers=2, features=2))
  variables = tp_train._model_init(model)(jax.random.key(0))
  mesh = sharding.make_mesh()
  fused, extra = tp_apply.upsample_volume(model, variables, data.astype(np.float32), acq, mesh)
  np.testing.assert_allclose(fused, np.mean(extra["orientations"], axis=0), atol=1e-6)
  out = tp_apply.output_image(fused, img.header, acq)
  ijk_out = np.stack(np.meshgrid(*[np.arange(n) for n in fused.shape], indexing="ij"), -1)
  want = 50.0 + nib.affines.apply_affine(out.affine, ijk_out) @ coef
  inner = [slice(None)] * 3
  inner[axis] = slice(18, fused.shape[axis] - 18)   # the mirrored ends bend the line
  np.testing.assert_allclose(fused[tuple(inner)], want[tuple(inner)], atol=2e-3)


def test_fusion_averages_the_two_reformat_orientations():
  """Each orientation is the network applied to that orientation's reformats (checked by hand on one
  reformat of each), and a trained-looking network gives two different answers that are averaged."""
  data = np.random.default_rng(4).random((6, 10, 9)).astype(np.float32)
  affine = np.diag([3.0, 1.0, 1.0, 1.0])
  acq = tp_apply.acquisition("x.nii", affine, nib.Nifti1Header())
  model = tp_model.build("vdsr", 3, dict(num_layers=2, features=2))
  variables = tp_train._model_init(model)(jax.random.key(0))
  variables = jax.tree.map(lambda x: x + 0.3, variables)       # not the spline any more
  fused, extra = tp_apply.upsample_volume(model, variables, data, acq, sharding.make_mesh())
  a, b = extra["orientations"]
  assert fused.shape == (18, 10, 9)
  # orientation 1: reformats spanned by (axis 0, axis 1), stacked along axis 2; orientation 2: (0, 2).
  one = model.apply(variables, jnp.asarray(data[:, :, 4][None, :, :, None]), train=False)[0, :, :, 0]
  two = model.apply(variables, jnp.asarray(data[:, 3, :][None, :, :, None]), train=False)[0, :, :, 0]
  np.testing.assert_allclose(a[:, :, 4], one, atol=1e-5)
  np.testing.assert_allclose(b[:, 3, :], two, atol=1e-5)
  assert np.abs(a - b).max() > 1e-3
  np.testing.assert_allclose(fused, (a + b) / 2, atol=1e-6)


@pytest.mark.parametrize("zooms,why", [
    ((1.0, 1.0, 1.2), "near-isotropic"),
    ((1.0, 4.0, 4.0), "no single slice axis"),
    ((1.0, 1.5, 4.0), "not square"),
])
def test_acquisition_refuses(zooms, why):
  with pytest.raises(ValueError, match=why):
    tp_apply.acquisition("v.nii.gz", np.diag([*zooms, 1.0]), nib.Nifti1Header())


def test_thickness_from_flag_sidecar_or_spacing(tmp_path):
  path = str(tmp_path / "v.nii.gz")
  affine = np.diag([1.0, 1.0, 5.0, 1.0])
  acq = tp_apply.acquisition(path, affine, nib.Nifti1Header())
  assert (acq.thickness, acq.spacing, acq.geometry.factor) == (5.0, 5.0, 5)
  (tmp_path / "v.json").write_text('{"SliceThickness": 3.0}')
  assert tp_apply.acquisition(path, affine, nib.Nifti1Header()).thickness == 3.0
  acq = tp_apply.acquisition(path, affine, nib.Nifti1Header(), thickness=4.0, spacing=6.0)
  assert (acq.thickness, acq.spacing, acq.geometry.thickness, acq.geometry.spacing) == (4.0, 6.0, 4.0, 6.0)


# -- training: data-parallel, resumable --------------------------------------------------------------
def _cfg(**kw):
  from mrsr_jax.configs import through_plane
  # The VDSR-style network at 2 layers: the cheapest to compile; what is tested here is model-agnostic.
  cfg = through_plane.get_config("vdsr").through_plane
  cfg.update(dict(model=dict(num_layers=2, features=4), batch_size=8, crop_size=16, num_steps=4,
                  warmup_steps=1, checkpoint_every_steps=2), **kw)
  return cfg


def _slices():
  rng = np.random.default_rng(5)
  return ndimage.gaussian_filter(rng.random((4, 20, 18)), (0, 1.5, 1.5)).astype(np.float32) * 3


def test_training_shards_over_every_device_and_resumes_bit_identically(tmp_path):
  assert jax.device_count() == 8
  mesh = sharding.make_mesh()
  g = profile.Geometry(3.0, 3.0)
  full, _ = tp_train.train(tp_train.Trainer(_cfg(), g, _slices()), str(tmp_path / "a"), mesh,
                           log_every=2, checkpoint_every=2)
  half, info = tp_train.train(tp_train.Trainer(_cfg(), g, _slices()), str(tmp_path / "b"), mesh,
                              log_every=2, checkpoint_every=2, num_steps=2)
  assert info["resumed_from"] == 0
  resumed, info = tp_train.train(tp_train.Trainer(_cfg(), g, _slices()), str(tmp_path / "b"), mesh,
                                 log_every=2, checkpoint_every=2)
  assert info["resumed_from"] == 2 and int(resumed.step) == 4
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(full.params), jax.device_get(resumed.params))
  # The step's batch really is split over the 8 devices, and one device computes the same update.
  assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(full.params))
  one, _ = tp_train.train(tp_train.Trainer(_cfg(), g, _slices()), str(tmp_path / "c"),
                          sharding.make_mesh(jax.devices()[:1]), log_every=2, checkpoint_every=2)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5),
               jax.device_get(full.params), jax.device_get(one.params))
  # A finished workdir is a pre-trained model for another run (through_plane.pretrained_workdir)...
  variables, _ = tp_train.restore(_cfg(), g, str(tmp_path / "a"), mesh)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(variables["params"]),
               jax.device_get(full.params["gen"]))
  with pytest.raises(ValueError, match="factor"):       # ... for the same upsampling factor only
    tp_train.restore(_cfg(), profile.Geometry(4.0, 4.0), str(tmp_path / "a"), mesh)
  # The workdir knows what it was trained on: another geometry is refused, not reused.
  with pytest.raises(ValueError, match="another volume or setting"):
    tp_train.train(tp_train.Trainer(_cfg(), profile.Geometry(2.0, 3.0), _slices()), str(tmp_path / "a"),
                   mesh)


def test_batches_are_a_function_of_the_step():
  t = tp_train.Trainer(_cfg(), profile.Geometry(3.0, 3.0), _slices())
  np.testing.assert_array_equal(t.batch(7), t.batch(7))
  assert not np.array_equal(t.batch(7), t.batch(8))


# -- the command line ----------------------------------------------------------------------------------
# The comparison network, small, for a few steps: what the command-line tests run.
_CLI = ["--config=configs/through_plane.py:vdsr", "--mode=predict", "--through_plane",
        "--config.through_plane.model.num_layers=2", "--config.through_plane.model.features=4",
        "--config.through_plane.batch_size=8", "--config.through_plane.crop_size=16",
        "--config.through_plane.warmup_steps=1"]


def _run(*args, steps=2):
  import run
  return run.main(["run.py", *_CLI, f"--config.through_plane.num_steps={steps}", *args])


def test_cli_writes_an_isotropic_volume_in_input_units_and_refuses_what_it_cannot_do(tmp_path, capsys):
  rng = np.random.default_rng(6)
  data = 1000.0 * ndimage.gaussian_filter(rng.random((18, 16, 6)), 1.0)
  affine = _oblique((1.0, 1.0, 3.0))
  src = str(tmp_path / "thick.nii.gz")
  nib.save(_image(data, affine), src)
  out = str(tmp_path / "iso.nii.gz")
  work = str(tmp_path / "w")
  ref = str(tmp_path / "ref.nii.gz")
  nib.save(_image(np.repeat(data, 3, axis=2), affine), ref)
  assert _run(f"--workdir={work}", f"--input={src}", f"--output={out}", f"--reference={ref}") == 0
  assert "against " + ref in capsys.readouterr().out
  img = nib.load(out)
  assert img.shape == (18, 16, 18)
  np.testing.assert_allclose(img.header.get_zooms()[:3], (1.0, 1.0, 1.0), rtol=1e-5)
  vol = np.asarray(img.dataobj)
  assert 0.5 < vol.mean() / data.mean() < 1.5       # the input's units, not [0, 1]
  before = os.stat(out).st_mtime_ns
  capsys.readouterr()
  # An existing output is not replaced; nothing partial is left behind.
  assert _run(f"--workdir={work}", f"--input={src}", f"--output={out}") == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "already exists" in err[0]
  assert os.stat(out).st_mtime_ns == before
  assert not [f for f in os.listdir(tmp_path) if f.startswith(".partial-")]
  # Near-isotropic input: one line, exit 2, nothing written.
  iso = str(tmp_path / "iso_in.nii.gz")
  nib.save(_image(data, _oblique((1.0, 1.0, 1.1))), iso)
  assert _run(f"--workdir={work}2", f"--input={iso}", f"--output={tmp_path / 'x.nii.gz'}") == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error:") and "near-isotropic" in err[0] and iso in err[0]
  assert not os.path.exists(tmp_path / "x.nii.gz")
  import run
  assert run.main(["run.py", "--config=configs/through_plane.py", f"--workdir={work}",
                   "--through_plane"]) == 2


def test_two_processes_train_and_write_what_one_process_does(tmp_path):
  """`run.py --through_plane` as two jax.distributed processes (4 CPU devices each, gloo): each
  process feeds its half of every step's crops (train._local_rows), the trained model and the one
  file process 0 writes are the one-process, 8-device run's. Fed the same half twice, the gradient
  is another one and almost every parameter moves elsewhere (checked: median difference 8e-5, against < 1e-6)."""
  rng = np.random.default_rng(6)
  data = 1000.0 * ndimage.gaussian_filter(rng.random((18, 16, 6)), 1.0)
  src = str(tmp_path / "thick.nii.gz")
  nib.save(_image(data, _oblique((1.0, 1.0, 3.0))), src)
  steps = 6
  assert _run(f"--workdir={tmp_path / 'one'}", f"--input={src}", f"--output={tmp_path / 'one.nii.gz'}",
              steps=steps) == 0
  logs = run_two_processes([*_CLI, f"--config.through_plane.num_steps={steps}", f"--workdir={tmp_path / 'two'}",
                            f"--input={src}", f"--output={tmp_path / 'two.nii.gz'}"], tmp_path, "tp")
  assert "training steps 0..6 on 8 device(s)" in logs[0], logs[0][-2000:]
  assert "wrote" in logs[0] and "wrote" not in logs[1]            # one writer
  one, _ = checkpoints.load_state(tp_train.checkpoint_dir(str(tmp_path / "one")))
  two, step = checkpoints.load_state(tp_train.checkpoint_dir(str(tmp_path / "two")))
  assert step == steps
  assert_agree_but_for_reduction_order(one["params"], two["params"], max_share_off=0.05)
  a, b = nib.load(tmp_path / "one.nii.gz"), nib.load(tmp_path / "two.nii.gz")
  assert a.header.binaryblock == b.header.binaryblock
  np.testing.assert_allclose(np.asarray(b.dataobj), np.asarray(a.dataobj), rtol=1e-4, atol=1e-3 * data.max())
  assert sorted(os.listdir(tmp_path)) == sorted(["one", "two", "one.nii.gz", "two.nii.gz", "thick.nii.gz",
                                                 "tp0.log", "tp1.log"])   # nothing partial left
