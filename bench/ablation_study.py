"""The seeded ablation study of the SR loss (issue 15): which of Eq. 9's terms help, at a stated scale.

One command regenerates it (data, feature extractors, every row and seed, the table):

  python bench/ablation_study.py --out=docs/ablation --workdir=runs/ablation

What it does, in order:
  1. Builds the bundled real-MR sample (`api.prepare_sample_data`, the demo's data: IXI012/013/033/034
     + the package volumes train, IXI015 val, IXI014 test) unless `--data_dir` already holds it.
  2. Trains the demo's ViT and autoencoder stages ONCE (`configs/demo.py`, `api.train(stages=("vit",
     "ae"))`) into `<workdir>/features`; every SR run of every row reads these same frozen extractors,
     so rows differ only in the loss weights and the seed.
  3. For each row (a setting of `config.sr.loss`, `ROWS` below) and each seed, trains the SR stage with
     `SRStage.update` on the tf.data pipeline, exactly as `run.py` does (the demo's optimiser, schedule
     and random LR models; the seed sets the SR init, the data order and the per-step LR draws), at the
     reduced scale of the flags (generator blocks, steps). No checkpoints: a run is minutes.
  4. Scores the generator on both held-out subjects (val IXI015, test IXI014, read from the val / test
     shards at the evaluation size, as `--mode=eval` reads them), 2x, for every LR model of
     `config.eval.lr_models`, per volume in the report's convention (`metrics.volume_metrics`: data
     range the HR volume's maximum, PSNR / NMSE over the volume, SSIM the mean over its slices).
     Bicubic upsampling of the same LR is the "bicubic" row (no training, no seed).
  5. Writes `<out>/ablation.json` after every finished run (a rerun skips the runs already there, so a
     crash loses at most the run in progress) and `<out>/ablation.md`, the table: mean +- std over
     seeds per subject and over (seed, subject) overall, the gain over bicubic, and paired tests of the
     default against L1-only and against each ablation row.

Nothing is chosen on the test subject: `--report_only` prints which row is best on val (IXI015); the
test numbers are reported, not used.

  python bench/ablation_study.py --out=docs/ablation --report_only     # rebuild the table from the json
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import sys
import time

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from bench import seeded_study  # noqa: E402

METRICS = seeded_study.METRICS
SUBJECTS = {"val": "IXI015", "test": "IXI014"}   # the sample's held-out subjects (data_prep/sample.py)

# The demo's loss (configs/demo.py): L1 + Eq. 9 at 1/100 of the paper's lambdas, adversarial 1e-4,
# features of the HR slice. Read from the config at run time; spelled here only for the ablation rows.
PAPER_EQ9 = dict(pixel_weight=0.0, adv_weight=1.0, lambda_vit=1.0, lambda_str=1.0, lambda_tex=0.9)


def rows(default_loss: dict, paper_loss: dict) -> dict[str, tuple[str, dict]]:
  """{row: (description, config.sr.loss overrides)} in table order; "bicubic" is not trained.

  `default_loss` is the demo's `sr.loss`, `paper_loss` the paper configs' (configs/base.py: L1 + Eq. 9
  at the paper's lambdas, adversarial 1e-3, features of bicubic(LR)).
  """
  from mrsr_jax.losses import TABLE_ABLATIONS
  out = {
      "eq9_lr": ("Eq. 9 exactly (no pixel term, L_adv weight 1, λ 1/1/0.9, features of bicubic(LR))",
                 dict(PAPER_EQ9, feature_target="lr")),
      "eq9_hr": ("Eq. 9 with features of the HR slice", dict(PAPER_EQ9, feature_target="hr")),
      "default": ("the demo's loss: L1 + Eq. 9 at λ/100, adversarial 1e-4, HR features", dict(default_loss)),
      "l1": ("L1 only (SRResNet: same generator, pixel term only)",
             dict(default_loss, adv_weight=0.0, lambda_vit=0.0, lambda_str=0.0, lambda_tex=0.0)),
  }
  # Tables 1-2's rows on top of the default's weights: a kept term keeps the default's weight, a dropped
  # one gets 0 ("full" is the default itself).
  for name, lambdas in TABLE_ABLATIONS.items():
    if name == "full":
      continue
    loss = dict(default_loss)
    for key, paper_value in lambdas.items():
      if paper_value == 0.0:
        loss[key] = 0.0
    kept = "+".join(k.replace("lambda_", "") for k, v in lambdas.items() if v) or "none"
    out[f"abl_{name}"] = (f"Tables 1-2 row '{name}': default with only L_{kept} of the feature terms",
                          loss)
  # The adversarial term alone on top of L1 (the ablation rows all keep it; this separates it from the
  # feature terms).
  out["adv"] = ("L1 + the default's adversarial term, no feature terms",
                dict(default_loss, lambda_vit=0.0, lambda_str=0.0, lambda_tex=0.0))
  # At the default's lambda/100 the feature terms are small next to L1; the same ablations at the weights
  # the paper configs train with show what each term does where it weighs.
  out["paper_cfg"] = ("the paper configs' loss: L1 + Eq. 9 at λ 1/1/0.9, adversarial 1e-3, features of "
                      "bicubic(LR)", dict(paper_loss))
  # ... and with the features of the HR slice (the default's target), which tells a term that hurts
  # from a target that pulls the output back to bicubic.
  for target, suffix in (("lr", ""), ("hr", "_hr")):
    if suffix:
      out[f"paper_cfg{suffix}"] = ("the paper configs' loss with features of the HR slice",
                                   dict(paper_loss, feature_target=target))
    for name, lambdas in TABLE_ABLATIONS.items():
      if name == "full":
        continue
      kept = "+".join(k.replace("lambda_", "") for k, v in lambdas.items() if v)
      out[f"paper_cfg{suffix}_{name}"] = (
          f"Tables 1-2 row '{name}' on the paper configs' loss{' (HR features)' if suffix else ''} "
          f"(only L_{kept})",
          dict(paper_loss, feature_target=target,
               **{k: (0.0 if v == 0.0 else paper_loss[k]) for k, v in lambdas.items()}))
  return out


# -- data, runs and bookkeeping: bench/seeded_study.py (shared with bench/compare_methods.py) --------
def held_out_volumes(dataset_dir: str, eval_size: int) -> dict[str, np.ndarray]:
  """{subject: HR volume} of the val and test splits; they must be `SUBJECTS` (the default split)."""
  subjects, vols = seeded_study.held_out_volumes(dataset_dir, eval_size, tuple(SUBJECTS))
  if subjects != SUBJECTS:
    raise SystemExit(f"{dataset_dir}: held-out subjects {subjects}, expected {SUBJECTS}; build the "
                     f"sample with the default split seed")
  return vols


score = seeded_study.score
train_and_score = seeded_study.train_and_score
write_json_atomic = seeded_study.write_json_atomic
git_commit = seeded_study.git_commit


# -- the table --------------------------------------------------------------------------------------
_ms = seeded_study.mean_std
_paired_tests = seeded_study.paired_tests


def report(results: dict) -> str:
  meta = results["meta"]
  methods = meta["lr_models"]
  subjects = list(SUBJECTS.values())
  row_names = ["bicubic"] + list(meta["rows"])
  runs = results["runs"]

  def values(row, subject, method, metric):
    """Per-seed values (bicubic: one value, deterministic)."""
    if row == "bicubic":
      return [results["bicubic"][subject][method][metric]]
    return [runs[row][s][subject][method][metric] for s in sorted(runs.get(row, {}), key=int)]

  def overall(row, method, metric):
    return [v for subject in subjects for v in values(row, subject, method, metric)]

  def gains(row, method, metric, subject=None):
    subs = [subject] if subject else subjects
    return [v - results["bicubic"][s][method][metric] for s in subs for v in values(row, s, method, metric)]

  lines = ["| row | n seeds | " + " | ".join(f"{m} LR: PSNR / SSIM / NMSE" for m in methods)
           + " | " + " | ".join(f"gain on {m} LR (dB)" for m in methods) + " |",
           "|---" * (2 + 2 * len(methods)) + "|"]
  for row in row_names:
    if row != "bicubic" and not runs.get(row):
      continue
    n = 1 if row == "bicubic" else len(runs[row])
    cells = [f"{_ms(overall(row, m, 'psnr'), '.2f')} / {_ms(overall(row, m, 'ssim'), '.4f')} / "
             f"{_ms(overall(row, m, 'nmse'), '.4f')}" for m in methods]
    gain_cells = ["—" if row == "bicubic" else _ms(gains(row, m, "psnr"), "+.2f") for m in methods]
    lines.append(f"| {row} | {n} | " + " | ".join(cells) + " | " + " | ".join(gain_cells) + " |")
  out = ["### Overall (both held-out subjects; mean ± std over seeds × subjects)", "", *lines, ""]

  for split, subject in SUBJECTS.items():
    lines = ["| row | " + " | ".join(f"{m} LR: PSNR / SSIM / NMSE (gain dB)" for m in methods) + " |",
             "|---" * (1 + len(methods)) + "|"]
    for row in row_names:
      if row != "bicubic" and not runs.get(row):
        continue
      cells = []
      for m in methods:
        cell = (f"{_ms(values(row, subject, m, 'psnr'), '.2f')} / {_ms(values(row, subject, m, 'ssim'), '.4f')}"
                f" / {_ms(values(row, subject, m, 'nmse'), '.4f')}")
        if row != "bicubic":
          cell += f" ({_ms(gains(row, m, 'psnr', subject), '+.2f')})"
        cells.append(cell)
      lines.append(f"| {row} | " + " | ".join(cells) + " |")
    out += [f"### {subject} ({split}; mean ± std over seeds)", "", *lines, ""]

  # Paired comparisons: the same seed (SR init, data order, LR draws) and subject pair the two rows.
  if runs.get("default"):
    lines = ["| default minus | " + " | ".join(f"{m} LR PSNR" for m in methods) + " |",
             "|---" * (1 + len(methods)) + "|"]
    for row in row_names:
      if row in ("bicubic", "default") or not runs.get(row):
        continue
      seeds = sorted(set(runs[row]) & set(runs["default"]), key=int)
      cells = []
      for m in methods:
        a = np.array([runs["default"][s][subj][m]["psnr"] for s in seeds for subj in subjects])
        b = np.array([runs[row][s][subj][m]["psnr"] for s in seeds for subj in subjects])
        cells.append(_paired_tests(a, b))
      lines.append(f"| {row} | " + " | ".join(cells) + " |")
    out += ["### Paired comparisons of the default with each row (PSNR, pairs = seed × subject)", "",
            *lines, ""]

  # The choice, on val only.
  if any(runs.get(r) for r in meta["rows"]):
    val = SUBJECTS["val"]
    ranked = sorted((np.mean([np.mean(gains(r, m, "psnr", val)) for m in methods]), r)
                    for r in meta["rows"] if runs.get(r))
    out += [f"Best on val ({val}) by the mean PSNR gain over the LR models: "
            + ", ".join(f"{r} {g:+.2f}" for g, r in reversed(ranked)), ""]
  return "\n".join(out)


def write_report(out_dir: str, results: dict) -> str:
  meta = results["meta"]
  text = "\n".join([
      "# Ablation study of the SR loss (generated by bench/ablation_study.py)", "",
      f"Command: `{meta['command']}`  ", f"Code: {meta['commit']}; scale {meta['scale']}x; "
      f"{meta['scale_note']}  ",
      f"Machine: {meta['machine']}; started {meta['started']}; "
      f"wall time so far {meta.get('wall_s', 0) / 60:.1f} min (loadavg during runs: "
      f"{meta.get('load_note', 'n/a')})", "",
      "Rows:", *[f"- `{r}`: {d} — `{json.dumps(l, sort_keys=True)}`" for r, (d, l) in meta["rows"].items()],
      "", report(results)])
  with open(os.path.join(out_dir, "ablation.md"), "w") as f:
    f.write(text + "\n")
  return text


# -- main -------------------------------------------------------------------------------------------
def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="docs/ablation", help="where ablation.json / ablation.md go")
  parser.add_argument("--workdir", default="runs/ablation", help="data and the ViT / AE checkpoints")
  parser.add_argument("--data_dir", default="", help="sample shards (default: <workdir>/data)")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--rows", default="", help="comma-separated subset of the rows (default: all)")
  parser.add_argument("--steps", type=int, default=150, help="SR steps per run (demo: 2000)")
  parser.add_argument("--warmup", type=int, default=30, help="SR warm-up steps (demo: 100)")
  parser.add_argument("--batch", type=int, default=8, help="SR batch size (demo: 16)")
  parser.add_argument("--blocks", type=int, default=4, help="generator residual blocks (demo: 6)")
  parser.add_argument("--scale", type=int, default=2)
  parser.add_argument("--report_only", action="store_true")
  args = parser.parse_args(argv)

  os.makedirs(args.out, exist_ok=True)
  json_path = os.path.join(args.out, "ablation.json")
  if args.report_only:
    with open(json_path) as f:
      print(write_report(args.out, json.load(f)))
    return 0

  from mrsr_jax import api, evaluate
  config = api.load_config("demo", data_dir=args.data_dir or os.path.join(args.workdir, "data"))
  config.scale = args.scale
  config.sr.num_steps = args.steps
  config.sr.model.num_blocks = args.blocks
  config.sr.warmup_steps = args.warmup
  config.sr.batch_size = args.batch
  default_loss = {k: config.sr.loss[k] for k in config.sr.loss}
  paper = api.load_config("base", data_dir=config.data_dir).sr.loss
  table_rows = rows(default_loss, {k: paper[k] for k in paper})
  if args.rows:
    unknown = set(args.rows.split(",")) - set(table_rows)
    if unknown:
      parser.error(f"--rows: unknown row(s) {sorted(unknown)}; known: {', '.join(table_rows)}")
    table_rows = {r: v for r, v in table_rows.items() if r in args.rows.split(",")}
  seeds = [int(s) for s in args.seeds.split(",")]
  methods = list(evaluate.lr_models(config))
  scale_note = (f"generator {args.blocks} blocks × {config.sr.model.features}, {args.steps} SR steps of "
                f"batch {config.sr.batch_size} on {config.crop_size}² crops, lr {config.sr.learning_rate:g} "
                f"{config.sr.lr_schedule} with {config.sr.warmup_steps} warm-up; the demo's LR mix; "
                f"ViT / AE: the demo's (trained once, shared by every run)")
  # What makes two runs comparable: a json written with other settings is not resumed into.
  fingerprint = hashlib.sha256(json.dumps([args.scale, args.steps, args.blocks, args.warmup, args.batch, default_loss,
                                           config.sr.lr_mix.to_dict()], sort_keys=True).encode()).hexdigest()[:12]
  results = None
  if os.path.exists(json_path):
    with open(json_path) as f:
      results = json.load(f)
    if results["meta"].get("fingerprint") != fingerprint:
      raise SystemExit(f"{json_path} holds a study with other settings (fingerprint "
                       f"{results['meta'].get('fingerprint')} != {fingerprint}); use another --out")
  if results is None:
    results = {"meta": {}, "runs": {}, "bicubic": None}
  meta = results["meta"]
  meta.setdefault("started", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
  meta.setdefault("wall_s", 0.0)
  meta.update(fingerprint=fingerprint, commit=git_commit(), scale=args.scale, lr_models=methods,
              scale_note=scale_note, command="python bench/ablation_study.py " + " ".join(argv or sys.argv[1:]),
              machine=f"{platform.machine()} {os.cpu_count()} CPU cores, {platform.system()}",
              rows={**meta.get("rows", {}), **{r: [d, l] for r, (d, l) in table_rows.items()}})
  t_start, wall0 = time.time(), meta["wall_s"]

  def save():
    meta["wall_s"] = round(wall0 + time.time() - t_start, 1)
    loads = [run_info["load"][0] for row in results.get("info", {}).values() for run_info in row.values()]
    if loads:
      meta["load_note"] = f"1-min load min {min(loads):.1f} / mean {np.mean(loads):.1f} / max {max(loads):.1f}"
    write_json_atomic(json_path, results)
    write_report(args.out, results)

  dataset_dir = api.prepare_sample_data(config.data_dir)
  features_workdir = os.path.join(args.workdir, "features")
  t0 = time.time()
  api.train(config, features_workdir, stages=("vit", "ae"))   # resumed (skipped) when already trained
  meta.setdefault("features_s", round(time.time() - t0, 1))
  print(f"feature extractors ready in {features_workdir} ({time.time() - t0:.0f}s)", flush=True)

  volumes = held_out_volumes(dataset_dir, config.eval.size)
  if results["bicubic"] is None:
    results["bicubic"] = score(None, volumes, args.scale, methods)
    save()
  cache: dict = {}
  # Seed-major: every row gets seed 0 before any row gets seed 1, so a study cut short (a crash, a
  # deadline) still has every row, with fewer seeds.
  for seed in seeds:
    for row, (desc, loss) in table_rows.items():
      if str(seed) in results["runs"].get(row, {}):
        continue
      cfg = config.copy_and_resolve_references()
      cfg.sr.loss.update(loss)
      scores, info = train_and_score(cfg, seed, volumes, methods, dataset_dir, features_workdir, cache)
      results["runs"].setdefault(row, {})[str(seed)] = scores
      results.setdefault("info", {}).setdefault(row, {})[str(seed)] = info
      save()
      g = {m: np.mean([scores[s][m]["psnr"] - results["bicubic"][s][m]["psnr"] for s in scores])
           for m in methods}
      print(f"{row} seed {seed}: {info['train_s']:.0f}s train ({info['step_ms']:.0f} ms/step), load {info['load'][0]:.1f} | gains "
            + "  ".join(f"{m} {v:+.2f}" for m, v in g.items()), flush=True)
  save()
  print(write_report(args.out, results))
  return 0


if __name__ == "__main__":
  sys.exit(main())
