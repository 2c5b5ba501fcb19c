"""SR-stage recipe experiments: learning curves of the gain over bicubic on held-out real subjects.

Trains the SR stage exactly as `run.py` does (`SRStage.update` on the tf.data pipeline's batches) and,
every `--every` steps, scores the generator against bicubic on the sample's held-out IXI subjects
(val IXI015 and test IXI014, read from the bundled NIfTI files) for LR made three ways: the project's
bicubic, scikit-image-style Gaussian + cubic spline, k-space truncation. Per-volume PSNR with the HR
volume's maximum as data range, the report's convention; printed as gains (model - bicubic), mean
over the two subjects. docs/results.md lists the runs behind the demo's recipe.

  python -m data_prep --dataset=sample --data_dir=data
  python bench/sr_recipe.py --data_dir=data sr.lr_mix.kspace=0.3 sr.loss.adv_weight=0.0
  python bench/sr_recipe.py --data_dir=data --config=demo_x4 --features_workdir=runs/demo_x4

Arguments other than the flags are config overrides `field=value` (Python literals).
"""

from __future__ import annotations

import argparse
import ast
import glob
import os
import sys
import time

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from data_prep import sample, volumes  # noqa: E402
from mrsr_jax import api, metrics, sharding  # noqa: E402
from mrsr_jax.data import degrade, pipeline  # noqa: E402
from mrsr_jax.train.stage_sr import SRStage  # noqa: E402

HELD_OUT = ("IXI015", "IXI014")   # the sample's val and test subjects


def held_out_volumes(ixi_dir: str) -> dict[str, np.ndarray]:
  out = {}
  for path in sorted(glob.glob(os.path.join(ixi_dir, "*.nii.gz"))):
    subject = os.path.basename(path)[:6]
    if subject in HELD_OUT:
      vol = volumes.load_volume(path, path, dataset="sample", contrast="T1", subject=subject,
                                target_hw=sample.TARGET_HW, max_slices=sample.IXI_SLICES)
      out[subject] = vol.slices
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data_dir", default="data")
  parser.add_argument("--config", default="demo")
  parser.add_argument("--every", type=int, default=500)
  parser.add_argument("--features_workdir", default="", help="workdir with the vit/ae checkpoints "
                      "(needed when the feature terms are on)")
  parser.add_argument("--ixi_dir", default=os.path.join(ROOT, "data_prep", "sample_data", "ixi_t1_2mm"))
  args, rest = parser.parse_known_args()
  overrides = {}
  for item in rest:
    key, _, value = item.partition("=")
    try:
      overrides[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[key] = value
  config = api.load_config(args.config, data_dir=args.data_dir, overrides=overrides)
  config.stages = ("sr",)
  if args.features_workdir:
    config.sr.features_workdir = args.features_workdir
  print(f"config={args.config} overrides={overrides}", flush=True)

  stage = SRStage(config, "/nonexistent")
  dataset_dir = os.path.join(args.data_dir, config.dataset)
  num_steps = stage.num_steps(pipeline.dataset_info(dataset_dir))
  frozen = stage.frozen(sharding.make_mesh()) if stage.which else {}
  state = stage.init(jax.random.key(config.seed))
  update = jax.jit(stage.update, donate_argnums=(0,))
  batches = pipeline.create_dataset(dataset_dir, "train", global_batch_size=config.sr.batch_size,
                                    crop_size=config.crop_size, seed=config.seed, train=True,
                                    process_index=0, process_count=1).as_numpy_iterator()
  held_out = held_out_volumes(args.ixi_dir)

  @jax.jit
  def generate(params, stats, lr):
    return stage.gen.apply({"params": params, "batch_stats": stats}, lr, train=False)

  def gains(params, stats) -> str:
    cols = []
    for method in degrade.METHODS:
      g = []
      for vol in held_out.values():
        hr = jnp.asarray(vol[..., None])
        lr = degrade.downsample(hr, config.scale, method)
        ours = metrics.volume_metrics(np.asarray(generate(params, stats, lr)), np.asarray(hr))
        base = metrics.volume_metrics(np.asarray(degrade.upsample_bicubic(lr, config.scale)), np.asarray(hr))
        g.append((ours["psnr"] - base["psnr"], ours["ssim"] - base["ssim"]))
      psnr, ssim = np.mean(g, axis=0)
      cols.append(f"{method} {psnr:+.2f} dB / {ssim:+.4f}")
    return "  ".join(cols)

  t0 = time.time()
  for step in range(1, num_steps + 1):
    batch = {"hr": jnp.asarray(next(batches)["hr"])}
    state, m = update(state, batch, jax.random.fold_in(jax.random.key(config.seed), step), frozen)
    if step % args.every == 0 or step == num_steps:
      print(f"step {step} L1 {float(m['g_pixel']):.4f} {time.time() - t0:.0f}s | "
            f"{gains(state.params['gen'], state.batch_stats['gen'])}", flush=True)


if __name__ == "__main__":
  main()
