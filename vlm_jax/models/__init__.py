"""Model zoo: ViT image encoder, text transformer and decoder, attention poolers, one- and two-tower models."""
from vlm_jax.models.decoder import TextDecoder
from vlm_jax.models.layers import (Attention, AttentionPooler, Encoder, EncoderBlock, MAPHead, MlpBlock,
                                   posemb_learned, posemb_sincos_2d)
from vlm_jax.models.one_tower import OneTower
from vlm_jax.models.text import TextTransformer
from vlm_jax.models.two_tower import TwoTower
from vlm_jax.models.vit import VARIANTS, ViT, parse_variant

__all__ = ["Attention", "AttentionPooler", "TextDecoder", "Encoder", "EncoderBlock", "MAPHead", "MlpBlock", "posemb_learned", "posemb_sincos_2d",
           "OneTower", "TextTransformer", "TwoTower", "VARIANTS", "ViT", "parse_variant"]
