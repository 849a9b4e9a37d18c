"""Looking at attention: heatmap PNGs, image tensors for TensorBoard, and ViT attention rollout.

NumPy and matplotlib only (figures are drawn on the non-interactive Agg canvas, never through
`pyplot`), so this module works in training scripts, notebooks and headless CI alike. Inputs
may be NumPy arrays or eager tensors of any backend (anything `np.asarray` accepts).

Example:
>>> y, w = mha(x, x, return_attention_scores=True)        # w: (batch, heads, T, T)
>>> attention_heatmap_png(w[0], "attn.png", tokens=words)  # mean over heads
>>> tf.summary.image("attention", attention_heatmap_images(w), step=step)
>>> rollout = attention_rollout([w1, w2, w3])             # per-layer (batch, heads, T, T)
>>> maps = cls_attention_map(rollout, grid_size=(14, 14))  # (batch, 14, 14) in [0, 1]
>>> tf.summary.image("rollout", attention_heatmap_images(maps, (14, 14), images), step=step)
>>> upscale_images(attention_heatmap_images(maps, (14, 14), images))  # >= 224 px, readable
"""

import os

import numpy as np

HEAD_FUSIONS = ("mean", "max", "min")


def _array(x, name):
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"`{name}` must be array-like of numbers; got {type(x).__name__}.") from e


def _check_rank(x, name, ranks, expected):
    if x.ndim not in ranks:
        raise ValueError(f"`{name}` must have shape {expected}; got shape {x.shape}.")


def _check_grid(grid_size):
    if (
        not isinstance(grid_size, (tuple, list))
        or len(grid_size) != 2
        or not all(isinstance(g, (int, np.integer)) and g > 0 for g in grid_size)
    ):
        raise ValueError(f"`grid_size` must be a pair of positive ints (gh, gw); got {grid_size!r}.")
    return int(grid_size[0]), int(grid_size[1])


def _scale_to_unit(x):
    """Min-max rescales each sample (axis 0) to [0, 1]; constant samples become 0."""
    axes = tuple(range(1, x.ndim))
    lo = x.min(axis=axes, keepdims=True)
    span = x.max(axis=axes, keepdims=True) - lo
    return np.where(span > 0, (x - lo) / np.where(span > 0, span, 1.0), 0.0)


def _colorize(x, cmap):
    """(..., ) values in [0, 1] -> (..., 3) RGB through a matplotlib colormap."""
    import matplotlib

    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError as e:
        raise ValueError(f"Unknown matplotlib colormap `cmap`={cmap!r}.") from e
    return colormap(x)[..., :3]


def _resize_bilinear(maps, size):
    """(n, h, w) -> (n, H, W), pixel-centre aligned (like `tf.image.resize(..., "bilinear")`)."""

    def weights(src, dst):
        # (dst, src) interpolation matrix: row i mixes the two source cells nearest pixel i.
        pos = np.clip((np.arange(dst) + 0.5) * src / dst - 0.5, 0, src - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, src - 1)
        frac = pos - lo
        m = np.zeros((dst, src))
        np.add.at(m, (np.arange(dst), lo), 1.0 - frac)
        np.add.at(m, (np.arange(dst), hi), frac)
        return m

    rows = weights(maps.shape[1], size[0])
    cols = weights(maps.shape[2], size[1])
    return np.einsum("Hh,nhw,Ww->nHW", rows, maps, cols)


def _select_head(weights, head):
    """(heads, q, k) or (q, k) -> (q, k): one head, or the mean over heads when `head` is None."""
    if weights.ndim == 2:
        if head is not None:
            raise ValueError(
                f"`head`={head!r} needs `weights` of shape (heads, q_len, k_len); "
                f"got shape {weights.shape}."
            )
        return weights
    if head is None:
        return weights.mean(axis=0)
    if not isinstance(head, (int, np.integer)) or not -weights.shape[0] <= head < weights.shape[0]:
        raise ValueError(f"`head` must be an int in [0, {weights.shape[0]}); got {head!r}.")
    return weights[head]


