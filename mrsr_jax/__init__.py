"""mrsr_jax: MRI super-resolution with ViT and disentangled features (Mahapatra & Ge, MIDL 2022) in JAX.

From a notebook: `from mrsr_jax import api` (see mrsr_jax/api.py). Importing the package itself stays
light (no TensorFlow, no JAX backend): `mrsr_jax.api` is loaded on first use.
"""

import importlib
import importlib.util
import os
import sys

__all__ = ["api"]


def _register_source_tree_configs() -> None:
  """The run configs are the subpackage `mrsr_jax.configs`: installed from the repository's top-level
  configs/ (setup.py's package_dir), they are found as any subpackage. In a clone used without
  installing it (or with an install made before configs/ was part of the package), this registers
  that folder under the same name, so `from mrsr_jax.configs import base` works either way."""
  name = f"{__name__}.configs"
  if name in sys.modules or importlib.util.find_spec(name) is not None:
    return
  folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
  init = os.path.join(folder, "__init__.py")
  if not os.path.isfile(init):
    return                       # an install without configs: config_loader says so when asked
  spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[folder])
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)


_register_source_tree_configs()


def __getattr__(name: str):
  if name == "api":
    return importlib.import_module("mrsr_jax.api")
  raise AttributeError(f"module 'mrsr_jax' has no attribute {name!r}")
