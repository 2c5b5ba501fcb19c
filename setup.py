"""The one thing pyproject.toml cannot say: the repository's top-level configs/ folder is installed as the
subpackage `mrsr_jax.configs` (so an installed package, a notebook or Colab, loads configs by name;
mrsr_jax/config_loader.py), beside the packages found as usual. Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["mrsr_jax", "mrsr_jax.*", "data_prep", "data_prep.*"]),
              "mrsr_jax.configs", *(f"mrsr_jax.{p}" for p in find_packages(include=["configs.*"]))],
    package_dir={"mrsr_jax.configs": "configs"},
)
