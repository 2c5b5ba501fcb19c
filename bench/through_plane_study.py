"""Through-plane super-resolution measured on real anatomy (issue 25, item 3).

  nice -n 10 python bench/through_plane_study.py --out=docs/through_plane --workdir=runs/through_plane_study
  nice -n 10 python bench/through_plane_study.py --arch=vdsr --rows=r4 --out=docs/through_plane_vdsr \
      --workdir=runs/through_plane_vdsr        # the comparison network (VDSR over the spline)

From each of the six bundled real IXI T1 volumes (data_prep/sample_data/ixi_t1_2mm/, 2 mm isotropic,
P-S-R voxel order) it simulates a thick-slice axial acquisition along S (voxel axis 1) with the
slice-profile operator of mrsr_jax/through_plane/profile.py, super-resolves it with the self-supervised
method exactly as `run.py --through_plane` does (through_plane.train / apply: trained on the simulated
volume's own axial slices, both sagittal and coronal reformats, averaged), and scores it against the
original 2 mm volume, next to cubic B-spline interpolation along the slice axis (scipy.ndimage
map_coordinates, order 3, mirror boundary: computed here independently of the network's own spline).

Rows (thickness t, spacing s, in mm; Gaussian profile of FWHM t unless stated):
  r4        s = t = 8       ratio 4
  r4_wrong  the r4 volume, trained assuming t = 4 mm (half the true thickness): profile mismatch
  r4_gap    s = 8, t = 4    ratio 4 with a 4 mm gap between slices
  r3        s = t = 6       ratio 3
  r2        s = t = 4       ratio 2
Scores (mrsr_jax.metrics.volume_metrics, fastMRI's convention): the volume rows the output covers,
data range the original's maximum, PSNR over the volume, SSIM the mean over its sagittal slices (the
planes that contain the slice direction). Each (subject, row) result is kept in
<workdir>/results.json as it finishes, so an interrupted study resumes where it stopped.

Writes <out>.json (every number and the run's conditions), <out>_table.md and, beside the project's
other figures, <dir of out>/images/<name of out>_fig.png (a sagittal reformat, radiological display:
input, spline, ours, truth and the error maps).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from mrsr_jax.configs import through_plane as tp_config  # noqa: E402
from mrsr_jax import compile_cache, metrics, sharding  # noqa: E402
from mrsr_jax.data import volumes  # noqa: E402
from mrsr_jax.through_plane import apply as tp_apply  # noqa: E402
from mrsr_jax.through_plane import model as tp_model  # noqa: E402
from mrsr_jax.through_plane import profile  # noqa: E402
from mrsr_jax.through_plane import train as tp_train  # noqa: E402

SAMPLE = os.path.join(ROOT, "data_prep", "sample_data", "ixi_t1_2mm")
PIXEL_MM = 2.0
AXIS = 1            # S: thick axial slices
# row: (true thickness mm, spacing mm, thickness the model is told, mm)
# In the order they run: the ratio-4 rows (the goal) first, so a cut-short study has them.
ROWS = {
    "r4": (8.0, 8.0, 8.0),
    "r4_wrong": (8.0, 8.0, 4.0),
    "r4_gap": (4.0, 8.0, 4.0),
    "r3": (6.0, 6.0, 6.0),
    "r2": (4.0, 4.0, 4.0),
}


def simulate(truth: np.ndarray, thickness_mm: float, spacing_mm: float) -> tuple[np.ndarray, int]:
  """(thick volume, rows of the truth the x f output covers) along AXIS, first slice centred at f/2."""
  g = profile.Geometry(thickness_mm / PIXEL_MM, spacing_mm / PIXEL_MM)
  matrix, rows = g.training_matrix(truth.shape[AXIS])
  thick = np.moveaxis(np.tensordot(matrix.astype(np.float64), np.moveaxis(truth, AXIS, 0), axes=(1, 0)),
                      0, AXIS)
  return thick.astype(np.float32), rows


def export(path: str, row: str, out_dir: str) -> tuple[str, str]:
  """Writes `row`'s simulated thick volume of `path` as a NIfTI whose affine places each thick slice at
  its centre (the first at truth row f/2 - 1/2), and the truth rows the output covers: the input and
  --reference of `run.py --through_plane` on real anatomy. Returns their paths."""
  t_true, s, _ = ROWS[row]
  truth, affine, _ = volumes.load_nifti(path)
  thick, rows = simulate(truth, t_true, s)
  f = profile.Geometry(t_true / PIXEL_MM, s / PIXEL_MM).factor
  m = np.eye(4)
  m[AXIS, AXIS] = s / PIXEL_MM
  m[AXIS, 3] = f / 2 - 0.5
  subj = os.path.basename(path).split("-")[0]
  os.makedirs(out_dir, exist_ok=True)
  thick_path = os.path.join(out_dir, f"{subj}_{row}_thick.nii.gz")
  truth_path = os.path.join(out_dir, f"{subj}_{row}_truth.nii.gz")
  nib.save(nib.Nifti1Image(thick, affine @ m), thick_path)
  nib.save(nib.Nifti1Image(np.take(truth, np.arange(rows), axis=AXIS), affine), truth_path)
  return thick_path, truth_path


def spline(thick: np.ndarray, factor: int) -> np.ndarray:
  """Cubic B-spline interpolation along AXIS at the output rows' positions (scipy, independent)."""
  m = thick.shape[AXIS]
  pos = tp_model.output_positions(m, factor)
  grid = np.meshgrid(*[np.arange(n, dtype=np.float64) if a != AXIS else pos
                       for a, n in enumerate(thick.shape)], indexing="ij")
  return ndimage.map_coordinates(thick.astype(np.float64), grid, order=3, mode="mirror").astype(np.float32)


