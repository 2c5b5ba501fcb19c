"""Super-resolve a user's volume in-plane and write it back as a proper NIfTI.

  python run.py --config=configs/demo.py --workdir=runs/demo --mode=predict \
      --input=subject.nii.gz --output=subject_x2.nii.gz [--reference=hr.nii.gz]

The volume is cut into 2D slices along its slice axis (from the header: the axis with the coarsest
spacing, else the header's slice dimension; `slice_axis` overrides) and normalised exactly as the
training data: scanner units (scale factor applied) divided by the volume's 99.5th percentile and
clipped to [0, 1]. The generator super-resolves the clipped slices in fixed-size batches (one compiled
call shape, so nothing recompiles): with `predict.batch_size = 0` (the default) as few calls as
memory allows (`plan_batches`: the whole volume in one call when XLA's memory figure for it fits
half the free device memory, which keeps a GPU busy instead of paying a launch and a host round trip
per small batch; on CPU devices one slice per device and call, which XLA:CPU runs faster per slice),
else batches of `predict.batch_size` slices. What the clip removed (the brightest
0.5% above the percentile, negative values) is added back through bicubic upsampling, so the output
keeps the input's whole intensity range instead of saturating at the percentile. The result goes back
to the input's units and is written as float32: super-resolved values are not integers, and an
integer type with the input's scale factor could not hold the bicubic overshoot above its maximum.

The output keeps the orientation: each coded transform (sform and qform) spans the same world extent
with in-plane voxels s times smaller, and the header's zooms say so. fastMRI `.h5` input uses the
reconstruction data_prep uses (`mrsr_jax.data.fastmri.RECON_KEYS`) and the voxel size of the
ISMRMRD header.

A user's files are safe: `--output` is checked before any compute (a NIfTI name in a writable folder,
never the input or the reference, not an existing file unless `overwrite=True`); the file is written
to a temporary name in the same folder, given the user's umask, and renamed into place only when
complete, so a failure leaves nothing behind. With several processes (jax.distributed) every process
reads the input and runs its share of each batch; process 0 gathers the result and writes the file.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections
import nibabel as nib
import numpy as np
from absl import logging

from mrsr_jax import errors
from mrsr_jax import inference
from mrsr_jax import metrics as metrics_lib
from mrsr_jax import sharding
# The generator call, its batches and their plan live in mrsr_jax/inference.py (shared with evaluate
# and the api); predict's names for them before that module existed.
from mrsr_jax.inference import (CPU_SLICES_PER_CALL, MEMORY_FRACTION, Generator, _call_bytes,  # noqa: F401
                                plan_batches, super_resolve)
from mrsr_jax.data import degrade
from mrsr_jax.data import fastmri as fastmri_format
from mrsr_jax.data import volumes

NIFTI_SUFFIXES = (".nii", ".nii.gz")
H5_SUFFIXES = (".h5", ".hdf5")
PARTIAL_PREFIX = ".partial-"


# -- reading ------------------------------------------------------------------------------------------
def load_input(path: str, *, frame: int | None = None) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
  """(float32 volume [X, Y, Z] in scanner units, affine, NIfTI header) from a NIfTI or fastMRI .h5.

  For a fastMRI file the header is made from its ISMRMRD geometry (voxel size, slice axis 2; the
  orientation is unknown, so both transform codes are 0). `frame` picks one frame of a 4D NIfTI and is
  ignored for 3D volumes. Every problem is a ValueError (or FileNotFoundError) naming the file.
  """
  if os.path.isdir(path):
    raise errors.UserError(f"{path}: a directory, not a volume file")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such input file")
  if path.endswith(H5_SUFFIXES):
    return _load_fastmri(path)
  if not path.endswith(NIFTI_SUFFIXES):
    raise errors.UserError(f"{path}: not a volume this tool reads (expected .nii, .nii.gz or fastMRI .h5)")
  # The same reading and checks as the training data (data_prep), plus a frame of a 4D file.
  return volumes.load_nifti(path, frames=True, frame=frame)


def _load_fastmri(path: str):
  """[x, y, slices] of the stored reconstruction (RECON_KEYS order, as data_prep), else the RSS of the
  centred inverse FFT of `kspace` centre-cropped to the reconstruction matrix (fastMRI's convention).
  Opening and the structure checks are data_prep's (`mrsr_jax.data.fastmri`)."""
  with fastmri_format.open_file(path) as f:
    key, ds = fastmri_format.image_dataset(f, path)
    hw = tuple(ds.shape[-2:])  # the grid the image is read on, before any crop
    try:
      spaces = fastmri_format.file_spaces(f)
    except ValueError as e:  # the header only carries the voxel size; the image is still good
      logging.warning("%s: %s; voxel size unknown", path, _why(e))
      spaces = {}
    space = fastmri_format.image_space(spaces, key)
    try:
      if key != "kspace":
        vol = np.asarray(ds[()], np.float32)
      else:
        crop = fastmri_format.DEFAULT_RECON_HW
        if "reconSpace" in spaces:
          rec = spaces["reconSpace"]["matrix"]
          x_rows = space is None or fastmri_format.rows_are_x(space, hw)
          crop = (int(rec[0]), int(rec[1])) if x_rows else (int(rec[1]), int(rec[0]))
        coil_axis = 0 if ds.ndim == 4 else None
        # One slice at a time bounds memory to a slice's coils.
        vol = np.stack([volumes.centre_crop_or_pad(fastmri_format.kspace_to_image(ds[i], coil_axis), crop)
                        for i in range(ds.shape[0])])
    except Exception as e:  # h5py raises OSError for truncated chunks
      raise volumes.BadInputError(path, f"cannot read {key!r}, truncated or corrupt ({_why(e)})") from e
  volumes.check_volume(vol, path)
  if space is not None:
    spacing = fastmri_format.voxel_size(space, hw)
  else:
    spacing = (1.0, 1.0, 1.0)
    logging.warning("%s: no usable ISMRMRD header geometry; writing 1 mm voxels", path)
  data = np.moveaxis(vol, 0, -1)
  header = nib.Nifti1Header()
  header.set_data_dtype(np.float32)
  header.set_data_shape(data.shape)
  header.set_zooms(spacing)
  header.set_xyzt_units("mm")
  header.set_dim_info(slice=2)
  return data, header.get_base_affine(), header


def _why(e: BaseException) -> str:
  """An exception as one line (nibabel's messages can span several)."""
  return f"{type(e).__name__}: {' '.join(str(e).split())}"


# -- the output file ----------------------------------------------------------------------------------
def check_output(output_path: str, *, protected: tuple[str, ...] = (), overwrite: bool = False) -> None:
  """Raises unless `output_path` can be written as a new NIfTI file; called before any compute.

  `protected`: the user's input files, never replaced whatever `overwrite` says (same file by path,
  symlink or hard link). An existing output is replaced only with `overwrite=True`.
  """
  if not output_path.endswith(NIFTI_SUFFIXES):
    raise errors.UserError(f"{output_path}: the output must be a NIfTI file (.nii or .nii.gz)")
  if os.path.isdir(output_path):
    raise IsADirectoryError(f"{output_path}: is a directory; --output must name a NIfTI file")
  for path in protected:
    with contextlib.suppress(OSError):  # the output does not exist (or is a dangling link): not the input
      if os.path.samefile(output_path, path):
        raise errors.UserError(f"{output_path}: is the input file {path}; refusing to overwrite it "
                         f"(choose another --output)")
  if os.path.lexists(output_path) and not overwrite:
    raise FileExistsError(f"{output_path}: already exists; predict does not replace files "
                          f"(remove it or choose another --output)")
  parent = os.path.dirname(os.path.abspath(output_path))
  if not os.path.exists(parent):
    raise FileNotFoundError(f"{output_path}: the folder {parent} does not exist")
  if not os.path.isdir(parent):
    raise NotADirectoryError(f"{output_path}: {parent} is not a folder")
  # Try it: permissions, read-only mounts and quotas all show up as a failed create.
  try:
    fd, probe = tempfile.mkstemp(prefix=PARTIAL_PREFIX, dir=parent)
  except OSError as e:
    cls = PermissionError if isinstance(e, PermissionError) else OSError
    raise cls(f"{output_path}: cannot write in {parent} ({e.strerror or e})") from e
  os.close(fd)
  os.remove(probe)


def _umask() -> int:
  mask = os.umask(0)   # the only portable way to read it; set straight back (single-threaded here)
  os.umask(mask)
  return mask


def write_atomic(img: nib.Nifti1Image, output_path: str, *, overwrite: bool = False) -> None:
  """Saves `img` to a temporary file next to `output_path`, then moves it into place.

  Either the complete file appears under `output_path` or nothing does (the temporary file is removed
  on any failure, Ctrl-C included). Without `overwrite` the move is a hard link, which fails rather
  than replace a file that appeared meanwhile.
  """
  out_dir = os.path.dirname(os.path.abspath(output_path))
  suffix = ".nii.gz" if output_path.endswith(".gz") else ".nii"   # nibabel picks compression by name
  fd, tmp = tempfile.mkstemp(suffix=suffix, dir=out_dir, prefix=PARTIAL_PREFIX)
  os.close(fd)
  try:
    nib.save(img, tmp)
    os.chmod(tmp, 0o666 & ~_umask())   # mkstemp creates 0600; an output file gets the user's umask
    with open(tmp, "rb") as f:
      os.fsync(f.fileno())
    if overwrite:
      os.replace(tmp, output_path)
    else:
      try:
        os.link(tmp, output_path)
      except FileExistsError:
        raise FileExistsError(f"{output_path}: appeared while predicting; not replaced") from None
      except OSError:   # a file system without hard links
        if os.path.lexists(output_path):
          raise FileExistsError(f"{output_path}: appeared while predicting; not replaced") from None
        os.replace(tmp, output_path)
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)


