"""The results tables of the paper (Tables 1–2) and its figures (Fig. 2 panels, Fig. 7 curves) for a run.

  python run.py --config=configs/sr_ixi_x4.py --workdir=runs/ixi_x4 --mode=eval

On the test split: each HR slice is degraded to LR exactly as in training (data/degrade.py), super-
resolved by every row's generator (bicubic, this run, the ablation runs of `config.eval.ablation_workdirs`)
and compared with HR. Metrics follow fastMRI's convention: data_range is the HR volume's maximum, PSNR
and NMSE over the whole volume, SSIM the mean over its slices, then averaged over volumes; per-slice
means are reported too. A first pass over the split finds each volume's maximum (the data range must be
known before SSIM is computed) and the slices shown in the figures.

Writes to `<workdir>/eval/`: results.md, results.csv, results.json, fig2_*.png, loss_curves_*.png.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from mrsr_jax import metrics as metrics_lib
from mrsr_jax import sharding
from mrsr_jax.data import degrade, pipeline, records
from mrsr_jax.train import checkpoints, loop
from mrsr_jax.train.stage_sr import SRStage, generator, make_lr, restore_state

METRICS = ("psnr", "ssim", "nmse")


# -- restoring generators ---------------------------------------------------------------------------
def load_generator(config: ml_collections.ConfigDict, workdir: str, mesh) -> tuple[Any, dict]:
  """(apply function lr -> sr, info) of the SR generator trained in `workdir` (its latest checkpoint)."""
  stage = SRStage(config, workdir)
  directory = os.path.join(stage.dir, "checkpoints")
  if checkpoints.latest_step(directory) is None:
    raise FileNotFoundError(f"{workdir}: no trained SR checkpoint in {directory}; train first "
                            f"(python run.py --config=... --workdir={workdir})")
  meta = checkpoints.read_meta(directory)
  trained = json.loads(meta["config"]) if isinstance(meta.get("config"), str) else {}
  if trained and trained.get("scale") != config.scale:
    raise ValueError(f"{workdir}: the checkpoint was trained for scale {trained.get('scale')}, "
                     f"not {config.scale}")
  state, step = restore_state(stage, mesh)
  variables = {"params": state.params["gen"], "batch_stats": state.batch_stats["gen"]}
  gen = generator(config)

  def apply(lr):
    return gen.apply(variables, lr.astype(jnp.dtype(config.dtype)), train=False).astype(jnp.float32)

  return apply, {"workdir": os.path.abspath(workdir), "step": int(step)}


def workdir_config(workdir: str, fallback: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config a run was trained with (its config.json), else `fallback`."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return fallback
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def code_version() -> str:
  try:
    return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                          cwd=os.path.dirname(__file__), timeout=10).stdout.strip() or "unknown"
  except (OSError, subprocess.SubprocessError):
    return "unknown"


# -- the evaluation ---------------------------------------------------------------------------------
def _test_batches(config, split, mesh):
  ds = pipeline.create_dataset(loop.dataset_dir(config), split,
                               global_batch_size=config.eval.batch_size, crop_size=config.eval.size,
                               seed=config.seed, train=False,
                               process_index=jax.process_index(), process_count=jax.process_count())
  return ds.as_numpy_iterator()


def _volume_ids(batch, labels) -> list[str]:
  subj = [s.decode() if isinstance(s, bytes) else str(s) for s in batch["subject"]]
  return [f"{labels[int(l)]}/{s}" for l, s in zip(batch["label"], subj)]


def evaluate(config: ml_collections.ConfigDict, workdir: str, mesh=None) -> dict[str, Any]:
  mesh = mesh or sharding.make_mesh()
  sharding.check_batch_size(config.eval.batch_size, mesh)
  if config.eval.size % config.scale:
    raise ValueError(f"config.eval.size {config.eval.size} is not divisible by scale {config.scale}")
  info = records.read_info(loop.dataset_dir(config))
  labels = info["labels"]
  split = config.eval.split

  rows: dict[str, Any] = {"bicubic": lambda lr: degrade.upsample_bicubic(lr, config.scale)}
  row_info: dict[str, dict] = {"bicubic": {}}
  rows["ours"], row_info["ours"] = load_generator(config, workdir, mesh)
  for name, other in config.eval.ablation_workdirs:
    cfg = workdir_config(other, config)
    rows[name], row_info[name] = load_generator(cfg, other, mesh)

  # Pass 1: volume maxima (the data range) and the figure slices (middle slice of the first volumes).
  vol_max: dict[str, float] = {}
  vol_slices: dict[str, list[int]] = {}
  for batch in _test_batches(config, split, mesh):
    for vid, img, idx, m in zip(_volume_ids(batch, labels), batch["hr"], batch["slice_index"],
                                batch["mask"]):
      if m:
        vol_max[vid] = max(vol_max.get(vid, 0.0), float(img.max()))
        vol_slices.setdefault(vid, []).append(int(idx))
  if not vol_max:
    raise ValueError(f"{loop.dataset_dir(config)}: the '{split}' split has no slices")
  figure_keys = {(vid, sorted(s)[len(s) // 2]) for vid, s in
                 sorted(vol_slices.items())[:config.eval.num_figure_slices]}

  @jax.jit
  def eval_step(hr, data_range):
    lr = make_lr(config, hr)
    out = {}
    for name, fn in rows.items():
      pred = fn(lr)
      err = jnp.sum(jnp.square(pred - hr), axis=(1, 2, 3))
      out[name] = {
          "pred": pred,
          "sse": err,
          "tsq": jnp.sum(jnp.square(hr), axis=(1, 2, 3)),
          "psnr": metrics_lib.psnr(pred, hr, data_range),
          "ssim": metrics_lib.ssim(pred, hr, data_range),
          "nmse": metrics_lib.nmse(pred, hr),
      }
    return out

  accs = {name: {} for name in rows}     # row -> contrast label -> MetricsAccumulator
  figures: dict[tuple[str, int], dict[str, np.ndarray]] = {}
  n_total = sum(len(v) for v in vol_slices.values())
  seen, t0 = 0, time.time()
  for batch in _test_batches(config, split, mesh):
    vids = _volume_ids(batch, labels)
    dr = np.asarray([vol_max.get(v, 1.0) for v in vids], np.float32)
    out = jax.device_get(eval_step(*sharding.to_global((batch["hr"], dr), mesh)))
    mask = np.asarray(batch["mask"], bool)
    for name, res in out.items():
      for label in set(labels[int(l)] for l in batch["label"][mask]):
        sel = mask & (np.asarray([labels[int(l)] for l in batch["label"]]) == label)
        acc = accs[name].setdefault(label, metrics_lib.MetricsAccumulator())
        acc.update(vids, {k: res[k] for k in ("sse", "tsq", *METRICS)}, mask=sel)
    for i, (vid, idx) in enumerate(zip(vids, batch["slice_index"])):
      if mask[i] and (vid, int(idx)) in figure_keys:
        figures[(vid, int(idx))] = {"hr": batch["hr"][i, ..., 0],
                                    **{n: out[n]["pred"][i, ..., 0] for n in rows}}
    seen += int(mask.sum())
    rate = seen / max(time.time() - t0, 1e-9)
    logging.info("eval: %d/%d slices, %.1f slices/s, ETA %.0f s", seen, n_total, rate,
                 (n_total - seen) / max(rate, 1e-9))

  table = {name: {label: summarise(acc, vol_max, config.eval.size) for label, acc in per.items()}
           for name, per in accs.items()}
  report = {
      "dataset": config.dataset, "split": split, "scale": config.scale,
      "degradation": config.degradation, "eval_size": config.eval.size,
      "rows": row_info, "results": table, "code_version": code_version(),
      "config": json.loads(config.to_json_best_effort()),
  }
  if jax.process_index() == 0:
    out_dir = os.path.join(workdir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    write_tables(report, out_dir)
    from mrsr_jax import figures as figures_lib
    for (vid, idx), panel in sorted(figures.items()):
      figures_lib.comparison_panel(panel, list(rows), os.path.join(
          out_dir, f"fig2_{vid.replace('/', '_')}_slice{idx:03d}.png"), title=f"{vid} slice {idx}, {config.scale}×")
    for stage in ("vit", "ae", "sr"):
      path = os.path.join(workdir, stage, "metrics.jsonl")
      if os.path.exists(path):
        figures_lib.loss_curves(path, os.path.join(out_dir, f"loss_curves_{stage}.png"), title=stage)
    logging.info("evaluation report written to %s", out_dir)
  return report


def summarise(acc: metrics_lib.MetricsAccumulator, vol_max: dict[str, float], size: int
              ) -> dict[str, float]:
  """fastMRI's volume-level numbers from the per-slice sums, plus per-slice means."""
  per_volume = acc.per_volume()
  psnr, nmse, ssim = [], [], []
  for vid, m in per_volume.items():
    mse = m["sse"] / (size * size)             # mean over slices of per-slice SSE / pixels
    psnr.append(10 * np.log10(vol_max[vid] ** 2 / mse) if mse > 0 else np.inf)
    nmse.append(m["sse"] / m["tsq"])
    ssim.append(m["ssim"])
  res = acc.result()
  return {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim)), "nmse": float(np.mean(nmse)),
          "psnr_slice": res["psnr_slice"], "ssim_slice": res["ssim_slice"],
          "nmse_slice": res["nmse_slice"], "num_volumes": acc.num_volumes,
          "num_slices": acc.num_slices}


