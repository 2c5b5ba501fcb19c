"""Defaults shared by every config: the paper's hyper-parameters (Sec. 4.1, App. B, docs/design.md).

Each run config starts from this, overrides what differs, and returns the ConfigDict. The fields, their
defaults, checks and one line of doc each are declared once, in mrsr_jax/config_schema.py; the
reference is docs/config.md. Every field can be overridden on the command line, e.g.
`--config.sr.loss.lambda_vit=0`.
"""

import ml_collections

from mrsr_jax import config_schema


def get_config() -> ml_collections.ConfigDict:
  return config_schema.default_config()
