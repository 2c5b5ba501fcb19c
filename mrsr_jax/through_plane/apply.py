"""Through-plane super-resolution of a thick-slice NIfTI: geometry, the two reformats, fusion, output.

  python run.py --config=configs/through_plane.py --workdir=W --mode=predict --through_plane \
      --input=thick.nii.gz --output=iso.nii.gz [--slice_thickness=MM] [--slice_spacing=MM] [--slice_axis=N]

Geometry (`acquisition`): the slice axis is the one voxel axis whose spacing (affine column norm) is at
least twice the other two's; the slice spacing is that spacing; the slice thickness is `SliceThickness`
of a BIDS sidecar (`thick.json`, what dcm2niix writes) if there is one, else taken equal to the spacing
(no gap), which the log says. `--slice_thickness`, `--slice_spacing` and `--slice_axis` override the
header. The target spacing is the in-plane one p (both in-plane spacings must agree within 5%): the
network upsamples by the integer f nearest spacing / p when within 2% of it (the output slices are then
spacing / f apart), else by floor(spacing / p) after a cubic-spline resampling of the thick slices to
f * p (profile.py). Refused, with one line: a ratio below 2 (near-isotropic), no single coarse axis.

The volume is normalised by its 99.5th percentile (volumes.robust_normalise's unit; not clipped: the
network is a residual over spline interpolation, which carries the brightest voxels through) and the
result multiplied back, so the output is in the input's units; negative values are floored at
min(0, input minimum), as predict does.

Application: for each in-plane axis a, the reformats spanned by the slice axis and a (stacked along
the other in-plane axis) are upsampled along the slice axis; the two results are averaged (fusion by
the mean, SMORE's; each voxel gets one estimate from each orientation).

Output affine: output voxel j along the slice axis sits at input voxel coordinate
(j - (f - 1) / 2) * p_out / spacing (the first input slice's centre is output row (f - 1) / 2), all
other axes unchanged; each coded transform (qform, sform) is mapped so, and the zooms say p_out.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import jax
import ml_collections
import nibabel as nib
import numpy as np
from absl import logging

from mrsr_jax import errors
from mrsr_jax import metrics as metrics_lib
from mrsr_jax import predict, sharding
from mrsr_jax.data import volumes
from mrsr_jax.through_plane import profile
from mrsr_jax.through_plane import train as train_lib

# Both in-plane spacings within this fraction of each other (square in-plane pixels), and the slice
# spacing at least this many times theirs.
IN_PLANE_TOLERANCE = 0.05
MIN_RATIO = 2.0 * (1 - profile.INTEGER_TOLERANCE)


@dataclasses.dataclass(frozen=True)
class Acquisition:
  """A thick-slice volume's geometry in mm and in output pixels."""
  axis: int                  # the voxel axis of the slices
  spacing: float             # mm between slice centres
  thickness: float           # mm, the profile's FWHM (gaussian) or width (rect)
  in_plane: float            # mm, the in-plane pixel (mean of the two)
  profile: str
  thickness_source: str      # where the thickness came from (logged)

  @property
  def geometry(self) -> profile.Geometry:
    ratio = self.spacing / self.in_plane
    f = profile.integer_factor(ratio)
    out = self.spacing / f if abs(ratio - f) <= profile.INTEGER_TOLERANCE * ratio else self.in_plane
    return profile.Geometry(thickness=self.thickness / out, spacing=self.spacing / out,
                            profile=self.profile)

  @property
  def output_spacing(self) -> float:
    g = self.geometry
    return self.spacing / g.spacing


def sidecar_thickness(path: str) -> float | None:
  """`SliceThickness` (mm) of the BIDS JSON sidecar next to `path`, if there is one."""
  stem = path[:-7] if path.endswith(".nii.gz") else path[:-4] if path.endswith(".nii") else None
  if stem is None or not os.path.isfile(stem + ".json"):
    return None
  try:
    with open(stem + ".json") as f:
      value = json.load(f).get("SliceThickness")
  except (OSError, ValueError, AttributeError) as e:
    raise errors.UserError(f"{stem}.json: not a readable JSON sidecar ({e})") from None
  if value is None:
    return None
  if not isinstance(value, (int, float)) or not value > 0:
    raise errors.UserError(f"{stem}.json: SliceThickness {value!r} is not a positive number of mm")
  return float(value)


