"""Small building blocks of Transformer residual branches: DropPath, LayerScale, MLP."""

import functools
import math

import keras
import numpy as np
from keras import ops

from tfattn.layers.functional import dropout
from tfattn.layers.position import _as_grid


@keras.saving.register_keras_serializable(package="tfattn")
class DropPath(keras.layers.Layer):
    """Stochastic depth: drops a whole residual branch per sample during training.

    Args:
        rate: probability of dropping the branch for a sample.
        seed: optional int seed.

    Call arguments:
        inputs: `(batch, ...)` residual-branch output.
        training: drop only when True.

    Reference: Huang et al. 2016, "Deep Networks with Stochastic Depth".

    Example:
    >>> y = x + DropPath(0.1)(branch(x), training=True)
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= float(rate) < 1.0:
            raise ValueError(f"DropPath `rate` must be in [0, 1); got {rate}.")
        self.rate = float(rate)
        self.seed = seed
        self.supports_masking = True
        self.seed_generator = keras.random.SeedGenerator(seed) if self.rate > 0 else None

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        # One Bernoulli draw per sample, broadcast over the remaining axes.
        shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        keep = ops.greater_equal(keras.random.uniform(shape, seed=self.seed_generator), self.rate)
        return ops.where(keep, inputs / ops.cast(1.0 - self.rate, inputs.dtype), ops.zeros_like(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate, "seed": self.seed})
        return config


@keras.saving.register_keras_serializable(package="tfattn")
class LayerScale(keras.layers.Layer):
    """Per-channel learned scale of a residual branch, initialised small.

    Args:
        init_value: initial value of every channel's scale (e.g. 1e-5 for deep models).

    Reference: Touvron et al. 2021, "Going deeper with Image Transformers" (CaiT).
    """

    def __init__(self, init_value=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.init_value = float(init_value)
        self.supports_masking = True

    def build(self, input_shape):
        self.gamma = self.add_weight(
            name="gamma",
            shape=(input_shape[-1],),
            initializer=keras.initializers.Constant(self.init_value),
        )

    def call(self, inputs):
        return inputs * ops.cast(self.gamma, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"init_value": self.init_value})
        return config


def check_local_mlp_args(local_kernel_size, num_prefix_tokens, prefix=""):
    """Validates `MLP`'s `local_kernel_size` and `num_prefix_tokens` (names get `prefix`)."""
    if local_kernel_size is not None and (
        not isinstance(local_kernel_size, int)
        or isinstance(local_kernel_size, bool)
        or local_kernel_size < 1
        or local_kernel_size % 2 == 0
    ):
        raise ValueError(
            f"`{prefix}local_kernel_size` must be an odd positive int or None; got {local_kernel_size!r}."
        )
    if not isinstance(num_prefix_tokens, int) or isinstance(num_prefix_tokens, bool) or num_prefix_tokens < 0:
        raise ValueError(f"`num_prefix_tokens` must be an int >= 0; got {num_prefix_tokens!r}.")


