"""Staged training on real sample slices: every stage steps, resumes bit for bit, guards NaN, and
gives the same update on 1 and on 8 (emulated) devices."""

import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_trees_equal, snapshot, tiny_config

from mrsr_jax import losses, sharding
from mrsr_jax.data import records
from mrsr_jax.train import checkpoints, loop, pipeline
from mrsr_jax.train.stage_sr import SRStage, make_lr


def latest_params(workdir, stage_name):
  state, step = checkpoints.load_state(os.path.join(workdir, stage_name, "checkpoints"))
  return step, state["params"]


def losses_on_a_fixed_batch(config, workdir, name, states):
  """{metric: (value at the initial params, value at `states`' params)} of stage `name` on its first
  training batch, with the step's rng: the loop's own compiled step, whose metrics are computed from
  the params it is given (before its update)."""
  stage = SRStage(config, workdir) if name == "sr" else pipeline.STAGES[name](config, workdir)
  stage.num_steps(records.read_info(loop.dataset_dir(config)))   # as train_stage does (LR schedule)
  mesh = sharding.make_mesh()
  batch = next(loop.train_iterator(stage, config, 0, mesh))
  batch.pop("orientation", None)
  init, _ = loop.init_state(stage, mesh)
  step = loop.step_lib.compile_step(stage.update, mesh, stage.microbatches(mesh.devices.size))
  rng, frozen = loop.step_lib.step_rng(config.seed, 0), stage.frozen(mesh)
  # The step donates its state: the session's trained state goes in as a copy.
  before = jax.device_get(step(init(jax.random.key(config.seed)), batch, rng, frozen)[1])
  after = jax.device_get(step(jax.tree.map(jnp.copy, states[name]), batch, rng, frozen)[1])
  return {k: (float(before[k]), float(after[k])) for k in before}


def test_every_stage_trains_and_checkpoints(trained, shared_compile_cache):
  config, workdir, states = trained
  mesh = sharding.make_mesh()
  for name in ("vit", "ae", "sr"):
    assert int(states[name].step) == config[name].num_steps
    step, params = latest_params(workdir, name)
    assert step == config[name].num_steps
    assert_trees_equal(params, states[name].params)          # the checkpoint is the final state
    # Trained: every network of the stage moved away from its initialisation.
    stage = SRStage(config, workdir) if name == "sr" else pipeline.STAGES[name](config, workdir)
    with shared_compile_cache():         # the loop's own compiled initialisation
      init = jax.device_get(loop.init_state(stage, mesh)[0](jax.random.key(config.seed)).params)
    assert set(init) == set(params), name
    for net in params:
      assert jax.tree.structure(init[net]) == jax.tree.structure(params[net]), (name, net)
      moved = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, b), init[net], params[net]))
      assert sum(moved) >= 0.5 * len(moved), (name, net, f"{sum(moved)} of {len(moved)} leaves changed")
    lines = open(os.path.join(workdir, name, "metrics.jsonl")).read().splitlines()
    assert lines, f"no metrics logged for {name}"
    for line in lines:
      assert "nan" not in line.lower()
  assert set(states["sr"].params) == {"gen", "disc"}   # frozen extractors are not trained state
  # Learned: the ViT's pretext loss and the autoencoder's reconstruction loss fall on a fixed batch.
  # (That the SR generator learns is test_learns.py's: its 4 steps here are adversarial.)
  for name, key in (("vit", "loss"), ("ae", "g_rec")):
    with shared_compile_cache():       # the loop's own compiled step, from the session's cache
      before, after = losses_on_a_fixed_batch(config, workdir, name, states)[key]
    print(f"{name} {key}: {before:.4f} at init -> {after:.4f} trained")
    assert after < before, (name, key, before, after)


def test_rerun_skips_completed_stages(trained, caplog):
  config, workdir, states = trained
  # A rerun that retrained (CPU training is bit-deterministic, so the params alone could not tell)
  # would rewrite checkpoints and append to metrics.jsonl.
  before = {name: snapshot(os.path.join(workdir, name)) for name in states}
  caplog.set_level(logging.INFO, logger="absl")
  again = pipeline.train(config, workdir)
  for name in states:
    assert snapshot(os.path.join(workdir, name)) == before[name], name
    n = config[name].num_steps
    assert f"[{name}] complete ({n}/{n} steps); skipped" in caplog.text
    assert_trees_equal(again[name].params, states[name].params)
  assert "training steps" not in caplog.text


