"""Two JAX processes (4 emulated CPU devices each, gloo collectives) train the SR stage and end with
the params of one process with 8 devices: jax.distributed's own multi-controller runtime, for real."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import ROOT, tiny_config

from mrsr_jax.train import checkpoints, pipeline

TIMEOUT_S = 420


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def final_params(workdir):
  state, step = checkpoints.load_state(os.path.join(workdir, "sr", "checkpoints"))
  return step, state["params"]


def test_two_processes_match_one_process_with_eight_devices(trained, tmp_path):
  config, workdir, _ = trained
  # Reference: this process, 8 devices, two data readers (what two processes will run).
  ref = tiny_config(config.data_dir, features_workdir=workdir)
  ref.stages = ("sr",)
  ref.input_readers = 2
  ref_dir = str(tmp_path / "one_process")
  pipeline.train(ref, ref_dir)

  port = free_port()
  multi_dir = str(tmp_path / "two_processes")
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
             XLA_FLAGS="--xla_force_host_platform_device_count=4", CUDA_VISIBLE_DEVICES="")
  procs = []
  for pid in range(2):
    cmd = [sys.executable, os.path.join(ROOT, "run.py"), f"--config={ROOT}/configs/tiny.py",
           f"--workdir={multi_dir}", f"--config.data_dir={config.data_dir}",
           "--config.stages=('sr',)", f"--config.sr.features_workdir={workdir}",
           "--config.input_readers=2", f"--coordinator_address=127.0.0.1:{port}",
           "--num_processes=2", f"--process_id={pid}"]
    log = open(tmp_path / f"proc{pid}.log", "w")
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
  for pid, (p, _) in enumerate(procs):
    assert p.returncode == 0, (tmp_path / f"proc{pid}.log").read_text()[-4000:]
  log0 = (tmp_path / "proc0.log").read_text()
  assert "process 0/2, 4 local / 8 global devices" in log0

  step_ref, p_ref = final_params(ref_dir)
  step_multi, p_multi = final_params(multi_dir)
  assert step_ref == step_multi == ref.sr.num_steps
  leaves_ref, leaves_multi = jax.tree.leaves(p_ref), jax.tree.leaves(p_multi)
  assert len(leaves_ref) == len(leaves_multi)
  # Float tolerance: gloo's all-reduce sums in another order than XLA's in-process one, and Adam
  # turns round-off in a near-zero gradient into a visible share of one step (lr = 1e-3): a handful
  # of elements may differ by up to half a step. Different data or a wrong reduction would move
  # almost every element, so the bulk must agree to round-off.
  diffs = np.concatenate([np.abs(np.asarray(a) - np.asarray(b)).ravel()
                          for a, b in zip(leaves_ref, leaves_multi)])
  assert np.median(diffs) < 1e-6, np.median(diffs)
  assert np.mean(diffs > 2e-5) < 0.01, np.mean(diffs > 2e-5)
  for a, b in zip(leaves_ref, leaves_multi):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-4)
