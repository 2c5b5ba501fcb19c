"""The one way a run config is loaded: run.py's `--config`, `api.load_config`, the bench scripts.

  load("configs/sr_ixi_x4.py:t2")     # a file, then ':' and the argument of its get_config()
  load("sr_ixi_x4:t2")                # a name: a module of mrsr_jax.configs (the repository's configs/)
  load("compare.edsr_ixi_x4", overrides={"sr.num_steps": 200}, data_dir="data")

The configs ship with the package: the repository's top-level `configs/` is installed as the subpackage
`mrsr_jax.configs` (setup.py's package_dir), and in a clone that is not installed mrsr_jax/__init__.py
registers it, so a notebook or Colab finds them by name from any directory. A config file imports its
base as `from mrsr_jax.configs import base`. Every way a file can fail to give a config is one
`ConfigError` line naming the file (and the line of the file where its own code failed).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pathlib
import re
import sys
import traceback
from typing import Any, Mapping

import ml_collections

from mrsr_jax import errors


class ConfigError(errors.UserError):
  """A config file or name that gives no config, or an override naming no field."""


def configs_dir() -> pathlib.Path:
  """The folder of the package `mrsr_jax.configs` (a clone's configs/, or the installed copy)."""
  from mrsr_jax import configs
  return pathlib.Path(configs.__file__).resolve().parent


def names() -> list[str]:
  """Every config by name (`compare.edsr_ixi_x4` for the files of configs/compare/)."""
  root = configs_dir()
  return sorted(".".join(p.relative_to(root).with_suffix("").parts) for p in root.rglob("*.py")
                if not p.name.startswith("_"))


def _line_in(path: str, tb) -> str:
  """' (line N)' of the innermost frame of `tb` in the file `path`, else ''."""
  line = None
  for frame in traceback.extract_tb(tb):
    if os.path.abspath(frame.filename) == os.path.abspath(path):
      line = frame.lineno
  return f" (line {line})" if line else ""


def _top_level_alias() -> None:
  """Config files written as `from configs import base` (run from a clone, where configs/ is a top-level
  folder) also load from an installed package, where configs/ is only `mrsr_jax.configs`."""
  if "configs" not in sys.modules and importlib.util.find_spec("configs") is None:
    sys.modules["configs"] = importlib.import_module("mrsr_jax.configs")


def resolve(spec: str, *, what: str = "--config=") -> tuple[str, str]:
  """(file path, get_config argument) of `path[:arg]` or `name[:arg]`."""
  name, _, arg = str(spec).partition(":")
  if not name:
    raise ConfigError(f"{what}: empty path; pass {what}path/to/config.py or a config name")
  if name.endswith(".py") or "/" in name or os.sep in name:
    path = os.path.expanduser(name)
    if not os.path.exists(path):
      raise ConfigError(f"{what}{name}: no such file")
    if not os.path.isfile(path):
      raise ConfigError(f"{what}{name}: not a file")
    return path, arg
  if not re.fullmatch(r"\w+(\.\w+)*", name):
    raise ConfigError(f"{what}{name}: not a config name (a file of configs/ without .py) or a path")
  path = configs_dir().joinpath(*name.split(".")).with_suffix(".py")
  if not path.is_file():
    raise ConfigError(f"{what}{name}: no config '{name}' in {configs_dir()} (have: {', '.join(names())})")
  return str(path), arg


def load(spec: str, *, data_dir: str | None = None, overrides: Mapping[str, Any] | None = None,
         what: str = "--config=") -> ml_collections.ConfigDict:
  """A fresh ConfigDict from `spec` (a path or name, then `:arg` for its get_config), with `data_dir`
  and dotted `overrides` ({"sr.num_steps": 200}) set. `what` prefixes the messages (the flag, or the
  function a notebook called)."""
  path, arg = resolve(spec, what=what)
  config = _call_get_config(path, arg, spec=spec, what=what)
  if data_dir is not None:
    config.data_dir = str(data_dir)
  for key, value in (overrides or {}).items():
    override(config, key, value)
  return config


def _call_get_config(path: str, arg: str, *, spec: str, what: str) -> ml_collections.ConfigDict:
  module_spec = importlib.util.spec_from_file_location("_mrsr_config", path)
  if module_spec is None:
    raise ConfigError(f"{what}{path}: not a python file")
  _top_level_alias()
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except SyntaxError as e:
    raise ConfigError(f"{what}{path}: syntax error at line {e.lineno}: {e.msg}") from None
  except Exception as e:  # the config file's own code: its error, located, not our traceback
    raise ConfigError(f"{what}{path}: loading it failed{_line_in(path, e.__traceback__)}: "
                      f"{type(e).__name__}: {e}") from None
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise ConfigError(f"{what}{path}: defines no get_config() function")
  try:
    config = get_config(*([arg] if arg else []))
  except Exception as e:
    raise ConfigError(f"{what}{spec}: get_config() failed{_line_in(path, e.__traceback__)}: "
                      f"{type(e).__name__}: {e}") from None
  if not hasattr(config, "keys"):
    raise ConfigError(f"{what}{spec}: get_config() returned {type(config).__name__}, not a ConfigDict")
  return config


def override(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """Sets the dotted field `key` of `config`, which must exist (as `--config.<key>=` requires)."""
  *parents, leaf = key.split(".")
  node = config
  for i, part in enumerate(parents):
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      raise ConfigError(f"config override '{key}': '{'.'.join(parents[:i + 1])}' is not a config group")
    node = node[part]
  if leaf not in node:
    raise ConfigError(f"config override '{key}': no such field (have: {', '.join(sorted(node.keys()))})")
  try:
    node[leaf] = value
  except TypeError as e:
    raise ConfigError(f"config override '{key}' = {value!r}: {e}") from None