def acquisition(path: str, affine: np.ndarray, header, *, slice_axis: int | None = None,
                thickness: float | None = None, spacing: float | None = None,
                profile_name: str = "gaussian") -> Acquisition:
  """The geometry of `path` (see the module docstring); a ValueError naming the file when it is not a
  thick-slice volume this can super-resolve."""
  sp = volumes.voxel_spacing(affine)
  shown = " x ".join(f"{x:.3g}" for x in sp)
  if slice_axis is None:
    order = np.argsort(sp)
    coarse = sp[order[2]]
    if spacing is not None:
      dim = header.get_dim_info()[2] if hasattr(header, "get_dim_info") else None
      if coarse >= MIN_RATIO * sp[order[1]]:
        slice_axis = int(order[2])
      elif dim is not None and 0 <= dim < 3:
        slice_axis = int(dim)
      else:
        raise errors.UserError(f"{path}: voxels {shown} mm: which axis holds the slices is not in the header; "
                               f"give --slice_axis")
    elif coarse < MIN_RATIO * sp[order[0]]:
      raise errors.UserError(f"{path}: voxels {shown} mm are near-isotropic (largest / smallest spacing "
                             f"{coarse / sp[order[0]]:.2f} < 2): nothing to super-resolve through-plane")
    elif coarse < MIN_RATIO * sp[order[1]]:
      raise errors.UserError(f"{path}: voxels {shown} mm: no single slice axis (two axes are coarse); "
                             f"through-plane super-resolution needs fine square pixels in-plane")
    else:
      slice_axis = int(order[2])
  if slice_axis not in (0, 1, 2):
    raise errors.UserError(f"--slice_axis must be 0, 1 or 2, got {slice_axis}")
  others = [float(sp[a]) for a in range(3) if a != slice_axis]
  if abs(others[0] - others[1]) > IN_PLANE_TOLERANCE * max(others):
    raise errors.UserError(f"{path}: in-plane voxels {others[0]:.3g} x {others[1]:.3g} mm are not square "
                           f"(slice axis {slice_axis}); through-plane super-resolution needs square pixels")
  p = float(np.mean(others))
  s = float(sp[slice_axis]) if spacing is None else float(spacing)
  if not (s > 0 and math.isfinite(s)):
    raise errors.UserError(f"--slice_spacing must be a positive number of mm, got {spacing}")
  if s < MIN_RATIO * p:
    raise errors.UserError(f"{path}: slices {s:.3g} mm apart with {p:.3g} mm pixels in-plane are "
                           f"near-isotropic (ratio {s / p:.2f} < 2): nothing to super-resolve through-plane")
  if thickness is not None:
    t, source = float(thickness), "--slice_thickness"
    if not (t > 0 and math.isfinite(t)):
      raise errors.UserError(f"--slice_thickness must be a positive number of mm, got {thickness}")
  else:
    t, source = sidecar_thickness(path), "the BIDS sidecar"
    if t is None:
      t, source = s, "assumed equal to the spacing: no thickness in the header, --slice_thickness sets it"
  return Acquisition(axis=slice_axis, spacing=s, thickness=t, in_plane=p, profile=profile_name,
                     thickness_source=source)


# -- the network over both reformats ---------------------------------------------------------------
def _apply_fn(model, variables):
  @jax.jit
  def call(x):
    return model.apply(variables, x, train=False)
  return call


