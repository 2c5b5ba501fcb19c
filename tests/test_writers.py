"""The stages' metric writers (mrsr_jax/train/writers.py): TensorBoard event files that TensorBoard
reads back, log lines, and the progress report (steps/s, ETA) that clu's ReportProgress gave."""

import glob
import os

import numpy as np
import pytest

from mrsr_jax.train import loop, writers


def _events(logdir):
  from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

  files = glob.glob(os.path.join(logdir, "events.out.tfevents.*"))
  assert len(files) == 1, files
  return list(EventFileLoader(files[0]).Load())


def test_tensorboard_events_hold_scalars_images_and_hparams(tmp_path):
  stage = str(tmp_path / "sr")
  w = loop.make_writer(stage)
  w.write_hparams({"sr.batch_size": 8, "sr.loss": "vit"})
  w.write_scalars(2, {"sr/loss": np.float32(0.25), "sr/psnr": 31.5})
  w.write_scalars(4, {"sr/loss": np.asarray(0.125)})
  w.write_images(4, {"sr/hr": np.linspace(0, 1, 2 * 8 * 8).reshape(2, 8, 8, 1)})
  w.close()
  from tensorboard.util import tensor_util

  # As TensorBoard loads them (its loader turns every value into a tensor of its plugin).
  scalars, images, plugins = {}, {}, set()
  for event in _events(os.path.join(stage, "logs")):
    for v in event.summary.value:
      plugin = v.metadata.plugin_data.plugin_name
      plugins.add(plugin)
      if plugin == "scalars":
        scalars.setdefault(v.tag, []).append((event.step, float(tensor_util.make_ndarray(v.tensor))))
      if plugin == "images":   # [width, height, PNG...] as strings
        width, height, *pngs = tensor_util.make_ndarray(v.tensor)
        images[v.tag] = (event.step, int(height), int(width), len(pngs))
  assert scalars == {"sr/loss": [(2, 0.25), (4, 0.125)], "sr/psnr": [(2, 31.5)]}
  assert images == {"sr/hr": (4, 8, 16, 1)}   # the batch as one tiled image (tensorboardX's add_images)
  assert "hparams" in plugins
  # The JSON-lines copy the evaluation report plots.
  lines = open(os.path.join(stage, "metrics.jsonl")).read().splitlines()
  assert len(lines) == 2 and '"sr/loss": 0.25' in lines[0]


def test_logging_writer_lines(caplog):
  import logging

  with caplog.at_level(logging.INFO):
    writers.LoggingWriter().write_scalars(7, {"b": 2, "a": np.float32(0.5)})
  assert "[7] a=0.5, b=2" in caplog.text
  with pytest.raises(ValueError, match="one value, got shape"):
    writers.LoggingWriter().write_scalars(1, {"a": np.zeros(3)})


def test_progress_reports_steps_per_second_and_eta(monkeypatch, caplog):
  import logging

  clock = iter([0.0, 10.0, 12.0, 14.0, 20.0, 22.0])
  monkeypatch.setattr(writers.time, "monotonic", lambda: next(clock))

  class Record(writers.Writer):
    def __init__(self):
      self.scalars = []
    def write_scalars(self, step, scalars):
      self.scalars.append((step, scalars))

  rec = Record()
  progress = writers.Progress(num_train_steps=40, writer=rec, every_steps=10, every_secs=None)  # t0 = 0
  with caplog.at_level(logging.INFO):
    assert not progress(0)           # t = 10: starts the clock
    assert not progress(5)           # t = 12: not due
    assert progress(10)              # t = 14: 10 steps in 4 s
    assert not progress(15)          # t = 20
    assert progress(40)              # t = 22: the last step is always reported: 30 steps in 8 s
  assert rec.scalars == [(10, {"steps_per_sec": 2.5}), (10, {"uptime": 14.0}),
                         (40, {"steps_per_sec": 3.75}), (40, {"uptime": 22.0})]
  assert "2.5 steps/s, 25.0% (10/40), ETA: 12.0s" in caplog.text
