"""The results tables of the paper (Tables 1–2) and its figures (Fig. 2 panels, Fig. 7 curves) for a run.

  python run.py --config=configs/sr_ixi_x4.py --workdir=runs/ixi_x4 --mode=eval

On the test split: each HR slice is degraded to LR exactly as in training (data/degrade.py), super-
resolved by every row's generator (bicubic, this run, the ablation runs of `config.eval.ablation_workdirs`)
and compared with HR. Metrics follow fastMRI's convention: data_range is the HR volume's maximum, PSNR
and NMSE over the whole volume, SSIM the mean over its slices, then averaged over volumes; per-slice
means are reported too. A first pass over the split finds each volume's maximum (the data range must be
known before SSIM is computed) and the slices shown in the figures.

Besides that paper-protocol table (LR made by the config's own degradation, the matched case), every
row is scored on LR made by each of `config.eval.lr_models` (degrade.METHODS: bicubic, Gaussian
anti-aliasing + cubic spline, k-space truncation), with bicubic upsampling of the same LR as the
baseline: a model that only inverts its own training blur shows up there. The matched column is the
main table itself (same numbers, computed once).

Multi-process (jax.distributed): each process reads its share of the slices; the per-slice numbers and
volume ids are gathered to every process and volume maxima merged, so the report is the one a single
process writes, and only process 0 writes files.

Writes to `<workdir>/eval/`: results.md, results.csv, results.json, fig2_*.png (in display orientation
from each volume's `orientation` where the data carry it, cropped to the volume's extent, with a zoomed
detail; see figures.py), loss_curves_*.png.
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
from jax.experimental import multihost_utils

from mrsr_jax import errors
from mrsr_jax import baselines, config_schema
from mrsr_jax import metrics as metrics_lib
from mrsr_jax import sharding
from mrsr_jax.data import degrade, pipeline, records
from mrsr_jax.inference import load_generator
from mrsr_jax.train import loop
from mrsr_jax.train.stage_sr import make_lr

METRICS = ("psnr", "ssim", "nmse")


# -- the rows' generators (restored by inference.load_generator) ------------------------------------
def workdir_config(workdir: str, fallback: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config a run was trained with (its config.json, with the fields added since it was written
  set to what their absence meant), else `fallback`."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return fallback
  with open(path) as f:
    return config_schema.complete(ml_collections.ConfigDict(json.load(f)))


def code_version() -> str:
  try:
    return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                          cwd=os.path.dirname(__file__), timeout=10).stdout.strip() or "unknown"
  except (OSError, subprocess.SubprocessError):
    return "unknown"


# -- the evaluation ---------------------------------------------------------------------------------
def lr_models(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The LR models the report scores on: `config.eval.lr_models`, with the config's own degradation
  (the matched case of the paper-protocol table) added first when it is not listed."""
  models = config.eval.lr_models or (config.degradation,)
  models = (models,) if isinstance(models, str) else tuple(models)
  unknown = [m for m in models if m not in degrade.METHODS]
  if unknown:
    raise errors.UserError(f"config.eval.lr_models: unknown LR model(s) {unknown}; expected some of "
                     f"{degrade.METHODS}")
  if len(set(models)) != len(models):
    raise errors.UserError(f"config.eval.lr_models: {models} lists an LR model twice")
  if config.degradation not in degrade.METHODS:
    raise errors.UserError(f"config.degradation: unknown degradation {config.degradation!r}; expected one "
                     f"of {degrade.METHODS}")
  if config.degradation not in models:
    models = (config.degradation,) + models
  return models


def _test_batches(config, split):
  ds = pipeline.create_dataset(loop.dataset_dir(config), split,
                               global_batch_size=config.eval.batch_size, crop_size=config.eval.size,
                               seed=config.seed, train=False,
                               process_index=jax.process_index(), process_count=jax.process_count())
  return ds.as_numpy_iterator()


def _volume_ids(batch, labels) -> list[str]:
  subj = [s.decode() if isinstance(s, bytes) else str(s) for s in batch["subject"]]
  return [f"{labels[int(l)]}/{s}" for l, s in zip(batch["label"], subj)]