def test_frozen_extractors_unchanged_by_sr_training(trained):
  config, workdir, _ = trained
  # The ViT/AE checkpoints are what the SR stage read; their params must be exactly what it used.
  mesh = sharding.make_mesh()
  frozen = SRStage(config, workdir).frozen(mesh)
  _, vit_params = latest_params(workdir, "vit")
  _, ae_params = latest_params(workdir, "ae")
  assert_trees_equal(frozen["vit"], vit_params["vit"]["vit"])
  assert_trees_equal(frozen["ae_enc"], ae_params["enc"])


def metric_steps(workdir, stage="sr", key="sr/g_total"):
  """The steps `key` was logged at in metrics.jsonl, in file order."""
  import json
  with open(os.path.join(workdir, stage, "metrics.jsonl")) as f:
    return [r["step"] for r in map(json.loads, f) if key in r]


def test_resume_equals_uninterrupted(trained, tmp_path, caplog, monkeypatch, shared_compile_cache):
  config, workdir, states = trained
  # Same run, crashed after 2 SR steps (a checkpoint every 2 steps), then rerun to the end.
  config2 = tiny_config(config.data_dir, features_workdir=workdir)
  config2.stages = ("sr",)
  resumed_dir = str(tmp_path / "resumed")
  all_batches = loop.train_iterator

  def two_batches(*args, **kwargs):
    batches = all_batches(*args, **kwargs)
    yield next(batches)
    yield next(batches)

  monkeypatch.setattr(loop, "train_iterator", two_batches)
  # The compiled step comes from the session's cache (the trained run's SR step), as a resumed run.py
  # run loads its own: the same executable, so the bit-for-bit comparison below is unaffected.
  with pytest.raises(RuntimeError, match=r"\[sr\] the training data ran out at step 2"), shared_compile_cache():
    pipeline.train(config2, resumed_dir)
  monkeypatch.setattr(loop, "train_iterator", all_batches)
  ckpt_dir = os.path.join(resumed_dir, "sr", "checkpoints")
  first = os.stat(os.path.join(ckpt_dir, "2")).st_mtime_ns
  # As a run killed while orbax was writing step 4 leaves it: its temporary folder, half-written (the
  # subprocess kill -9 test, marked slow, does this for real). It is neither restored nor kept.
  partial = os.path.join(ckpt_dir, "4.orbax-checkpoint-tmp-1234567890")
  shutil.copytree(os.path.join(ckpt_dir, "2"), partial)
  for dirpath, _, files in os.walk(partial):
    for name in files[: len(files) // 2]:
      os.remove(os.path.join(dirpath, name))
  assert checkpoints.latest_step(ckpt_dir) == 2
  caplog.set_level(logging.INFO, logger="absl")
  caplog.clear()
  with shared_compile_cache():
    final = pipeline.train(config2, resumed_dir)["sr"]
  # It continued from step 2: said so, ran only steps 2..4, kept the step-2 checkpoint as it was, and
  # logged each step once (a silent restart from 0 would fail each of these).
  assert f"[sr] training steps 2..{config.sr.num_steps}" in caplog.text
  assert "[sr] training steps 0.." not in caplog.text
  assert os.stat(os.path.join(ckpt_dir, "2")).st_mtime_ns == first
  assert not any(".orbax-checkpoint-tmp" in n for n in os.listdir(ckpt_dir)), os.listdir(ckpt_dir)
  assert metric_steps(resumed_dir) == list(range(2, config.sr.num_steps + 1, 2))
  assert_trees_equal(final.params, states["sr"].params)
  assert_trees_equal(final.batch_stats, states["sr"].batch_stats)


@pytest.mark.parametrize("every, caught", [
    (1, r"step 3 made the train state non-finite \(\.params\[.*not saved: stopping, the last good "
        r"checkpoint \(step 2\) in .* is intact\."),
    (2, r"non-finite loss at step 4: .*g_total=nan.*stopping, the last good checkpoint \(step 2\)"),
])
def test_nan_guard_never_saves_nonfinite_state(trained, tmp_path, monkeypatch, shared_compile_cache, every,
                                              caught):
  """The learning rate turns NaN at the 3rd update: the state after step 3 is NaN while the loss of
  step 3 (computed before its update) is finite. With a checkpoint every step, the state check stops
  the save of step 3; otherwise the loss of step 4 stops the run. Either way the newest checkpoint on
  disk is the finite step 2 the message names."""
  import optax
  from mrsr_jax.train import stage_sr
  config, workdir, _ = trained

  def nan_after_two_updates(learning_rate, **unused):
    lr = learning_rate if callable(learning_rate) else (lambda count: learning_rate)
    return optax.adam(lambda count: jnp.where(count < 2, lr(count), jnp.nan))

  monkeypatch.setattr(stage_sr, "make_optimizer", nan_after_two_updates)
  bad = tiny_config(config.data_dir, features_workdir=workdir, num_steps=6)
  bad.stages = ("sr",)
  bad.checkpoint_every_steps = every
  bad.log_every_steps = every
  bad.image_every_steps = 0
  run = tmp_path / "nan"
  # One compile for both cases (the session's cache).
  with pytest.raises(loop.NonFiniteLossError, match=caught), shared_compile_cache():
    pipeline.train(bad, str(run))
  ckpt_dir = str(run / "sr" / "checkpoints")
  assert checkpoints.latest_step(ckpt_dir) == 2
  saved, _ = checkpoints.load_state(ckpt_dir)
  for path, leaf in jax.tree_util.tree_flatten_with_path(saved)[0]:
    assert np.all(np.isfinite(leaf)), jax.tree_util.keystr(path)
  assert not (run / "sr" / "checkpoints" / "3").exists()


def test_same_update_on_one_and_eight_devices(trained, shared_compile_cache):
  config, workdir, _ = trained
  assert jax.device_count() == 8, "tests run with 8 emulated CPU devices (conftest.py)"
  stage = SRStage(config, workdir)
  stage.num_steps(records.read_info(loop.dataset_dir(config)))   # as train_stage does (LR schedule)
  rng = jax.random.key(0)
  batch_np = next(loop.train_iterator(stage, config, 0, sharding.make_mesh(jax.devices()[:1])))
  batch_np = jax.device_get(batch_np)
  batch_np.pop("orientation", None)   # host-side strings for image summaries; the loop pops them too
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = sharding.make_mesh(devices)
    with shared_compile_cache():      # on eight devices, the trained run's initialisation and step
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
  assert_trees_equal(o1, o8, lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * scale))
  assert_trees_equal(s1, s8, lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5))


