"""The SR recipe learns: a short real training run beats bicubic on held-out real subjects.

The bundled sample holds out whole IXI subjects (val IXI015, test IXI014: real scanner data the model
never trains on). A tiny generator trained for a few hundred steps through the real stage, loop
and evaluation code must beat the bicubic baseline on them in the report's convention (per-volume
PSNR, data range = the HR volume's maximum). Nothing else in the suite would notice a recipe that
runs but does not learn: an output layer that starts off the baseline, a learning rate that throws the
model off in its first steps, a loss that pulls it back to bicubic.
"""

from __future__ import annotations

import pytest

from conftest import tiny_config

# Measured on 2 CPU cores (jax 0.10.2), 300 steps at 2x: +0.87 dB with the test's seed 0, +0.62 to
# +0.91 dB over seeds 0-5 (TFRecord / tf.data); +0.79 dB with seed 0 since the sample is ArrayRecord
# read by Grain (2026-12-04): another example order. The code before this test (output conv not
# zero-initialised, constant learning rate without warm-up) ended at -0.16 dB (200 steps) and failed
# it; this recipe with a constant rate of 3e-2 and no warm-up ends at -0.01 dB and fails.
# The +0.16 dB one full-suite run gave at the first version's 200 steps (seed 0) is what seed 1 gives
# there: the gain depends on which examples come in which order (seed, reader). Training is
# deterministic and insensitive to round-off: seed 0 at 200 steps gave +0.686 dB alone, with XLA's
# default convolutions instead of cpu_conv's Eigen path, and on one core instead of two (identical to
# 3 decimals; issue 23), and no test changes the seed, the data or JAX's settings. A suite run reads
# the working tree as it is at each import, so one run while the data pipeline was being edited can
# have trained on another order. The seed is set here, and the gain printed.
MARGIN_DB = 0.3


@pytest.fixture(scope="module")
def learnt(sample_data_dir, tmp_path_factory):
  from mrsr_jax import evaluate
  from mrsr_jax.train import pipeline
  config = tiny_config(sample_data_dir)
  config.seed = 0            # the seed the margin was measured with (init, data order, crops)
  config.input_readers = 0   # one reader: the example order the margin was measured with
  config.stages = ("sr",)
  config.crop_size = 32
  config.checkpoint_every_steps = 1000
  config.image_every_steps = 0
  config.log_every_steps = 50
  config.sr.model.update(num_blocks=2, features=16)
  config.sr.update(batch_size=8, num_steps=300, learning_rate=1e-3, lr_schedule="cosine", warmup_steps=20)
  # The paper's protocol (every LR by the config's bicubic, as scored here): the demo's random LR
  # models trade matched gain for robustness, which 200 steps cannot show.
  config.sr.lr_mix.update(bicubic=0.0, gaussian=0.0, kspace=0.0)
  # The pixel term only: no ViT / AE checkpoints are needed, and it is the term that learns fastest.
  config.sr.loss.update(adv_weight=0.0, lambda_vit=0.0, lambda_str=0.0, lambda_tex=0.0)
  config.eval.update(size=128, batch_size=16, lr_models=("bicubic",), num_figure_slices=0)
  workdir = str(tmp_path_factory.mktemp("learns"))
  pipeline.train(config, workdir)
  return evaluate.evaluate(config, workdir)


def test_short_run_beats_bicubic_on_held_out_real_subjects(learnt):
  report = learnt
  ours, bicubic = report["results"]["ours"], report["results"]["bicubic"]
  assert set(ours) == {"sample/T1"}                    # the held-out IXI subject(s)
  cell = ours["sample/T1"]
  assert cell["num_volumes"] >= 1 and cell["num_slices"] >= 32
  gain = cell["psnr"] - bicubic["sample/T1"]["psnr"]
  ssim_gain = cell["ssim"] - bicubic["sample/T1"]["ssim"]
  print(f"test_learns: PSNR gain over bicubic {gain:+.3f} dB, SSIM gain {ssim_gain:+.4f} "
        f"(held-out {cell['num_volumes']} volume(s), {cell['num_slices']} slices)")
  assert gain >= MARGIN_DB, f"PSNR gain over bicubic {gain:+.2f} dB < {MARGIN_DB} dB"
  assert cell["ssim"] > bicubic["sample/T1"]["ssim"]