def _allgather_json(obj: Any) -> list[Any]:
  """`obj` (JSON-able) of every process, in process order; a collective: every process must call it.

  Host-side metadata (volume ids are strings) cannot travel as jax.Arrays, so it goes as UTF-8 bytes,
  padded to the longest process's length. JSON keeps Python floats exact (repr round-trips)."""
  if jax.process_count() == 1:
    return [obj]
  data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
  lengths = multihost_utils.process_allgather(np.asarray(len(data), np.int64))
  buf = np.zeros(int(lengths.max()), np.uint8)
  buf[:len(data)] = data
  bufs = multihost_utils.process_allgather(buf)
  return [json.loads(bytes(b[:int(n)]).decode()) for b, n in zip(bufs, lengths)]


def _orientations(batch) -> list[str]:
  """Each row's `orientation` (the slice's two axis codes, figures.display_orientation), where the
  data carry it; "" (shown as stored) where they do not."""
  if "orientation" not in batch:
    return [""] * len(batch["hr"])
  return [o.decode() if isinstance(o, bytes) else str(o) for o in batch["orientation"]]


def _scan_split(config, split, labels) -> tuple[dict[str, float], dict[str, list[int]], dict[str, str],
                                                dict[str, dict[str, Any]]]:
  """Pass 1 over the whole split, across processes: each volume's maximum (the data range: SSIM needs
  it before any slice is scored), its slice indices and its contrast label, and what its figures need:
  {"orientation": codes, "box": [row0, row1, col0, col1]} (the non-zero extent of all its slices,
  i.e. the volume without the evaluation frame's zero padding).

  Each process reads only its share of the slices, so the per-process findings are merged: a volume
  whose slices are spread over processes gets the maximum of their maxima and the union of their
  extents. A malformed orientation, or two in one volume, stops here, before anything is computed."""
  from mrsr_jax import figures
  vol_max: dict[str, float] = {}
  vol_slices: dict[str, list[int]] = {}
  vol_label: dict[str, str] = {}
  vol_view: dict[str, dict[str, Any]] = {}
  for batch in _test_batches(config, split):
    for vid, img, idx, lab, m, orient in zip(_volume_ids(batch, labels), batch["hr"],
                                             batch["slice_index"], batch["label"], batch["mask"],
                                             _orientations(batch)):
      if m:
        vol_max[vid] = max(vol_max.get(vid, 0.0), float(img.max()))
        vol_slices.setdefault(vid, []).append(int(idx))
        vol_label[vid] = labels[int(lab)]
        _merge_view(vol_view, vid, {"orientation": orient, "box": list(figures.content_box(img[..., 0]))})
  merged_max: dict[str, float] = {}
  merged_slices: dict[str, list[int]] = {}
  merged_view: dict[str, dict[str, Any]] = {}
  for p_max, p_slices, p_label, p_view in _allgather_json([vol_max, vol_slices, vol_label, vol_view]):
    for vid, v in p_max.items():
      merged_max[vid] = max(merged_max.get(vid, 0.0), float(v))
      merged_slices.setdefault(vid, []).extend(p_slices[vid])
      _merge_view(merged_view, vid, p_view[vid])
    vol_label.update(p_label)
  return merged_max, {v: sorted(s) for v, s in merged_slices.items()}, vol_label, merged_view


def _merge_view(views: dict[str, dict[str, Any]], vid: str, view: dict[str, Any]) -> None:
  """Adds one slice's (or one process's) orientation and non-zero box to volume `vid`'s."""
  from mrsr_jax import figures
  try:
    orient = figures.check_orientation(view["orientation"])
  except ValueError as e:
    raise errors.UserError(f"volume {vid}: {e}") from None
  box = [int(x) for x in view["box"]]
  if vid not in views:
    views[vid] = {"orientation": orient, "box": box}
    return
  have = views[vid]
  if have["orientation"] != orient:
    raise errors.UserError(f"volume {vid}: its slices disagree on the orientation "
                     f"({have['orientation']!r} and {orient!r})")
  b = have["box"]
  have["box"] = [min(b[0], box[0]), max(b[1], box[1]), min(b[2], box[2]), max(b[3], box[3])]


