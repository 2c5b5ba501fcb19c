"""mrsr_jax entry point: flags and config, then train / eval / predict.

  python run.py --config=configs/sr_ixi_x4.py --workdir=/tmp/ixi_x4
  python run.py --config=configs/sr_ixi_x4.py --workdir=/tmp/ixi_x4 --config.sr.loss.lambda_vit=0
  python run.py --config=configs/demo.py --workdir=/tmp/demo --mode=eval
  python run.py --config=configs/demo.py --workdir=/tmp/demo --mode=predict --input=IN.nii.gz --output=OUT.nii.gz
  (an existing OUT is never replaced unless --overwrite is given; the input and --reference never are)

Exit status: 0 done; 2 bad input (a flag, the config file or a field of it, a file, a path, a workdir
trained with another config, a non-finite loss), reported as one line `error: <message>` on stderr;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import logging as pylogging
import re
import sys
from typing import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from mrsr_jax import config_loader, errors
from mrsr_jax._tensorflow import TensorFlowMissingError

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (a get_config() python file) or a config name, then ':' and the "
    "argument of its get_config().", lock_config=True)


class _LoaderParser(flags.ArgumentParser):
  """The parser of `--config`: the file (or name) loaded by mrsr_jax.config_loader, as the api loads
  it; config_flags keeps what it adds, the `--config.<field>=` overrides."""

  def parse(self, spec):
    config = config_loader.load(spec)
    config.lock()                    # an override of a field the config lacks is an error
    return config

  def flag_type(self):
    return "config object"


FLAGS["config"].parser = _LoaderParser()
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and reports.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "predict"], "What to do.")
flags.DEFINE_string("input", None, "predict: a NIfTI (.nii/.nii.gz) or fastMRI .h5 volume.")
flags.DEFINE_string("output", None, "predict: output NIfTI path.")
flags.DEFINE_string("reference", None, "predict: optional HR volume to score the output against.")
flags.DEFINE_integer("slice_axis", None, "predict: override the slice axis read from the header.")
flags.DEFINE_integer("frame", None, "predict: the frame of a 4D input to use.")
flags.DEFINE_bool("overwrite", False, "predict: replace an existing --output (refused by default).")
# Issue 25: super-resolve the slice direction instead (mrsr_jax/through_plane/, docs/through_plane.md).
flags.DEFINE_bool("through_plane", False, "predict: upsample the slice axis of a thick-slice NIfTI, "
                  "trained on its own in-plane slices (configs/through_plane.py).")
flags.DEFINE_float("slice_thickness", None, "--through_plane: slice thickness in mm (default: the "
                   "BIDS sidecar's SliceThickness, else the slice spacing).")
flags.DEFINE_float("slice_spacing", None, "--through_plane: slice spacing in mm (default: the header's).")
# Multi-process (jax.distributed); on SLURM and similar launchers these are detected automatically.
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
flags.DEFINE_integer("process_id", None, "This process's id (multi-process runs).")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (auto-detect on clusters).")
flags.mark_flags_as_required(["config", "workdir"])

EXIT_BAD_INPUT = 2


class CommandLineError(errors.UserError):
  """A bad flag or config file, found before anything runs."""


def is_user_error(e: BaseException) -> bool:
  """Bad input the user can fix (reported in one line) rather than a bug (kept as a traceback).

  The library raises `errors.UserError` for a bad value, file, config or workdir (ConfigMismatchError,
  BadInputError included); OSError covers unreadable / unwritable / missing paths (PermissionError,
  FileExistsError, IsADirectoryError, NotADirectoryError, FileNotFoundError), a diverging run is
  NonFiniteLossError, and TensorFlow not installed is the user's to install. Any other exception,
  a ValueError or KeyError from a library bug included, keeps its traceback."""
  if isinstance(e, (errors.UserError, OSError, flags.Error, app.UsageError, TensorFlowMissingError)):
    return True
  loop = sys.modules.get("mrsr_jax.train.loop")     # imported by any run that can raise it
  return loop is not None and isinstance(e, loop.NonFiniteLossError)


def error_line(e: BaseException) -> str:
  if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
    msg = e.args[0]                  # str(KeyError) would quote it
  elif isinstance(e, OSError) and e.strerror and e.filename and str(e).startswith("[Errno"):
    msg = f"{e.filename}: {e.strerror}"
  else:
    msg = str(e) or type(e).__name__
  # One line whatever the message quotes (a flag value with a newline or another control character
  # would split it or redraw the terminal): control characters are shown escaped.
  msg = "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in msg)
  return f"error: {msg}"


# -- the config file, loaded by the library's one loader (mrsr_jax/config_loader.py) ------------------
def _config_spec(argv: Sequence[str]) -> str | None:
  for i, arg in enumerate(argv):
    m = re.match(r"^--?config(=(.*))?$", arg)
    if m:
      if m.group(1) is not None:
        return m.group(2)
      return argv[i + 1] if i + 1 < len(argv) else None
  return None


# `path[:arg]` (or a config name) -> get_config(arg), one line for each way it can fail.
load_config_file = config_loader.load


def check_overrides(config, argv: Sequence[str], spec: str) -> None:
  """Every `--config.a.b=...` names a field of the config (the closest ones suggested if not)."""
  for arg in argv:
    m = re.match(r"^--?(?:no)?config\.([^=]+)", arg)
    if not m:
      continue
    node, done = config, []
    for part in m.group(1).split("."):
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if part not in keys:
        where = ".".join(["config"] + done)
        close = difflib.get_close_matches(part, [str(k) for k in keys], n=3)
        hint = f"; did you mean {', '.join(f'{where}.{c}' for c in close)}?" if close else (
            f"; {where} has {', '.join(map(str, keys))}" if keys else f"; {where} is not a sub-config")
        raise CommandLineError(f"--config.{m.group(1)}: {spec} has no field "
                               f"'{'.'.join(done + [part])}'{hint}")
      node, done = node[part], done + [part]


def parse_flags(argv: Sequence[str]) -> list[str]:
  """Parses `argv` into FLAGS (again, if called before: each call starts from the defaults)."""
  spec = _config_spec(argv)
  if spec is not None:
    check_overrides(load_config_file(spec), argv, spec.partition(":")[0])
  app.define_help_flags()
  FLAGS.unparse_flags()
  for name in [n for n in FLAGS if n.startswith("config.")]:
    delattr(FLAGS, name)             # the override flags config_flags defined at the previous parse
  rest = FLAGS(list(argv))
  if FLAGS["verbosity"].using_default_value:
    FLAGS.verbosity = 0              # INFO, as absl's app.run does
  if len(rest) > 1:
    raise CommandLineError(f"unexpected arguments: {rest[1:]}")
  return rest


# -- the run -----------------------------------------------------------------------------------------
class _QuietLibraries(pylogging.Filter):
  """orbax logs every checkpoint step at INFO through absl; keep its warnings, drop the chatter."""

  def filter(self, record):
    return record.levelno >= pylogging.WARNING or "/orbax/" not in record.pathname


def _setup_logging() -> None:
  logging.use_absl_handler()
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())


def run() -> None:
  """The mode FLAGS ask for."""
  if FLAGS.mode == "predict" and (not FLAGS.input or not FLAGS.output):
    raise CommandLineError("--mode=predict needs --input and --output")
  if FLAGS.mode != "predict" and FLAGS.through_plane:
    raise CommandLineError("--through_plane is a way to predict: use it with --mode=predict")
  # First, before TensorFlow or XLA start threads, and only where JAX will run on the CPU: XLA:CPU's
  # per-step buffers reuse memory instead of page-faulting (glibc settings; threads keep the malloc
  # arena they start with).
  from mrsr_jax import cpu_alloc
  cpu_backend = cpu_alloc.cpu_backend_chosen()
  if cpu_backend:
    cpu_alloc.keep_freed_memory()

  # No TensorFlow here: only a TFRecord dataset needs it (mrsr_jax.data.tf_reader imports it, hides
  # the GPUs from it, and a missing one is a one-line error with the fix).
  import jax
  if FLAGS.distributed or FLAGS.coordinator_address:
    # Before anything touches a device.
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  logging.info("JAX process %d/%d, %d local / %d global devices (%s)%s", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform, "; malloc keeps freed memory (cpu_alloc)" if cpu_backend else "")

  config = FLAGS.config
  # Compiled steps and generators from disk on a resume or rerun (JAX's persistent cache).
  from mrsr_jax import compile_cache
  with compile_cache.enabled(FLAGS.workdir):
    if FLAGS.mode == "train":
      from mrsr_jax.train import pipeline
      pipeline.train(config, FLAGS.workdir)
    elif FLAGS.mode == "eval":
      from mrsr_jax import evaluate
      evaluate.evaluate(config, FLAGS.workdir)
    elif FLAGS.through_plane:
      from mrsr_jax.through_plane import apply as through_plane
      through_plane.predict_file(config, FLAGS.workdir, FLAGS.input, FLAGS.output,
                                 slice_axis=FLAGS.slice_axis, slice_thickness=FLAGS.slice_thickness,
                                 slice_spacing=FLAGS.slice_spacing, frame=FLAGS.frame,
                                 overwrite=FLAGS.overwrite, reference=FLAGS.reference)
    else:
      from mrsr_jax import predict
      predict.predict_file(config, FLAGS.workdir, FLAGS.input, FLAGS.output,
                           reference=FLAGS.reference, slice_axis=FLAGS.slice_axis, frame=FLAGS.frame,
                           overwrite=FLAGS.overwrite)


def main(argv: Sequence[str] | None = None) -> int:
  """The command line `argv` (program name first; default sys.argv) -> exit status.

  Callable in-process (tests, notebooks): flags are re-parsed from their defaults on every call."""
  argv = list(sys.argv if argv is None else argv)
  saved_argv, sys.argv = sys.argv, argv     # config_flags reads the --config.<field> overrides there
  try:
    try:
      parse_flags(argv)
    except (flags.Error, errors.UserError) as e:
      print(error_line(e), file=sys.stderr)
      return EXIT_BAD_INPUT
    _setup_logging()
    try:
      run()
    except Exception as e:
      if not is_user_error(e):
        raise
      print(error_line(e), file=sys.stderr)
      return EXIT_BAD_INPUT
    return 0
  finally:
    sys.argv = saved_argv


if __name__ == "__main__":
  sys.exit(main())