def score(pred: np.ndarray, truth: np.ndarray) -> dict:
  sag = lambda v: np.moveaxis(v, 2, 0)          # [R, P, S]: sagittal slices
  m = metrics.volume_metrics(sag(pred), sag(truth))
  return {"psnr": m["psnr"], "ssim": m["ssim"]}


def run_one(path: str, row: str, tp, workdir: str, mesh) -> tuple[dict, dict]:
  t_true, s, t_told = ROWS[row]
  truth, affine, header = volumes.load_nifti(path)
  thick, rows = simulate(truth, t_true, s)
  acq = tp_apply.Acquisition(axis=AXIS, spacing=s, thickness=t_told, in_plane=PIXEL_MM,
                             profile=tp.profile, thickness_source="study")
  g = acq.geometry
  _, unit = volumes.robust_normalise(thick)
  norm = thick / np.float32(unit)
  t0 = time.perf_counter()
  trainer = tp_train.Trainer(tp, g, np.moveaxis(norm, AXIS, 0), seed=0)
  state, _ = tp_train.train(trainer, workdir, mesh, log_every=100, checkpoint_every=int(tp.num_steps))
  t1 = time.perf_counter()
  sr, extra = tp_apply.upsample_volume(trainer.model, tp_train.variables_of(state), norm, acq, mesh)
  t2 = time.perf_counter()
  sr = np.maximum(sr * unit, 0.0)
  base = spline(thick, g.factor)
  ref = truth[:, :rows]
  assert sr.shape == ref.shape == base.shape, (sr.shape, ref.shape, base.shape)
  ours, spl = score(sr, ref), score(base, ref)
  one = score(np.maximum(extra["orientations"][0] * unit, 0.0), ref)
  result = {"ours": ours, "spline": spl, "ours_one_orientation": one,
            "gain_psnr": ours["psnr"] - spl["psnr"], "gain_ssim": ours["ssim"] - spl["ssim"],
            "train_s": t1 - t0, "apply_s": t2 - t1, "factor": g.factor, "rows": rows,
            "thick_shape": list(thick.shape)}
  return result, {"thick": thick, "spline": base, "ours": sr, "truth": ref, "factor": g.factor}


def figure(vols: dict, affine: np.ndarray, path: str, title: str) -> None:
  from mrsr_jax import figures
  k = vols["truth"].shape[2] // 2 + 5          # a sagittal plane a little off the midline
  f = vols["factor"]
  peak = float(np.percentile(vols["truth"], 99.5))
  rows = vols["truth"].shape[1]
  sl = lambda v: v[:, :rows, k] / peak
  # The thick input on the output grid, each slice repeated over the f rows it stands for.
  thick = np.repeat(vols["thick"], f, axis=AXIS)
  orient = "".join(nib.aff2axcodes(affine)[a] for a in (0, 1))     # rows P, columns S
  fig = figures.comparison_figure(
      {"thick input": sl(thick), "cubic spline": sl(vols["spline"]), "ours": sl(vols["ours"]),
       "truth (2 mm)": sl(vols["truth"])}, reference=sl(vols["truth"]), orientation=orient, title=title)
  fig.savefig(path, dpi=110)
  import matplotlib.pyplot as plt
  plt.close(fig)


