"""The notebook API: its loss breakdown is Eq. 9 (each term recomputed in numpy), a user loss
term trains through the SR step, and examples/loss_experiments.ipynb runs top to bottom."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, assert_trees_equal

from mrsr_jax import api, features
from mrsr_jax.data import degrade
from mrsr_jax.models import srgan
from mrsr_jax.train import checkpoints

NOTEBOOK = ROOT / "examples" / "loss_experiments.ipynb"


def edge_loss(*, sr, hr, **unused):
  """Gradient difference: L1 between vertical finite differences of SR and HR."""
  return jnp.mean(jnp.abs((sr[:, 1:] - sr[:, :-1]) - (hr[:, 1:] - hr[:, :-1])))


# -- configs ----------------------------------------------------------------------------------------
def test_load_config_by_name_path_and_overrides(tmp_path):
  config = api.load_config("tiny", data_dir=str(tmp_path), overrides={"sr.loss.lambda_vit": 0.25,
                                                                       "sr.num_steps": 7})
  assert config.data_dir == str(tmp_path)
  assert config.sr.loss.lambda_vit == 0.25 and config.sr.num_steps == 7
  assert api.load_config("tiny").sr.loss.lambda_vit == 1.0          # no shared state between loads
  by_path = api.load_config(str(ROOT / "configs" / "demo.py"))
  assert by_path.crop_size == api.load_config("demo").crop_size
  row = api.load_config("ablation_vit:ixi_x2")
  assert row.stages == ("sr",) and row.scale == 2 and row.sr.loss.lambda_str == 0.0
  with pytest.raises(ValueError, match="no config 'nope'"):
    api.load_config("nope")
  with pytest.raises(ValueError, match="sr.loss.lambda_typo"):
    api.load_config("tiny", overrides={"sr.loss.lambda_typo": 1.0})
  with pytest.raises(ValueError, match="not a row of Tables 1-2"):
    api.with_loss(config, "vit+everything")


def test_package_import_is_light():
  code = "import sys, mrsr_jax; print('tensorflow' in sys.modules); print(mrsr_jax.__all__)"
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  assert out.stdout.split("\n")[0] == "False", "importing mrsr_jax imported TensorFlow"


# -- the loss breakdown -----------------------------------------------------------------------------
def test_loss_breakdown_equals_sr_generator_loss_by_hand(trained):
  config, workdir, states = trained
  from mrsr_jax.data import records
  info = os.path.join(records.prepared_dir(os.path.join(config.data_dir, "sample")), "dataset_info.json")
  before = os.stat(info).st_mtime_ns
  assert api.prepare_sample_data(config) == os.path.join(config.data_dir, "sample")
  assert os.stat(info).st_mtime_ns == before, "existing shards were rebuilt"
  ixi = api.load_config("tiny", data_dir=config.data_dir, overrides={"dataset": "ixi"})
  with pytest.raises(ValueError, match="not 'sample'"):
    api.prepare_sample_data(ixi)
  batch = api.get_batch(config)
  assert batch["hr"].shape == (config.sr.batch_size, config.crop_size, config.crop_size, 1)
  np.testing.assert_allclose(batch["lr"], degrade.downsample(jnp.asarray(batch["hr"]), config.scale),
                             atol=1e-6)
  frozen = api.load_feature_extractors(config, workdir)
  state = states["sr"]
  got = api.loss_breakdown(config, batch, frozen, state, extra_losses={"edge": (2.0, edge_loss)})

  # By hand: the generator and discriminator in inference mode, features of SR and of the config's
  # feature target (bicubic(LR) for the paper's "lr", the HR slice for "hr").
  hr = jnp.asarray(batch["hr"])
  lr = degrade.downsample(hr, config.scale)
  sr = srgan.SRGenerator(scale=config.scale, **config.sr.model).apply(
      {"params": state.params["gen"], "batch_stats": state.batch_stats["gen"]}, lr, train=False)
  logits = srgan.SRDiscriminator(features=config.sr.disc_features).apply(
      {"params": state.params["disc"], "batch_stats": state.batch_stats["disc"]}, sr, train=False)
  which = {"vit", "z_s", "z_t"}
  feats_sr = features.extract(config, frozen, sr, which)
  target = degrade.upsample_bicubic(lr, config.scale) if config.sr.loss.feature_target == "lr" else hr
  feats_lr = features.extract(config, frozen, target, which)
  # Each term of Eq. 9 in float64 numpy, not through mrsr_jax.losses (the code under test):
  # L_adv = mean -log sigmoid(D(y)), the feature terms 1 - cosine per item, the pixel term L1.
  f64 = lambda x: np.asarray(x, np.float64)

  def cosine(a, b):
    a, b = f64(a).reshape(len(a), -1), f64(b).reshape(len(b), -1)
    return float(np.mean(1 - np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))

  terms = {"adv": float(np.mean(np.logaddexp(0.0, -f64(logits)))),
           "vit": cosine(feats_sr["vit"], feats_lr["vit"]), "str": cosine(feats_sr["z_s"], feats_lr["z_s"]),
           "tex": cosine(feats_sr["z_t"], feats_lr["z_t"]), "pixel": float(np.mean(np.abs(f64(sr) - f64(hr))))}
  w = config.sr.loss
  total = (w.adv_weight * terms["adv"] + w.lambda_vit * terms["vit"] + w.lambda_str * terms["str"]
           + w.lambda_tex * terms["tex"] + w.pixel_weight * terms["pixel"])
  edge = float(edge_loss(sr=sr, hr=hr))
  assert set(got.terms) == {"adv", "vit", "str", "tex", "pixel", "edge"}
  for name in ("adv", "vit", "str", "tex", "pixel"):
    np.testing.assert_allclose(got.terms[name], float(terms[name]), rtol=2e-4, atol=1e-6, err_msg=name)
  np.testing.assert_allclose(got.terms["edge"], edge, rtol=2e-4)
  np.testing.assert_allclose(got.total, float(total) + 2.0 * edge, rtol=2e-4)
  assert got.weights["tex"] == config.sr.loss.lambda_tex and got.weights["edge"] == 2.0

  # A zero weight keeps the term in the breakdown (unweighted) but out of the total.
  ablated = api.loss_breakdown(api.with_loss(config, "vit"), batch, frozen, state)
  np.testing.assert_allclose(ablated.terms["str"], float(terms["str"]), rtol=2e-4)
  np.testing.assert_allclose(ablated.total, float(total) - config.sr.loss.lambda_str * float(terms["str"])
                             - config.sr.loss.lambda_tex * float(terms["tex"]), rtol=2e-4)
  # The feature target itself has vanishing feature terms: bicubic(LR) with the paper's "lr" target
  # (why it pulls SR back to the baseline), the HR slice with "hr" (the demo's).
  bic = api.loss_breakdown(config, batch, frozen, state, sr=batch["bicubic"])
  at_target = api.loss_breakdown(config, batch, frozen, state,
                                 sr=batch["bicubic"] if config.sr.loss.feature_target == "lr" else batch["hr"])
  assert max(abs(at_target.terms[k]) for k in ("vit", "str", "tex")) < 1e-4
  lr_target = api.loss_breakdown(api.load_config("tiny", data_dir=config.data_dir,
                                                 overrides={"sr.loss.feature_target": "lr"}),
                                 batch, frozen, state, sr=batch["bicubic"])
  assert max(abs(lr_target.terms[k]) for k in ("vit", "str", "tex")) < 1e-4
  with pytest.raises(ValueError, match="extra loss 'bad' must return a scalar"):
    api.loss_breakdown(config, batch, frozen, state, extra_losses={"bad": (1.0, lambda *, sr, **_: sr)})
  table = api.loss_table({"trained": got, "bicubic": bic})
  assert "| trained |" in table and "L_edge" in table and "*weight (trained)*" in table


# -- a user loss term through the training step ------------------------------------------------------
def test_custom_loss_term_trains_through_the_sr_step(trained, tmp_path):
  config, workdir, _ = trained
  config = config.copy_and_resolve_references()
  config.log_every_steps, config.image_every_steps = 1, 0
  n, weight, run = config.sr.num_steps, 50.0, str(tmp_path / "edge")
  state = api.train_sr(config, run, features_workdir=workdir, extra_losses={"edge": (weight, edge_loss)})
  assert int(state.step) == n

  curves = api.read_curves(run)
  steps, edge = curves["sr/g_edge"]
  assert list(steps) == list(range(1, n + 1)) and np.all(np.isfinite(edge)) and np.all(edge > 0)
  # The logged total is the built-in terms plus weight * edge: all computed in the one compiled step.
  w = {"adv": config.sr.loss.adv_weight, "vit": config.sr.loss.lambda_vit,
       "str": config.sr.loss.lambda_str, "tex": config.sr.loss.lambda_tex,
       "pixel": config.sr.loss.pixel_weight}
  builtin = sum(w[k] * curves[f"sr/g_{k}"][1] for k in w)
  np.testing.assert_allclose(curves["sr/g_total"][1], builtin + weight * edge, rtol=1e-4)

  # The control: the fixture's SR stage is this very run without the term (same config, seed, batches
  # and frozen features), so a weighted term is the only reason the generator can differ.
  control, step = checkpoints.load_state(os.path.join(workdir, "sr", "checkpoints"), step=n)
  assert step == n
  mine = jax.tree.leaves(jax.device_get(state.params["gen"]))
  theirs = jax.tree.leaves(control["params"]["gen"])
  assert len(mine) == len(theirs)
  assert max(float(np.max(np.abs(a - b))) for a, b in zip(mine, theirs)) > 1e-4


# -- the notebook's helpers, in-process (the notebook itself runs under the slow marker) ----------------
def test_notebook_helpers_on_the_trained_run(trained, tmp_path):
  """init_networks, count_params, plot_curves, show_images and compare_runs as the notebook calls them:
  fresh states are the loop's initialisation, curves have one panel per loss term, and compare_runs'
  PSNRs are those of its images (recomputed in numpy: per image, the image's maximum as range)."""
  import matplotlib.pyplot as plt
  config, workdir, states = trained
  fresh = api.init_networks(config, stages=("sr",))["sr"]
  assert api.count_params(fresh) == api.count_params(states["sr"]) == sum(
      np.size(x) for x in jax.tree.leaves(states["sr"].params)) > 0
  assert_trees_equal(jax.tree.map(np.shape, fresh.params), jax.tree.map(np.shape, states["sr"].params))
  with pytest.raises(ValueError, match=r"unknown stage\(s\) \['gan'\]"):
    api.init_networks(config, stages=("gan",))
  fig = api.plot_curves({"trained": workdir}, keys=["g_total", "g_pixel"], path=str(tmp_path / "c.png"))
  assert [ax.get_title() for ax in fig.axes if ax.lines] == ["g_total", "g_pixel"]
  steps, values = fig.axes[0].lines[0].get_data()
  np.testing.assert_allclose(values, api.read_curves(workdir)["sr/g_total"][1])
  assert (tmp_path / "c.png").stat().st_size > 1000
  batch = api.get_batch(config)
  fig, psnr = api.compare_runs(config, batch, {"trained": workdir}, path=str(tmp_path / "cmp.png"))
  hr = np.asarray(batch["hr"], np.float64)[..., 0]
  for name, image in (("bicubic", batch["bicubic"]),
                      ("trained", api.super_resolve(config, workdir, batch["lr"]))):
    pred = np.asarray(image, np.float64)[..., 0]
    mse = np.mean((pred - hr) ** 2, axis=(1, 2))
    want = np.mean(10 * np.log10(hr.max(axis=(1, 2)) ** 2 / mse))
    assert psnr[name] == pytest.approx(want, rel=1e-4), name
  # The figure's first row: LR, bicubic, the run and HR, each titled with its name.
  assert [ax.get_title().split("\n")[0] for ax in fig.axes[:4]] == ["LR (nearest)", "bicubic", "trained", "HR"]
  plt.close("all")


# -- the notebook -----------------------------------------------------------------------------------
def test_notebook_is_stored_with_its_outputs_and_opens_in_colab():
  nbformat = pytest.importorskip("nbformat")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  # Stored executed at demo settings, so a reader on a code host sees its figures and tables without
  # running it; kept small (PNG at a modest dpi).
  stored = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  assert sum("image/png" in o.get("data", {}) for o in stored) >= 3, "stored without its figures"
  assert any("L_vit" in o.get("data", {}).get("text/markdown", "") for o in stored)
  assert not any(o.get("output_type") == "error" for o in stored)
  assert NOTEBOOK.stat().st_size < 2_000_000
  # It opens in Colab: the first code cell sets it up there, and only there.
  first = next(c for c in nb.cells if c.cell_type == "code")
  assert 'if "google.colab" in sys.modules:' in first.source and "colab_setup.py" in first.source
  # No badge to a URL the project does not publish: the intro says how to open it on Colab, and the
  # first cell refuses to run there without the copy's URL rather than cloning a placeholder.
  assert "colab.research.google.com" not in nb.cells[0].source
  assert "File > Upload notebook" in nb.cells[0].source and "MRSR_REPO_URL" in nb.cells[0].source
  assert 'REPO_URL = os.environ.get("MRSR_REPO_URL", "")' in first.source and "SystemExit" in first.source


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(sample_data_dir, tmp_path, monkeypatch):
  """Slow (a kernel that trains eight tiny runs: ~4 min on a loaded 2-core machine); the API calls it
  makes are tested in-process above, and the stored notebook's outputs in the default suite."""
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  pytest.importorskip("ipykernel")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  workdir = tmp_path / "runs"
  # The kernel is a fresh process that sees the repository as an installed package would, one CPU
  # device (a Colab-like runtime), tiny networks and a few steps. With 2 steps per run it compiles far
  # more than it computes, so XLA skips its expensive LLVM passes (halves the time; same results).
  flags = os.environ.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "")
  monkeypatch.setenv("XLA_FLAGS", flags + " --xla_backend_optimization_level=0"
                     " --xla_llvm_disable_expensive_passes=true")
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
  monkeypatch.setenv("MRSR_NOTEBOOK_CONFIG", "tiny")
  monkeypatch.setenv("MRSR_NOTEBOOK_STEPS", "2")
  monkeypatch.setenv("MRSR_NOTEBOOK_DATA_DIR", sample_data_dir)
  monkeypatch.setenv("MRSR_NOTEBOOK_WORKDIR", str(workdir))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()   # raises CellExecutionError, with the cell and traceback, on any error

  for name in ("curves.png", "comparison.png"):
    assert (workdir / name).stat().st_size > 1000, name
  edge_curves = api.read_curves(str(workdir / "sr_full_edge"))
  assert list(edge_curves["sr/g_edge"][0]) == [1, 2]
  assert "sr/g_edge" not in api.read_curves(str(workdir / "sr_full"))
  assert "sr/g_str" not in api.read_curves(str(workdir / "sr_vit"))      # the ablation row
  report = json.loads((workdir / "sr_full" / "eval" / "results.json").read_text())
  assert set(report["results"]) == {"bicubic", "ours", "vit", "full+edge"}
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) >= 3, "the figures were not displayed"
  markdown = "".join(o["data"].get("text/markdown", "") for o in outputs if "data" in o)
  for term in ("L_adv", "L_vit", "L_str", "L_tex", "L_pixel", "L_edge"):
    assert term in markdown, term


