"""Where a stage's metrics go: TensorBoard event files, the log, and progress (steps/s, ETA).

The flax examples use clu's metric writers and ReportProgress; in clu 0.0.12 neither can be imported
without TensorFlow (`clu.metric_writers` imports its tf.summary writer when imported, and
`clu.periodic_actions` imports `clu.metric_writers`), and training must not need TensorFlow. These
keep clu's writer interface (`write_scalars`, `write_images`, `write_hparams`, `flush`, `close`) and
its log lines; the event files are written by tensorboardX, which never imports TensorFlow (the
`tensorboard` package's own writer imports TensorFlow whenever it is installed).
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import numpy as np
from absl import logging


class Writer:
  """clu's MetricWriter interface: every method does nothing unless a writer implements it."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None: pass
  def write_images(self, step: int, images: Mapping[str, Any]) -> None: pass
  def write_hparams(self, hparams: Mapping[str, Any]) -> None: pass
  def flush(self) -> None: pass
  def close(self) -> None: pass


class LoggingWriter(Writer):
  """Scalars and hyperparameters to the INFO log, in clu's LoggingWriter format."""

  def write_scalars(self, step, scalars):
    values = [f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
              for k, v in sorted((k, _scalar(v)) for k, v in scalars.items())]
    logging.info("[%d] %s", step, ", ".join(values))

  def write_images(self, step, images):
    logging.info("[%d] Got images: %s.", step, {k: np.shape(v) for k, v in images.items()})

  def write_hparams(self, hparams):
    logging.info("[Hyperparameters] %s", dict(hparams))

  def flush(self):
    logging.flush()


class TensorBoardWriter(Writer):
  """TensorBoard event files in `logdir` (`tensorboard --logdir=...` reads them), via tensorboardX.

  Images are [N, H, W, C] floats in [0, 1] (or uint8), as clu's writer takes them; each batch is
  one tiled image per tag (tensorboardX's add_images), where clu's stored the N images separately.
  """

  def __init__(self, logdir: str):
    from tensorboardX import SummaryWriter

    self._w = SummaryWriter(logdir)

  def write_scalars(self, step, scalars):
    for k, v in scalars.items():
      self._w.add_scalar(k, _scalar(v), int(step))

  def write_images(self, step, images):
    for k, v in images.items():
      self._w.add_images(k, np.asarray(v), int(step), dataformats="NHWC")

  def write_hparams(self, hparams):
    from tensorboardX.summary import hparams as hparams_summaries

    # Into this run's own folder (tensorboardX's add_hparams would open a sub-run for them).
    for summary in hparams_summaries(dict(hparams), {}):
      self._w.file_writer.add_summary(summary)

  def flush(self):
    self._w.flush()

  def close(self):
    self._w.close()


class MultiWriter(Writer):
  """Every call to each of `writers`, in order."""

  def __init__(self, writers: Sequence[Writer]):
    self._writers = list(writers)

  def write_scalars(self, step, scalars):
    for w in self._writers:
      w.write_scalars(step, scalars)

  def write_images(self, step, images):
    for w in self._writers:
      w.write_images(step, images)

  def write_hparams(self, hparams):
    for w in self._writers:
      w.write_hparams(hparams)

  def flush(self):
    for w in self._writers:
      w.flush()

  def close(self):
    for w in self._writers:
      w.close()


def _scalar(v) -> Any:
  """A Python number from a number, numpy scalar or 0-d array."""
  v = np.asarray(v)
  if v.size != 1:
    raise ValueError(f"a scalar summary needs one value, got shape {v.shape}")
  return v.reshape(()).item()


def _format_secs(secs: float) -> str:
  """clu's ETA format: '12.3s', '4.5m', '6.7h'."""
  s = float(secs)
  if s < 60:
    return f"{s:.1f}s"
  if s < 3600:
    return f"{s / 60:.1f}m"
  return f"{s / 3600:.1f}h"


class Progress:
  """clu's ReportProgress: every `every_steps` steps, every `every_secs` seconds and at the last step,
  logs steps/s, the share done and the ETA, and writes `steps_per_sec` and `uptime` to `writer`.
  Called with the number of steps done after each step; the first call only starts the clock."""

  def __init__(self, *, num_train_steps: int, writer: Writer | None, every_steps: int | None,
               every_secs: float | None = 60.0):
    self.num_train_steps, self.writer = num_train_steps, writer
    self.every_steps, self.every_secs = every_steps, every_secs
    self._t0 = time.monotonic()
    self._previous: tuple[int, float] | None = None

  def __call__(self, step: int) -> bool:
    now = time.monotonic()
    if self._previous is None:
      self._previous = (step, now)
      return False
    last_step, last_t = self._previous
    due = (step == self.num_train_steps
           or (self.every_steps and step % self.every_steps == 0)
           or (self.every_secs is not None and now - last_t >= self.every_secs))
    if not due or step == last_step or now <= last_t:
      return False
    steps_per_sec = (step - last_step) / (now - last_t)
    message = f"{steps_per_sec:.1f} steps/s"
    if self.num_train_steps:
      eta = (self.num_train_steps - step) / steps_per_sec
      message += (f", {100 * step / self.num_train_steps:.1f}% ({step}/{self.num_train_steps}), "
                  f"ETA: {_format_secs(eta)}")
    logging.info("Progress: %s", message)
    if self.writer is not None:
      self.writer.write_scalars(step, {"steps_per_sec": steps_per_sec})
      self.writer.write_scalars(step, {"uptime": now - self._t0})
    self._previous = (step, now)
    return True
