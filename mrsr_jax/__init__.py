"""mrsr_jax: MRI super-resolution with ViT and disentangled features (Mahapatra & Ge, MIDL 2022) in JAX.

From a notebook: `from mrsr_jax import api` (see mrsr_jax/api.py). Importing the package itself stays
light (no TensorFlow, no JAX backend): `mrsr_jax.api` is loaded on first use.
"""

import importlib

__all__ = ["api"]


def __getattr__(name: str):
  if name == "api":
    return importlib.import_module("mrsr_jax.api")
  raise AttributeError(f"module 'mrsr_jax' has no attribute {name!r}")