def test_colab_setup_installs_only_what_the_runtime_lacks():
  """The Colab cell's installer: the runtime's jax (and its CUDA plugin), numpy and TensorFlow stay as
  they are; a full `tensorflow` serves the `tensorflow-cpu` requirement; a jax too old is upgraded
  with its plugin through jax's own extra, never by a plain `jax` that would leave the plugin behind."""
  sys.path.insert(0, str(ROOT / "examples"))
  try:
    import colab_setup
  finally:
    sys.path.remove(str(ROOT / "examples"))
  requirements = ["jax>=0.10.2", "flax>=0.12.8", "numpy>=1.26", "tensorflow-cpu>=2.16",
                  "nibabel>=5.2", "dipy>=1.8", "pywin32>=1; sys_platform == 'win32'"]
  colab = {"jax": "0.10.3", "jaxlib": "0.10.3", "jax-cuda12-plugin": "0.10.3",
           "jax-cuda12-pjrt": "0.10.3", "numpy": "2.0.2", "tensorflow": "2.19.0", "flax": "0.10.4",
           "nibabel": "5.3.2", "requests": "2.32.3"}
  install, pins = colab_setup.plan(requirements, colab)
  assert install == ["flax>=0.12.8", "dipy>=1.8"]
  assert pins == ["jax==0.10.3", "jax-cuda12-pjrt==0.10.3", "jax-cuda12-plugin==0.10.3",
                  "jaxlib==0.10.3", "numpy==2.0.2", "tensorflow==2.19.0"]
  old_jax = dict(colab, jax="0.5.2", jaxlib="0.5.2", **{"jax-cuda12-plugin": "0.5.2"})
  install, pins = colab_setup.plan(requirements, old_jax)
  assert install[0] == "jax[cuda12]>=0.10.2" and not any(p.startswith("jax") for p in pins)
  # A runtime TensorFlow too old is upgraded as itself, not overwritten by tensorflow-cpu.
  install, pins = colab_setup.plan(requirements, dict(colab, tensorflow="2.12.0"))
  assert "tensorflow>=2.16" in install and "tensorflow==2.12.0" not in pins
  # This environment (what the suite runs in) already has everything the package needs.
  assert colab_setup.plan(colab_setup.project_requirements(str(ROOT)),
                          colab_setup.installed_versions())[0] == []