def table(results: dict, subjects: list[str]) -> str:
  lines = ["| row | subject | spline PSNR | ours PSNR | gain dB | spline SSIM | ours SSIM | gain SSIM | "
           "one orientation PSNR | train s |", "|---|---|---|---|---|---|---|---|---|---|"]
  for row in ROWS:
    gains = []
    for subj in subjects:
      r = results.get(f"{subj}/{row}")
      if r is None:
        continue
      gains.append(r["gain_psnr"])
      lines.append(f"| {row} | {subj} | {r['spline']['psnr']:.2f} | {r['ours']['psnr']:.2f} | "
                   f"{r['gain_psnr']:+.2f} | {r['spline']['ssim']:.4f} | {r['ours']['ssim']:.4f} | "
                   f"{r['gain_ssim']:+.4f} | {r['ours_one_orientation']['psnr']:.2f} | {r['train_s']:.0f} |")
    if gains:
      lines.append(f"| **{row}** | mean of {len(gains)} | | | **{np.mean(gains):+.2f}** "
                   f"(min {min(gains):+.2f}) | | | | | |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default="docs/through_plane")
  p.add_argument("--workdir", default="runs/through_plane_study")
  p.add_argument("--steps", type=int, default=None, help="training steps per run (config default)")
  p.add_argument("--arch", default="srgan", choices=sorted(tp_config.MODELS),
                 help="the one-axis generator (configs/through_plane.py:<arch>)")
  p.add_argument("--rows", default=",".join(ROWS))
  p.add_argument("--subjects", type=int, default=6)
  p.add_argument("--figure_subject", type=int, default=0)
  p.add_argument("--export_dir", default="", help="only write each subject's thick volume and truth "
                 "of --rows as NIfTI here (input and --reference for run.py --through_plane)")
  args = p.parse_args(argv)
  if args.export_dir:
    for path in sorted(glob.glob(os.path.join(SAMPLE, "*.nii.gz")))[:args.subjects]:
      for row in args.rows.split(","):
        print(*export(path, row, args.export_dir))
    return 0
  t_start = time.time()
  config = tp_config.get_config(args.arch)
  tp = config.through_plane
  if args.steps:
    tp.num_steps = args.steps
  paths = sorted(glob.glob(os.path.join(SAMPLE, "*.nii.gz")))[:args.subjects]
  subjects = [os.path.basename(x).split("-")[0] for x in paths]
  rows = args.rows.split(",")
  os.makedirs(args.workdir, exist_ok=True)
  store = os.path.join(args.workdir, "results.json")
  results = json.load(open(store)) if os.path.exists(store) else {}
  fig_path = os.path.join(os.path.dirname(os.path.abspath(args.out)), "images",
                          os.path.basename(args.out) + "_fig.png")
  mesh = sharding.make_mesh()
  loads = [os.getloadavg()]
  with compile_cache.enabled(args.workdir):
    for row in rows:
      for i, (path, subj) in enumerate(zip(paths, subjects)):
        key = f"{subj}/{row}"
        want_fig = i == args.figure_subject and row == "r4"
        if key in results and not (want_fig and not os.path.exists(fig_path)):
          continue
        r, vols = run_one(path, row, tp, os.path.join(args.workdir, subj, row), mesh)
        r["loadavg"] = os.getloadavg()
        loads.append(r["loadavg"])
        results[key] = r
        print(f"{key}: spline {r['spline']['psnr']:.2f} dB / {r['spline']['ssim']:.4f}, ours "
              f"{r['ours']['psnr']:.2f} dB / {r['ours']['ssim']:.4f} ({r['gain_psnr']:+.2f} dB), "
              f"train {r['train_s']:.0f} s, load {r['loadavg'][0]:.2f}", flush=True)
        with open(store + ".tmp", "w") as f:
          json.dump(results, f, indent=1)
        os.replace(store + ".tmp", store)
        if want_fig:
          os.makedirs(os.path.dirname(fig_path), exist_ok=True)
          figure(vols, nib.load(path).affine, fig_path,
                 f"{subj}, 8 mm axial slices (ratio 4): sagittal reformat")
  model = tp_model.build(tp.arch, 4, dict(tp.model))
  n_params = sum(x.size for x in jax.tree.leaves(tp_train._model_init(model)(jax.random.key(0))))
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
  summary = {
      "command": "python bench/through_plane_study.py " + " ".join(sys.argv[1:] if argv is None else argv),
      "commit": commit, "wall_s_this_invocation": time.time() - t_start, "loadavg_samples": loads,
      "cpu_s_this_invocation": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
      "devices": jax.device_count(), "platform": jax.devices()[0].platform,
      "steps": int(tp.num_steps), "batch_size": int(tp.batch_size), "crop_size": int(tp.crop_size),
      "arch": tp.arch, "model": dict(tp.model), "params_at_x4": int(n_params),
      "rows": {k: dict(zip(("thickness_mm", "spacing_mm", "told_thickness_mm"), v)) for k, v in ROWS.items()},
      "results": results,
  }
  with open(args.out + ".json", "w") as f:
    json.dump(summary, f, indent=1)
  with open(args.out + "_table.md", "w") as f:
    f.write(table(results, subjects))
  print(table(results, subjects))
  return 0


if __name__ == "__main__":
  sys.exit(main())
