"""What the seeded studies share (bench/ablation_study.py: rows of the SR loss; bench/compare_methods.py:
rows of SR networks): the held-out volumes, one SR-stage run trained and scored, the resumable json,
and the mean ± std and paired-test cells of their tables.

A run trains the SR stage with `SRStage.update` on the project's input pipeline, exactly as `run.py`
does (optimiser, schedule, random LR models; the seed sets the init, the data order and the per-step LR
draws), without checkpoints, and scores the generator per held-out volume in the report's convention
(`metrics.volume_metrics`: data range the HR volume's maximum, PSNR / NMSE over the volume, SSIM the
mean over its slices) for each LR model.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = ("psnr", "ssim", "nmse")


# -- data and the held-out volumes ------------------------------------------------------------------
def held_out_volumes(dataset_dir: str, eval_size: int, splits=("val", "test")
                     ) -> tuple[dict[str, str], dict[str, np.ndarray]]:
  """({split: subject}, {subject: HR volume [S, H, W, 1]}) of the held-out splits, slices in order, as
  `--mode=eval` reads them. Each held-out split of the sample is one whole subject; a split that is
  empty or holds several subjects is an error (a table row per subject would silently mix them)."""
  from mrsr_jax.data import pipeline
  subjects: dict[str, str] = {}
  vols: dict[str, dict[int, np.ndarray]] = {}
  for split in splits:
    ds = pipeline.create_dataset(dataset_dir, split, global_batch_size=32, crop_size=eval_size, seed=0,
                                 train=False, process_index=0, process_count=1)
    found = set()
    for batch in ds.as_numpy_iterator():
      for img, subj, idx, m in zip(batch["hr"], batch["subject"], batch["slice_index"], batch["mask"]):
        if m:
          subj = subj.decode() if isinstance(subj, bytes) else str(subj)
          found.add(subj)
          vols.setdefault(subj, {})[int(idx)] = np.asarray(img, np.float32)
    if len(found) != 1:
      raise SystemExit(f"{dataset_dir}: the {split} split holds {len(found)} subjects ({sorted(found)}); "
                       f"the seeded studies expect one whole held-out subject per split")
    subjects[split] = found.pop()
  return subjects, {s: np.stack([v[i] for i in sorted(v)]) for s, v in vols.items()}


# -- one run ----------------------------------------------------------------------------------------
def score(generate, volumes: dict[str, np.ndarray], scale: int, methods, batch: int = 32) -> dict:
  """{subject: {lr_model: {psnr, ssim, nmse}}} of `generate(lr) -> sr` (bicubic when None)."""
  import jax.numpy as jnp

  from mrsr_jax import metrics
  from mrsr_jax.data import degrade
  out = {}
  for subject, hr in volumes.items():
    out[subject] = {}
    for method in methods:
      preds = []
      for i in range(0, len(hr), batch):
        lr = degrade.downsample(jnp.asarray(hr[i:i + batch]), scale, method)
        sr = degrade.upsample_bicubic(lr, scale) if generate is None else generate(lr)
        preds.append(np.asarray(sr, np.float32))
      out[subject][method] = metrics.volume_metrics(np.concatenate(preds), hr)
  return out


def run_key(config) -> str:
  """What one compiled update serves: the network (arch and its fields), the loss and the scale."""
  return json.dumps([config.sr.arch, config.sr.model.to_dict(), config.sr.loss.to_dict(),
                     config.scale], sort_keys=True, default=str)


def train_and_score(config, seed: int, volumes, methods, dataset_dir: str, features_workdir: str,
                    cache: dict) -> tuple[dict, dict]:
  """Trains the SR stage of `config` from `seed` and scores it; returns (scores, info).

  `cache` keeps one compiled update and generator per `run_key`, shared by that row's seeds."""
  import jax
  import jax.numpy as jnp

  from mrsr_jax import sharding
  from mrsr_jax.data import pipeline
  from mrsr_jax.train.stage_sr import SRStage

  key = run_key(config)
  if key not in cache:
    stage = SRStage(config, "/nonexistent")
    stage.num_steps(pipeline.dataset_info(dataset_dir))

    @jax.jit
    def generate(params, stats, lr):
      return stage.gen.apply({"params": params, "batch_stats": stats}, lr, train=False)

    cache[key] = dict(stage=stage, update=jax.jit(stage.update, donate_argnums=(0,)), generate=generate,
                      frozen={})
  entry = cache[key]
  stage, update = entry["stage"], entry["update"]
  # The frozen extractors are an argument of the compiled update, not part of it: one compilation
  # serves every features workdir (the seeded studies' splits each have their own).
  if features_workdir not in entry["frozen"]:
    stage.cfg.features_workdir = features_workdir
    entry["frozen"][features_workdir] = stage.frozen(sharding.make_mesh()) if stage.which else {}
  frozen = entry["frozen"][features_workdir]
  num_steps = stage._total_steps
  state = stage.init(jax.random.key(seed))
  batches = pipeline.create_dataset(dataset_dir, "train", global_batch_size=config.sr.batch_size,
                                    crop_size=config.crop_size, seed=seed, train=True,
                                    process_index=0, process_count=1).as_numpy_iterator()
  t0, c0 = time.time(), time.process_time()
  t1 = t0
  first = None
  m = {}
  for step in range(1, num_steps + 1):
    batch = {"hr": jnp.asarray(next(batches)["hr"])}
    state, m = update(state, batch, jax.random.fold_in(jax.random.key(seed), step), frozen)
    if step == 1:
      first = float(m["g_pixel"]) if "g_pixel" in m else None
      jax.block_until_ready(state)
      t1 = time.time()   # after the first step: compilation (once per row) and the pipeline's start
  m = jax.device_get(m)   # waits for the last step
  train_s = time.time() - t0
  last = {k: float(v) for k, v in m.items()}
  if not all(np.isfinite(v) for v in last.values()):
    print(f"warning: seed {seed}: non-finite final metrics {last}", flush=True)
  params, stats = state.params["gen"], state.batch_stats["gen"]
  scores = score(lambda lr: entry["generate"](params, stats, lr), volumes, config.scale, methods)
  info = {"train_s": round(train_s, 1), "step_ms": round(1000 * (t0 + train_s - t1) / max(num_steps - 1, 1), 1),
          "score_s": round(time.time() - t0 - train_s, 1), "cpu_s": round(time.process_time() - c0, 1),
          "steps": num_steps, "first_pixel": first, "final_metrics": last,
          "load": [round(x, 2) for x in os.getloadavg()]}
  return scores, info


