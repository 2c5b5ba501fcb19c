"""Table 1 on real held-out MR: the paper's comparison networks and ours, trained and scored alike (issue 21).

One command (resumable: a rerun skips the runs already in `<out>/compare.json`):

  python bench/compare_methods.py --out=docs/compare --workdir=runs/compare

What it does, in order:
  1. Builds the bundled real-MR sample once per split seed (`--splits`, `python -m data_prep
     --dataset=sample --seed=K`): seed 0 holds out IXI015 (val) and IXI014 (test), seed 1 IXI033 and
     IXI012, so every conclusion rests on four real subjects the models never saw.
  2. Trains the demo's ViT and autoencoder once per split (`configs/demo.py`'s first two stages): the
     frozen extractors of the rows that use the paper's feature terms.
  3. For each seed, split, scale and method (seed-major: a study cut short has every row at seed 0
     first) trains the SR stage of the demo config with that method's network and loss — the same data,
     LR models (the demo's random mix), optimiser, schedule, batch, crops and number of steps for every
     row — and scores it per held-out volume on the three LR models of the report (bicubic, Gaussian +
     spline, k-space), 2x and 4x. Bicubic upsampling of the same LR is the "bicubic" row.
  4. Per method and scale: parameters, GFLOP per 256² output slice (bench/flops.py's count of the
     generator, convolutions included on every backend) and ms per slice on this host's first device
     (one slice per call, median of repeated calls, with the load average).
  5. Writes `<out>/compare.json` after every run and `<out>/compare.md`: a Table 1-style table per scale
     (PSNR / SSIM / NMSE, mean ± std over seeds × subjects, and over seeds per subject), the gain over
     bicubic, paired tests of each row against the best row of each column, and the costs.

The methods (`METHODS`): SRCNN, VDSR, EDSR, RDN at the reduced CPU sizes of their `PRESETS["reduced"]`
(`--size=paper` for the published ones), each with its paper's pixel loss (MSE or L1) and nothing else;
ours (`configs/demo.py`'s generator) with the demo's loss and with the paper configs' loss (L1 + Eq. 9
at λ 1/1/0.9, adversarial 1e-3, features of bicubic(LR): what `configs/sr_ixi_x4.py` trains). Nothing
is chosen on a test subject: `best on val` lines rank rows on the val subjects only.

  python bench/compare_methods.py --out=docs/compare --report_only     # rebuild the table from the json
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import time

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from bench import seeded_study  # noqa: E402

# The comparison rows: (description, arch or None for ours, loss). "pixel" rows train with their
# paper's pixel loss alone; "demo" / "paper" are ours with the demo's / the paper configs' loss.
METHODS = {
    "srcnn": ("SRCNN (Dong et al., TPAMI 2016): 9-1-5, 64/32, on bicubic-upsampled LR; MSE", "srcnn", "pixel"),
    "vdsr": ("VDSR (Kim et al., CVPR 2016): deep 3x3 stack, residual over bicubic; MSE", "vdsr", "pixel"),
    "edsr": ("EDSR (Lim et al., CVPRW 2017): residual blocks without BN, pixel-shuffle upsampler; L1", "edsr",
             "pixel"),
    "rdn": ("RDN (Zhang et al., CVPR 2018): residual dense blocks, global feature fusion; L1", "rdn", "pixel"),
    "ours": ("ours: the demo's generator (SRGAN blocks with BN, residual over bicubic), the demo's loss "
             "(L1 + Eq. 9 at λ/100, adversarial 1e-4, HR features)", None, "demo"),
    "ours_paper": ("ours with the paper configs' loss (L1 + Eq. 9 at λ 1/1/0.9, adversarial 1e-3, features "
                   "of bicubic(LR))", None, "paper"),
}
EVAL_SPLITS = ("val", "test")


def method_config(base_config, method: str, size: str, paper_loss: dict):
  """The study's config with `method`'s network and loss (everything else shared by all rows): a
  comparison network as a run's baseline is trained (`baselines.config_for`), ours with a loss."""
  import ml_collections

  from mrsr_jax import baselines, models
  _, arch, loss = METHODS[method]
  if arch is not None:
    return baselines.config_for(base_config, arch, size)
  cfg = base_config.copy_and_resolve_references()
  if loss == "paper":
    cfg.sr.loss.update(paper_loss)
  if size == "paper":
    cfg.sr.model = ml_collections.ConfigDict(models.preset("srgan", "paper"))
  return cfg


