"""How the package stands and installs: `mrsr_jax` never imports the offline tool (`data_prep`), and
TensorFlow is an extra that an environment may already have (Colab), needed only to read TFRecord
datasets, with a clear error where one is read without it."""

import os
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter (modules this test session already imported would hide an import).
# `data_prep` sits beside `mrsr_jax` in the checkout, so it is blocked rather than merely absent.
# First, with TensorFlow blocked too (as if not installed), the tf.data reader must fail with the
# install hint; TensorFlow was never imported, so unblocking it afterwards is a clean start.
_IMPORT_ALL = r"""
import importlib, pkgutil, sys

class Block:
  def __init__(self, *names):
    self.names = set(names)
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in self.names:
      raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
    return None

block = Block("data_prep", "tensorflow")
sys.meta_path.insert(0, block)
try:
  import mrsr_jax.data.tf_reader
except ModuleNotFoundError as e:
  print(f"NO_TF: {type(e).__name__}: {e}")
else:
  sys.exit("mrsr_jax.data.tf_reader imported with TensorFlow blocked")
block.names.discard("tensorflow")

import mrsr_jax
names = sorted(m.name for m in pkgutil.walk_packages(mrsr_jax.__path__, "mrsr_jax."))
for name in names:
  try:
    importlib.import_module(name)
  except ImportError as e:
    sys.exit(f"{name}: {type(e).__name__}: {e}")
assert not any(m.split(".")[0] == "data_prep" for m in sys.modules)
print("\n".join(names))
"""


def test_every_module_imports_without_data_prep_and_names_a_missing_tensorflow():
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run([sys.executable, "-c", _IMPORT_ALL], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.split("\n")
  assert lines[0].startswith("NO_TF: TensorFlowMissingError: TensorFlow is not installed"), lines[0]
  assert 'pip install -e ".[tf]"' in lines[0]
  imported = set(lines[1:])
  # The walk really covered the package (an empty walk would pass vacuously).
  assert {"mrsr_jax.predict", "mrsr_jax.evaluate", "mrsr_jax.api", "mrsr_jax.data.volumes",
          "mrsr_jax.data.pipeline", "mrsr_jax.train.loop", "mrsr_jax.train.stage_sr"} <= imported


def test_run_on_a_tfrecord_dataset_without_tensorflow_is_one_line_with_the_fixes(monkeypatch, capsys, tmp_path):
  """Only a TFRecord dataset needs TensorFlow: without it, run.py stops before writing anything, in
  one line naming the dataset, the install and the ArrayRecord rebuild."""
  import json

  import run
  version = tmp_path / "data" / "sample" / "1.0.0"   # the dataset info of a TFRecord set, as TFDS writes it
  version.mkdir(parents=True)
  (version / "dataset_info.json").write_text(json.dumps({
      "name": "sample", "version": "1.0.0", "fileFormat": "tfrecord",
      "splits": [{"name": s, "shardLengths": ["64"]} for s in ("train", "val", "test")]}))
  (version / "features.json").write_text(json.dumps({"featuresDict": {"features": {"image": {
      "tensor": {"shape": {"dimensions": ["128", "128"]}}}}}}))
  monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` now fails as if not installed
  rc = run.main(["run.py", f"--config={ROOT / 'configs' / 'tiny.py'}", f"--workdir={tmp_path / 'w'}",
                 f"--config.data_dir={tmp_path / 'data'}"])
  err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("error:")]
  assert rc == 2
  assert len(err) == 1 and err[0].startswith(f"error: {version}: its records are TFRecord files"), err
  assert "TensorFlow is not installed" in err[0] and 'pip install -e ".[tf]"' in err[0]
  assert "`python -m data_prep --dataset=sample" in err[0]
  assert not (tmp_path / "w" / "config.json").exists() and not (tmp_path / "w" / "vit").exists()


def _environment(platform, machine):
  env = default_environment()
  env.update(sys_platform=platform, platform_machine=machine)
  return env


@pytest.mark.parametrize("platform, machine, expected", [
    ("linux", "x86_64", "tensorflow-cpu"),      # CI, Linux desktops and servers
    ("linux", "aarch64", "tensorflow"),         # no tensorflow-cpu wheels there
    ("darwin", "arm64", "tensorflow"),
    ("win32", "AMD64", "tensorflow"),
])
def test_tensorflow_is_an_extra_with_one_build_per_platform(platform, machine, expected):
  """Neither TensorFlow distribution is a dependency (each would be installed over the other one an
  environment has); the `tf` extra brings exactly one of them on every platform."""
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  tf_names = {"tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tf-nightly"}
  assert not {Requirement(r).name for r in project["dependencies"]} & tf_names
  assert "tensorboard" in {Requirement(r).name for r in project["dependencies"]}  # `tensorboard --logdir`
  env = _environment(platform, machine)
  chosen = [Requirement(r).name for r in project["optional-dependencies"]["tf"]
            if Requirement(r).marker is None or Requirement(r).marker.evaluate(env)]
  assert chosen == [expected]


def test_readme_main_command_needs_no_tensorflow_and_ci_runs_the_readme_test_command():
  """The main command installs no extra (nothing it runs needs TensorFlow); the test command brings
  TensorFlow, for the TFRecord reader's tests."""
  readme = (ROOT / "README.md").read_text()
  installs = re.findall(r"^pip install -e (\S+) && ", readme, flags=re.M)
  assert len(installs) == 2 and installs[0] == "." and "tf" in re.findall(r"\w+", installs[1]), installs
  test_cmd = next(line for line in readme.splitlines() if line.endswith("python -m pytest -q -n 2"))
  ci = (ROOT / ".ci" / "run").read_text()
  assert test_cmd.replace("pip install -e", "pip install -q -e") in ci
