"""Ablation row 'str+vit' of Tables 1–2 (only these loss terms besides L_adv and the pixel term)."""

from mrsr_jax.configs.ablation import ablation_config


def get_config(run: str = "ixi_x4"):
  return ablation_config("str+vit", run)
