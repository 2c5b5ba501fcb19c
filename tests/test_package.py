"""The library stands on its own: `mrsr_jax` never imports the offline conversion tool (`data_prep`)."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter (modules this test session already imported would hide an import).
# `data_prep` sits beside `mrsr_jax` in the checkout, so it is blocked rather than merely absent.
_IMPORT_ALL = r"""
import importlib, pkgutil, sys

class BlockDataPrep:
  def find_spec(self, name, path=None, target=None):
    if name == "data_prep" or name.startswith("data_prep."):
      raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
    return None

sys.meta_path.insert(0, BlockDataPrep())
import mrsr_jax
names = sorted(m.name for m in pkgutil.walk_packages(mrsr_jax.__path__, "mrsr_jax."))
for name in names:
  try:
    importlib.import_module(name)
  except ImportError as e:
    sys.exit(f"{name}: {type(e).__name__}: {e}")
assert not any(m == "data_prep" or m.startswith("data_prep.") for m in sys.modules)
print("\n".join(names))
"""


def test_every_module_imports_without_data_prep():
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run([sys.executable, "-c", _IMPORT_ALL], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  imported = set(proc.stdout.split())
  # The walk really covered the package (an empty walk would pass vacuously).
  assert {"mrsr_jax.predict", "mrsr_jax.evaluate", "mrsr_jax.api", "mrsr_jax.data.volumes",
          "mrsr_jax.data.pipeline", "mrsr_jax.train.loop", "mrsr_jax.train.stage_sr"} <= imported