def make_eval_step(config, rows: dict[str, Any], methods: tuple[str, ...]):
  """The jitted step (hr [B, H, W, 1], data_range [B]) -> per-slice numbers of every row on the LR of
  every LR model: {"tsq": [B], row: {"sse"|"psnr"|"ssim"|"nmse": [K, B], "pred": [B, H, W, 1]}}, K =
  len(methods); `pred` is the output on the matched LR (the config's degradation), for the figures.

  The matched LR is `make_lr(config, ·)`, exactly the training degradation (Hamming window included),
  so its numbers are the paper-protocol table's. The K LR batches go through one `lax.map`: one
  compiled copy of each generator whatever K, and the memory of one LR model's batch at a time."""
  matched = methods.index(config.degradation)

  def lr_of(method, hr):
    if method == config.degradation:
      return make_lr(config, hr)
    return degrade.downsample(hr, config.scale, method=method)

  @jax.jit
  def eval_step(hr, data_range):
    lrs = jnp.stack([lr_of(m, hr) for m in methods])

    def score(lr):
      out = {}
      for name, fn in rows.items():
        pred = fn(lr)
        out[name] = {
            "pred": pred,
            "sse": jnp.sum(jnp.square(pred - hr), axis=(1, 2, 3)),
            "psnr": metrics_lib.psnr(pred, hr, data_range),
            "ssim": metrics_lib.ssim(pred, hr, data_range),
            "nmse": metrics_lib.nmse(pred, hr),
        }
      return out

    per_lr = jax.lax.map(score, lrs)
    out = {"tsq": jnp.sum(jnp.square(hr), axis=(1, 2, 3))}
    for name, res in per_lr.items():
      out[name] = {k: v for k, v in res.items() if k != "pred"}
      out[name]["pred"] = res["pred"][matched]
    return out

  return eval_step


def evaluate(config: ml_collections.ConfigDict, workdir: str, mesh=None) -> dict[str, Any]:
  """Scores every row on the test split and (process 0) writes the report; returns it on every process.

  Multi-process: every process reads its share of the slices and feeds its local devices; per-slice
  numbers are gathered to every process with the volume id of each row (gathered the same way, so
  they stay paired), volume maxima are merged over processes, and the report equals one process's."""
  mesh = mesh or sharding.make_mesh()
  sharding.check_batch_size(config.eval.batch_size, mesh)
  if config.eval.size % config.scale:
    raise errors.UserError(f"config.eval.size {config.eval.size} is not divisible by scale {config.scale}")
  methods = lr_models(config)
  labels = records.read_info(loop.dataset_dir(config))["labels"]
  split = config.eval.split
  rows, row_info = _rows(config, workdir, mesh)
  scan = _scan_split(config, split, labels)
  vol_max, _, _, vol_view = scan
  if not vol_max:
    raise errors.UserError(f"{loop.dataset_dir(config)}: the '{split}' split has no slices")
  accs, panels = _score_split(config, split, labels, rows, methods, scan, mesh)
  report = _report(config, split, methods, row_info, accs, vol_max)
  if jax.process_index() == 0:
    _write_report(config, workdir, report, panels, list(rows), vol_view)
  return report


def _rows(config, workdir: str, mesh) -> tuple[dict[str, Any], dict[str, dict]]:
  """The report's rows, in table order: {name: generator lr -> sr} and {name: where it comes from}.

  Bicubic upsampling, this run, the ablation runs of `config.eval.ablation_workdirs` and the
  comparison networks the run trained beside ours (config.baselines; mrsr_jax/baselines.py)."""
  rows: dict[str, Any] = {"bicubic": lambda lr: degrade.upsample_bicubic(lr, config.scale)}
  row_info: dict[str, dict] = {"bicubic": {}}
  rows["ours"], row_info["ours"] = load_generator(config, workdir, mesh)
  for name, other in config.eval.ablation_workdirs:
    cfg = workdir_config(other, config)
    rows[name], row_info[name] = load_generator(cfg, other, mesh)
  for arch in config.baselines:
    rows[arch], row_info[arch] = load_generator(baselines.config_for(config, arch),
                                                baselines.workdir_for(workdir, arch), mesh)
  return rows, row_info


