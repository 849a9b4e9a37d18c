"""Vision Transformer built from tfattn layers.

    images -> patch tokens (+ class token) -> + learned 2-D positions -> encoder blocks
           -> LayerNorm -> pool (class token | mean | attention pooling) -> logits

With class-token pooling the last block computes only the class token (`num_queries=1`):
the same function, minus most of one block's work.

`build_vit` returns the classifier and a model that outputs every block's attention weights
(for rollout maps); both share their layers. The position embedding keeps the grid it was
trained on and is resized bilinearly for another input size, so `build_vit(cfg, ...,
image_size=56)` followed by `set_weights` runs a model trained at 28 px on 56 px images
(`resize_vit` does both).

The patch tokeniser is a patchify convolution (ViT), Shifted Patch Tokenization (`spt`) or
a convolutional stem (`conv_stem`); all three give the same token grid.

Reference: Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words" (ViT); Lee, Lee & Song
2021, "Vision Transformer for Small-Size Datasets" (SPT + LSA); Xiao et al. 2021, "Early
Convolutions Help Transformers See Better" (convolutional stem).
"""

import keras
import numpy as np

from tfattn.layers import (
    AttentionPooling,
    ConvPatchEmbedding,
    PatchEmbedding,
    PositionEmbedding,
    ShiftedPatchEmbedding,
    TransformerEncoderBlock,
)


def drop_path_rates(rate, num_layers):
    """Stochastic depth grows linearly from 0 (first block) to `rate` (last block)."""
    if num_layers == 1:
        return [rate]
    return [rate * i / (num_layers - 1) for i in range(num_layers)]


def build_vit(cfg, num_classes, channels, image_size=None, name="vit"):
    """Builds the ViT classifier and its attention-weights model.

    Args:
        cfg: `apps.vit.config.Config` (architecture fields; `image_size` is the size the
            position embedding is laid out for).
        num_classes: number of output logits.
        channels: input channels (1 or 3).
        image_size: input size if different from `cfg.image_size` (must be divisible by
            the patch size); the position embedding is interpolated to the new grid.
        name: model name.

    Returns:
        `(classifier, attention_model)`: `classifier` maps float images
        `(batch, size, size, channels)` (normalised as in training) to float32 logits
        `(batch, num_classes)`; `attention_model` maps the same images to a list of
        per-block attention weights `(batch, heads, tokens, tokens)`.
    """
    size = image_size or cfg.image_size
    if size % cfg.patch_size:
        raise ValueError(
            f"image_size {size} is not divisible by patch_size {cfg.patch_size}."
        )
    use_class_token = cfg.pooling == "cls"
    grid = (size // cfg.patch_size, size // cfg.patch_size)

    images = keras.Input((size, size, channels), name="image")
    if cfg.conv_stem:
        patch_layer = ConvPatchEmbedding(
            cfg.hidden_dim, cfg.patch_size, depth=cfg.conv_stem_depth,
            use_class_token=use_class_token, name="patches",
        )
    else:
        patch_layer = (ShiftedPatchEmbedding if cfg.spt else PatchEmbedding)(
            cfg.hidden_dim, cfg.patch_size, use_class_token=use_class_token, name="patches"
        )
    x = patch_layer(images)  # (batch, prefix + gh * gw, hidden_dim)
    positions = PositionEmbedding(
        grid_size=cfg.grid_size, num_prefix_tokens=int(use_class_token), name="positions"
    )
    # The grid is passed explicitly: traced functions may see an unknown token count.
    x = x + positions(x, grid_size=grid)
    if cfg.dropout_rate:
        x = keras.layers.Dropout(cfg.dropout_rate, name="embedding_dropout")(x)

    scores = []
    for i, rate in enumerate(drop_path_rates(cfg.drop_path_rate, cfg.num_layers)):
        block = TransformerEncoderBlock(
            num_heads=cfg.num_heads,
            intermediate_dim=cfg.intermediate_dim,
            dropout_rate=cfg.dropout_rate,
            attention_dropout_rate=cfg.attention_dropout_rate,
            drop_path_rate=rate,
            layer_scale_init_value=cfg.layer_scale_init_value,
            learned_scale=cfg.lsa,
            exclude_self=cfg.lsa,
            mlp_local_kernel_size=cfg.mlp_local_kernel_size,
            num_prefix_tokens=int(use_class_token),
            name=f"block{i}",
        )
        if use_class_token and i == cfg.num_layers - 1:
            # The head reads only the class token: the last block updates just that one
            # (exact; skips the other tokens' queries, attention rows, output projection
            # and MLP). The attention model calls the block again for full maps.
            # (Both calls return the scores: Keras checks a functional graph assuming
            # every call of a layer has as many outputs as its first.)
            x_cls, _ = block(x, num_queries=1, return_attention_scores=True)  # (batch, 1, dim)
            _, s = block(x, return_attention_scores=True, grid_size=grid)
            x = x_cls
        else:
            x, s = block(x, return_attention_scores=True, grid_size=grid)
        scores.append(s)  # (batch, heads, tokens, tokens)
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="norm")(x)

    if cfg.pooling == "cls":
        pooled = x[:, 0]  # (batch, hidden_dim)
    elif cfg.pooling == "gap":
        pooled = keras.layers.GlobalAveragePooling1D(name="gap")(x)
    else:
        pooled = AttentionPooling(num_heads=cfg.num_heads, name="attention_pool")(x)
    # float32 logits also under mixed precision (stable softmax / loss).
    logits = keras.layers.Dense(num_classes, dtype="float32", name="head")(pooled)
    classifier = keras.Model(images, logits, name=name)
    attention_model = keras.Model(images, scores, name=f"{name}_attention")
    return classifier, attention_model


def resize_vit(model, cfg, num_classes, channels, image_size):
    """A copy of a trained ViT for `image_size` inputs (same weights; positions resized).

    Fine-tune the returned model at the new resolution, or use it directly: the position
    embedding is interpolated from `cfg.grid_size` on every call.
    """
    resized, attention_model = build_vit(
        cfg, num_classes, channels, image_size=image_size, name=model.name
    )
    resized.set_weights(model.get_weights())
    return resized, attention_model


def attention_model_of(model):
    """The attention-weights model of a (reloaded) `build_vit` classifier, sharing its layers."""
    blocks = [layer for layer in model.layers if isinstance(layer, TransformerEncoderBlock)]
    if not blocks:
        raise ValueError(f"{model.name} has no TransformerEncoderBlock layers.")
    scores = []
    for block in blocks:
        # Each block was called with return_attention_scores=True: (tokens, weights).
        weights = block.output[1]
        if weights.shape[-2] != weights.shape[-1]:
            # The class-token-only last block (`num_queries=1`): call it again in full.
            weights = block(block.input, return_attention_scores=True)[1]
        scores.append(weights)
    # `model.input`, not the list `model.inputs`: the attention model then takes an image
    # batch as the classifier does (a list-input model warns on every plain-array call).
    return keras.Model(model.input, scores, name=f"{model.name}_attention")


def num_prefix_tokens(cfg):
    """Tokens before the patch tokens: 1 with a class token, else 0."""
    return 1 if cfg.pooling == "cls" else 0


def count_params(model):
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))
