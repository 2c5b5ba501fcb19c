"""Staged training on real sample slices: every stage steps, resumes bit for bit, guards NaN, and
gives the same update on 1 and on 8 (emulated) devices."""

import os

import jax
import numpy as np
import pytest
from conftest import tiny_config

from mrsr_jax import sharding
from mrsr_jax.train import checkpoints, loop, pipeline
from mrsr_jax.train.stage_sr import SRStage


def latest_params(workdir, stage_name):
  state, step = checkpoints.load_state(os.path.join(workdir, stage_name, "checkpoints"))
  return step, state["params"]


def test_every_stage_trains_and_checkpoints(trained):
  config, workdir, states = trained
  for name in ("vit", "ae", "sr"):
    assert int(states[name].step) == config[name].num_steps
    step, _ = latest_params(workdir, name)
    assert step == config[name].num_steps
    lines = open(os.path.join(workdir, name, "metrics.jsonl")).read().splitlines()
    assert lines, f"no metrics logged for {name}"
    for line in lines:
      assert "nan" not in line.lower()
  assert set(states["sr"].params) == {"gen", "disc"}   # frozen extractors are not trained state


def test_rerun_skips_completed_stages(trained):
  config, workdir, states = trained
  again = pipeline.train(config, workdir)
  for name in states:
    np.testing.assert_array_equal(
        jax.tree.leaves(again[name].params)[0], jax.tree.leaves(states[name].params)[0])


def test_frozen_extractors_unchanged_by_sr_training(trained):
  config, workdir, _ = trained
  # The ViT/AE checkpoints are what the SR stage read; their params must be exactly what it used.
  mesh = sharding.make_mesh()
  frozen = SRStage(config, workdir).frozen(mesh)
  _, vit_params = latest_params(workdir, "vit")
  _, ae_params = latest_params(workdir, "ae")
  for a, b in zip(jax.tree.leaves(frozen["vit"]), jax.tree.leaves(vit_params["vit"]["vit"])):
    np.testing.assert_array_equal(np.asarray(a), b)
  for a, b in zip(jax.tree.leaves(frozen["ae_enc"]), jax.tree.leaves(ae_params["enc"])):
    np.testing.assert_array_equal(np.asarray(a), b)


def test_resume_equals_uninterrupted(trained, tmp_path):
  config, workdir, states = trained
  # Same run, stopped after 2 SR steps (a checkpoint every 2 steps), then restarted to the end.
  config2 = tiny_config(config.data_dir, features_workdir=workdir)
  config2.stages = ("sr",)
  resumed_dir = str(tmp_path / "resumed")
  config2.sr.num_steps = 2
  pipeline.train(config2, resumed_dir)
  config2.sr.num_steps = config.sr.num_steps
  final = pipeline.train(config2, resumed_dir)["sr"]
  for a, b in zip(jax.tree.leaves(final.params), jax.tree.leaves(states["sr"].params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for a, b in zip(jax.tree.leaves(final.batch_stats), jax.tree.leaves(states["sr"].batch_stats)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_nan_guard_stops_and_keeps_last_good_checkpoint(trained, tmp_path):
  config, workdir, _ = trained
  bad = tiny_config(config.data_dir, features_workdir=workdir, learning_rate=float("nan"))
  bad.stages = ("sr",)
  with pytest.raises(loop.NonFiniteLossError, match=r"non-finite loss at step 2: .*g_total=nan"):
    pipeline.train(bad, str(tmp_path / "nan"))
  assert checkpoints.latest_step(str(tmp_path / "nan" / "sr" / "checkpoints")) is None


def test_same_update_on_one_and_eight_devices(trained):
  config, workdir, _ = trained
  assert jax.device_count() == 8, "tests run with 8 emulated CPU devices (conftest.py)"
  stage = SRStage(config, workdir)
  rng = jax.random.key(0)
  batch_np = next(loop.train_iterator(stage, config, 0, sharding.make_mesh(jax.devices()[:1])))
  batch_np = jax.device_get(batch_np)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = sharding.make_mesh(devices)
    init, _ = loop.init_state(stage, mesh)
    state = init(jax.random.key(config.seed))
    step = loop.step_lib.compile_step(stage.update, mesh)
    new, metrics = step(state, sharding.to_global(batch_np, mesh), rng, stage.frozen(mesh))
    results.append((jax.device_get(new.opt_state), jax.device_get(new.batch_stats),
                    jax.device_get(metrics)))
  # Compare the gradients (Adam's first moment after one step is 0.1·g) rather than the params:
  # Adam's first update is lr·g/|g|, whose sign is arbitrary for gradients at round-off level.
  (o1, s1, m1), (o8, s8, m8) = results
  for k in m1:
    np.testing.assert_allclose(m1[k], m8[k], rtol=1e-4, atol=1e-5, err_msg=k)
  # Conv biases feeding BatchNorm have a true gradient of 0 (round-off only): tolerances are
  # relative to the largest gradient of the tree, not of the leaf.
  scale = max(float(np.abs(np.asarray(x)).max()) for x in jax.tree.leaves(o1))
  for a, b in zip(jax.tree.leaves(o1), jax.tree.leaves(o8)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-5 * scale)
  for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s8)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_kill_9_and_restart_equals_uninterrupted(trained, tmp_path):
  """A run killed with SIGKILL right after its first checkpoint, then restarted with the same command,
  ends bit for bit where an uninterrupted run ends."""
  import signal
  import subprocess
  import sys
  import time
  from conftest import ROOT
  config, workdir, _ = trained
  steps = 16
  ref = tiny_config(config.data_dir, features_workdir=workdir, num_steps=steps)
  ref.stages = ("sr",)
  ref_state = pipeline.train(ref, str(tmp_path / "reference"))["sr"]

  run_dir = tmp_path / "killed"
  cmd = [sys.executable, str(ROOT / "run.py"), f"--config={ROOT}/configs/tiny.py",
         f"--workdir={run_dir}", f"--config.data_dir={config.data_dir}", "--config.stages=('sr',)",
         f"--config.sr.features_workdir={workdir}", f"--config.sr.num_steps={steps}"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  first = run_dir / "sr" / "checkpoints" / "2"      # orbax renames a checkpoint here when complete
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None and not first.is_dir():
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = checkpoints.latest_step(str(run_dir / "sr" / "checkpoints"))
  assert killed_at is not None and killed_at < steps, f"not killed mid-run (at {killed_at})"
  r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  step, params = latest_params(str(run_dir), "sr")
  assert step == steps
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