# -- bookkeeping ------------------------------------------------------------------------------------
def write_json_atomic(path: str, obj) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
  with os.fdopen(fd, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
  os.chmod(tmp, 0o644)   # mkstemp's 0600 would make a committed result unreadable to others
  os.replace(tmp, path)


def git_commit() -> str:
  try:
    return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                          cwd=ROOT, timeout=10).stdout.strip() or "unknown"
  except (OSError, subprocess.SubprocessError):
    return "unknown"


# -- table cells ------------------------------------------------------------------------------------
def mean_std(values, fmt: str) -> str:
  """'mean ± std' (sample std) of `values` in `fmt`; one value alone as it is."""
  values = np.asarray(values, np.float64)
  if len(values) == 1:
    return format(values[0], fmt)
  return f"{format(values.mean(), fmt)} ± {format(values.std(ddof=1), fmt.lstrip('+'))}"


def paired_tests(a: np.ndarray, b: np.ndarray) -> str:
  """Paired t-test and Wilcoxon signed-rank (two-sided) of a - b; scipy's."""
  from scipy import stats
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  if np.allclose(d, 0):
    return "identical"
  if len(d) < 2:
    return f"{d.mean():+.2f} dB (n=1, no test)"
  t = stats.ttest_rel(a, b)
  try:
    w = stats.wilcoxon(a, b)
    wp = f"{w.pvalue:.3f}"
  except ValueError:
    wp = "n/a"
  return f"{d.mean():+.2f} dB (t-test p={t.pvalue:.3f}, Wilcoxon p={wp}, n={len(d)})"
