"""The paper's networks in Flax Linen: UNETR's ViT and the full UNETR (with MONAI weight import), the
swapping autoencoder, and the SRGAN-style SR generator and discriminator."""

from mrsr_jax.models.monai_import import convert_unetr_state_dict, convert_vit_state_dict
from mrsr_jax.models.srgan import SRDiscriminator, SRGenerator
from mrsr_jax.models.swap_ae import SwapDiscriminator, SwapEncoder, SwapGenerator
from mrsr_jax.models.unetr import UNETR
from mrsr_jax.models.vit import PretextViT, ViT, vit2d_params_from_3d, vit_feature

__all__ = [
    "PretextViT",
    "SRDiscriminator",
    "SRGenerator",
    "SwapDiscriminator",
    "SwapEncoder",
    "SwapGenerator",
    "UNETR",
    "ViT",
    "convert_unetr_state_dict",
    "convert_vit_state_dict",
    "vit2d_params_from_3d",
    "vit_feature",
]
