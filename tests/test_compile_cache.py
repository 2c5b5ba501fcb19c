"""run.py's persistent compilation cache (issue 22): on by default under the workdir, JAX's own
settings override it, and a second process loads the compiled step instead of compiling it."""

import os
import subprocess
import sys

from tests.conftest import ROOT

# A process as run.py sets it up: the cache for `workdir`, then a step compiled the loop's way.
PROBE = r"""
import sys
sys.path.insert(0, sys.argv[2])
import jax, jax.numpy as jnp
from mrsr_jax import compile_cache
from mrsr_jax.train import step as step_lib
with compile_cache.enabled(sys.argv[1]) as path:
  print("dir", path)
  step = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
  seconds, cached = step_lib.compile_timed(step, jnp.ones((64, 64)))
print("cached", cached)
"""


def _run(workdir, **env):
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **env)
  out = subprocess.run([sys.executable, "-c", PROBE, str(workdir), str(ROOT)], capture_output=True,
                       text=True, check=True, env=env).stdout.split("\n")
  return {line.split()[0]: line.split()[1] for line in out if line}


def test_second_process_loads_the_step_from_the_workdir_cache(tmp_path):
  env = {"JAX_COMPILATION_CACHE_DIR": ""}
  first = _run(tmp_path, **env)
  assert first == {"dir": str(tmp_path / "jax_cache"), "cached": "False"}
  assert os.listdir(tmp_path / "jax_cache")
  assert _run(tmp_path, **env)["cached"] == "True"


def test_jax_settings_override_the_default(tmp_path):
  elsewhere = tmp_path / "elsewhere"
  got = _run(tmp_path / "run", JAX_COMPILATION_CACHE_DIR=str(elsewhere))
  assert got["dir"] == str(elsewhere) and os.listdir(elsewhere)
  assert not (tmp_path / "run" / "jax_cache").exists()
  off = _run(tmp_path / "run2", JAX_ENABLE_COMPILATION_CACHE="false", JAX_COMPILATION_CACHE_DIR="")
  assert off == {"dir": "None", "cached": "False"} and not (tmp_path / "run2").exists()


def test_in_process_runs_leave_the_callers_setting(tmp_path):
  import jax
  from mrsr_jax import compile_cache
  before = jax.config.jax_compilation_cache_dir
  with compile_cache.enabled(str(tmp_path)) as path:
    assert path == str(tmp_path / "jax_cache") == jax.config.jax_compilation_cache_dir
  assert jax.config.jax_compilation_cache_dir == before