def write_tables(report: dict[str, Any], out_dir: str) -> None:
  """results.md (laid out like Tables 1–2), results.csv and results.json, each written atomically."""
  table = report["results"]
  contrasts = sorted({c for per in table.values() for c in per})
  s = report["scale"]
  md = [f"# {report['dataset']} — {s}× super-resolution ({report['degradation']} LR), "
        f"split '{report['split']}'", "",
        "Cells: PSNR / SSIM / NMSE, per volume (data range = HR volume maximum) then averaged over "
        "volumes (fastMRI's convention). Per-slice means in results.csv.", "",
        "| | " + " | ".join(f"{c} {s}×" for c in contrasts) + " |",
        "|---|" + "---|" * len(contrasts)]
  for name, per in table.items():
    cells = [f"{per[c]['psnr']:.2f} / {per[c]['ssim']:.4f} / {per[c]['nmse']:.4f}" if c in per else "–"
             for c in contrasts]
    md.append(f"| {name} | " + " | ".join(cells) + " |")
  md += ["", "Rows: " + "; ".join(f"{n}: {i.get('workdir', 'bicubic upsampling of the LR input')}"
                                  + (f" (step {i['step']})" if 'step' in i else "")
                                  for n, i in report["rows"].items()),
         f"Code version: {report['code_version']}", ""]
  _atomic_write(os.path.join(out_dir, "results.md"), "\n".join(md))

  fields = ["row", "contrast", "scale", "psnr", "ssim", "nmse", "psnr_slice", "ssim_slice",
            "nmse_slice", "num_volumes", "num_slices"]
  lines = [",".join(fields)]
  for name, per in table.items():
    for c, v in per.items():
      lines.append(",".join(str(x) for x in [name, c, s] + [v[f] for f in fields[3:]]))
  _atomic_write(os.path.join(out_dir, "results.csv"), "\n".join(lines) + "\n")
  _atomic_write(os.path.join(out_dir, "results.json"), json.dumps(report, indent=2, default=str))


def _atomic_write(path: str, text: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)
