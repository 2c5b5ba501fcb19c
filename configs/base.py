"""Defaults shared by every config: the paper's hyper-parameters (Sec. 4.1, App. B, DESIGN.md).

Each run config imports this, overrides what differs, and returns the ConfigDict. Every field can be
overridden on the command line, e.g. `--config.sr.loss.lambda_vit=0`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # Data: shards written by `python -m data_prep --dataset=<dataset> --data_dir=<data_dir>`.
  config.dataset = "ixi"
  config.data_dir = "data"
  # Which builder config of the TFDS dataset to read (`<data_dir>/<dataset>/<contrast>/`): "" is the
  # dataset's default, every contrast (ixi: all, fastmri: both); ixi: t1 / t2 / pd; fastmri: pd / fspd.
  # Built with `python -m data_prep --dataset=<dataset>/<contrast> ...`; the sample has none.
  config.contrast = ""
  config.scale = 4                  # 2 or 4: LR is made from HR on the fly (mrsr_jax/data/degrade.py).
  config.degradation = "bicubic"    # "bicubic" (the paper's protocol) or "kspace" (MRI-realistic).
  config.hamming = False            # Hamming window on the kept k-space band (degradation="kspace").
  config.crop_size = 240            # HR training crop M (IXI sub-volume is 240x240 in-plane).
  config.seed = 0
  config.stages = ("vit", "ae", "sr")
  config.dtype = "float32"          # compute dtype; "bfloat16" for mixed precision (params stay float32).
  config.grad_clip_norm = 0.0       # 0 disables gradient clipping.
  config.input_readers = 0          # data readers (0: one per process); fix it to make batches independent of the process count.
  # Keep decoded training slices in host RAM after the first epoch (pipeline.create_dataset(cache=True)):
  # decoding is ~90% of the input pipeline's CPU, so feeding 8 GPUs from an 8-core host needs it
  # (docs/benchmarks.md, "Input pipeline"); costs ~0.23 MB per 240^2 slice of this host's readers.
  config.input_cache = False

  # Logging and checkpoints (all stages).
  config.log_every_steps = 50
  config.image_every_steps = 1000
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3

  # Stage 1: self-supervised fine-tuning of UNETR's ViT (paper 3.2, 4.1).
  config.vit = ml_collections.ConfigDict()
  config.vit.model = ml_collections.ConfigDict(dict(
      patch_size=16, hidden_size=768, mlp_dim=3072, num_layers=12, num_heads=12, dropout_rate=0.0))
  config.vit.pretext = "masked_patch"   # "masked_patch" (ViT paper; more stable per 3.2) or "classify".
  config.vit.mask_ratio = 0.5
  config.vit.num_bins = 8               # masked-patch target: mean intensity quantised to 3 bits.
  config.vit.init_checkpoint = ""       # optional MONAI UNETR state dict (.pt) to start from.
  config.vit.batch_size = 6
  config.vit.num_steps = 20_000
  config.vit.num_epochs = 0             # >0 overrides num_steps from the train split size.
  config.vit.learning_rate = 1e-4
  config.vit.weight_decay = 1e-4

  # Stage 2: swapping autoencoder (paper 3.3, App. A).
  config.ae = ml_collections.ConfigDict()
  config.ae.model = ml_collections.ConfigDict(dict(
      features=(64, 64, 32, 32), structure_channels=8, texture_dim=256))
  config.ae.crop_size = 256             # AE input 256x256 (4.1); slices are padded to it.
  config.ae.batch_size = 16
  # Stage lengths in steps: the paper's 100 epochs of its 48,000-slice IXI training set (one contrast,
  # 500 volumes x 96 slices), so pooling the three contrasts (data_prep's default set, 144k slices) does
  # not triple them (paper_deviations.md row 31; costs in benchmarks.md). num_steps = 0: num_epochs of
  # the prepared set (the fastMRI configs: their set is the paper's).
  config.ae.num_steps = 300_000         # 100 x 48,000 / 16
  config.ae.num_epochs = 100
  config.ae.learning_rate = 2e-4
  config.ae.b1 = 0.5
  config.ae.b2 = 0.999
  config.ae.w_adv = 0.7                 # Eq. 6
  config.ae.w_swap = 0.7

  # Stage 3: the SR GAN (paper 3.3 end, 4.1, App. E).
  config.sr = ml_collections.ConfigDict()
  # residual: the generator adds its output to the bicubic upsampling of its input (see
  # paper_deviations.md); residual=False is SRGAN's plain generator.
  # norm: "batch" (SRGAN's BatchNorm, App. E) or "none" (EDSR's blocks); see paper_deviations.md.
  config.sr.model = ml_collections.ConfigDict(dict(num_blocks=16, features=64, residual=True, norm="batch"))
  # Which generator `sr.model` configures: "srgan" (the paper's, above) or a comparison method of its
  # Tables 1-2, "srcnn" / "vdsr" / "edsr" / "rdn" (mrsr_jax/models/; configs/compare/ has each at its
  # published size, with `sr.model` replaced by that network's fields).
  config.sr.arch = "srgan"
  config.sr.disc_features = 64
  config.sr.batch_size = 256
  config.sr.num_steps = 18_750          # 100 x 48,000 / 256 (see ae.num_steps)
  config.sr.num_epochs = 100
  config.sr.learning_rate = 1e-4
  config.sr.lr_schedule = "constant"   # or "cosine" (decay to 1% over the stage)
  config.sr.warmup_steps = 0           # linear warm-up from 0 (optax), both schedules
  config.sr.b1 = 0.9
  config.sr.b2 = 0.999
  config.sr.weight_decay = 0.1
  # LR models drawn per training example (data/degrade.py `random_downsample`), so a model's gain holds
  # on LR made another way than its training's. All family weights 0 (the default): every LR is made by
  # `degradation`, the paper's protocol. Otherwise the weights are relative probabilities of the
  # families; `sigma_jitter` j widens/narrows the gaussian kernel by U(1 - j, 1 + j), `hamming_prob` is
  # the chance a k-space LR is Hamming-windowed, `noise_std` the largest Gaussian noise level.
  config.sr.lr_mix = ml_collections.ConfigDict(dict(
      bicubic=0.0, gaussian=0.0, kspace=0.0, sigma_jitter=0.0, hamming_prob=0.0, noise_std=0.0))
  config.sr.features_workdir = ""      # workdir whose vit/ae checkpoints feed the SR loss (default: this one).
  config.sr.loss = ml_collections.ConfigDict(dict(
      adv_weight=1e-3,       # Eq. 9 weighs L_adv by 1; see docs/paper_deviations.md. 0: no D at all.
      lambda_vit=1.0,        # lambda_1
      lambda_str=1.0,        # lambda_2
      lambda_tex=0.9,        # lambda_3
      pixel_weight=1.0,      # L1 to HR; Eq. 9 has none (DESIGN.md). 0 gives the paper-exact loss.
      pixel="l1",            # the pixel term: "l1" (mean absolute error) or "mse" (mean squared error).
      feature_target="lr",   # compare features of y with those of x (paper) or of the HR slice ("hr").
  ))

  # How the SR stage's G and D meet, and how the AE sees SR images: the paper does not say (each is a
  # row of docs/paper_deviations.md, with the reason for its default).
  config.sr.gd_update = "simultaneous"  # or "alternating": D steps first, G's loss uses the updated D (SRGAN).
  config.sr.disc_bn_in_g = "train"      # D's BatchNorm in G's loss: "train" (stats of the all-fake batch),
                                        # "eval" (D's running stats) or "joint" (D on [HR; SR], as in D's step).
  config.sr.loss.ae_frame = "ae"        # "ae": SR output and target centre zero-padded to ae.crop_size (the
                                        # AE's training frame) before the encoder; "sr": the SR crop as it is.

  # Memory per device (docs/distributed.md, "Memory"): a stage's global batch is split evenly over the
  # devices, and each device's share into microbatches of at most `microbatch_per_device` slices whose
  # gradients are averaged before the one optimiser update of the step (0: no split). More devices,
  # fewer microbatches: the same config runs on 1 GPU or 16. `remat` recomputes the activations of the
  # residual / transformer / modulated-conv blocks in the backward pass instead of storing them.
  for stage in ("vit", "ae", "sr"):
    config[stage].microbatch_per_device = 0
    config[stage].remat = False

  # Comparison networks of the paper's Tables 1-2 ("srcnn", "vdsr", "edsr", "rdn"; mrsr_jax/baselines.py)
  # trained after the stages, each in <workdir>/baselines/<arch>/ on the SR stage's data, LR models,
  # schedule and budget with its paper's pixel loss alone, and scored as rows of --mode=eval's report.
  config.baselines = ()
  config.baselines_size = "paper"       # "paper" (the published networks) or "reduced" (CPU-sized)

  # Evaluation (--mode=eval) and prediction (--mode=predict).
  config.eval = ml_collections.ConfigDict()
  config.eval.split = "test"
  config.eval.batch_size = 32
  config.eval.size = 240                # slices centre-padded/cropped to this for evaluation.
  # LR models the report scores on, one column each (the matched one, `degradation`, is also the main
  # table): the project's bicubic, scikit-image-style Gaussian + cubic spline, k-space truncation.
  config.eval.lr_models = ("bicubic", "gaussian", "kspace")
  config.eval.ablation_workdirs = ()    # (name, workdir) pairs of ablation runs to add as rows.
  config.eval.num_figure_slices = 3
  config.predict = ml_collections.ConfigDict()
  # Slices per generator call; 0: as few calls as memory allows (predict.plan_batches), e.g. a
  # 256-slice volume in one call on a GPU, one slice per device and call on CPU (faster per slice
  # there). A positive value fixes it (a multiple of the devices).
  config.predict.batch_size = 0
  return config
