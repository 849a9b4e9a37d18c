"""tfattn layers: attention, position encodings and Transformer blocks (keras.ops only)."""

from tfattn.layers.additive_attention import AdditiveAttention
from tfattn.layers.cnn_attention import SpatialChannelAttention
from tfattn.layers.conformer import ConformerBlock, ConformerConvModule, ConvSubsampling
from tfattn.layers.functional import SCORES, attention_logits, dot_product_attention, dropout
from tfattn.layers.masks import (
    attention_mask_from_padding,
    causal_mask,
    merge_masks,
    padding_mask,
    window_mask,
)
from tfattn.layers.multi_head_attention import MultiHeadAttention
from tfattn.layers.patch import (
    ConvPatchEmbedding,
    PatchEmbedding,
    ShiftedPatchEmbedding,
    shifted_patches,
)
from tfattn.layers.pooling import AttentionPooling
from tfattn.layers.position import (
    PositionEmbedding,
    RotaryEmbedding,
    SinePositionEncoding,
    SinePositionEncoding2D,
)
from tfattn.layers.regularization import MLP, DropPath, LayerScale
from tfattn.layers.transformer import TransformerDecoderBlock, TransformerEncoderBlock

__all__ = [
    "SCORES",
    "AdditiveAttention",
    "AttentionPooling",
    "ConformerBlock",
    "ConformerConvModule",
    "ConvPatchEmbedding",
    "ConvSubsampling",
    "DropPath",
    "LayerScale",
    "MLP",
    "MultiHeadAttention",
    "PatchEmbedding",
    "PositionEmbedding",
    "RotaryEmbedding",
    "ShiftedPatchEmbedding",
    "SinePositionEncoding",
    "SinePositionEncoding2D",
    "SpatialChannelAttention",
    "TransformerDecoderBlock",
    "TransformerEncoderBlock",
    "attention_logits",
    "attention_mask_from_padding",
    "causal_mask",
    "dot_product_attention",
    "dropout",
    "merge_masks",
    "padding_mask",
    "shifted_patches",
    "window_mask",
]
