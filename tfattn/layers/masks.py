"""Boolean attention-mask helpers.

Every mask in tfattn is boolean with `True` meaning "may attend", broadcastable to
`(batch, heads, query_len, key_len)`, the same convention as
`keras.layers.MultiHeadAttention`'s `attention_mask`.
"""

from keras import ops


def padding_mask(lengths, max_length):
    """Mask of valid positions from sequence lengths.

    Args:
        lengths: int tensor `(batch,)`, number of valid (leading) positions.
        max_length: int, padded sequence length.

    Returns:
        bool tensor `(batch, max_length)`.
    """
    lengths = ops.convert_to_tensor(lengths)
    if len(lengths.shape) != 1:
        raise ValueError(
            f"`lengths` must be a 1-D tensor of shape (batch,); got shape {lengths.shape}."
        )
    positions = ops.arange(max_length, dtype="int32")
    return ops.less(positions[None, :], ops.cast(lengths, "int32")[:, None])


def attention_mask_from_padding(query_mask=None, key_mask=None):
    """Combines per-token masks `(batch, q_len)` / `(batch, k_len)` into `(batch, q_len, k_len)`.

    A padded query row is fully masked (its attention output is zero).
    """
    mask = None
    if query_mask is not None:
        mask = ops.expand_dims(ops.cast(query_mask, "bool"), -1)
    if key_mask is not None:
        k = ops.expand_dims(ops.cast(key_mask, "bool"), -2)
        mask = k if mask is None else ops.logical_and(mask, k)
    return mask


def _relative_positions(query_length, key_length):
    q = ops.arange(query_length, dtype="int32")[:, None]
    k = ops.arange(key_length, dtype="int32")[None, :]
    return k - q  # (query_len, key_len): key index minus query index


def causal_mask(query_length, key_length=None):
    """Lower-triangular `(query_len, key_len)` mask: query i sees keys j <= i.

    Positions are aligned at the start when the lengths differ, as in
    `keras.layers.MultiHeadAttention(use_causal_mask=True)`.
    """
    key_length = query_length if key_length is None else key_length
    return ops.less_equal(_relative_positions(query_length, key_length), 0)


def window_mask(query_length, key_length=None, window_size=1):
    """Banded `(query_len, key_len)` mask: query i sees keys j with |i - j| <= window_size."""
    if window_size is None or int(window_size) < 0:
        raise ValueError(f"`window_size` must be a non-negative int; got {window_size}.")
    key_length = query_length if key_length is None else key_length
    return ops.less_equal(ops.abs(_relative_positions(query_length, key_length)), window_size)


def merge_masks(*masks):
    """Logical AND of the given masks (None entries are ignored); None if all are None."""
    out = None
    for m in masks:
        if m is None:
            continue
        m = ops.cast(m, "bool")
        out = m if out is None else ops.logical_and(out, m)
    return out
