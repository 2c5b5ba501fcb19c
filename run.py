"""mrsr_jax entry point: flags and config, then train / eval / predict.

  python run.py --config=configs/sr_ixi_x4.py --workdir=/tmp/ixi_x4
  python run.py --config=configs/sr_ixi_x4.py --workdir=/tmp/ixi_x4 --config.sr.loss.lambda_vit=0
  python run.py --config=configs/demo.py --workdir=/tmp/demo --mode=eval
  python run.py --config=configs/demo.py --workdir=/tmp/demo --mode=predict --input=IN.nii.gz --output=OUT.nii.gz
"""

import logging as pylogging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (a get_config() python file).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and reports.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "predict"], "What to do.")
flags.DEFINE_string("input", None, "predict: a NIfTI (.nii/.nii.gz) or fastMRI .h5 volume.")
flags.DEFINE_string("output", None, "predict: output NIfTI path.")
flags.DEFINE_string("reference", None, "predict: optional HR volume to score the output against.")
flags.DEFINE_integer("slice_axis", None, "predict: override the slice axis read from the header.")
flags.DEFINE_integer("frame", None, "predict: the frame of a 4D input to use.")
# Multi-process (jax.distributed); on SLURM and similar launchers these are detected automatically.
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
flags.DEFINE_integer("process_id", None, "This process's id (multi-process runs).")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (auto-detect on clusters).")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(pylogging.Filter):
  """orbax logs every checkpoint step at INFO through absl; keep its warnings, drop the chatter."""

  def filter(self, record):
    return record.levelno >= pylogging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  # TensorFlow only reads data here: hide GPUs from it so it never takes JAX's memory.
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")

  import jax
  if FLAGS.distributed or FLAGS.coordinator_address:
    # Before anything touches a device.
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  logging.info("JAX process %d/%d, %d local / %d global devices (%s)", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)

  config = FLAGS.config
  if FLAGS.mode == "train":
    from mrsr_jax.train import pipeline
    pipeline.train(config, FLAGS.workdir)
  elif FLAGS.mode == "eval":
    from mrsr_jax import evaluate
    evaluate.evaluate(config, FLAGS.workdir)
  else:
    from mrsr_jax import predict
    if not FLAGS.input or not FLAGS.output:
      raise app.UsageError("--mode=predict needs --input and --output")
    predict.predict_file(config, FLAGS.workdir, FLAGS.input, FLAGS.output,
                         reference=FLAGS.reference, slice_axis=FLAGS.slice_axis, frame=FLAGS.frame)


def _run():
  try:
    app.run(main)
  except (FileNotFoundError, ValueError, KeyError) as e:
    # Bad input or config: one clear line, no traceback, non-zero exit.
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  _run()
