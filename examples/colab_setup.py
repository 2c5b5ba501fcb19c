"""Installs a clone of mrsr_jax into a runtime that already has JAX (Colab), replacing nothing it ships.

  python examples/colab_setup.py [path/to/clone]        # what the notebooks' first cell runs on Colab

A hosted runtime comes with jax built for its accelerator (a CUDA or TPU plugin that matches one jax
version exactly), numpy and tensorflow. A plain `pip install -e .` may upgrade or downgrade any of them
to satisfy a requirement, and a jax that no longer matches its plugin silently falls back to the CPU.
So this script
  1. installs the package itself with `--no-deps`;
  2. installs only the requirements of pyproject.toml (and its `tf` extra) the runtime does not
     already satisfy (a `tensorflow` the runtime ships serves a `tensorflow-cpu` one: same module);
  3. pins the runtime's jax, jaxlib, jax plugins, numpy and tensorflow to their installed versions
     while doing so (pip constraints): if something would need another jax, pip stops with a
     resolution error instead of breaking the accelerator, and the message below says what to do.
Only the standard library and `packaging` (which pip itself vendors and Colab ships) are imported, so
it runs before anything is installed.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import subprocess
import sys
import tempfile
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# Kept exactly at the runtime's version: the accelerator stack and what everything is compiled against.
PINNED = ("jax", "jaxlib", "numpy", "tensorflow", "tensorflow-cpu")
PLUGIN = re.compile(r"^(jax-cuda\d+-(plugin|pjrt)|libtpu(-nightly)?)$")
# A distribution whose module another one provides (the runtime's full TensorFlow serves tensorflow-cpu).
PROVIDED_BY = {"tensorflow-cpu": ("tensorflow", "tensorflow-gpu"), "tensorflow": ("tensorflow-cpu",)}


def installed_versions() -> dict[str, str]:
  """{canonical distribution name: version} of this interpreter's environment."""
  out = {}
  for dist in metadata.distributions():
    name = dist.metadata["Name"]
    if name:
      out[canonicalize_name(name)] = dist.version
  return out


def project_requirements(root: str, extras: tuple[str, ...] = ("tf",)) -> list[str]:
  """[project].dependencies of `root`/pyproject.toml, plus those of `extras` (TensorFlow, which the
  data pipeline needs, is the `tf` extra: Colab ships it, and then nothing is installed for it)."""
  with open(os.path.join(root, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)["project"]
  optional = project.get("optional-dependencies", {})
  return list(project["dependencies"]) + [r for e in extras for r in optional.get(e, [])]


def plan(requirements: list[str], installed: dict[str, str]) -> tuple[list[str], list[str]]:
  """(requirements to install, pip constraints) for a runtime with `installed` distributions.

  A requirement is skipped when an installed distribution (itself, or one that provides its module)
  satisfies it. Constraints pin every installed distribution of the accelerator stack (PINNED and the
  jax plugins) to its installed version; a requirement on one of them that the runtime's version does
  not meet is left out of the pins (it must change: pip installs it, and `main` says to restart)."""
  to_install, unmet = [], set()
  for text in requirements:
    req = Requirement(text)
    if req.marker is not None and not req.marker.evaluate():
      continue
    name = canonicalize_name(req.name)
    providers = [name] + [canonicalize_name(p) for p in PROVIDED_BY.get(name, ())]
    if any(p in installed and req.specifier.contains(installed[p], prereleases=True) for p in providers):
      continue
    present = [p for p in providers if p in installed]
    if present and present[0] != name:
      # Too old a provider (Colab's `tensorflow` for `tensorflow-cpu`): upgrade that one; installing
      # the other distribution would overwrite its files.
      name, text = present[0], f"{present[0]}{req.specifier}"
    if name == "jax":
      # A newer jax for an accelerator comes with its matching plugin, through jax's own extra.
      extras = sorted({f"cuda{m[1]}" for p in installed if (m := re.match(r"^jax-cuda(\d+)-plugin$", p))}
                      | ({"tpu"} if "libtpu" in installed else set()))
      if extras:
        text = f"jax[{','.join(extras)}]{req.specifier}"
    to_install.append(text)
    unmet.add(name)
  constraints = [f"{name}=={version}" for name, version in sorted(installed.items())
                 if (name in PINNED or PLUGIN.match(name)) and name not in unmet
                 and not (name.startswith("jax") and "jax" in unmet)]
  return to_install, constraints


def main(argv: list[str]) -> int:
  root = os.path.abspath(argv[1] if len(argv) > 1 else os.path.join(os.path.dirname(__file__), ".."))
  installed = installed_versions()
  to_install, constraints = plan(project_requirements(root), installed)
  pip = [sys.executable, "-m", "pip", "install", "-q"]
  subprocess.run(pip + ["--no-deps", "-e", root], check=True)
  if not to_install:
    print("mrsr_jax installed; every requirement was already in this runtime")
    return 0
  with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
    f.write("\n".join(constraints) + "\n")
  print("installing what this runtime lacks:", ", ".join(to_install))
  print("keeping the runtime's:", ", ".join(constraints) or "(none)")
  done = subprocess.run(pip + ["-c", f.name] + to_install)
  os.unlink(f.name)
  if done.returncode:
    print(f"pip could not add {to_install} without changing the runtime's {', '.join(constraints)}; "
          f"upgrade JAX for this accelerator (e.g. pip install -U 'jax[cuda12]'), restart the runtime "
          f"and run this cell again", file=sys.stderr)
    return done.returncode
  changed = [n for n in ("jax", "numpy") if n in installed and installed_versions().get(n) != installed[n]]
  if changed:
    print(f"upgraded {', '.join(changed)}: restart the runtime (Runtime > Restart session), then run "
          f"the notebook from the top")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