@pytest.mark.slow
def test_kill_9_during_a_save_then_restart_resumes_and_equals_uninterrupted(trained, tmp_path):
  """A run killed with SIGKILL while orbax is writing a checkpoint (its temporary directory exists),
  then restarted with the same command: the last complete checkpoint restores, the rerun resumes from
  it (not from 0), every step is in metrics.jsonl once, and it ends bit for bit where an uninterrupted
  run ends. Slow (two interpreters, two trainings: ~75 s alone); the default suite checks the same
  resume logic in-process on a half-written orbax temporary folder (test_resume_equals_uninterrupted)."""
  import re
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
  ckpt_dir = run_dir / "sr" / "checkpoints"
  cmd = [sys.executable, str(ROOT / "run.py"), f"--config={ROOT}/configs/tiny.py",
         f"--workdir={run_dir}", f"--config.data_dir={config.data_dir}", "--config.stages=('sr',)",
         f"--config.sr.features_workdir={workdir}", f"--config.sr.num_steps={steps}",
         f"--config.input_readers={ref.input_readers}"]
  # The restart loads the killed run's compiled step from JAX's persistent cache instead of compiling
  # it again (the same executable, so the bit-for-bit comparison is unaffected; test time only).
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  # Kill while a save after the first complete one is in progress (orbax writes into
  # `<step>.orbax-checkpoint-tmp-*` and renames it to `<step>` when complete).
  saving = None
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None and saving is None:
    names = os.listdir(ckpt_dir) if ckpt_dir.is_dir() else []
    if "2" in names:
      saving = next((n for n in names if re.match(r"\d+\.orbax-checkpoint-tmp", n)), None)
    time.sleep(0.001)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert saving is not None, "the run ended before a save could be interrupted"
  killed_at = checkpoints.latest_step(str(ckpt_dir))
  assert killed_at is not None and 2 <= killed_at < int(saving.split(".")[0]), (killed_at, saving)
  kept, _ = checkpoints.load_state(str(ckpt_dir))           # the last good checkpoint restores
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(kept))

  r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"[sr] training steps {killed_at}..{steps}" in r.stderr, r.stderr[-3000:]
  assert not any(".orbax-checkpoint-tmp" in n for n in os.listdir(ckpt_dir))
  assert metric_steps(str(run_dir)) == list(range(2, steps + 1, 2))
  step, params = latest_params(str(run_dir), "sr")
  assert step == steps
  assert_trees_equal(params, ref_state.params)


