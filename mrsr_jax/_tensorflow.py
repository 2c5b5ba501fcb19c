"""TensorFlow, imported with an install hint when it is missing.

TensorFlow only reads TFRecord datasets (tf.data; ArrayRecord ones are read without it) and is the
`tf` extra of pyproject.toml, not a dependency: `tensorflow` and `tensorflow-cpu` install the same `tensorflow` package, so requiring one
would make pip install it over the other one an environment already has (Colab ships `tensorflow`).
Without an extra nothing brings TensorFlow, and a bare "No module named 'tensorflow'" would not say
which one to install or how.
"""

from __future__ import annotations

import types

INSTALL_HINT = ("TensorFlow is not installed (mrsr_jax reads TFRecord datasets with tf.data): "
                "install the project with its `tf` extra, `pip install -e \".[tf]\"` (the CPU build), "
                "or `pip install tensorflow`; an environment that ships TensorFlow (Colab) needs neither")


class TensorFlowMissingError(ModuleNotFoundError):
  """TensorFlow is not installed; the message says how to install it."""


def import_tensorflow() -> types.ModuleType:
  """`import tensorflow`, or `TensorFlowMissingError` with `INSTALL_HINT` when it is not installed."""
  try:
    import tensorflow
  except ModuleNotFoundError as e:
    if e.name != "tensorflow":  # TensorFlow is there but one of its own imports failed: keep that error
      raise
    raise TensorFlowMissingError(INSTALL_HINT, name="tensorflow") from None
  return tensorflow
