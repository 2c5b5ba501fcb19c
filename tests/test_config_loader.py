"""One config loader (mrsr_jax/config_loader.py) for run.py and the api, and the configs shipped with the
package as `mrsr_jax.configs`, found from any directory."""

import os
import pathlib
import subprocess
import sys

import pytest

from mrsr_jax import config_loader, errors

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_a_name_and_a_path_give_the_same_config_with_the_argument_and_overrides():
  by_name = config_loader.load("sr_ixi_x4:t2", overrides={"sr.num_steps": 7}, data_dir="d")
  by_path = config_loader.load(str(ROOT / "configs" / "sr_ixi_x4.py") + ":t2")
  assert by_name.contrast == by_path.contrast == "t2"
  assert (by_name.sr.num_steps, by_name.data_dir) == (7, "d")
  by_path.sr.num_steps, by_path.data_dir = 7, "d"
  assert by_name.to_json() == by_path.to_json()
  assert config_loader.load("compare.edsr_ixi_x4").sr.arch == "edsr"
  assert "compare.rdn_ixi_x4" in config_loader.names() and "tiny" in config_loader.names()


def test_run_py_and_the_api_load_through_it():
  import run
  from mrsr_jax import api
  assert run.load_config_file is config_loader.load
  assert api.find_configs_dir() == config_loader.configs_dir() == (ROOT / "configs").resolve()


@pytest.mark.parametrize("spec, message", [
    ("", "empty path"),
    ("nope", r"no config 'nope' in .*\(have: .*tiny"),
    ("configs/missing.py", "configs/missing.py: no such file"),
    ("demo:bogus", r"get_config\(\) failed \(line \d+\): ValueError: configs/demo.py:bogus: unknown loss"),
    ("a b", "not a config name"),
])
def test_bad_specs_are_one_user_error(spec, message):
  with pytest.raises(errors.UserError, match=message):
    config_loader.load(spec)


def test_a_bad_override_is_a_user_error():
  with pytest.raises(config_loader.ConfigError, match=r"config override 'sr.nope': no such field"):
    config_loader.load("tiny", overrides={"sr.nope": 1})
  with pytest.raises(ValueError, match=r"'eval.split.x': 'eval.split' is not a config group"):
    config_loader.load("tiny", overrides={"eval.split.x": 1})


def test_configs_load_by_name_from_another_directory(tmp_path):
  """A notebook anywhere: `mrsr_jax.configs` is the package's, not a folder looked up from the cwd."""
  code = ("from mrsr_jax import config_loader; c = config_loader.load('sr_fastmri_x2:pd'); "
          "from mrsr_jax.configs import tiny; print(c.contrast, tiny.get_config().dataset)")
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ["pd", "sample"]


@pytest.mark.slow   # builds and installs the package (~30 s)
def test_a_non_editable_install_ships_the_configs(tmp_path):
  target = tmp_path / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", str(ROOT), "--target", str(target), "--no-deps",
                  "--no-build-isolation", "-q"], check=True, timeout=600, cwd=tmp_path)
  code = ("import mrsr_jax; from mrsr_jax import config_loader; "
          "print(config_loader.configs_dir()); print(config_loader.load('compare.rdn_ixi_x4:t2').contrast)")
  env = dict(os.environ, PYTHONPATH=str(target), JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == [str(target / "mrsr_jax" / "configs"), "t2"]