def costs(config, reps: int = 5) -> dict:
  """Parameters, GFLOP per 256² output slice and ms per slice on this host.

  FLOPs: bench/flops.py's count of the generator's jaxpr (convolutions included on every backend;
  XLA:GPU's cost analysis leaves cuDNN's out), the same figure on a CPU or a GPU."""
  import jax
  import jax.numpy as jnp

  from bench import flops
  from mrsr_jax.train.stage_sr import generator
  gen = generator(config)
  n = 256 // config.scale
  lr = jnp.zeros((1, n, n, 1), jnp.float32)
  variables = gen.init(jax.random.key(0), lr, train=False)
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
  fn = jax.jit(lambda v, x: gen.apply(v, x, train=False))
  gflop = flops.count_fn(fn, variables, lr).flops / 1e9
  compiled = fn.lower(variables, lr).compile()
  x = jax.random.uniform(jax.random.key(1), lr.shape)
  jax.block_until_ready(compiled(variables, x))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(variables, x))
    times.append(time.perf_counter() - t0)
  return {"params": params, "gflop_256": round(gflop, 3),
          "ms_per_slice": round(1000 * float(np.median(times)), 1), "load": round(os.getloadavg()[0], 2),
          "device": jax.devices()[0].platform}


# -- data -------------------------------------------------------------------------------------------
def sample_data(workdir: str, split_seed: int) -> str:
  """The sample's shards dealt by `split_seed` (built once; data_prep keeps a finished build)."""
  data_dir = os.path.join(workdir, f"data_s{split_seed}")
  dataset_dir = os.path.join(data_dir, "sample")
  if not os.path.isdir(dataset_dir):
    cmd = [sys.executable, "-m", "data_prep", "--dataset=sample", f"--data_dir={data_dir}",
           f"--seed={split_seed}", "--no_progress"]
    print("building the sample:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
  return data_dir


# -- the table --------------------------------------------------------------------------------------
def _values(results, split, scale, method, subject, lr_model, metric) -> list[float]:
  if method == "bicubic":
    return [results["bicubic"][split][scale][subject][lr_model][metric]]
  runs = results["runs"].get(split, {}).get(scale, {}).get(method, {})
  return [runs[s][subject][lr_model][metric] for s in sorted(runs, key=int)]


def _gains(results, split, scale, method, subject, lr_model) -> list[float]:
  b = results["bicubic"][split][scale][subject][lr_model]["psnr"]
  return [v - b for v in _values(results, split, scale, method, subject, lr_model, "psnr")]


def _pairs(results, scale, method) -> list[tuple[str, str, str]]:
  """(split, seed, subject) of every finished run of `method` at `scale` (bicubic: one per subject)."""
  out = []
  for split, subjects in results["subjects"].items():
    if method == "bicubic":
      out += [(split, "-", s) for s in subjects.values()]
      continue
    runs = results["runs"].get(split, {}).get(scale, {}).get(method, {})
    out += [(split, seed, s) for seed in sorted(runs, key=int) for s in subjects.values()]
  return out


def _value(results, scale, method, pair, lr_model, metric) -> float:
  split, seed, subject = pair
  if method == "bicubic":
    return results["bicubic"][split][scale][subject][lr_model][metric]
  return results["runs"][split][scale][method][seed][subject][lr_model][metric]


def report(results: dict) -> str:
  meta = results["meta"]
  lr_models = meta["lr_models"]
  ms, out = seeded_study.mean_std, []
  rows = ["bicubic"] + list(meta["methods"])
  for scale in meta["scales"]:
    scale = str(scale)
    done = [r for r in rows if _pairs(results, scale, r)]
    if done == ["bicubic"] or not done:
      continue
    out += [f"## {scale}×", ""]
    # Overall: every (split, seed, subject) of the row.
    head = ("| method | runs | " + " | ".join(f"{m} LR: PSNR / SSIM / NMSE" for m in lr_models) + " | "
            + " | ".join(f"gain on {m} (dB)" for m in lr_models) + " |")
    lines = [head, "|---" * (2 + 2 * len(lr_models)) + "|"]
    for r in done:
      pairs = _pairs(results, scale, r)
      cells = [f"{ms([_value(results, scale, r, p, m, 'psnr') for p in pairs], '.2f')} / "
               f"{ms([_value(results, scale, r, p, m, 'ssim') for p in pairs], '.4f')} / "
               f"{ms([_value(results, scale, r, p, m, 'nmse') for p in pairs], '.4f')}" for m in lr_models]
      gains = ["—" if r == "bicubic" else
               ms([_value(results, scale, r, p, m, "psnr") - _value(results, scale, "bicubic", (p[0], "-", p[2]), m,
                                                                   "psnr") for p in pairs], "+.2f")
               for m in lr_models]
      lines.append(f"| {r} | {len(pairs)} | " + " | ".join(cells) + " | " + " | ".join(gains) + " |")
    nsub = sum(len(s) for s in results["subjects"].values())
    out += [f"### Overall: {nsub} held-out subjects × seeds (mean ± std over runs × subjects)", "", *lines, ""]

    # Paired tests against the best row of each LR model (pairs: the same split, seed and subject).
    trained = [r for r in done if r != "bicubic"]
    if len(trained) > 1:
      lines = ["| LR model | best (mean PSNR) | " + " | ".join(f"best − {r}" for r in trained if r) + " |",
               "|---" * (2 + len(trained)) + "|"]
      for m in lr_models:
        means = {r: np.mean([_value(results, scale, r, p, m, "psnr") for p in _pairs(results, scale, r)])
                 for r in trained}
        best = max(means, key=means.get)
        cells = []
        for r in trained:
          if r == best:
            cells.append("—")
            continue
          common = sorted(set(_pairs(results, scale, best)) & set(_pairs(results, scale, r)))
          a = np.array([_value(results, scale, best, p, m, "psnr") for p in common])
          b = np.array([_value(results, scale, r, p, m, "psnr") for p in common])
          cells.append(seeded_study.paired_tests(a, b))
        lines.append(f"| {m} | {best} ({means[best]:.2f}) | " + " | ".join(cells) + " |")
      out += ["### Paired tests against the best row (PSNR; pairs = split × seed × subject)", "", *lines, ""]

    # Per subject.
    for split, subjects in results["subjects"].items():
      for which, subject in subjects.items():
        lines = ["| method | " + " | ".join(f"{m} LR: PSNR / SSIM / NMSE (gain dB)" for m in lr_models) + " |",
                 "|---" * (1 + len(lr_models)) + "|"]
        for r in done:
          if r != "bicubic" and not results["runs"].get(split, {}).get(scale, {}).get(r):
            continue
          cells = []
          for m in lr_models:
            cell = (f"{ms(_values(results, split, scale, r, subject, m, 'psnr'), '.2f')} / "
                    f"{ms(_values(results, split, scale, r, subject, m, 'ssim'), '.4f')} / "
                    f"{ms(_values(results, split, scale, r, subject, m, 'nmse'), '.4f')}")
            if r != "bicubic":
              cell += f" ({ms(_gains(results, split, scale, r, subject, m), '+.2f')})"
            cells.append(cell)
          lines.append(f"| {r} | " + " | ".join(cells) + " |")
        out += [f"### {subject} ({which} of split seed {split}; mean ± std over seeds)", "", *lines, ""]

    # The choice, on the val subjects only.
    val = [(split, s["val"]) for split, s in results["subjects"].items() if "val" in s]
    ranked = []
    for r in trained:
      g = [np.mean(_gains(results, split, scale, r, subj, m)) for split, subj in val for m in lr_models
           if results["runs"].get(split, {}).get(scale, {}).get(r)]
      if g:
        ranked.append((float(np.mean(g)), r))
    if ranked:
      out += [f"Best on the val subjects ({', '.join(s for _, s in val)}) by the mean PSNR gain over the LR "
              "models: " + ", ".join(f"{r} {g:+.2f}" for g, r in sorted(ranked, reverse=True)), ""]

    cost = results.get("costs", {}).get(scale, {})
    if cost:
      lines = ["| method | parameters | GFLOP per 256² slice | ms per slice (CPU, 1 per call) | load |",
               "|---|---|---|---|---|"]
      for r in trained:
        if r in cost:
          c = cost[r]
          lines.append(f"| {r} | {c['params']:,} | {c['gflop_256']:.2f} | {c['ms_per_slice']:.1f} | {c['load']} |")
      out += ["### Cost (one 256² output slice, float32)", "", *lines, ""]
  return "\n".join(out)


def write_report(out_dir: str, results: dict) -> str:
  meta = results["meta"]
  text = "\n".join([
      "# Comparison methods on real held-out MR (generated by bench/compare_methods.py)", "",
      f"Command: `{meta['command']}`  ", f"Code: {meta['commit']}; {meta['scale_note']}  ",
      f"Machine: {meta['machine']}; started {meta['started']}; wall time so far "
      f"{meta.get('wall_s', 0) / 60:.1f} min (1-min load during runs: {meta.get('load_note', 'n/a')})", "",
      "Held-out subjects: " + "; ".join(f"split seed {k}: val {v['val']}, test {v['test']}"
                                       for k, v in results["subjects"].items()), "",
      "Methods:", *[f"- `{r}`: {d}" for r, d in meta["methods"].items()], "", report(results)])
  seeded_study.write_json_atomic(os.path.join(out_dir, "compare.json"), results)
  tmp = os.path.join(out_dir, "compare.md.tmp")
  with open(tmp, "w") as f:
    f.write(text + "\n")
  os.replace(tmp, os.path.join(out_dir, "compare.md"))
  return text


def _note_load(results: dict) -> None:
  """meta.load_note: the 1-min load average the runs ended under (min / mean / max)."""
  loads = [i["load"][0] for by_scale in results["info"].values() for by_m in by_scale.values()
           for by_seed in by_m.values() for i in by_seed.values()]
  if loads:
    results["meta"]["load_note"] = f"min {min(loads):.1f} / mean {np.mean(loads):.1f} / max {max(loads):.1f}"


# -- merging studies run in parallel ----------------------------------------------------------------
def _deep_merge(a: dict, b: dict) -> dict:
  out = dict(a)
  for k, v in b.items():
    out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
  return out


def merge(paths: list[str]) -> dict:
  """One study of several `compare.json` made with the same settings (e.g. one process per split, on
  a core each): runs, scores, costs and subjects united; a json of other settings is refused."""
  studies = []
  for path in paths:
    with open(os.path.join(path, "compare.json") if os.path.isdir(path) else path) as f:
      studies.append(json.load(f))
  prints = {s["meta"]["fingerprint"] for s in studies}
  if len(prints) != 1:
    raise SystemExit(f"--merge: the studies were made with different settings (fingerprints {sorted(prints)})")
  merged = studies[0]
  for s in studies[1:]:
    meta = merged["meta"]
    merged = _deep_merge(merged, {k: v for k, v in s.items() if k != "meta"})
    meta["methods"] = {**meta["methods"], **s["meta"]["methods"]}
    meta["scales"] = sorted(set(meta["scales"]) | set(s["meta"]["scales"]))
    meta["wall_s"] = max(meta.get("wall_s", 0), s["meta"].get("wall_s", 0))   # they ran side by side
    meta["started"] = min(meta["started"], s["meta"]["started"])
    meta["command"] += " ; " + s["meta"]["command"]
    merged["meta"] = meta
  _note_load(merged)
  # Rows in METHODS order, whatever order the studies named them in.
  merged["meta"]["methods"] = {m: merged["meta"]["methods"][m] for m in METHODS if m in merged["meta"]["methods"]}
  return merged


# -- main -------------------------------------------------------------------------------------------
def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="docs/compare", help="where compare.json / compare.md go")
  parser.add_argument("--workdir", default="runs/compare", help="data and the ViT / AE checkpoints")
  parser.add_argument("--splits", default="0,1", help="split seeds of the sample (held-out subjects)")
  parser.add_argument("--scales", default="2,4")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of the methods")
  parser.add_argument("--size", default="reduced", choices=("reduced", "paper"), help="network sizes")
  parser.add_argument("--steps", type=int, default=200, help="SR steps per run (demo: 2000)")
  parser.add_argument("--warmup", type=int, default=20, help="SR warm-up steps (demo: 100)")
  parser.add_argument("--batch", type=int, default=16, help="SR batch size (demo: 16)")
  parser.add_argument("--crop", type=int, default=64, help="HR crop size (demo: 64)")
  parser.add_argument("--report_only", action="store_true")
  parser.add_argument("--remeasure_costs", action="store_true",
                      help="measure every method's cost row again (e.g. on a quiet machine) and rewrite the report")
  parser.add_argument("--merge", default="", help="comma-separated study folders (or compare.json files) "
                      "made with the same settings, e.g. one process per split: write their union to --out")
  args = parser.parse_args(argv)

  os.makedirs(args.out, exist_ok=True)
  json_path = os.path.join(args.out, "compare.json")
  if args.merge:
    print(write_report(args.out, merge(args.merge.split(","))))
    return 0
  if args.remeasure_costs:
    # Seconds measured under another job's load mean little; this reruns only the cost rows, with the
    # load average of their own moment, from the study's own settings.
    with open(json_path) as f:
      results = json.load(f)
    from mrsr_jax import api
    base = api.load_config("demo")
    paper = api.load_config("base").sr.loss
    for scale, rows in results["costs"].items():
      for method in rows:
        cfg = method_config(base, method, args.size, {k: paper[k] for k in paper})
        cfg.scale = int(scale)
        rows[method] = costs(cfg)
        print(f"{scale}x {method}: {rows[method]}", flush=True)
    print(write_report(args.out, results))
    return 0
  if args.report_only:
    with open(json_path) as f:
      print(write_report(args.out, json.load(f)))
    return 0
  methods = args.methods.split(",")
  unknown = set(methods) - set(METHODS)
  if unknown:
    parser.error(f"--methods: unknown method(s) {sorted(unknown)}; known: {', '.join(METHODS)}")
  splits, scales, seeds = ([int(s) for s in v.split(",")] for v in (args.splits, args.scales, args.seeds))

  from mrsr_jax import api, evaluate
  demo = api.load_config("demo")          # the ViT / AE stages: the demo's, untouched
  base = demo.copy_and_resolve_references()
  base.crop_size = args.crop              # the SR runs: the study's budget
  base.sr.update(num_steps=args.steps, warmup_steps=args.warmup, batch_size=args.batch)
  paper = api.load_config("base").sr.loss
  paper_loss = {k: paper[k] for k in paper}
  lr_models = list(evaluate.lr_models(base))
  scale_note = (f"networks: {args.size} sizes; every row {args.steps} SR steps of batch {args.batch} on "
                f"{args.crop}² HR crops, AdamW lr {base.sr.learning_rate:g} {base.sr.lr_schedule} with "
                f"{args.warmup} warm-up, the demo's random LR models; ViT / AE: the demo's, trained once "
                f"per split")
  # What makes two runs comparable (a json written with other settings is not resumed into). The
  # pixel term's form is left out where it is L1, what every config meant before `sr.loss.pixel` existed.
  def loss_key(loss):
    return {k: v for k, v in dict(loss).items() if not (k == "pixel" and v == "l1")}
  fingerprint = hashlib.sha256(json.dumps([args.size, args.steps, args.warmup, args.batch, args.crop,
                                           loss_key(base.sr.loss.to_dict()), loss_key(paper_loss),
                                           base.sr.lr_mix.to_dict()],
                                          sort_keys=True).encode()).hexdigest()[:12]
  results = None
  if os.path.exists(json_path):
    with open(json_path) as f:
      results = json.load(f)
    if results["meta"].get("fingerprint") != fingerprint:
      raise SystemExit(f"{json_path} holds a comparison with other settings (fingerprint "
                       f"{results['meta'].get('fingerprint')} != {fingerprint}); use another --out")
  if results is None:
    results = {"meta": {}, "runs": {}, "bicubic": {}, "subjects": {}, "costs": {}, "info": {}}
  meta = results["meta"]
  meta.setdefault("started", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
  meta.setdefault("wall_s", 0.0)
  meta.update(fingerprint=fingerprint, commit=seeded_study.git_commit(), lr_models=lr_models,
              scales=sorted(set(meta.get("scales", [])) | set(scales)), scale_note=scale_note,
              command="python bench/compare_methods.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              machine=f"{platform.machine()} {os.cpu_count()} CPU cores, {platform.system()}",
              methods={**meta.get("methods", {}), **{m: METHODS[m][0] for m in methods}})
  t_start, wall0 = time.time(), meta["wall_s"]

  def save():
    meta["wall_s"] = round(wall0 + time.time() - t_start, 1)
    _note_load(results)
    write_report(args.out, results)

  # Data, held-out volumes, bicubic and the feature extractors of every split first.
  data = {}
  for k in splits:
    cfg = base.copy_and_resolve_references()
    cfg.data_dir = sample_data(args.workdir, k)
    dataset_dir = os.path.join(cfg.data_dir, "sample")
    subjects, volumes = seeded_study.held_out_volumes(dataset_dir, cfg.eval.size, EVAL_SPLITS)
    results["subjects"][str(k)] = subjects
    for scale in scales:
      b = results["bicubic"].setdefault(str(k), {})
      if str(scale) not in b:
        b[str(scale)] = seeded_study.score(None, volumes, scale, lr_models)
    features = os.path.join(args.workdir, f"features_s{k}")
    if any(METHODS[m][2] in ("demo", "paper") for m in methods):
      t0 = time.time()
      feature_cfg = demo.copy_and_resolve_references()
      feature_cfg.data_dir = cfg.data_dir
      api.train(feature_cfg, features, stages=("vit", "ae"))   # skipped when already trained
      print(f"split {k}: feature extractors ready in {features} ({time.time() - t0:.0f}s)", flush=True)
    data[k] = (cfg, dataset_dir, volumes, features)
    save()

  cache: dict = {}
  for seed in seeds:
    for k in splits:
      cfg_k, dataset_dir, volumes, features = data[k]
      for scale in scales:
        for method in methods:
          runs = results["runs"].setdefault(str(k), {}).setdefault(str(scale), {}).setdefault(method, {})
          if str(seed) in runs:
            continue
          cfg = method_config(cfg_k, method, args.size, paper_loss)
          cfg.scale = scale
          cost = results["costs"].setdefault(str(scale), {})
          if method not in cost:
            cost[method] = costs(cfg)
          scores, info = seeded_study.train_and_score(cfg, seed, volumes, lr_models, dataset_dir, features,
                                                      cache)
          runs[str(seed)] = scores
          results["info"].setdefault(str(k), {}).setdefault(str(scale), {}).setdefault(method, {})[str(seed)] = info
          save()
          g = {m: np.mean([scores[s][m]["psnr"] - results["bicubic"][str(k)][str(scale)][s][m]["psnr"]
                           for s in scores]) for m in lr_models}
          print(f"split {k} {scale}x {method} seed {seed}: {info['train_s']:.0f}s ({info['step_ms']:.0f} ms/step, "
                f"load {info['load'][0]:.1f}) | gains " + "  ".join(f"{m} {v:+.2f}" for m, v in g.items()),
                flush=True)
  save()
  print(write_report(args.out, results))
  return 0


if __name__ == "__main__":
  sys.exit(main())
