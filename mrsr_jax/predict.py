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
import dataclasses
import functools
import os
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import nibabel as nib
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from mrsr_jax import metrics as metrics_lib
from mrsr_jax import sharding
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
    raise ValueError(f"{path}: a directory, not a volume file")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such input file")
  if path.endswith(H5_SUFFIXES):
    return _load_fastmri(path)
  if not path.endswith(NIFTI_SUFFIXES):
    raise ValueError(f"{path}: not a volume this tool reads (expected .nii, .nii.gz or fastMRI .h5)")
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
    raise ValueError(f"{output_path}: the output must be a NIfTI file (.nii or .nii.gz)")
  if os.path.isdir(output_path):
    raise IsADirectoryError(f"{output_path}: is a directory; --output must name a NIfTI file")
  for path in protected:
    with contextlib.suppress(OSError):  # the output does not exist (or is a dangling link): not the input
      if os.path.samefile(output_path, path):
        raise ValueError(f"{output_path}: is the input file {path}; refusing to overwrite it "
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

  Each coded transform (qform, sform) is upsampled on its own, so a file whose two differ keeps both;
  with both codes 0 the zooms alone define the grid, as in the input.
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
    aff, code = get(coded=True)
    put(None if aff is None else upsampled_affine(aff, in_plane, scale), code=int(code))
  return img


# -- super-resolution ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _ModelApply:
  """(variables, lr) -> float32 SR of a Flax generator in inference mode. Hashable by value (the
  module's fields and the dtype): a static argument of the compiled functions below, so every load of
  a generator with the same config shares their executables."""
  model: Any
  dtype: str

  def __call__(self, variables, lr):
    return self.model.apply(variables, lr.astype(self.dtype), train=False).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class _FnApply:
  """(variables, lr) -> fn(lr) for any lr -> sr callable (its variables are its own)."""
  fn: Callable

  def __call__(self, variables, lr):
    del variables
    return self.fn(lr)


@functools.partial(jax.jit, static_argnums=0)
def _generate(apply, variables, lr):
  return apply(variables, lr)


@dataclasses.dataclass(frozen=True, eq=False)
class Generator:
  """A generator with its trained variables, called lr [B, N, M, 1] -> float32 sr [B, sN, sM, 1] (what
  `evaluate.load_generator` returns). The variables are arguments of the compiled function, not
  constants in it: generators with the same config share one executable per input shape, whichever
  checkpoint their variables come from, across calls, volumes and loads."""
  model: Any
  variables: Any
  dtype: str = "float32"

  @property
  def apply(self) -> _ModelApply:
    return _ModelApply(self.model, jnp.dtype(self.dtype).name)

  def __call__(self, lr):
    return _generate(self.apply, self.variables, lr)

  def lower(self, lr):
    return _generate.lower(self.apply, self.variables, lr)


@functools.lru_cache(maxsize=32)
def _jitted(apply_fn: Callable) -> Callable:
  """`apply_fn` compiled, one jit per callable: a second call or volume finds its executables."""
  return apply_fn if hasattr(apply_fn, "lower") else jax.jit(apply_fn)


def _split(apply_fn) -> tuple[Callable, Any]:
  """(static (variables, lr) -> sr, variables) of a Generator or of any lr -> sr callable."""
  if isinstance(apply_fn, Generator):
    return apply_fn.apply, apply_fn.variables
  return _FnApply(_jitted(apply_fn)), None


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


def _to_host(x: jax.Array) -> np.ndarray:
  """The whole of a (possibly multi-process) array on this host."""
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _free_memory_per_device(mesh) -> float:
  """Bytes a generator call may use on each of this process's devices: what the device reports free
  (accelerators), else the host's available memory (CPU devices share it)."""
  local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
  stats = local[0].memory_stats() if local else None
  if stats and stats.get("bytes_limit"):
    return float(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
  avail = None
  with contextlib.suppress(OSError, ValueError, StopIteration):
    with open("/proc/meminfo") as f:
      avail = 1024.0 * int(next(line for line in f if line.startswith("MemAvailable:")).split()[1])
  if avail is None:
    avail = float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
  return avail / max(len(local), 1)


def _call_bytes(compiled) -> float | None:
  """XLA's own per-device figure for one call: arguments + outputs + temporaries (None if unknown)."""
  mem = compiled.memory_analysis()
  if mem is None:
    return None
  return float(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes)


# Share of the free memory one call may plan for: XLA's figure leaves out fragmentation and the
# runtime's own buffers, and on CPU the host also holds the volume and its result.
MEMORY_FRACTION = 0.5


# Slices per device and call on CPU devices. XLA:CPU runs the generator faster per slice on one slice
# at a time than on a batch (its activations stay in cache): 2x, 512² output, 2 cores, 470 ms per
# slice at 1 per call, 500 at 2 or 4, 653 at 16 (bench/bench_sr.py --rows=volume; docs/benchmarks.md).
# A call costs a CPU nothing to launch, so batching buys nothing there.
CPU_SLICES_PER_CALL = 1


def plan_batches(apply_fn, slice_hw: tuple[int, int], n_slices: int, mesh, *,
                 memory_bytes: float | None = None, max_per_device: int | None = None):
  """(call, batch size) to super-resolve `n_slices` LR slices of `slice_hw` in as few generator
  calls as memory allows, instead of many small ones. `call` is `apply_fn` jitted (one jit per
  `apply_fn`, so a later plan or volume of the same shapes compiles nothing), compiled for that batch.

  One call takes all the slices (rounded up to a multiple of the mesh's devices) if XLA's memory
  figure for it (`compiled.memory_analysis()`: arguments, outputs, temporaries per device) fits
  `MEMORY_FRACTION` of a device's free memory (`memory_bytes` overrides the free figure); otherwise
  the per-slice cost measured on that compile gives the fewest equal calls that fit. Every process
  takes the smallest batch any of them can afford, so all run the same calls. At most
  `max_per_device` slices per device and call (0: no cap); by default no cap on accelerators and
  `CPU_SLICES_PER_CALL` on CPU devices, where small calls are faster per slice.
  """
  apply_fn = _jitted(apply_fn)
  n_dev = mesh.devices.size
  if max_per_device is None:
    max_per_device = CPU_SLICES_PER_CALL if mesh.devices.flat[0].platform == "cpu" else 0
  data_sharding = sharding.data_sharding(mesh)
  budget = MEMORY_FRACTION * (memory_bytes if memory_bytes is not None else _free_memory_per_device(mesh))

  def compile_for(batch):
    spec = jax.ShapeDtypeStruct((batch, *slice_hw, 1), np.float32, sharding=data_sharding)
    return apply_fn.lower(spec).compile()

  per_dev = max(-(-n_slices // n_dev), 1)        # slices each device needs in all
  if max_per_device:
    per_dev = min(per_dev, max_per_device)
  first = per_dev * n_dev
  compiled = compile_for(first)
  need = _call_bytes(compiled)
  if need is not None and need > budget and per_dev > 1:
    # Temporaries grow with the batch; the parameters (in the arguments) do not, so this linear
    # per-slice figure over-estimates slightly and errs on the safe side.
    fit = max(int(budget // (need / per_dev)), 1)
    calls = -(-per_dev // fit)
    per_dev = -(-per_dev // calls)               # equal calls: the least padding for that many
  batch = per_dev * n_dev
  if jax.process_count() > 1:
    batch = int(np.min(multihost_utils.process_allgather(np.asarray(batch, np.int64))))
  if batch != first:
    compiled = compile_for(batch)
  logging.info("predict: %d slices of %s in %d call(s) of %d (XLA's figure %.2f GiB per device for "
               "%d slices; budget %.2f GiB)", n_slices, slice_hw, -(-n_slices // batch), batch,
               (need or 0) / 2**30, first, budget / 2**30)
  return apply_fn, batch


def _batched(call, slices: np.ndarray, batch_size: int, mesh, channel: bool) -> np.ndarray:
  """`call` over `slices` [S, ...] in fixed-shape batches of `batch_size` (the last one padded with
  zeros), each sharded over the mesh's devices (taken from `slices` by the sharding's index, so the
  split is the same for one process as for many); with `channel` a trailing channel axis is added to
  the input and dropped from the output."""
  n = slices.shape[0]
  data_sharding = sharding.data_sharding(mesh)
  out = []
  for start in range(0, n, batch_size):
    chunk = slices[start:start + batch_size]
    pad = batch_size - chunk.shape[0]
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
    chunk = np.ascontiguousarray(chunk[..., None] if channel else chunk)
    x = jax.make_array_from_callback(chunk.shape, data_sharding, lambda index, c=chunk: c[index])
    y = _to_host(call(x))[:batch_size - pad]
    out.append(y[..., 0] if channel else y)
  return np.concatenate(out)


def super_resolve(apply_fn, slices: np.ndarray, batch_size: int, mesh) -> np.ndarray:
  """[S, H, W] -> [S, sH, sW] through `apply_fn` ([B, H, W, 1] -> [B, sH, sW, 1]) with fixed-shape
  batches (the last one padded).

  Every process passes the same `slices` and gets the whole result; each device computes only its
  rows of each batch.
  """
  return _batched(apply_fn, slices, batch_size, mesh, channel=True)


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
  `apply_fn` a `Generator` (as `evaluate.load_generator` returns) or the same callable.
  """
  t0 = time.perf_counter()
  slices = np.ascontiguousarray(np.moveaxis(np.asarray(data, np.float32), axis, 0))
  _, unit = volumes.robust_normalise(slices, name)
  floor = np.float32(min(0.0, float(slices.min())))
  apply, variables = _split(apply_fn)
  if not batch_size:
    _, batch_size = plan_batches(apply_fn, slices.shape[1:], slices.shape[0], mesh)
  t1 = time.perf_counter()
  call = functools.partial(_upsample_batch, apply, variables, unit=np.float32(unit), floor=floor,
                           scale=scale)
  out = _batched(call, slices, batch_size, mesh, channel=False)
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
  from mrsr_jax.evaluate import load_generator   # restoring a generator is shared with eval
  check_output(output_path, protected=tuple(p for p in (input_path, reference) if p), overwrite=overwrite)
  mesh = mesh or sharding.make_mesh()
  batch = config.predict.batch_size
  if not isinstance(batch, int) or isinstance(batch, bool) or batch < 0:
    raise ValueError(f"predict.batch_size: must be 0 (as few generator calls as memory allows) or a "
                     f"positive multiple of the {mesh.devices.size} devices, got {batch!r}")
  if batch:
    sharding.check_batch_size(batch, mesh)
  s = config.scale
  data, _, header = load_input(input_path, frame=frame)
  affine = np.asarray(header.get_best_affine(), np.float64)
  axis = volumes.slice_axis(affine, header) if slice_axis is None else slice_axis
  if axis not in (0, 1, 2):
    raise ValueError(f"slice axis must be 0, 1 or 2, got {axis}")
  in_plane = tuple(a for a in range(3) if a != axis)
  out_shape = tuple(n * s if a in in_plane else n for a, n in enumerate(data.shape))
  ref = None
  if reference:
    ref, _, _ = load_input(reference, frame=frame)
    if ref.shape != out_shape:
      raise ValueError(f"{reference}: reference shape {ref.shape} differs from the output's {out_shape}")

  apply_fn, info = load_generator(config, workdir, mesh)
  logging.info("%s: %s, slicing along axis %d (%d slices), %d× in-plane", input_path, data.shape,
               axis, data.shape[axis], s)
  sr = upsample_volume(apply_fn, data, axis, s, batch, mesh, name=input_path)
  bad = int(np.count_nonzero(~np.isfinite(sr)))
  if bad:
    raise ValueError(f"{info['workdir']}: the generator (step {info['step']}) gave {bad} NaN/Inf voxels "
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