def upsampled_affine(affine: np.ndarray, in_plane: tuple[int, int], scale: int) -> np.ndarray:
  """Affine of the volume whose `in_plane` voxel axes are `scale` times finer over the same extent.

  Voxel i' of the new grid sits at old voxel coordinate (i' + 0.5) / s − 0.5, so the outer voxel
  edges (the world extent) are unchanged.
  """
  m = np.diag([1.0, 1.0, 1.0, 1.0])
  for a in in_plane:
    m[a, a] = 1.0 / scale
    m[a, 3] = 0.5 / scale - 0.5
  return affine @ m


def output_image(volume: np.ndarray, header, in_plane: tuple[int, int], scale: int) -> nib.Nifti1Image:
  """float32 NIfTI of the upsampled `volume` with the input `header`'s metadata and geometry.

  Each transform (qform, sform) is upsampled on its own with its code kept, so a file whose two differ
  keeps both and an uncoded one describes the output's grid, not the input's; with both codes 0 the
  zooms alone define the grid, as in the input.
  """
  hdr = header.copy()
  if hdr.endianness != nib.volumeutils.native_code:   # a big-endian input gets a native output
    hdr = hdr.as_byteswapped(nib.volumeutils.native_code)
  hdr.set_data_dtype(np.float32)
  hdr.set_data_shape(volume.shape)
  zooms = [float(z) for z in header.get_zooms()[:3]]
  for a in in_plane:
    zooms[a] /= scale
  hdr.set_zooms(zooms)
  hdr["cal_min"], hdr["cal_max"] = 0.0, 0.0   # the input's display window does not describe the output
  klass = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
  img = klass(volume.astype(np.float32, copy=False), None, hdr)
  img.header.set_slope_inter(1.0, 0.0)   # values are stored as they are
  for get, put in ((header.get_qform, img.set_qform), (header.get_sform, img.set_sform)):
    _, code = get(coded=True)
    # An uncoded transform (code 0, "unknown") is upsampled too when it is a real one: left as the
    # input's, its fields would describe the input's grid inside the output's header.
    aff = get()
    if code or abs(np.linalg.det(aff[:3, :3])) > 0:
      put(upsampled_affine(aff, in_plane, scale), code=int(code))
    else:
      put(None, code=0)
  if not header.get_qform(coded=True)[1] and not header.get_sform(coded=True)[1]:
    img.header.set_zooms(zooms)   # no coded transform: the zooms alone define the grid, as in the input
  return img