def _centre_identity(shape, dtype=None):
    """(k, k, channels) depthwise kernel that copies its input: 1 at the centre tap."""
    k = shape[0]
    centre = ops.cast(ops.equal(ops.arange(k * k), (k * k) // 2), dtype or "float32")
    return ops.broadcast_to(ops.reshape(centre, (k, k, 1)), shape)


def _token_grid(num_patches, grid_size):
    if grid_size is not None:
        grid_h, grid_w = _as_grid("grid_size", grid_size)
        if num_patches is not None and grid_h * grid_w != num_patches:
            raise ValueError(
                f"`grid_size` {(grid_h, grid_w)} has {grid_h * grid_w} cells but the input has "
                f"{num_patches} patch tokens."
            )
        return grid_h, grid_w
    if num_patches is None:
        raise ValueError("The token count is not static: pass `grid_size` with `local_kernel_size`.")
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(
            f"{num_patches} patch tokens do not form a square grid: pass `grid_size` "
            "(or check `num_prefix_tokens`)."
        )
    return side, side


# Grids with at most this many token pairs times channels use the dense (banded) token-mixing
# form of the depthwise convolution: on XLA:CPU its gradient is a batched matmul, ~1.6x faster
# than the shifted-sum form for a 7x7 grid of 128 channels (5.8 vs 9.6 ms forward + backward
# for a batch of 128); larger grids use the shifted sum, linear in the token count.
_BANDED_MAX_ELEMENTS = 1 << 20


def depthwise_conv_tokens(tokens, kernel, grid_size):
    """Depthwise 2D convolution ("same" zero padding, stride 1) of tokens on a grid.

    Args:
        tokens: `(batch, grid_h * grid_w, channels)` in row-major grid order.
        kernel: `(k, k, channels)` with odd `k`.
        grid_size: `(grid_h, grid_w)`.

    Returns:
        `(batch, grid_h * grid_w, channels)`: `out[(i, j), c] = sum_{a, b} kernel[a, b, c]
        * tokens[(i + a - k // 2, j + b - k // 2), c]`, zero outside the grid (the
        cross-correlation that `keras.ops.depthwise_conv` computes).

    Written with `keras.ops` matmuls and slices rather than `ops.depthwise_conv`, whose
    XLA:CPU gradient is ~7x slower than either form here at ViT token-grid sizes.
    """
    grid_h, grid_w = grid_size
    k = kernel.shape[0]
    channels = kernel.shape[-1]
    n = grid_h * grid_w
    if n * n * channels <= _BANDED_MAX_ELEMENTS:
        # out[s] = sum_t band[s, t] * tokens[t] per channel; band built from 0/1 shift matrices.
        shifts = _shift_matrices(grid_h, grid_w, k)  # (k * k, n, n) constants
        band = ops.einsum("ost,oc->stc", ops.cast(shifts, tokens.dtype), ops.reshape(kernel, (k * k, channels)))
        return ops.einsum("btc,stc->bsc", tokens, band)
    r = k // 2
    x = ops.reshape(tokens, (-1, grid_h, grid_w, channels))
    x = ops.pad(x, [[0, 0], [r, r], [r, r], [0, 0]])
    out = 0
    for a in range(k):
        for b in range(k):
            out = out + x[:, a : a + grid_h, b : b + grid_w, :] * kernel[a, b]
    return ops.reshape(out, (-1, n, channels))


@functools.lru_cache(maxsize=32)
def _shift_matrices(grid_h, grid_w, k):
    """`m[a * k + b, s, t] = 1` where token t is token s's neighbour at offset (a, b) - k // 2."""
    r = k // 2
    m = np.zeros((k * k, grid_h * grid_w, grid_h * grid_w), np.float32)
    for a in range(k):
        for b in range(k):
            for i in range(grid_h):
                for j in range(grid_w):
                    ii, jj = i + a - r, j + b - r
                    if 0 <= ii < grid_h and 0 <= jj < grid_w:
                        m[a * k + b, i * grid_w + j, ii * grid_w + jj] = 1.0
    return m


@keras.saving.register_keras_serializable(package="tfattn")
class MLP(keras.layers.Layer):
    """Position-wise feed-forward block: Dense -> activation -> dropout -> Dense -> dropout.

    With `local_kernel_size` the hidden features of the patch tokens also pass through a
    depthwise `k x k` convolution over the token grid, between the first Dense and the
    activation (Dense -> depthwise conv -> activation -> Dense, as in PVTv2's "convolutional
    feed-forward" and close to LocalViT / CeiT's LeFF): every MLP sees its spatial
    neighbourhood, a locality prior that helps small-data ViTs. Prefix tokens (a class token)
    skip the convolution. The kernel starts as the identity (centre tap 1, others 0), so an
    untrained local MLP computes exactly the plain MLP.

    Args:
        intermediate_dim: hidden width.
        output_dim: output width; defaults to the input's last dim.
        activation: hidden activation (default "gelu").
        dropout_rate: dropout after the activation and after the output projection.
        use_bias: whether the Dense layers use a bias.
        kernel_initializer, bias_initializer: as in `keras.layers.Dense`.
        seed: optional int seed for dropout.
        local_kernel_size: odd int: size of the depthwise convolution over the token grid,
            or None (default) for the plain position-wise MLP.
        num_prefix_tokens: leading tokens that are not on the grid (e.g. 1 for a class
            token); used only with `local_kernel_size`.

    Dropout uses `tfattn.layers.dropout` (Philox on TensorFlow), which stays cheap under
    XLA where `keras.layers.Dropout` does not.

    Call arguments:
        inputs: `(batch, ..., dim)`; with `local_kernel_size`, `(batch, num_prefix_tokens
            + grid_h * grid_w, dim)` tokens in row-major grid order, or only prefix tokens
            (then no convolution applies).
        training: enables dropout.
        grid_size: `(grid_h, grid_w)` of the patch tokens; None infers a square grid from
            the static token count.

    Returns:
        `(batch, ..., output_dim)`.

    Reference: Wang et al. 2022, "PVT v2: Improved Baselines with Pyramid Vision
    Transformer"; Li et al. 2021, "LocalViT: Bringing Locality to Vision Transformers".
    """

    def __init__(
        self,
        intermediate_dim,
        output_dim=None,
        activation="gelu",
        dropout_rate=0.0,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        seed=None,
        local_kernel_size=None,
        num_prefix_tokens=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(intermediate_dim, int) or intermediate_dim <= 0:
            raise ValueError(f"`intermediate_dim` must be a positive int; got {intermediate_dim!r}.")
        check_local_mlp_args(local_kernel_size, num_prefix_tokens)
        self.intermediate_dim = intermediate_dim
        self.output_dim = output_dim
        self.activation = keras.activations.get(activation)
        self.dropout_rate = float(dropout_rate)
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.seed = seed
        self.local_kernel_size = local_kernel_size
        self.num_prefix_tokens = num_prefix_tokens
        self.seed_generator = keras.random.SeedGenerator(seed) if self.dropout_rate > 0 else None
        self.supports_masking = True

    def build(self, input_shape):
        out_dim = self.output_dim or input_shape[-1]
        common = dict(
            use_bias=self.use_bias,
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            dtype=self.dtype_policy,
        )
        # With the local convolution the activation follows it, not fc1.
        fc1_activation = None if self.local_kernel_size else self.activation
        self.fc1 = keras.layers.Dense(self.intermediate_dim, activation=fc1_activation, name="fc1", **common)
        self.fc2 = keras.layers.Dense(out_dim, name="fc2", **common)
        self.fc1.build(input_shape)
        self.fc2.build(tuple(input_shape[:-1]) + (self.intermediate_dim,))
        if self.local_kernel_size:
            k = self.local_kernel_size
            self.local_kernel = self.add_weight(
                name="local_kernel",
                shape=(k, k, self.intermediate_dim),
                initializer=_centre_identity,
            )

    def _dropout(self, x, training):
        if training and self.dropout_rate > 0:
            return dropout(x, self.dropout_rate, self.seed_generator)
        return x

    def _local(self, x, grid_size):
        p = self.num_prefix_tokens
        num_patches = x.shape[1] - p if x.shape[1] is not None else None
        if num_patches == 0:  # only prefix tokens (e.g. a class-token-only last block)
            return x
        grid = _token_grid(num_patches, grid_size)
        patches = x[:, p:]
        mixed = depthwise_conv_tokens(patches, ops.cast(self.local_kernel, x.dtype), grid)
        return ops.concatenate([x[:, :p], mixed], axis=1) if p else mixed

    def call(self, inputs, training=None, grid_size=None):
        x = self.fc1(inputs)
        if self.local_kernel_size:
            x = self.activation(self._local(x, grid_size))
        x = self._dropout(x, training)
        return self._dropout(self.fc2(x), training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim or input_shape[-1],)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "intermediate_dim": self.intermediate_dim,
                "output_dim": self.output_dim,
                "activation": keras.activations.serialize(self.activation),
                "dropout_rate": self.dropout_rate,
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "seed": self.seed,
                "local_kernel_size": self.local_kernel_size,
                "num_prefix_tokens": self.num_prefix_tokens,
            }
        )
        return config
