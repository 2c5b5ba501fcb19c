"""Test setup: 8 emulated CPU devices (before JAX is imported), quiet TensorFlow, shared fixtures."""

import os

_flags = os.environ.get("XLA_FLAGS", "")
_flags += " --xla_force_host_platform_device_count=8"
# LLVM's optimisation of the CPU code XLA generates is most of a small test's compile time (measured:
# -35 % CPU on the model / loss tests, -20 % on test_learns, whose 300 steps run no slower). The tests
# check what the program computes, not how fast XLA's CPU code is; everything that runs the program as
# users do (`.ci/py312_smoke.sh`, the README's main job, bench/) keeps XLA's default. Same-flag
# comparisons (resume, 1 vs 8 devices, two processes: children inherit XLA_FLAGS) stay bit for bit.
# A level given in XLA_FLAGS wins: `XLA_FLAGS=--xla_backend_optimization_level=2 pytest`.
if "xla_backend_optimization_level" not in _flags:
  _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags.strip()
# Cache every compiled step in the session's compilation cache (`shared_compile_cache`), not only
# those that took over JAX's default second: at the level above most take less.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import contextlib  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))   # `configs` is a top-level folder, imported as run.py does


@contextlib.contextmanager
def session_folder(tmp_path_factory, name):
  """A folder for one of the session's shared artefacts, and the right to build or read it: with
  pytest-xdist (`pytest -n 2`) every worker is a session of its own, so the artefacts go to the folder
  all workers share, and the first worker to get the lock builds them while the others wait, then
  read what it built (each builder resumes what it finds: data_prep keeps a finished dataset,
  training restores a finished stage). Without xdist, a fresh folder of this session."""
  if os.environ.get("PYTEST_XDIST_WORKER") is None:
    yield tmp_path_factory.mktemp(name)
    return
  from filelock import FileLock
  path = tmp_path_factory.getbasetemp().parent / name
  with FileLock(str(path) + ".lock"):
    path.mkdir(exist_ok=True)
    yield path


# With pytest-xdist (`pytest -n 2`; pyproject's addopts keep each file on one worker, in this order)
# the files go out longest first, so that no worker is left with a long file at the end; the first
# two let one worker train the session's run (`trained`, ~35 s of the first file) while the other
# runs a file of about that length that does not need it. Seconds measured on 2 cores at the tests'
# compiler level (2026-12-05), the training not counted. The files not named follow in their order.
XDIST_ORDER = (
    "test_faults_predict.py",   # 11 + the session's training
    "test_accumulation.py",     # 45
    "test_train.py",            # 74
    "test_distributed.py",      # 43
    "test_api_notebook.py",     # 35
    "test_learns.py",           # 32
    "test_degrade.py",          # 26
    "test_srgan.py",            # 26
    "test_vit.py",              # 23
    "test_gpu_probe.py",        # 23
    "test_swap_ae.py",          # 22
    "test_cpu_conv.py",         # 22
    "test_through_plane.py",    # 21
    "test_monai_parity.py",     # 19
    "test_memory.py",           # 18
    "test_flops.py",            # 16
    "test_compare_models.py",   # 15
    "test_no_recompile.py",     # 15
    "test_baselines.py",        # 13
    "test_pipeline.py",         # 13
    "test_evaluate_predict.py",  # 12
    "test_losses.py",           # 12
)


def pytest_collection_modifyitems(config, items):
  if os.environ.get("PYTEST_XDIST_WORKER") is None:
    return
  rank = {name: i for i, name in enumerate(XDIST_ORDER)}
  first = {}
  for i, item in enumerate(items):
    first.setdefault(item.path.name, i)
  # A stable sort: each file's tests keep their order.
  items.sort(key=lambda item: (rank.get(item.path.name, len(rank)), first[item.path.name]))


@pytest.fixture(scope="session")
def sample_data_dir(tmp_path_factory) -> str:
  """The bundled real sample dataset, built once per test session by data_prep (packages' volumes)."""
  from data_prep import __main__ as data_prep_main
  with session_folder(tmp_path_factory, "data") as data_dir:
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
  """One folder for JAX's persistent compilation cache, shared by the session's trainings (and by
  pytest-xdist's workers: the one that did not train the run loads its steps)."""
  with session_folder(tmp_path_factory, "compile_cache") as path:
    return str(path)


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
  compiled steps go to the session's compilation cache (`shared_compile_cache`). Tests read it; the
  one writer is test_evaluate_predict's report (<workdir>/eval), so a test that copies the workdir
  leaves eval/ out (under xdist the other worker may be writing it)."""
  from mrsr_jax import compile_cache
  from mrsr_jax.train import pipeline
  config = tiny_config(sample_data_dir)
  # Under xdist the second worker's call restores the finished stages the first one trained.
  with session_folder(tmp_path_factory, "run") as workdir, compile_cache.enabled(compile_cache_dir):
    states = pipeline.train(config, str(workdir))
  return config, str(workdir), states


# -- two real jax.distributed processes ----------------------------------------------------------------
TIMEOUT_S = 420


def assert_agree_but_for_reduction_order(ref, other, max_share_off):
  """Trained parameters of two processes (gloo) against one process's: gloo's all-reduce sums in
  another order than XLA's in-process one, and Adam turns round-off in a near-zero gradient into a
  visible share of one step (lr = 1e-3), so a few elements may differ by up to part of a step.
  Different data or a wrong reduction would move almost every element, so the bulk must agree to
  round-off (median < 1e-6) and at most `max_share_off` of the elements be more than 2e-5 off."""
  import jax
  import numpy as np
  ref, other = jax.device_get((ref, other))
  assert jax.tree.structure(ref) == jax.tree.structure(other) and jax.tree.leaves(ref)
  diffs = np.concatenate([np.abs(np.asarray(a) - np.asarray(b)).ravel()
                          for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(other))])
  assert np.median(diffs) < 1e-6, np.median(diffs)
  assert np.mean(diffs > 2e-5) < max_share_off, np.mean(diffs > 2e-5)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_two_processes(args, tmp_path, name):
  """run.py with `args` as processes 0 and 1 of a two-process jax.distributed job (4 CPU devices
  each, gloo collectives); returns their logs, failing the test if either fails or hangs."""
  port = free_port()
  # This process's XLA flags (conftest's compiler level: the reference was compiled with them) with
  # 4 devices instead of 8.
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
             XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count=4".strip(),
             CUDA_VISIBLE_DEVICES="")
  procs = []
  for pid in range(2):
    cmd = [sys.executable, os.path.join(ROOT, "run.py"), *args,
           f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={pid}"]
    log = open(tmp_path / f"{name}{pid}.log", "w")
    procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), log))
  try:
    for p, _ in procs:
      p.wait(timeout=TIMEOUT_S)
  except subprocess.TimeoutExpired:
    for p, _ in procs:
      p.kill()
    pytest.fail(f"multi-process run hung (> {TIMEOUT_S} s); logs in {tmp_path}")
  finally:
    for _, log in procs:
      log.close()
  logs = [(tmp_path / f"{name}{pid}.log").read_text() for pid in range(2)]
  for pid, (p, _) in enumerate(procs):
    assert p.returncode == 0, logs[pid][-4000:]
  return logs
