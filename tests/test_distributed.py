"""Two JAX processes (4 emulated CPU devices each, gloo collectives) train the SR stage and end with
the params of one process with 8 devices: jax.distributed's own multi-controller runtime, for real."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from conftest import ROOT, assert_agree_but_for_reduction_order, run_two_processes

from mrsr_jax.train import checkpoints

def final_params(workdir):
  state, step = checkpoints.load_state(os.path.join(workdir, "sr", "checkpoints"))
  return step, state["params"]


def test_two_processes_match_one_process_with_eight_devices(trained, tmp_path):
  # Reference: the session's trained run: this process, 8 devices, two data readers (conftest's
  # tiny_config: what two processes read, one reader each). Its SR stage is what an SR-only run on its
  # ViT / AE checkpoints gives, bit for bit (test_train.py's test_resume_equals_uninterrupted).
  config, workdir, _ = trained
  assert config.input_readers == 2
  ref_dir = workdir

  multi_dir = str(tmp_path / "two_processes")
  run_two_processes([f"--config={ROOT}/configs/tiny.py", f"--workdir={multi_dir}",
                     f"--config.data_dir={config.data_dir}", "--config.stages=('sr',)",
                     f"--config.sr.features_workdir={workdir}", "--config.input_readers=2"],
                    tmp_path, "proc")
  log0 = (tmp_path / "proc0.log").read_text()
  assert "process 0/2, 4 local / 8 global devices" in log0

  step_ref, p_ref = final_params(ref_dir)
  step_multi, p_multi = final_params(multi_dir)
  assert step_ref == step_multi == config.sr.num_steps
  assert_agree_but_for_reduction_order(p_ref, p_multi, max_share_off=0.01)
  for a, b in zip(jax.tree.leaves(p_ref), jax.tree.leaves(p_multi)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-4)


def _numbers(table):
  """{(lr model, row, contrast, metric): value} of a report's robustness table."""
  return {(m, r, c, k): v for m, rows in table.items() for r, per in rows.items()
          for c, cell in per.items() for k, v in cell.items()}


@pytest.mark.slow
def test_two_process_eval_matches_one_process(trained, tmp_path):
  """Slow (two interpreters, each compiling the eval): multi-process training stays in the default
  suite (test_two_processes_match_one_process_with_eight_devices).

  --mode=eval over two processes: each reads half of the test slices (one volume's slices are
  spread over both, so its data range needs both processes' maxima), and the report is the one this
  process writes with 8 devices; only process 0 writes it."""
  from mrsr_jax import evaluate
  config, workdir, _ = trained
  run = tmp_path / "run"
  shutil.copytree(workdir, run, ignore=shutil.ignore_patterns("eval"))
  ref = evaluate.evaluate(config, str(run))
  ref_figures = sorted(f for f in os.listdir(run / "eval") if f.startswith("fig2_"))
  shutil.rmtree(run / "eval")

  logs = run_two_processes([f"--config={ROOT}/configs/tiny.py", f"--workdir={run}",
                            f"--config.data_dir={config.data_dir}", "--mode=eval"], tmp_path, "eval")
  assert "process 1/2, 4 local / 8 global devices" in logs[1]
  assert "evaluation report written" in logs[0] and "evaluation report written" not in logs[1]
  got = json.loads((run / "eval" / "results.json").read_text())
  assert got["lr_models"] == ref["lr_models"] and len(ref["lr_models"]) >= 2
  want, have = _numbers(ref["robustness"]), _numbers(got["robustness"])
  assert have.keys() == want.keys()
  for key, v in want.items():
    # Slice counts exactly; metrics to float32 round-off of the generator (another device layout).
    assert have[key] == pytest.approx(v, rel=1e-6, abs=1e-6), key
  assert got["results"] == got["robustness"][config.degradation]
  assert sorted(f for f in os.listdir(run / "eval") if f.startswith("fig2_")) == ref_figures
  assert not [f for f in os.listdir(run / "eval") if f.endswith(".tmp")]
