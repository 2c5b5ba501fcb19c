"""Super-resolve a user's volume in-plane and write it back as a proper NIfTI.

  python run.py --config=configs/demo.py --workdir=runs/demo --mode=predict \
      --input=subject.nii.gz --output=subject_x2.nii.gz [--reference=hr.nii.gz]

The volume is cut into 2D slices along its slice axis (from the header: the axis with the coarsest
spacing, else the header's slice dimension; `slice_axis` overrides), normalised exactly as the training
data (99.5th percentile → 1), super-resolved in fixed-size batches by one jitted generator call (so
memory stays bounded and nothing recompiles), and mapped back to the input's intensity scale.
The output keeps the orientation; its affine spans the same world extent with in-plane voxels s times
smaller, and the header's zooms say so. Nothing is written unless everything succeeded.
"""

from __future__ import annotations

import os
import tempfile

import h5py
import jax
import ml_collections
import nibabel as nib
import numpy as np
from absl import logging

from data_prep import volumes
from mrsr_jax import metrics as metrics_lib
from mrsr_jax import sharding


def load_input(path: str, *, frame: int | None = None) -> tuple[np.ndarray, np.ndarray, object]:
  """(float32 volume [X, Y, Z], affine, NIfTI header or None) from a NIfTI or a fastMRI .h5 file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such input file")
  if path.endswith((".h5", ".hdf5")):
    return _load_fastmri(path)
  if not path.endswith((".nii", ".nii.gz")):
    raise ValueError(f"{path}: not a volume this tool reads (expected .nii, .nii.gz or fastMRI .h5)")
  try:
    img = nib.load(path)
  except Exception as e:
    raise ValueError(f"{path}: not a readable NIfTI file ({type(e).__name__}: {e})") from e
  shape = img.shape
  if len(shape) == 4 and shape[3] > 1:
    if frame is None:
      raise ValueError(f"{path}: a 4D volume {shape}; choose a frame with --frame=N (0..{shape[3] - 1})")
    if not 0 <= frame < shape[3]:
      raise ValueError(f"{path}: --frame={frame} outside 0..{shape[3] - 1}")
    try:
      data = np.asarray(img.dataobj[..., frame], np.float32)
    except Exception as e:
      raise ValueError(f"{path}: truncated or corrupt image data ({type(e).__name__}: {e})") from e
    volumes.check_volume(data, path)
    return data, np.asarray(img.affine, np.float64), img.header
  data, affine, header = volumes.load_nifti(path)
  return data, affine, header


def _load_fastmri(path: str):
  """A fastMRI .h5 as [H, W, slices] (slice axis last) with a 1 mm in-plane affine (the .h5 has no
  geometry that nibabel understands); the stored magnitude reconstruction, else RSS of k-space."""
  try:
    f = h5py.File(path, "r")
  except OSError as e:
    raise ValueError(f"{path}: not a readable HDF5 file ({e})") from e
  with f:
    for key in ("reconstruction_rss", "reconstruction_esc"):
      if key in f:
        vol = np.asarray(f[key], np.float32)
        break
    else:
      if "kspace" not in f:
        raise ValueError(f"{path}: fastMRI file without 'reconstruction_rss', 'reconstruction_esc' "
                         f"or 'kspace' (keys: {sorted(f.keys())})")
      k = np.asarray(f["kspace"])
      img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
      vol = np.sqrt(np.sum(np.abs(img) ** 2, axis=1)) if k.ndim == 4 else np.abs(img)
      vol = volumes.centre_crop_or_pad(vol.astype(np.float32), (320, 320))
  if vol.ndim != 3:
    raise ValueError(f"{path}: expected a [slices, H, W] reconstruction, got shape {vol.shape}")
  volumes.check_volume(vol, path)
  return np.moveaxis(vol, 0, -1), np.eye(4), None


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


def super_resolve(apply_fn, slices: np.ndarray, batch_size: int, mesh) -> np.ndarray:
  """[S, H, W] in [0, 1] -> [S, sH, sW] with fixed-shape batches (the last one padded)."""
  n = slices.shape[0]
  out = []
  for start in range(0, n, batch_size):
    chunk = slices[start:start + batch_size]
    pad = batch_size - chunk.shape[0]
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
    sr = apply_fn(sharding.to_global(chunk[..., None], mesh))
    out.append(np.asarray(jax.device_get(sr))[:batch_size - pad, ..., 0])
  return np.concatenate(out)


def predict_file(config: ml_collections.ConfigDict, workdir: str, input_path: str, output_path: str,
                 *, reference: str | None = None, slice_axis: int | None = None,
                 frame: int | None = None, mesh=None) -> dict:
  """Super-resolves `input_path` into `output_path`; returns metrics against `reference` if given."""
  from mrsr_jax.evaluate import load_generator   # restoring a generator is shared with eval
  if not output_path.endswith((".nii", ".nii.gz")):
    raise ValueError(f"{output_path}: the output must be a NIfTI file (.nii or .nii.gz)")
  mesh = mesh or sharding.make_mesh()
  batch = config.predict.batch_size
  sharding.check_batch_size(batch, mesh)
  data, affine, header = load_input(input_path, frame=frame)
  axis = volumes.slice_axis(affine, header) if slice_axis is None else slice_axis
  if axis not in (0, 1, 2):
    raise ValueError(f"slice axis must be 0, 1 or 2, got {axis}")
  apply_fn, info = load_generator(config, workdir, mesh)
  s = config.scale

  slices = np.moveaxis(data, axis, 0)
  norm, scale = volumes.robust_normalise(slices, input_path)
  logging.info("%s: %s, slicing along axis %d (%d slices), %d× in-plane", input_path, data.shape,
               axis, slices.shape[0], s)
  sr = super_resolve(jax.jit(apply_fn), norm, batch, mesh)
  sr = np.moveaxis(np.clip(sr, 0.0, None) * scale, 0, axis)

  in_plane = tuple(a for a in range(3) if a != axis)
  new_affine = upsampled_affine(affine, in_plane, s)
  out_dtype = np.float32
  if header is not None and np.issubdtype(header.get_data_dtype(), np.integer):
    # Integer scanner data stays integer (rounded, clipped to the type's range).
    out_dtype = header.get_data_dtype()
    lim = np.iinfo(out_dtype)
    sr = np.clip(np.rint(sr), lim.min, lim.max)
  sr = sr.astype(out_dtype)
  if header is not None:
    hdr = header.copy()
    hdr.set_data_dtype(out_dtype)
    hdr["scl_slope"], hdr["scl_inter"] = np.nan, np.nan   # data are stored unscaled
    img = nib.Nifti1Image(sr, new_affine, hdr)
  else:
    img = nib.Nifti1Image(sr, new_affine)
  zooms = np.sqrt((new_affine[:3, :3] ** 2).sum(0))
  img.header.set_zooms(tuple(zooms) + tuple(img.header.get_zooms()[3:len(img.shape)]))
  img.set_qform(new_affine, code=int(header["qform_code"]) if header is not None else 1)
  img.set_sform(new_affine, code=int(header["sform_code"]) if header is not None else 1)

  results = {"output": output_path, "shape": tuple(int(x) for x in sr.shape), "slice_axis": axis,
             "checkpoint_step": info["step"]}
  if reference:
    ref, _, _ = load_input(reference, frame=frame)
    if ref.shape != sr.shape:
      raise ValueError(f"{reference}: reference shape {ref.shape} differs from the output {sr.shape}")
    ref_s = np.moveaxis(ref, axis, 0)
    results.update(metrics_lib.volume_metrics(np.moveaxis(sr.astype(np.float32), axis, 0), ref_s))
    print(f"against {reference}: PSNR {results['psnr']:.2f} dB, SSIM {results['ssim']:.4f}, "
          f"NMSE {results['nmse']:.4f}")

  # Atomic: a temporary file in the output's folder, renamed when complete.
  out_dir = os.path.dirname(os.path.abspath(output_path))
  os.makedirs(out_dir, exist_ok=True)
  suffix = ".nii.gz" if output_path.endswith(".gz") else ".nii"
  fd, tmp = tempfile.mkstemp(suffix=suffix, dir=out_dir, prefix=".partial-")
  os.close(fd)
  try:
    nib.save(img, tmp)
    os.replace(tmp, output_path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  print(f"wrote {output_path}: {sr.shape} ({', '.join(f'{z:.3g}' for z in zooms)} mm voxels)")
  return results