# -- how G and D meet in the SR step (sr.disc_bn_in_g, sr.gd_update; paper_deviations.md) ------------
@pytest.fixture(scope="module")
def sr_step(sample_data_dir):
  """A tiny SR stage whose loss is pixel + adversarial only (no frozen extractors needed), its fresh
  state after one D pass in train mode (so D's running statistics are not their initial 0 / 1), a real
  training batch, its HR and LR (the config's one degradation) and G's output on it."""
  config = tiny_config(sample_data_dir)
  config.sr.lr_mix.update(bicubic=0.0, gaussian=0.0, kspace=0.0)     # LR = make_lr, no randomness
  config.sr.loss.update(adv_weight=1.0, lambda_vit=0.0, lambda_str=0.0, lambda_tex=0.0)
  stage = SRStage(config, "/nonexistent")
  mesh = sharding.make_mesh(jax.devices()[:1])
  init, _ = loop.init_state(stage, mesh)
  state = init(jax.random.key(config.seed))
  batch = jax.device_get(next(loop.train_iterator(stage, config, 0, mesh)))
  batch = {k: np.asarray(batch[k]) for k in ("hr", "label")}     # what the SR step reads
  hr = jnp.asarray(batch["hr"], jnp.float32)
  _, warm_stats = stage._disc(state.params["disc"], state.batch_stats["disc"], jnp.flip(hr, 1))
  state = state.replace(batch_stats={**state.batch_stats, "disc": warm_stats})
  lr = make_lr(config, hr)
  sr, _ = stage._generate(state.params["gen"], state.batch_stats["gen"], lr, train=True)
  return stage, state, batch, hr, sr


_COMPILED = {}   # (disc_bn_in_g, gd_update, adv_weight) -> the SR update compiled for the fixture's state


def _compiled_step(stage, state, batch):
  """The SR update for config.sr as it is now, compiled once per setting the tests use (a fresh
  function each time: jit would reuse the trace of a bound method it has seen, whatever the config
  says now); the tests share the settings they have in common."""
  key = (stage.cfg.disc_bn_in_g, stage.cfg.gd_update, float(stage.cfg.loss.adv_weight))
  if key not in _COMPILED:
    _COMPILED[key] = jax.jit(lambda *a: stage.update(*a)).lower(state, batch, jax.random.key(1), {}).compile()
  return _COMPILED[key]


def _step(stage, state, batch, **fields):
  """One SR update with `fields` of config.sr set."""
  stage.cfg.update(fields)
  return jax.device_get(_compiled_step(stage, state, batch)(state, batch, jax.random.key(1), {}))