def _score_split(config, split, labels, rows, methods, scan, mesh
                 ) -> tuple[dict[str, dict[str, dict[str, metrics_lib.MetricsAccumulator]]],
                            dict[tuple[str, int], dict[str, np.ndarray]]]:
  """Pass 2: every row on every LR model over the whole split, across processes.

  Returns the per-slice sums, {LR model: {row: {contrast label: MetricsAccumulator}}}, and the
  figures' slices (the middle slice of the first `config.eval.num_figure_slices` volumes),
  {(volume id, slice index): {"hr" | row: [H, W]}}, on every process."""
  vol_max, vol_slices, vol_label, _ = scan
  # Integer ids travel with the slices through the gather; every process builds the same list.
  vid_list = sorted(vol_max)
  vid_index = {v: i for i, v in enumerate(vid_list)}
  figure_keys = {(vid, s[len(s) // 2]) for vid, s in
                 sorted(vol_slices.items())[:config.eval.num_figure_slices]}

  eval_step = make_eval_step(config, rows, methods)
  accs = {m: {name: {} for name in rows} for m in methods}
  panels: dict[tuple[str, int], dict[str, np.ndarray]] = {}
  n_total = sum(len(v) for v in vol_slices.values())
  seen, t0 = 0, time.time()
  for batch in _test_batches(config, split):
    mask = np.asarray(batch["mask"], bool)
    vids = _volume_ids(batch, labels)
    dr = np.asarray([vol_max.get(v, 1.0) for v in vids], np.float32)
    ids = np.asarray([vid_index[v] if m else -1 for v, m in zip(vids, mask)], np.int32)
    hr, dr, ids_g, idx_g = sharding.to_global(
        (batch["hr"], dr, ids, np.asarray(batch["slice_index"], np.int32)), mesh)
    out = eval_step(hr, dr)
    # Rows of the gathered arrays are the global batch's, in the same order for every array.
    preds = {name: out[name].pop("pred") for name in rows}
    g_ids, g_idx, out = multihost_utils.process_allgather((ids_g, idx_g, out), tiled=True)
    g_mask = g_ids >= 0
    g_vids = [vid_list[i] if i >= 0 else "" for i in g_ids]
    _accumulate(accs, out, g_vids, g_mask, vol_label)
    wanted = [i for i, (v, s) in enumerate(zip(g_vids, g_idx)) if g_mask[i] and (v, int(s)) in figure_keys]
    if wanted:   # the same decision on every process (gathered ids): the gather is a collective
      g_hr, g_preds = multihost_utils.process_allgather((hr, preds), tiled=True)
      for i in wanted:
        panels[(g_vids[i], int(g_idx[i]))] = {"hr": g_hr[i, ..., 0],
                                             **{n: g_preds[n][i, ..., 0] for n in rows}}
    seen += int(g_mask.sum())
    rate = seen / max(time.time() - t0, 1e-9)
    logging.info("eval: %d/%d slices, %.1f slices/s, ETA %.0f s", seen, n_total, rate,
                 (n_total - seen) / max(rate, 1e-9))
  return accs, panels


def _accumulate(accs, out, g_vids: list[str], g_mask: np.ndarray, vol_label: dict[str, str]) -> None:
  """Adds one gathered batch of `eval_step` numbers to `accs` (LR model -> row -> contrast label ->
  MetricsAccumulator), each slice under its volume's contrast."""
  g_labels = np.asarray([vol_label.get(v, "") for v in g_vids])
  for label in sorted(set(g_labels[g_mask])):
    sel = g_mask & (g_labels == label)
    for k, per_method in enumerate(accs.values()):
      for name, per_label in per_method.items():
        acc = per_label.setdefault(label, metrics_lib.MetricsAccumulator())
        acc.update(g_vids, {"tsq": out["tsq"], **{key: out[name][key][k] for key in
                                                  ("sse", *METRICS)}}, mask=sel)


def _report(config, split: str, methods: tuple[str, ...], row_info: dict[str, dict], accs,
            vol_max: dict[str, float]) -> dict[str, Any]:
  """The report (results.json) from the per-slice sums: every row's numbers on every LR model
  (`robustness`; each with its gain over bicubic on the same LR), the matched one as `results`."""
  robustness = {
      method: {name: {label: summarise(acc, vol_max, config.eval.size) for label, acc in sorted(per.items())}
               for name, per in per_method.items()}
      for method, per_method in accs.items()}
  for per_method in robustness.values():
    for name, per in per_method.items():
      if name != "bicubic":
        for label, cell in per.items():
          base = per_method["bicubic"][label]
          cell["psnr_gain"] = cell["psnr"] - base["psnr"]
          cell["ssim_gain"] = cell["ssim"] - base["ssim"]
  return {
      "dataset": config.dataset, "split": split, "scale": config.scale,
      "degradation": config.degradation, "eval_size": config.eval.size,
      "rows": row_info, "results": robustness[config.degradation], "lr_models": list(methods),
      "robustness": robustness, "code_version": code_version(),
      "config": json.loads(config.to_json_best_effort()),
  }


def _write_report(config, workdir: str, report: dict[str, Any], panels, rows: list[str],
                  vol_view: dict[str, dict[str, Any]]) -> None:
  """`<workdir>/eval/`: the tables, a Fig. 2 panel per figure slice, and each stage's loss curves."""
  from mrsr_jax import figures
  out_dir = os.path.join(workdir, "eval")
  os.makedirs(out_dir, exist_ok=True)
  write_tables(report, out_dir)
  for (vid, idx), panel in sorted(panels.items()):
    figures.comparison_panel(
        panel, rows, os.path.join(out_dir, f"fig2_{vid.replace('/', '_')}_slice{idx:03d}.png"),
        title=f"{vid} slice {idx}, {config.scale}×", orientation=vol_view[vid]["orientation"],
        box=tuple(vol_view[vid]["box"]))
  for stage in ("vit", "ae", "sr"):
    path = os.path.join(workdir, stage, "metrics.jsonl")
    if os.path.exists(path):
      figures.loss_curves(path, os.path.join(out_dir, f"loss_curves_{stage}.png"), title=stage)
  logging.info("evaluation report written to %s", out_dir)


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
  """results.md (laid out like Tables 1–2, then the robustness table), results.csv and results.json,
  each written atomically."""
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
                                  for n, i in report["rows"].items()), ""]
  md += _robustness_md(report)
  md += [f"Code version: {report['code_version']}", ""]
  _atomic_write(os.path.join(out_dir, "results.md"), "\n".join(md))

  # One line per (LR model, row, contrast); the paper-protocol table is lr_model == degradation.
  fields = ["row", "contrast", "scale", "lr_model", "psnr", "ssim", "nmse", "psnr_gain", "ssim_gain",
            "psnr_slice", "ssim_slice", "nmse_slice", "num_volumes", "num_slices"]
  lines = [",".join(fields)]
  robustness = report.get("robustness") or {report["degradation"]: table}
  for method in [report["degradation"]] + [m for m in robustness if m != report["degradation"]]:
    for name, per in robustness[method].items():
      for c, v in per.items():
        lines.append(",".join(str(x) for x in [name, c, s, method] + [v.get(f, "") for f in fields[4:]]))
  _atomic_write(os.path.join(out_dir, "results.csv"), "\n".join(lines) + "\n")
  _atomic_write(os.path.join(out_dir, "results.json"), json.dumps(report, indent=2, default=str))