def _token_labels(tokens, q_len, k_len):
    """`tokens` labels both axes, or is a pair (query_tokens, key_tokens)."""
    if tokens is None:
        return None, None
    tokens = list(tokens)
    is_pair = len(tokens) == 2 and all(
        not isinstance(t, str) and hasattr(t, "__len__") for t in tokens
    )
    q_tokens, k_tokens = (list(tokens[0]), list(tokens[1])) if is_pair else (tokens, tokens)
    if len(q_tokens) != q_len or len(k_tokens) != k_len:
        raise ValueError(
            f"`tokens` must label {q_len} queries and {k_len} keys (a list of {k_len} labels "
            f"for self-attention, or a pair (query_tokens, key_tokens)); got {len(q_tokens)} "
            f"query and {len(k_tokens)} key labels."
        )
    return [str(t) for t in q_tokens], [str(t) for t in k_tokens]


def attention_heatmap_png(weights, path, tokens=None, title=None, head=None, cmap="viridis"):
    """Writes one attention map as a PNG heatmap (rows: queries, columns: keys).

    Args:
        weights: `(heads, q_len, k_len)` or `(q_len, k_len)` attention weights of one sample.
        path: output file; parent folders are created.
        tokens: optional axis labels: a list of `k_len` labels for self-attention, or a
            pair `(query_tokens, key_tokens)`.
        title: optional figure title.
        head: which head to draw; `None` draws the mean over heads.
        cmap: matplotlib colormap name.

    Returns:
        `path` as a string.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    weights = _array(weights, "weights")
    _check_rank(weights, "weights", (2, 3), "(heads, q_len, k_len) or (q_len, k_len)")
    attn = _select_head(weights, head)  # (q_len, k_len)
    q_len, k_len = attn.shape
    q_tokens, k_tokens = _token_labels(tokens, q_len, k_len)

    # Grow the figure with the labels so they stay readable, within sane bounds.
    width = float(np.clip(0.25 * k_len + 2.5, 4.0, 20.0)) if k_tokens else 6.0
    height = float(np.clip(0.25 * q_len + 1.5, 3.0, 20.0)) if q_tokens else 5.0
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(attn, cmap=cmap, aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    if k_tokens:
        ax.set_xticks(range(k_len), k_tokens, rotation=90)
        ax.set_yticks(range(q_len), q_tokens)
    head_note = "mean over heads" if head is None and weights.ndim == 3 else None
    head_note = f"head {head}" if head is not None else head_note
    full_title = " | ".join(t for t in (title, head_note) if t)
    if full_title:
        ax.set_title(full_title)
    fig.tight_layout()
    path = os.fspath(path)
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path


def attention_heatmap_images(weights, grid_size=None, image=None, cmap="viridis", alpha=0.5):
    """Attention maps as a float32 `(n, H, W, 3)` batch in [0, 1], ready for `tf.summary.image`.

    Two modes:
    - `grid_size=None`: `weights` is `(n, q_len, k_len)` or `(n, heads, q_len, k_len)` (mean
      over heads); each sample's map becomes a `q_len x k_len` image.
    - `grid_size=(gh, gw)`: `weights` is a per-sample patch map, `(n, gh, gw)` or
      `(n, gh * gw)` (e.g. `cls_attention_map`). Without `image` it is drawn at grid
      resolution; with `image` `(n, H, W, C)` (C = 1 or 3) it is bilinearly upsampled to
      `H x W` and alpha-blended over the image.

    Each map is min-max rescaled per sample before colouring, so small attention values stay
    visible. `uint8` images are divided by 255; float images outside [0, 1] (e.g. standardised
    inputs) are min-max rescaled per sample.

    Args:
        weights: see the modes above.
        grid_size: `(gh, gw)` patch grid, or None.
        image: optional `(n, H, W, C)` images to overlay on (needs `grid_size`).
        cmap: matplotlib colormap name.
        alpha: weight of the heatmap in the overlay.

    Returns:
        float32 array `(n, H, W, 3)`.
    """
    weights = _array(weights, "weights")
    if grid_size is None:
        if image is not None:
            raise ValueError(
                "`image` overlays need `grid_size=(gh, gw)` and patch maps `weights` "
                "of shape (n, gh, gw) or (n, gh * gw)."
            )
        _check_rank(weights, "weights", (3, 4), "(n, q_len, k_len) or (n, heads, q_len, k_len)")
        maps = weights.mean(axis=1) if weights.ndim == 4 else weights  # (n, q_len, k_len)
        return _colorize(_scale_to_unit(maps), cmap).astype(np.float32)

    gh, gw = _check_grid(grid_size)
    _check_rank(weights, "weights", (2, 3), f"(n, {gh}, {gw}) or (n, {gh * gw}) for grid_size {grid_size}")
    if weights.shape[1:] not in ((gh, gw), (gh * gw,)):
        raise ValueError(
            f"`weights` must have shape (n, {gh}, {gw}) or (n, {gh * gw}) for "
            f"grid_size={tuple(grid_size)}; got shape {weights.shape}."
        )
    maps = weights.reshape(-1, gh, gw)
    if image is None:
        return _colorize(_scale_to_unit(maps), cmap).astype(np.float32)

    is_uint8 = np.asarray(image).dtype == np.uint8
    image = _array(image, "image")
    if image.ndim != 4 or image.shape[-1] not in (1, 3) or image.shape[0] != maps.shape[0]:
        raise ValueError(
            f"`image` must have shape ({maps.shape[0]}, H, W, 1 or 3) to match `weights` "
            f"{weights.shape}; got shape {image.shape}."
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1]; got {alpha}.")
    if is_uint8:
        image = image / 255.0
    elif image.min() < 0.0 or image.max() > 1.0:
        image = _scale_to_unit(image)
    image = np.broadcast_to(image, image.shape[:3] + (3,))  # grayscale -> RGB
    heat = _colorize(_scale_to_unit(_resize_bilinear(maps, image.shape[1:3])), cmap)
    return ((1.0 - alpha) * image + alpha * heat).astype(np.float32)


def upscale_images(images, min_size=224):
    """Enlarges images by a whole factor (nearest neighbour) until the longer side is >= `min_size`.

    A 28x28 image or a 7x7 patch map is a speck in TensorBoard and in image viewers, which
    show images at their stored size; whole-factor nearest neighbour keeps every pixel and
    patch a sharp square block.

    Args:
        images: `(n, H, W, C)` array.
        min_size: smallest wanted longer side, in pixels; images at least that large are
            returned as they are.

    Returns:
        `(n, k * H, k * W, C)` array of the same dtype, `k = ceil(min_size / max(H, W))`.
    """
    images = np.asarray(images)
    _check_rank(images, "images", (4,), "(n, H, W, C)")
    if not isinstance(min_size, (int, np.integer)) or min_size < 1:
        raise ValueError(f"`min_size` must be a positive int; got {min_size!r}.")
    factor = -(-min_size // max(1, *images.shape[1:3]))  # ceiling division
    if factor <= 1:
        return images
    return images.repeat(factor, axis=1).repeat(factor, axis=2)


def attention_rollout(attention_weights, discard_ratio=0.0, head_fusion="mean", add_residual=True):
    """Attention rollout (Abnar & Zuidema, 2020): how much each output token draws on each input.

    Per layer: fuse heads, optionally zero the weakest weights, add the identity for the
    residual connection (A' = 0.5 A + 0.5 I), re-normalise rows; then multiply the layers,
    later layers on the left: R = A'_L ... A'_1.

    `discard_ratio` and `head_fusion` other than "mean" are not in the paper; they follow the
    widely used vit-explain implementation (Gildenblat, 2020): per sample, the
    `discard_ratio` fraction of smallest fused weights is set to 0 before the identity is
    added. Rows left all-zero (only possible with `add_residual=False`) stay zero.

    Args:
        attention_weights: sequence of per-layer weights `(batch, heads, T, T)`, first layer
            first (or one array `(layers, batch, heads, T, T)`).
        discard_ratio: fraction in [0, 1) of the smallest fused weights to drop per layer.
        head_fusion: "mean" (the paper), "max" or "min" over heads.
        add_residual: add the identity for the residual stream (the paper's rollout).

    Returns:
        float64 array `(batch, T, T)`; with `add_residual` every row sums to 1.

    Reference: Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020.
    """
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"Unknown `head_fusion`={head_fusion!r}; expected one of {HEAD_FUSIONS}.")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"`discard_ratio` must be in [0, 1); got {discard_ratio}.")
    if isinstance(attention_weights, np.ndarray) and attention_weights.ndim == 4:
        raise ValueError(
            "`attention_weights` must be a list of per-layer (batch, heads, T, T) arrays; got a "
            f"single array of shape {attention_weights.shape} (wrap one layer in a list)."
        )
    layers = [_array(w, f"attention_weights[{i}]") for i, w in enumerate(attention_weights)]
    if not layers:
        raise ValueError("`attention_weights` must hold at least one layer's (batch, heads, T, T).")
    first = layers[0].shape
    for i, w in enumerate(layers):
        if w.ndim != 4 or w.shape[-1] != w.shape[-2]:
            raise ValueError(
                f"`attention_weights[{i}]` must have shape (batch, heads, T, T) (square: "
                f"self-attention); got shape {w.shape}."
            )
        if w.shape[0] != first[0] or w.shape[2:] != first[2:]:
            raise ValueError(
                f"`attention_weights[{i}]` has shape {w.shape} but layer 0 has {first}; all "
                "layers need the same batch and token count."
            )

    batch, _, tokens, _ = first
    eye = np.eye(tokens)
    rollout = np.broadcast_to(eye, (batch, tokens, tokens))
    for w in layers:
        fused = getattr(np, head_fusion)(w, axis=1)  # (batch, T, T)
        if discard_ratio > 0.0:
            flat = fused.reshape(batch, -1).copy()
            n_drop = int(flat.shape[1] * discard_ratio)
            drop = np.argsort(flat, axis=1, kind="stable")[:, :n_drop]
            np.put_along_axis(flat, drop, 0.0, axis=1)
            fused = flat.reshape(fused.shape)
        if add_residual:
            fused = 0.5 * fused + 0.5 * eye
        row_sum = fused.sum(axis=-1, keepdims=True)
        fused = fused / np.where(row_sum > 0, row_sum, 1.0)
        rollout = fused @ rollout
    return rollout


def cls_attention_map(rollout, grid_size, num_prefix_tokens=1):
    """The CLS token's rollout over image patches, as `(batch, gh, gw)` scaled to [0, 1].

    Args:
        rollout: `(batch, T, T)` from `attention_rollout`, with `T = num_prefix_tokens +
            gh * gw` and the CLS token first.
        grid_size: `(gh, gw)` patch grid.
        num_prefix_tokens: tokens before the patches (CLS, distillation, register tokens).

    Returns:
        float64 `(batch, gh, gw)`, each map divided by its maximum (all-zero maps stay zero).
    """
    gh, gw = _check_grid(grid_size)
    if not isinstance(num_prefix_tokens, (int, np.integer)) or num_prefix_tokens < 1:
        raise ValueError(
            f"`num_prefix_tokens` must be an int >= 1 (the CLS token is row 0); got {num_prefix_tokens!r}."
        )
    rollout = _array(rollout, "rollout")
    tokens = num_prefix_tokens + gh * gw
    if rollout.ndim != 3 or rollout.shape[1:] != (tokens, tokens):
        raise ValueError(
            f"`rollout` must have shape (batch, {tokens}, {tokens}) for grid_size={tuple(grid_size)} "
            f"and num_prefix_tokens={num_prefix_tokens}; got shape {rollout.shape}."
        )
    cls_row = rollout[:, 0, num_prefix_tokens:].reshape(-1, gh, gw)
    peak = cls_row.max(axis=(1, 2), keepdims=True)
    return np.where(peak > 0, cls_row / np.where(peak > 0, peak, 1.0), 0.0)