def test_disc_batchnorm_in_the_generator_loss(sr_step):
  """'train' normalises D's logits on SR by the SR batch alone, 'eval' by D's running statistics (one
  item's logit independent of the others), 'joint' by the [HR; SR] batch of D's own step; and the
  step's L_adv is computed from the logits the mode says."""
  stage, state, batch, hr, sr = sr_step
  dp, ds = state.params["disc"], state.batch_stats["disc"]
  other_sr = sr.at[1:].set(jnp.flip(sr[1:], 2))    # item 0 unchanged, the rest of the batch changed
  other_hr = jnp.flip(hr, 2)
  logits = {}
  for mode in ("train", "eval", "joint"):
    stage.cfg.disc_bn_in_g = mode
    f = lambda h, s: np.asarray(stage._fake_logits_for_g(dp, ds, h, s)).ravel()
    logits[mode] = f(hr, sr)
    changes_with_batch = not np.allclose(f(hr, other_sr)[0], logits[mode][0], rtol=1e-5, atol=1e-6)
    changes_with_hr = not np.allclose(f(other_hr, sr), logits[mode], rtol=1e-5, atol=1e-6)
    assert (changes_with_batch, changes_with_hr) == {"train": (True, False), "eval": (False, False),
                                                     "joint": (True, True)}[mode], mode
  np.testing.assert_allclose(logits["eval"], np.asarray(stage.disc.apply(
      {"params": dp, "batch_stats": ds}, sr, train=False)).ravel(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(logits["joint"], np.asarray(
      stage._disc(dp, ds, jnp.concatenate([hr, sr]))[0][len(hr):]).ravel(), rtol=1e-5, atol=1e-6)
  assert not np.allclose(logits["train"], logits["eval"]) and not np.allclose(logits["eval"],
                                                                                logits["joint"])
  # That the step takes L_adv from the mode's logits is checked in the next test ("train", "eval").


def test_alternating_updates_take_g_against_the_updated_d(sr_step):
  """'alternating' (SRGAN's order): D's update is the same as 'simultaneous' (both see G's output
  before the step), but G's L_adv — and so its gradient — comes from D after its update."""
  stage, state, batch, hr, sr = sr_step
  # Two compiled steps serve two checks: the orders, and that the step's L_adv follows disc_bn_in_g.
  sim, m_sim = _step(stage, state, batch, disc_bn_in_g="train", gd_update="simultaneous")
  alt, m_alt = _step(stage, state, batch, disc_bn_in_g="eval", gd_update="alternating")
  assert int(sim.step) == int(alt.step) == int(state.step) + 1
  assert_trees_equal((sim.params["disc"], sim.batch_stats["disc"]),
                     (alt.params["disc"], alt.batch_stats["disc"]),
                     lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7))
  assert float(m_sim["d_loss"]) == pytest.approx(float(m_alt["d_loss"]), rel=1e-6)

  def adv(mode, disc_params, disc_stats):   # G's L_adv against a given D
    stage.cfg.disc_bn_in_g = mode
    return float(losses.generator_adv_loss(stage._fake_logits_for_g(disc_params, disc_stats, hr, sr)))

  old_d, new_d = (state.params["disc"], state.batch_stats["disc"]), (alt.params["disc"],
                                                                       alt.batch_stats["disc"])
  assert float(m_sim["g_adv"]) == pytest.approx(adv("train", *old_d), rel=1e-5)
  assert float(m_alt["g_adv"]) == pytest.approx(adv("eval", *new_d), rel=1e-5)
  assert abs(adv("eval", *new_d) - adv("eval", *old_d)) > 1e-4     # the updated D is another D
  # Different L_adv gradients, different generators after the step.
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(sim.params["gen"]),
                                                   jax.tree.leaves(alt.params["gen"])))


def test_without_l_adv_the_step_leaves_d_out(sr_step):
  """adv_weight = 0: D has no effect on G, so the step neither runs D nor updates it (params,
  optimiser state and running statistics stay as they were, no d_loss), at about half the FLOPs;
  G's update is the one the loss asks for (its pixel term is unchanged by D's absence)."""
  stage, state, batch, _, _ = sr_step
  rng = jax.random.key(1)
  flops, result = {}, {}
  try:
    # With L_adv on, the step of the previous test's "simultaneous" case: compiled once for both.
    stage.cfg.update(disc_bn_in_g="train", gd_update="simultaneous")
    for adv in (1.0, 0.0):
      stage.cfg.loss.adv_weight = adv
      step = _compiled_step(stage, state, batch)
      flops[adv] = step.cost_analysis()["flops"]
      result[adv] = jax.device_get(step(state, batch, rng, {}))
  finally:
    stage.cfg.loss.adv_weight = 1.0     # the module's fixture is shared
    stage.cfg.gd_update = "simultaneous"
  new, metrics = result[0.0]
  assert "d_loss" not in metrics and "g_adv" not in metrics and "d_loss" in result[1.0][1]
  before = jax.device_get((state.params["disc"], state.opt_state["disc"], state.batch_stats["disc"]))
  assert_trees_equal(before, (new.params["disc"], new.opt_state["disc"], new.batch_stats["disc"]))
  assert int(new.step) == int(state.step) + 1
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(state.params["gen"]),
                                                   jax.tree.leaves(new.params["gen"])))
  assert flops[0.0] < 0.6 * flops[1.0], flops
  # "alternating" without D is the same step.
  try:
    stage.cfg.loss.adv_weight = 0.0
    alt, _ = _step(stage, state, batch, gd_update="alternating")
  finally:
    stage.cfg.loss.adv_weight = 1.0
    stage.cfg.gd_update = "simultaneous"
  assert_trees_equal(alt.params, new.params,
                     lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7))