def upsample_volume(model, variables, data: np.ndarray, acq: Acquisition, mesh, *,
                    batch_size: int = 0, fusion: str = "mean") -> tuple[np.ndarray, dict]:
  """Normalised [X, Y, Z] volume -> the volume f times finer (after any resampling) along `acq.axis`,
  from both through-plane orientations fused; also returns each orientation's result ("orientations")."""
  g = acq.geometry
  f = g.factor
  axis = acq.axis
  resample = profile.resample_matrix(data.shape[axis], g.spacing, f).astype(np.float32)
  thick = np.moveaxis(np.tensordot(resample, np.moveaxis(data, axis, 0), axes=(1, 0)), 0, axis)
  n_dev = mesh.devices.size
  call = _apply_fn(model, variables)
  results = []
  for a in [x for x in range(3) if x != axis]:
    stack = [x for x in range(3) if x not in (axis, a)][0]
    images = np.ascontiguousarray(np.transpose(thick, (stack, axis, a)), np.float32)  # [N, m', n_a]
    batch = batch_size or n_dev * max(1, -(-min(len(images), 8 * n_dev) // n_dev))
    sharding.check_batch_size(batch, mesh)
    sr = predict.super_resolve(call, images, batch, mesh)                               # [N, f m', n_a]
    results.append(np.transpose(sr, np.argsort((stack, axis, a))))
  if fusion == "mean":
    fused = np.mean(results, axis=0)
  elif fusion == "median":           # of two values the mean too; kept for when more views are added
    fused = np.median(results, axis=0)
  else:
    raise errors.UserError(f"config.through_plane.fusion must be 'mean' or 'median', got {fusion!r}")
  return fused.astype(np.float32), {"orientations": results}


def slice_axis_matrix(axis: int, acq: Acquisition) -> np.ndarray:
  """4x4 map from output voxel indices to input voxel indices (see the module docstring)."""
  g = acq.geometry
  m = np.eye(4)
  step = 1.0 / g.spacing            # input voxels per output voxel along the slice axis
  m[axis, axis] = step
  m[axis, 3] = -(g.factor - 1) / 2 * step
  return m


def output_image(volume: np.ndarray, header, acq: Acquisition) -> nib.Nifti1Image:
  """float32 NIfTI of `volume` with `header`'s metadata and each coded transform mapped through
  `slice_axis_matrix` (predict.output_image's handling, for a non-integer, one-axis map)."""
  hdr = header.copy()
  if hdr.endianness != nib.volumeutils.native_code:
    hdr = hdr.as_byteswapped(nib.volumeutils.native_code)
  hdr.set_data_dtype(np.float32)
  hdr.set_data_shape(volume.shape)
  zooms = [float(z) for z in header.get_zooms()[:3]]
  zooms[acq.axis] = acq.output_spacing
  hdr.set_zooms(zooms)
  hdr["cal_min"], hdr["cal_max"] = 0.0, 0.0
  hdr["slice_duration"], hdr["slice_start"], hdr["slice_end"] = 0.0, 0, 0   # not the acquired slices
  klass = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
  img = klass(volume.astype(np.float32, copy=False), None, hdr)
  img.header.set_slope_inter(1.0, 0.0)
  m = slice_axis_matrix(acq.axis, acq)
  for get, put in ((header.get_qform, img.set_qform), (header.get_sform, img.set_sform)):
    # The uncoded transform too (code 0, "unknown"): its fields are then this grid's, not the input's.
    _, code = get(coded=True)
    put(get() @ m, code=int(code))
  if header.get_qform(coded=True)[0] is None and header.get_sform(coded=True)[0] is None:
    img.header.set_zooms(zooms)      # no transform: the zooms alone define the grid, as in the input
  return img


def predict_file(config: ml_collections.ConfigDict, workdir: str, input_path: str, output_path: str, *,
                 slice_axis: int | None = None, slice_thickness: float | None = None,
                 slice_spacing: float | None = None, frame: int | None = None, mesh=None,
                 overwrite: bool = False, reference: str | None = None) -> dict:
  """Trains on `input_path`'s in-plane slices (or restores `through_plane.pretrained_workdir`'s model)
  and writes the isotropic volume to `output_path`; with `reference` (an isotropic volume on the
  output's grid) prints and returns PSNR / SSIM against it (SSIM over slices along the slice axis).
  Everything that needs no model (output path, input, reference, geometry) is checked first."""
  cfg = train_lib.settings(config)
  predict.check_output(output_path, protected=tuple(p for p in (input_path, reference) if p),
                       overwrite=overwrite)
  if not input_path.endswith(predict.NIFTI_SUFFIXES):
    raise errors.UserError(f"{input_path}: through-plane super-resolution reads NIfTI (.nii, .nii.gz): it "
                           f"needs the slice geometry of the header")
  mesh = mesh or sharding.make_mesh()
  data, _, header = predict.load_input(input_path, frame=frame)
  affine = np.asarray(header.get_best_affine(), np.float64)
  acq = acquisition(input_path, affine, header, slice_axis=slice_axis, thickness=slice_thickness,
                    spacing=slice_spacing, profile_name=cfg.profile)
  g = acq.geometry
  out_rows = g.factor * profile.resample_matrix(data.shape[acq.axis], g.spacing, g.factor).shape[0]
  out_shape = tuple(out_rows if a == acq.axis else n for a, n in enumerate(data.shape))
  ref = None
  if reference:
    ref, _, _ = predict.load_input(reference, frame=frame)
    if ref.shape != out_shape:
      raise errors.UserError(f"{reference}: reference shape {ref.shape} differs from the output's {out_shape}")
  logging.info("%s: %s voxels, slices along axis %d: %.3g mm apart, %.3g mm thick (%s), %s profile; "
               "in-plane %.3g mm -> x%d%s to %.3g mm", input_path, data.shape, acq.axis, acq.spacing,
               acq.thickness, acq.thickness_source, acq.profile, acq.in_plane, g.factor,
               f" after resampling to {g.factor * acq.output_spacing:.3g} mm" if
               abs(g.spacing - g.factor) > profile.INTEGER_TOLERANCE * g.spacing else "",
               acq.output_spacing)
  _, unit = volumes.robust_normalise(data, input_path)
  norm = (data / np.float32(unit)).astype(np.float32)
  t0 = time.perf_counter()
  if cfg.pretrained_workdir:
    variables, _ = train_lib.restore(cfg, g, cfg.pretrained_workdir, mesh, seed=config.seed)
    model = train_lib.Trainer(cfg, g, None, seed=config.seed).model
    info = {"pretrained": cfg.pretrained_workdir}
  else:
    trainer = train_lib.Trainer(cfg, g, np.moveaxis(norm, acq.axis, 0), seed=config.seed)
    state, info = train_lib.train(trainer, workdir, mesh, log_every=int(config.log_every_steps),
                                  checkpoint_every=int(cfg.checkpoint_every_steps))
    variables, model = train_lib.variables_of(state), trainer.model
  t1 = time.perf_counter()
  sr, _ = upsample_volume(model, variables, norm, acq, mesh, batch_size=int(cfg.batch_size_apply),
                          fusion=cfg.fusion)
  out = np.maximum(sr * np.float32(unit), np.float32(min(0.0, float(data.min()))))
  bad = int(np.count_nonzero(~np.isfinite(out)))
  if bad:
    raise errors.UserError(f"{input_path}: the through-plane model gave {bad} NaN/Inf voxels; nothing written")
  img = output_image(out, header, acq)
  results = {"output": output_path, "shape": tuple(int(x) for x in out.shape), "slice_axis": acq.axis,
             "factor": g.factor, "output_spacing": acq.output_spacing,
             "train_seconds": t1 - t0, "apply_seconds": time.perf_counter() - t1, **info}
  if ref is not None:
    results.update(metrics_lib.volume_metrics(np.moveaxis(out, acq.axis, 0), np.moveaxis(ref, acq.axis, 0)))
  if jax.process_index() == 0:
    predict.write_atomic(img, output_path, overwrite=overwrite)
    if ref is not None:
      print(f"against {reference}: PSNR {results['psnr']:.2f} dB, SSIM {results['ssim']:.4f}, "
            f"NMSE {results['nmse']:.4f}")
    zooms = img.header.get_zooms()[:3]
    print(f"wrote {output_path}: {out.shape} float32 ({', '.join(f'{z:.3g}' for z in zooms)} mm voxels; "
          f"slice axis {acq.axis} x{g.factor}, two orientations averaged)")
  return results
