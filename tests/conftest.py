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
  """configs/tiny.py pointed at `data_dir`, with SR-stage overrides, read by two data readers: the
  batches two processes read (one reader each), so the session's trained run is also the reference
  of the two-process test (test_distributed.py) and no test trains a second one for it."""
  from configs import tiny
  config = tiny.get_config()
  config.data_dir = data_dir
  config.input_readers = 2
  config.sr.update(sr)
  return config


@pytest.fixture(scope="session")
def compile_cache_dir(tmp_path_factory) -> str:
  """One folder for JAX's persistent compilation cache, shared by the session's trainings."""
  return str(tmp_path_factory.mktemp("compile_cache"))


@pytest.fixture
def shared_compile_cache(compile_cache_dir):
  """A context manager: JAX's persistent compilation cache on, in the session's folder, inside the
  block (as run.py turns it on for a run: mrsr_jax/compile_cache.py; JAX's setting is restored after).
  The tests that train or step the tiny config again (resume, NaN guard, the one-vs-eight-device
  update, the fixed-batch losses) load the session's trained run's compiled steps instead of compiling
  the same computation again: the same executables, so what they compare is unchanged. Only inside
  the block: the compile-counting tests (test_no_recompile.py) run without it."""
  from mrsr_jax import compile_cache
  return lambda: compile_cache.enabled(compile_cache_dir)


@pytest.fixture(scope="session")
def trained(sample_data_dir, tmp_path_factory, compile_cache_dir):
  """All three stages of the tiny config, uninterrupted: (config, workdir, {stage: state}). Its
  compiled steps go to the session's compilation cache (`shared_compile_cache`)."""
  from mrsr_jax import compile_cache
  from mrsr_jax.train import pipeline
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_config(sample_data_dir)
  with compile_cache.enabled(compile_cache_dir):
    states = pipeline.train(config, workdir)
  return config, workdir, states
