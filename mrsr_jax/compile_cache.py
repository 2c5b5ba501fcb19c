"""JAX's persistent compilation cache, on by default for `run.py`: a resume or a rerun loads its
compiled steps from disk instead of compiling them again (the paper SR step compiles in about a
minute on a GPU, docs/benchmarks.md).

Where: JAX's own setting when the user gave one (`JAX_COMPILATION_CACHE_DIR`, or
`jax.config.update("jax_compilation_cache_dir", ...)`), else `<workdir>/jax_cache`, next to the run's
checkpoints: a run's cache lives and is deleted with the run, and a shared cluster file system serves
every process of a multi-process run. Off with JAX's `JAX_ENABLE_COMPILATION_CACHE=false`. JAX keys
each entry by the computation, the compile options, the backend and the jaxlib version, so a stale
entry is never loaded; it caches only executables that took at least
`jax_persistent_cache_min_compile_time_secs` (default 1 s) to compile.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import jax
from absl import logging
from jax.experimental.compilation_cache import compilation_cache as jax_cache

DIRNAME = "jax_cache"


@contextlib.contextmanager
def enabled(workdir: str) -> Iterator[str | None]:
  """The cache on (see the module docstring) inside the block; yields its folder, or None when it is
  off. On exit JAX's previous setting is back, so in-process runs (tests, notebooks) each use their
  own workdir's cache and leave the caller's alone."""
  previous = jax.config.jax_compilation_cache_dir
  path = _choose(workdir)
  if path is None:
    yield None
    return
  jax_cache.reset_cache()          # JAX opens its cache once per process: let it open this one
  jax.config.update("jax_compilation_cache_dir", path)
  try:
    yield path
  finally:
    jax.config.update("jax_compilation_cache_dir", previous)
    jax_cache.reset_cache()


def _choose(workdir: str) -> str | None:
  if not jax.config.jax_enable_compilation_cache:
    logging.info("JAX compilation cache: off (jax_enable_compilation_cache is False)")
    return None
  path = jax.config.jax_compilation_cache_dir or os.path.join(workdir, DIRNAME)
  if not os.path.isdir(workdir):
    # A new workdir: JAX makes the cache folder at its first compile, which comes after the config
    # and the data are checked, so a run refused at start leaves no workdir behind (docs/faults.md).
    logging.info("JAX compilation cache: %s", path)
    return path
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:   # e.g. a read-only workdir at predict time: compile as without a cache
    logging.warning("JAX compilation cache: cannot use %s (%s); compiling without it", path,
                    e.strerror or e)
    return None
  logging.info("JAX compilation cache: %s", path)
  return path
