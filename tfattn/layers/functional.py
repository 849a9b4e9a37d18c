"""`dot_product_attention`: the attention kernel every tfattn layer composes.

Layout follows `keras.ops.dot_product_attention`: `(batch, length, heads, dim)`.
"""

import functools
import math

import keras
from keras import ops

SCORES = ("scaled_dot", "dot", "cosine", "additive")
# Scores whose logits are a plain (scaled) q.k product, which the backend's fused kernel computes.
_FUSABLE_SCORES = ("scaled_dot", "dot")


@functools.cache
def fused_by_default():
    """Whether `use_fused=None` picks `keras.ops.dot_product_attention`.

    Only on JAX with a GPU/TPU (cuDNN / flash kernels). On CPU the fused call was slower
    than the explicit path (JAX CPU: 0.70x at length 1024, `benchmarks/attention_jax.py`),
    and TensorFlow has no flash kernel (keras-hub#2014 reports it slower than einsum).
    """
    if keras.backend.backend() != "jax":
        return False
    import jax

    return jax.default_backend() in ("gpu", "tpu")


def nonempty_batch(x):
    """`(x', n)`: `x` with one zero row appended when its batch is empty, and the original
    batch size `n` (slice the result with `[:n]`).

    TensorFlow 2.21's oneDNN `Conv2D` returns a wrongly shaped tensor for an empty batch
    (the input's spatial shape), so a second convolution then fails ("input depth must be
    evenly divisible by filter depth"). An empty batch happens in real runs: under
    multi-worker evaluation a worker's share of the last, partial batch can be empty.
    A static, non-empty batch is returned unchanged at no cost.
    """
    n = ops.shape(x)[0]
    if isinstance(n, int):
        if n > 0:
            return x, n
        return ops.concatenate([x, ops.zeros((1, *ops.shape(x)[1:]), x.dtype)], axis=0), n
    rows = ops.cast(ops.equal(n, 0), "int32")
    filler = ops.zeros(ops.stack([rows, *[ops.shape(x)[i] for i in range(1, len(x.shape))]]),
                       x.dtype)
    return ops.concatenate([x, filler], axis=0), n


def check_score(score):
    if score not in SCORES:
        raise ValueError(f"Unknown attention `score`={score!r}; expected one of {SCORES}.")
    return score


