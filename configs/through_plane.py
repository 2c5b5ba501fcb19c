"""Through-plane super-resolution of a thick-slice volume, trained on its own in-plane slices (issue 25).

  python run.py --config=configs/through_plane.py --workdir=runs/tp_subject --mode=predict \
      --through_plane --input=thick.nii.gz --output=iso.nii.gz [--slice_thickness=MM]

The budget: `num_steps` steps of `batch_size` crops of `crop_size` px (600 x 16 x 64² with the
4-block x 32 generator: 4 min 49 s, 165 s of CPU, for a 120 x 30 x 90 volume at ratio 4 on 2 loaded CPU
cores). See docs/through_plane.md for what it measured and when not to use it.
"""

import ml_collections

from mrsr_jax.configs import base


# `--config=configs/through_plane.py:vdsr` trains the comparison network instead.
MODELS = {
    "srgan": dict(num_blocks=4, features=32),
    "vdsr": dict(num_layers=8, features=32),
}


def get_config(arch: str = "srgan"):
  if arch not in MODELS:
    raise ValueError(f"configs/through_plane.py:{arch}: expected one of {', '.join(MODELS)}")
  config = base.get_config()
  config.log_every_steps = 100
  tp = ml_collections.ConfigDict()
  # The generator (mrsr_jax/through_plane/model.py): "srgan" (the project's SRGAN-style generator with
  # a one-axis sub-pixel upsampler) or "vdsr" (VDSR over cubic-spline upsampling), residual over the
  # spline either way; `model` its fields.
  tp.arch = arch
  tp.model = ml_collections.ConfigDict(MODELS[arch])
  # The slice profile the training pairs are made with: "gaussian" (FWHM = slice thickness) or "rect".
  tp.profile = "gaussian"
  tp.num_steps = 600
  tp.batch_size = 16                 # crops per step (a multiple of the devices)
  tp.crop_size = 64                  # square in-plane crops, px (smaller slices: their size)
  tp.learning_rate = 1e-3
  tp.warmup_steps = 50               # linear warm-up, then cosine decay to 1% (optax)
  tp.checkpoint_every_steps = 100
  tp.fusion = "mean"                 # how the two through-plane orientations are combined
  tp.batch_size_apply = 0            # reformats per call when applying (0: up to 8 per device)
  # A workdir of an earlier through-plane run whose model to apply instead of training (same arch,
  # model and upsampling factor; a different thickness or profile is warned about).
  tp.pretrained_workdir = ""
  config.through_plane = tp
  return config