def _robustness_md(report: dict[str, Any]) -> list[str]:
  """One column group per LR model: each row's PSNR / SSIM, and its gain over bicubic on that LR."""
  robustness = report.get("robustness") or {}
  methods = list(robustness)
  if not methods:
    return []
  s = report["scale"]
  matched = report["degradation"]
  hamming = report.get("config", {}).get("hamming", False)
  names = {m: m + (" + Hamming" if m == matched == "kspace" and hamming else "")
           + (" (matched)" if m == matched else "") for m in methods}
  rows = list(robustness[matched])
  contrasts = sorted({c for per in robustness[matched].values() for c in per})
  md = ["## Robustness to the LR model", "",
        f"The same HR test slices made {s}× smaller by each LR model, then super-resolved by every row "
        "(bicubic: bicubic upsampling of that same LR). Cells: PSNR / SSIM (per volume, data range = "
        "HR volume maximum, averaged over volumes), and the gain over bicubic on the same LR "
        "(ΔPSNR dB / ΔSSIM). The matched column is the table above.", "",
        "| contrast | row | " + " | ".join(f"{names[m]} PSNR / SSIM | gain" for m in methods) + " |",
        "|---|---|" + "---|---|" * len(methods)]
  for c in contrasts:
    for name in rows:
      cells = []
      for m in methods:
        v = robustness[m].get(name, {}).get(c)
        if v is None:
          cells += ["–", "–"]
          continue
        cells.append(f"{v['psnr']:.2f} / {v['ssim']:.4f}")
        cells.append(f"{v['psnr_gain']:+.2f} / {v['ssim_gain']:+.4f}" if "psnr_gain" in v else "")
      md.append(f"| {c} | {name} | " + " | ".join(cells) + " |")
  return md + [""]


def _atomic_write(path: str, text: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)