def random_uniform(shape, seed_generator):
    """Uniform [0, 1) noise for dropout masks.

    On TensorFlow, `keras.random.uniform` lowers to the "auto" stateless RNG, which
    under XLA on CPU was measured ~37x slower than Philox for a (32, 3, 197, 197) mask
    (970 ms vs 26 ms): it is the whole reason Keras's MHA crawls with dropout under
    `jit_compile`. Philox is a standard counter-based RNG available on every TF device,
    so we ask for it explicitly. This is the only backend-specific line in the layers.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        seed = tf.cast(seed_generator.next(), "int32")
        return tf.random.stateless_uniform(shape, seed=seed, alg="philox")
    return keras.random.uniform(shape, seed=seed_generator)


def keep_mask(shape, rate, seed_generator):
    """Bool mask of `shape`, True with probability `1 - rate` (dropout's kept entries).

    On JAX each 32-bit threefry word gives two 16-bit uniforms (the rate resolved to
    2^-16): half the random-number work, which was ~25% of a training step with
    attention dropout at length 1024 on CPU (benchmarks/attention_jax.py). Elsewhere
    `random_uniform(shape) >= rate`.
    """
    if keras.backend.backend() != "jax" or any(not isinstance(d, int) for d in shape):
        return ops.greater_equal(random_uniform(shape, seed_generator), rate)
    import jax
    import jax.numpy as jnp

    size = math.prod(shape)
    bits = jax.random.bits(seed_generator.next(), ((size + 1) // 2,), jnp.uint32)
    halves = jnp.concatenate([bits & 0xFFFF, bits >> 16])[:size]
    return ops.reshape(halves >= jnp.uint32(round(rate * 65536)), shape)


def dropout(x, rate, seed_generator):
    """Inverted dropout using `keep_mask`; `rate` is a Python float in [0, 1)."""
    keep = keep_mask(tuple(ops.shape(x)), rate, seed_generator)
    return ops.where(keep, x / ops.cast(1.0 - rate, x.dtype), ops.zeros_like(x))


def _check_qkv(query, key, value):
    for name, t in (("query", query), ("key", key), ("value", value)):
        if len(t.shape) != 4:
            raise ValueError(
                f"`{name}` must have rank 4 (batch, length, heads, dim); got shape {t.shape}."
            )
    if query.shape[-1] is not None and key.shape[-1] is not None and query.shape[-1] != key.shape[-1]:
        raise ValueError(
            f"`query` and `key` must have the same last dim; got {query.shape} and {key.shape}."
        )
    if key.shape[1] is not None and value.shape[1] is not None and key.shape[1] != value.shape[1]:
        raise ValueError(
            f"`key` and `value` must have the same length (axis 1); got {key.shape} and {value.shape}."
        )
    if query.shape[2] is not None and key.shape[2] is not None and query.shape[2] != key.shape[2]:
        raise ValueError(
            f"`query` and `key` must have the same number of heads (axis 2); "
            f"got {query.shape} and {key.shape}."
        )


def _normalize_mask(mask, q_len, k_len):
    """Returns a bool mask of rank 4 broadcastable to (batch, heads, q_len, k_len)."""
    if mask is None:
        return None
    rank = len(mask.shape)
    if rank not in (2, 3, 4):
        raise ValueError(
            "`mask` must have rank 2 (q_len, k_len), 3 (batch, q_len, k_len) or "
            f"4 (batch, heads, q_len, k_len); got shape {mask.shape}."
        )
    for got, want, what in ((mask.shape[-2], q_len, "query"), (mask.shape[-1], k_len, "key")):
        if got is not None and want is not None and got not in (1, want):
            raise ValueError(
                f"`mask` shape {mask.shape} does not match the {what} length {want} "
                "(expected mask shape (..., query_len, key_len))."
            )
    mask = ops.cast(mask, "bool")
    if rank == 2:
        mask = mask[None, None]
    elif rank == 3:
        mask = ops.expand_dims(mask, 1)
    return mask


def _l2_normalize(x, eps=1e-6):
    x32 = ops.cast(x, "float32")
    norm = ops.sqrt(ops.maximum(ops.sum(ops.square(x32), axis=-1, keepdims=True), eps * eps))
    return ops.cast(x32 / norm, x.dtype)


def _constant_along_keys(scale):
    """Whether a tensor scale broadcastable to (batch, heads, q_len, k_len) has k_len axis 1."""
    shape = tuple(scale.shape)
    return len(shape) <= 4 and (not shape or shape[-1] == 1)


def _as_query_factor(scale):
    """Scale `(batch|1, heads|1, q_len|1, 1)` (or lower rank) -> `(batch|1, q_len|1, heads|1, 1)`."""
    scale = ops.convert_to_tensor(scale)
    while len(scale.shape) < 4:
        scale = ops.expand_dims(scale, 0)
    return ops.transpose(scale, (0, 2, 1, 3))


def attention_logits(query, key, score="scaled_dot", scale=None, additive_weight=None):
    """Unnormalised scores `(batch, heads, q_len, k_len)` in float32.

    `scale` multiplies the logits (default 1/sqrt(dim) for "scaled_dot", else 1); for
    "cosine" it is the temperature, for "additive" it is unused.
    """
    check_score(score)
    if score == "additive":
        if additive_weight is None:
            raise ValueError('score="additive" needs `additive_weight` of shape (heads, dim).')
        # Bahdanau et al. 2015: e_ij = v^T tanh(W q_i + U k_j); W, U are the q/k projections.
        # (batch, heads, q_len, k_len, dim): additive attention is inherently O(T^2 * dim) memory.
        q = ops.transpose(query, (0, 2, 1, 3))[:, :, :, None, :]
        k = ops.transpose(key, (0, 2, 1, 3))[:, :, None, :, :]
        hidden = ops.tanh(q + k)
        logits = ops.einsum("bhqkd,hd->bhqk", hidden, ops.cast(additive_weight, hidden.dtype))
        return ops.cast(logits, "float32")
    if score == "cosine":
        query, key = _l2_normalize(query), _l2_normalize(key)
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1]) if score == "scaled_dot" else 1.0
    if isinstance(scale, (int, float)):
        # Scaling q (T*d values) is cheaper than scaling the logits (T*T values).
        if scale != 1.0:
            query = query * ops.cast(scale, query.dtype)
        logits = ops.einsum("bqhd,bkhd->bhqk", query, key)
        return ops.cast(logits, "float32")
    # Tensor scale (e.g. a learned per-head temperature), broadcast against (b, h, q, k).
    logits = ops.cast(ops.einsum("bqhd,bkhd->bhqk", query, key), "float32")
    return logits * ops.cast(scale, "float32")


def dot_product_attention(
    query,
    key,
    value,
    mask=None,
    score="scaled_dot",
    scale=None,
    bias=None,
    additive_weight=None,
    is_causal=False,
    dropout_rate=0.0,
    training=False,
    seed_generator=None,
    return_weights=False,
    use_fused=None,
):
    """Attention of `query` over `key`/`value` with a choice of scoring function.

    Args:
        query: `(batch, q_len, heads, dim)`.
        key: `(batch, k_len, heads, dim)`.
        value: `(batch, k_len, heads, value_dim)`.
        mask: optional bool, `True` = may attend; shape `(q_len, k_len)`,
            `(batch, q_len, k_len)` or `(batch, heads, q_len, k_len)` (size-1 axes broadcast).
            Rows with no valid key get all-zero weights (zero output), never NaN.
        score: "scaled_dot" (q.k/sqrt(d)), "dot" (q.k), "cosine" (cos(q, k) * scale,
            Swin V2), or "additive" (v^T tanh(q + k), Bahdanau).
        scale: float or tensor broadcastable to `(batch, heads, q_len, k_len)` multiplying
            the logits; defaults to 1/sqrt(dim) for "scaled_dot", else 1.
        bias: optional float logits bias broadcastable to `(batch, heads, q_len, k_len)`.
        additive_weight: `(heads, dim)` vector `v`, required for "additive".
        is_causal: add a causal mask (query i sees keys j <= i).
        dropout_rate: attention-weight dropout rate, applied only when `training`.
        training: Python bool or None.
        seed_generator: `keras.random.SeedGenerator`, required when dropout is active.
        return_weights: also return the weights `(batch, heads, q_len, k_len)`.
        use_fused: use `keras.ops.dot_product_attention` (cuDNN/flash kernels on GPU) when
            the call is eligible (scaled_dot/dot, no dropout, no returned weights, a
            `scale` that does not vary along keys).
            `None` picks it only on JAX with a GPU/TPU (see `fused_by_default`).

    Returns:
        `(batch, q_len, heads, value_dim)`, and the weights if `return_weights`.
    """
    check_score(score)
    _check_qkv(query, key, value)
    q_len, k_len = query.shape[1], key.shape[1]
    mask = _normalize_mask(mask, q_len, k_len)
    apply_dropout = bool(training) and dropout_rate > 0.0
    if apply_dropout and seed_generator is None:
        raise ValueError("`seed_generator` is required when `dropout_rate` > 0 and training.")

    if use_fused is None:
        use_fused = fused_by_default()
    tensor_scale = scale is not None and not isinstance(scale, (int, float))
    fusable = (
        score in _FUSABLE_SCORES
        and not apply_dropout
        and not return_weights
        # JAX's kernel assumes one head size for query, key and value.
        and value.shape[-1] == query.shape[-1]
        and (not tensor_scale or _constant_along_keys(scale))
    )
    if use_fused and fusable:
        if tensor_scale:
            # Fused kernels take a Python float scale (cuDNN's is static); a tensor scale
            # that is constant along keys multiplies the query instead.
            query = query * ops.cast(_as_query_factor(scale), query.dtype)
            scale = 1.0
        elif scale is None:
            scale = 1.0 / math.sqrt(query.shape[-1]) if score == "scaled_dot" else 1.0
        out = ops.dot_product_attention(
            query, key, value, bias=bias, mask=mask, scale=scale, is_causal=is_causal
        )
        if mask is not None:
            # The fused kernel gives fully-masked rows uniform weights; zero them instead.
            # (batch|1, heads|1, q_len) -> (batch|1, q_len, heads|1, 1)
            row_valid = ops.any(mask, axis=-1)
            row_valid = ops.transpose(row_valid, (0, 2, 1))[..., None]
            out = out * ops.cast(row_valid, out.dtype)
        return out

    if is_causal:
        q_len_t, k_len_t = ops.shape(query)[1], ops.shape(key)[1]
        causal = ops.less_equal(
            ops.arange(k_len_t, dtype="int32")[None, :], ops.arange(q_len_t, dtype="int32")[:, None]
        )
        mask = causal[None, None] if mask is None else ops.logical_and(mask, causal[None, None])

    logits = attention_logits(query, key, score, scale, additive_weight)  # (b, h, q, k) f32
    if bias is not None:
        logits = logits + ops.cast(bias, "float32")
    if mask is not None:
        logits = ops.where(mask, logits, ops.cast(-1e9, "float32"))
    weights = ops.softmax(logits, axis=-1)
    if mask is not None:
        weights = ops.where(mask, weights, ops.zeros_like(weights))
    weights = ops.cast(weights, value.dtype)

    if not apply_dropout:
        out = ops.einsum("bhqk,bkhd->bqhd", weights, value)
    else:
        # Inverted dropout, with its 1/(1 - rate) applied to the (q_len x dim) output
        # rather than to the (q_len x k_len) weights: one fewer elementwise pass over the
        # largest tensor of the step, forward and backward.
        keep = keep_mask(tuple(ops.shape(weights)), dropout_rate, seed_generator)
        dropped = ops.where(keep, weights, ops.zeros_like(weights))
        out = ops.einsum("bhqk,bkhd->bqhd", dropped, value)
        out = out * ops.cast(1.0 / (1.0 - dropout_rate), out.dtype)
    if return_weights:
        return out, weights
    return out
