"""Test setup: 8 emulated CPU devices (before JAX is imported), quiet TensorFlow, shared fixtures."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pathlib  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))   # `configs` is a top-level folder, imported as run.py does


@pytest.fixture(scope="session")
def sample_data_dir(tmp_path_factory) -> str:
  """The bundled real sample dataset, built once per test session by data_prep (packages' volumes)."""
  from data_prep import __main__ as data_prep_main
  data_dir = tmp_path_factory.mktemp("data")
  rc = data_prep_main.main(["--dataset=sample", f"--data_dir={data_dir}", "--no_progress"])
  assert rc == 0
  return str(data_dir)


def snapshot(root):
  """{relative path: (size, mtime_ns)} of every file under `root`: proves nothing was touched."""
  out = {}
  for dirpath, _, files in os.walk(root):
    for name in files:
      st = os.stat(os.path.join(dirpath, name))
      out[os.path.relpath(os.path.join(dirpath, name), root)] = (st.st_size, st.st_mtime_ns)
  return out


def assert_trees_equal(a, b, check=None):
  """`check(leaf_a, leaf_b)` on every leaf pair (default: exactly equal) after asserting that both
  trees have the same structure and are not empty: a `zip` over leaves passes when one side is empty
  or shorter, this does not."""
  import jax
  import numpy as np
  a, b = jax.device_get((a, b))
  assert jax.tree.structure(a) == jax.tree.structure(b), (jax.tree.structure(a), jax.tree.structure(b))
  assert jax.tree.leaves(a), "both trees are empty"
  jax.tree.map(check or np.testing.assert_array_equal, a, b)


def tiny_config(data_dir, **sr):
  """configs/tiny.py pointed at `data_dir`, with SR-stage overrides."""
  from configs import tiny
  config = tiny.get_config()
  config.data_dir = data_dir
  config.sr.update(sr)
  return config


@pytest.fixture(scope="session")
def trained(sample_data_dir, tmp_path_factory):
  """All three stages of the tiny config, uninterrupted: (config, workdir, {stage: state})."""
  from mrsr_jax.train import pipeline
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_config(sample_data_dir)
  states = pipeline.train(config, workdir)
  return config, workdir, states