# -- super-resolution of a volume (the generator, its batches and plan: mrsr_jax/inference.py) ---------
@functools.partial(jax.jit, static_argnums=0, static_argnames="scale")
def _upsample_batch(apply, variables, raw, unit, floor, *, scale: int):
  """One batch of slices [B, H, W] in scanner units -> [B, sH, sW] in scanner units, all on device:
  normalise and clip, the generator, the clipped-off excess through bicubic upsampling, back to
  scanner units and the floor (see `upsample_volume`). One transfer in and one out per batch."""
  x = raw[..., None] / unit
  norm = jnp.clip(x, 0.0, 1.0)
  # x - norm is exactly 0 inside [0, 1] (the same float32 division as norm's).
  sr = apply(variables, norm) + degrade.upsample_bicubic(x - norm, scale)
  return jnp.maximum(sr * unit, floor)[..., 0]


def upsample_volume(apply_fn, data: np.ndarray, axis: int, scale: int, batch_size: int, mesh,
                    name: str = "volume") -> np.ndarray:
  """[X, Y, Z] in scanner units -> the volume `scale` times finer in-plane (slicing along `axis`).

  output = SR(clip(x)) + bicubic(x − clip(x)) in normalised units x (then back to scanner units): the
  generator sees what it was trained on, and whatever the clip to [0, 1] removed comes back through
  the bicubic path, so intensities above the normalisation percentile are not saturated. Negative
  values (interpolation undershoot) are floored at min(0, input minimum).

  The host computes the normalisation's percentile; all the rest runs on the devices in one compiled
  function per batch (`_upsample_batch`: one transfer in, one out). Its executable, and the plan's
  (`batch_size` 0), are reused by every later call with the same generator config and shapes:
  `apply_fn` an `inference.Generator` (as `inference.load_generator` returns) or the same callable.
  """
  t0 = time.perf_counter()
  slices = np.ascontiguousarray(np.moveaxis(np.asarray(data, np.float32), axis, 0))
  _, unit = volumes.robust_normalise(slices, name)
  floor = np.float32(min(0.0, float(slices.min())))
  apply, variables = inference.split(apply_fn)
  if not batch_size:
    _, batch_size = inference.plan_batches(apply_fn, slices.shape[1:], slices.shape[0], mesh)
  t1 = time.perf_counter()
  call = functools.partial(_upsample_batch, apply, variables, unit=np.float32(unit), floor=floor,
                           scale=scale)
  out = inference.batched(call, slices, batch_size, mesh, channel=False)
  t2 = time.perf_counter()
  result = np.moveaxis(out, 0, axis)
  logging.info("%s: %d slices in %d call(s) of %d: %.2f s normalising and planning, %.2f s on the "
               "devices (transfers included)", name, slices.shape[0], -(-slices.shape[0] // batch_size),
               batch_size, t1 - t0, t2 - t1)
  return result


def predict_file(config: ml_collections.ConfigDict, workdir: str, input_path: str, output_path: str,
                 *, reference: str | None = None, slice_axis: int | None = None,
                 frame: int | None = None, mesh=None, overwrite: bool = False) -> dict:
  """Super-resolves `input_path` into `output_path`; returns metrics against `reference` if given.

  Every check that does not need the model (output path, input, reference, slice axis, batch size)
  runs before the checkpoint is restored.
  """
  check_output(output_path, protected=tuple(p for p in (input_path, reference) if p), overwrite=overwrite)
  mesh = mesh or sharding.make_mesh()
  batch = config.predict.batch_size
  if not isinstance(batch, int) or isinstance(batch, bool) or batch < 0:
    raise errors.UserError(f"predict.batch_size: must be 0 (as few generator calls as memory allows) or a "
                     f"positive multiple of the {mesh.devices.size} devices, got {batch!r}")
  if batch:
    sharding.check_batch_size(batch, mesh)
  s = config.scale
  data, _, header = load_input(input_path, frame=frame)
  affine = np.asarray(header.get_best_affine(), np.float64)
  axis = volumes.slice_axis(affine, header) if slice_axis is None else slice_axis
  if axis not in (0, 1, 2):
    raise errors.UserError(f"slice axis must be 0, 1 or 2, got {axis}")
  in_plane = tuple(a for a in range(3) if a != axis)
  out_shape = tuple(n * s if a in in_plane else n for a, n in enumerate(data.shape))
  ref = None
  if reference:
    ref, _, _ = load_input(reference, frame=frame)
    if ref.shape != out_shape:
      raise errors.UserError(f"{reference}: reference shape {ref.shape} differs from the output's {out_shape}")

  apply_fn, info = inference.load_generator(config, workdir, mesh)
  logging.info("%s: %s, slicing along axis %d (%d slices), %d× in-plane", input_path, data.shape,
               axis, data.shape[axis], s)
  sr = upsample_volume(apply_fn, data, axis, s, batch, mesh, name=input_path)
  bad = int(np.count_nonzero(~np.isfinite(sr)))
  if bad:
    raise errors.UserError(f"{info['workdir']}: the generator (step {info['step']}) gave {bad} NaN/Inf voxels "
                     f"for {input_path}; nothing written")
  img = output_image(sr, header, in_plane, s)

  results = {"output": output_path, "shape": tuple(int(x) for x in sr.shape), "slice_axis": axis,
             "checkpoint_step": info["step"]}
  if ref is not None:
    results.update(metrics_lib.volume_metrics(np.moveaxis(sr, axis, 0), np.moveaxis(ref, axis, 0)))
  if jax.process_index() == 0:   # every process holds the whole result; one writes it
    write_atomic(img, output_path, overwrite=overwrite)
    if ref is not None:
      print(f"against {reference}: PSNR {results['psnr']:.2f} dB, SSIM {results['ssim']:.4f}, "
            f"NMSE {results['nmse']:.4f}")
    zooms = img.header.get_zooms()[:3]
    print(f"wrote {output_path}: {sr.shape} float32 ({', '.join(f'{z:.3g}' for z in zooms)} mm voxels)")
  return results
