"""run.py's two kinds of failure: bad input (errors.UserError, OSError, ...) is one `error:` line and exit
status 2; anything else is a bug and keeps its traceback (a KeyError or ValueError inside the library
included: before, every ValueError / KeyError was shown as one line and lost its traceback)."""

import os
import pathlib
import subprocess
import sys

import pytest

import run
from mrsr_jax import config_check, config_loader, errors
from mrsr_jax.data import volumes

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = f"--config={ROOT}/configs/tiny.py"


def _lines(capsys):
  err = capsys.readouterr().err
  return [l for l in err.splitlines() if l.strip() and not (l[:1] in "IWEF" and l[1:5].isdigit())]


def test_user_errors_are_value_errors_of_one_type():
  for cls in (config_loader.ConfigError, config_check.ConfigMismatchError, volumes.BadInputError):
    assert issubclass(cls, errors.UserError) and issubclass(cls, ValueError)
  assert run.is_user_error(errors.UserError("x")) and run.is_user_error(FileNotFoundError("x"))
  assert not run.is_user_error(ValueError("x")) and not run.is_user_error(KeyError("x"))


def test_a_bad_override_is_one_line_and_exit_2(capsys, tmp_path):
  assert run.main(["run.py", TINY, f"--workdir={tmp_path}", "--config.sr.lossx=1"]) == 2
  lines = _lines(capsys)
  assert len(lines) == 1 and lines[0].startswith("error: --config.sr.lossx: "), lines


def test_a_user_error_from_the_library_is_one_line_and_exit_2(capsys, tmp_path, monkeypatch):
  from mrsr_jax.train import pipeline

  def bad_input(config, workdir):
    raise errors.UserError("config.sr.batch_size = -4: must be an integer >= 1")

  monkeypatch.setattr(pipeline, "train", bad_input)
  assert run.main(["run.py", TINY, f"--workdir={tmp_path}"]) == 2
  assert _lines(capsys) == ["error: config.sr.batch_size = -4: must be an integer >= 1"]


@pytest.mark.parametrize("bug", [KeyError("gen"), ValueError("operands could not be broadcast")])
def test_a_library_bug_keeps_its_exception(tmp_path, monkeypatch, bug):
  from mrsr_jax.train import pipeline

  def buggy(config, workdir):
    raise bug

  monkeypatch.setattr(pipeline, "train", buggy)
  with pytest.raises(type(bug)):
    run.main(["run.py", TINY, f"--workdir={tmp_path}"])


def test_a_library_bug_exits_non_zero_with_its_traceback(tmp_path):
  code = ("import sys, run\n"
          "from mrsr_jax.train import pipeline\n"
          "def buggy(config, workdir):\n"
          "  return {}['missing_key']\n"
          "pipeline.train = buggy\n"
          f"sys.exit(run.main(['run.py', {TINY!r}, '--workdir={tmp_path}']))\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode not in (0, 2), proc.stderr[-2000:]
  assert "Traceback (most recent call last)" in proc.stderr and "KeyError: 'missing_key'" in proc.stderr
  assert "in buggy" in proc.stderr            # the frame of the bug, not only a message
