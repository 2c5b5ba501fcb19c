"""What a dataset module hands the TFDS builder, and the one thing TFDS does not do for us.

A dataset module (ixi, fastmri, sample) describes *what* to convert as a list of `VolumeSource`s (a
split, a stable key and a `load()` that returns a validated volume); the TFDS builders
(`data_prep/builder.py`, `data_prep/datasets/`) write them. TFDS writes a build into a temporary
`incomplete.*` folder and renames it into place when done, so an interrupted build is never read as
complete. What TFDS does not do: keep a complete dataset while a changed one is built (it deletes the
old version folder first). `swap_in` is that: the front door builds the new set beside the old one
and exchanges the two folders in one atomic step.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import shutil
from typing import Callable


@dataclasses.dataclass(frozen=True)
class VolumeSource:
  """One volume to convert. `load()` returns (Volume, orientation) or raises `BadInputError`.

  `orientation` is the two nibabel axis codes of the stored slices' rows and columns ("" unknown).
  """
  key: str  # stable identity (path, or archive::member), used in messages and fingerprints
  split: str
  load: Callable[[], tuple]
  stamp: str = ""  # changes when the file changes (size, mtime): a changed file means a rebuild
  subject: str = ""
  contrast: str = ""


def file_stamp(path: str) -> str:
  st = os.stat(path)
  return f"{st.st_size}:{st.st_mtime_ns}"


def _exchange(a: str, b: str) -> bool:
  """Atomically swaps two directories (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
  try:
    renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
  except (AttributeError, OSError, TypeError):  # not glibc >= 2.28 (macOS, musl, Windows)
    return False
  at_fdcwd, rename_exchange = -100, 2
  if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
    return True
  err = ctypes.get_errno()
  if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
    return False  # kernel or file system without exchange: fall back to two renames
  raise OSError(err, f"cannot swap {b} into {a}: {os.strerror(err)}")


def swap_in(target: str, staged: str) -> None:
  """Replaces the complete folder `target` by the complete folder `staged`, then deletes the old one.

  Where the exchange is unsupported: two renames; between them `target` does not exist (readers get
  "no prepared dataset", never a mix), and `recover` finishes a swap a kill cut between them.
  """
  if _exchange(target, staged):
    shutil.rmtree(staged)  # now the old set
    return
  old = f"{staged}.old"
  os.rename(target, old)
  os.rename(staged, target)
  shutil.rmtree(old)


def recover(target: str, staged: str) -> None:
  """Finishes a two-rename swap that a kill interrupted (the old set moved away, the new one not in)."""
  old = f"{staged}.old"
  if os.path.isdir(old):
    if not os.path.exists(target) and os.path.isfile(os.path.join(staged, "dataset_info.json")):
      os.rename(staged, target)
    if os.path.exists(target):
      shutil.rmtree(old)
