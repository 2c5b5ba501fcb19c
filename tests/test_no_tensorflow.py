"""Training, evaluation and prediction need no TensorFlow (issue 22, item 1).

The slow test: the README's main command at tiny size (`configs/tiny.py`), in a fresh interpreter where TensorFlow
cannot be found (as if not installed, even though this environment has it): data_prep of the
bundled sample (ArrayRecord, the default), the three stages, eval, predict of a bundled volume. At
the end no TensorFlow module may have been imported. The fresh-venv check without TensorFlow
installed at all is in docs/data.md. The default suite's test: everything training, eval and
predict import, an ArrayRecord dataset read for training and eval, and the metric writers, again
with TensorFlow hidden.
"""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Every finder on sys.meta_path is wrapped so that a `tensorflow` module is simply not found:
# `import tensorflow` raises ModuleNotFoundError and `importlib.util.find_spec("tensorflow")` is None,
# which is what TFDS and etils check to decide that TensorFlow is not installed.
_NO_TF = r"""
import glob, os, sys

def _hidden(name):
  return name == "tensorflow" or name.startswith("tensorflow.")

class Hide:
  def __init__(self, finder):
    self.finder = finder
  def find_spec(self, name, path=None, target=None):
    return None if _hidden(name) else self.finder.find_spec(name, path, target)
  def __getattr__(self, attr):
    return getattr(self.finder, attr)

sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
tmp, root = sys.argv[1], sys.argv[2]
sys.path.insert(0, root)

from data_prep import __main__ as data_prep_main
import run

data = os.path.join(tmp, "data")
work = os.path.join(tmp, "run")
assert data_prep_main.main(["--dataset=sample", f"--data_dir={data}", "--no_progress"]) == 0
assert os.listdir(os.path.join(data, "sample", "1.0.0")) and glob.glob(os.path.join(data, "sample", "1.0.0", "*.array_record-*"))
common = ["run.py", f"--config={root}/configs/tiny.py", f"--workdir={work}", f"--config.data_dir={data}",
          "--config.vit.num_steps=2", "--config.ae.num_steps=2", "--config.sr.num_steps=2",
          "--config.image_every_steps=2"]
assert run.main(common) == 0
assert run.main(common + ["--mode=eval"]) == 0
volume = sorted(glob.glob(os.path.join(root, "data_prep", "sample_data", "ixi_t1_2mm", "*.nii.gz")))[0]
out = os.path.join(tmp, "sr.nii.gz")
assert run.main(common + ["--mode=predict", f"--input={volume}", f"--output={out}"]) == 0
assert os.path.getsize(out) > 0
assert os.path.isfile(os.path.join(work, "eval", "results.md"))
assert glob.glob(os.path.join(work, "sr", "logs", "events.out.tfevents.*"))
loaded = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))
print("TF_MODULES", loaded)
"""


@pytest.mark.slow  # ~80 s of CPU (3 min on the 2 shared cores here); the default suite has the test below
def test_readme_pipeline_and_predict_never_import_tensorflow(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # one device, as a user's CPU run: the test is about imports, not sharding
  proc = subprocess.run([sys.executable, "-c", _NO_TF, str(tmp_path), str(ROOT)], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "TF_MODULES []" in proc.stdout, proc.stdout[-2000:]


_NO_TF_FAST = _NO_TF[:_NO_TF.index("from data_prep import")] + r"""
import numpy as np
import mrsr_jax.api, mrsr_jax.evaluate, mrsr_jax.predict, mrsr_jax.train.pipeline, run
from mrsr_jax.data import pipeline
from mrsr_jax.train import loop

dataset = sys.argv[3]
kw = dict(global_batch_size=4, crop_size=32, seed=0, process_index=0, process_count=1)
train = [b for _, b in zip(range(3), pipeline.iterate(pipeline.create_dataset(dataset, "train", train=True, **kw)))]
evals = list(pipeline.iterate(pipeline.create_dataset(dataset, "test", train=False, **kw)))
assert len(train) == 3 and train[0]["hr"].shape == (4, 32, 32, 1) and sum(b["mask"].sum() for b in evals) > 0
writer = loop.make_writer(os.path.join(tmp, "stage"))
writer.write_hparams({"a": 1, "b": "x"})
writer.write_scalars(1, {"loss": np.float32(0.5)})
writer.write_images(1, {"hr": train[0]["hr"]})
writer.close()
assert glob.glob(os.path.join(tmp, "stage", "logs", "events.out.tfevents.*"))
loaded = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))
print("TF_MODULES", loaded)
"""


def test_training_eval_and_predict_modules_and_the_arrayrecord_reader_never_import_tensorflow(
    sample_data_dir, tmp_path):
  from mrsr_jax.data import records

  dataset = os.path.join(sample_data_dir, "sample")
  assert records.read_info(dataset)["file_format"] == "array_record"  # data_prep's default
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", _NO_TF_FAST, str(tmp_path), str(ROOT), dataset], cwd=tmp_path,
                        env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "TF_MODULES []" in proc.stdout, proc.stdout[-2000:]
