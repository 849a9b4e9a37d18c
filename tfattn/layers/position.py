"""Position information: sine encodings (1-D, 2-D), learned embeddings, rotary embedding."""

import math
import numbers

import keras
from keras import ops


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_max_wavelength(max_wavelength):
    if not _is_number(max_wavelength) or max_wavelength <= 1:
        raise ValueError(f"`max_wavelength` must be a number > 1; got {max_wavelength!r}.")


def _sine_table(positions, dim, max_wavelength):
    """float32 positions (n,) -> (n, dim) table: sin in even channels, cos in odd ones.

    Channels 2i and 2i + 1 share the frequency max_wavelength ** (-2i / dim), as in the
    paper's PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(same).
    """
    channel = ops.arange(dim, dtype="int32")
    exponent = ops.cast(2 * (channel // 2), "float32") / float(dim)
    inv_freq = ops.exp(-math.log(max_wavelength) * exponent)  # (dim,)
    angles = positions[:, None] * inv_freq[None, :]  # (n, dim)
    return ops.where(ops.equal(channel % 2, 0)[None, :], ops.sin(angles), ops.cos(angles))


@keras.saving.register_keras_serializable(package="tfattn")
class SinePositionEncoding(keras.layers.Layer):
    """Fixed 1-D sinusoidal position encoding, returned ready to add to the input.

    Channels are interleaved as in the paper: channel 2i is sin(pos * w_i) and channel
    2i + 1 is cos(pos * w_i), with w_i = max_wavelength ** (-2i / hidden_dim). This is the
    layout of `keras_hub.layers.SinePositionEncoding` (same values).

    Args:
        max_wavelength: the longest wavelength of the sine/cosine curves (default 10000).

    Call arguments:
        inputs: `(batch, seq, hidden_dim)`; only its shape is used.
        start_index: int or int scalar tensor, position of the first token (for
            incremental decoding, where one position is fed at a time).

    Returns:
        `(batch, seq, hidden_dim)`: the encoding, broadcast over the batch.

    Example:
    >>> x = keras.random.normal((2, 16, 64))
    >>> x = x + SinePositionEncoding()(x)  # (2, 16, 64)

    Reference: Vaswani et al. 2017, "Attention Is All You Need".
    """

    def __init__(self, max_wavelength=10000, **kwargs):
        super().__init__(**kwargs)
        _check_max_wavelength(max_wavelength)
        self.max_wavelength = max_wavelength

    def call(self, inputs, start_index=0):
        if len(inputs.shape) != 3 or inputs.shape[-1] is None:
            raise ValueError(
                "SinePositionEncoding expects inputs of shape (batch, seq, hidden_dim) with a known "
                f"hidden_dim; got {inputs.shape}."
            )
        shape = ops.shape(inputs)
        positions = ops.arange(shape[1], dtype="float32") + ops.cast(start_index, "float32")
        dim = inputs.shape[-1]
        encoding = _sine_table(positions, dim, self.max_wavelength)  # (seq, hidden_dim)
        return ops.broadcast_to(ops.cast(encoding, self.compute_dtype)[None], shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"max_wavelength": self.max_wavelength})
        return config


@keras.saving.register_keras_serializable(package="tfattn")
class SinePositionEncoding2D(keras.layers.Layer):
    """Fixed 2-D sine-cosine position encoding of a (height, width) grid.

    The first hidden_dim / 2 channels encode the row index and the last hidden_dim / 2 the
    column index, each half laid out like `SinePositionEncoding` with hidden_dim / 2 channels
    (interleaved sin/cos). This is DETR's order (y then x, interleaved, positions not
    normalised); MAE puts x first and concatenates sin and cos, which is a fixed permutation
    of the same channels.

    Args:
        max_wavelength: the longest wavelength of the sine/cosine curves (default 10000).

    Call arguments:
        inputs: `(batch, height, width, hidden_dim)`; only its shape is used. hidden_dim
            must be divisible by 4.

    Returns:
        `(batch, height, width, hidden_dim)`: the encoding, broadcast over the batch. For
        tokens flattened row-major (as `PatchEmbedding` makes them), reshape it to
        `(batch, height * width, hidden_dim)`.

    Example:
    >>> grid = keras.random.normal((2, 4, 6, 32))
    >>> grid = grid + SinePositionEncoding2D()(grid)  # (2, 4, 6, 32)

    Reference: Carion et al. 2020, "End-to-End Object Detection with Transformers" (DETR);
    He et al. 2021, "Masked Autoencoders Are Scalable Vision Learners" (MAE).
    """

    def __init__(self, max_wavelength=10000, **kwargs):
        super().__init__(**kwargs)
        _check_max_wavelength(max_wavelength)
        self.max_wavelength = max_wavelength

    def _check_shape(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                "SinePositionEncoding2D expects inputs of shape (batch, height, width, hidden_dim); "
                f"got {tuple(input_shape)}."
            )
        hidden_dim = input_shape[-1]
        if hidden_dim is None or hidden_dim % 4 != 0:
            raise ValueError(
                "SinePositionEncoding2D needs `hidden_dim` (the last input dim) divisible by 4 "
                f"(sin and cos for rows and for columns); got {hidden_dim}."
            )

    def build(self, input_shape):
        self._check_shape(input_shape)

    def call(self, inputs):
        self._check_shape(inputs.shape)
        shape = ops.shape(inputs)
        height, width, half = shape[1], shape[2], inputs.shape[-1] // 2
        rows = ops.arange(height, dtype="float32")
        cols = ops.arange(width, dtype="float32")
        rows = _sine_table(rows, half, self.max_wavelength)  # (height, half)
        cols = _sine_table(cols, half, self.max_wavelength)  # (width, half)
        rows = ops.broadcast_to(rows[:, None, :], (height, width, half))
        cols = ops.broadcast_to(cols[None, :, :], (height, width, half))
        encoding = ops.concatenate([rows, cols], axis=-1)  # (h, w, hidden_dim)
        return ops.broadcast_to(ops.cast(encoding, self.compute_dtype)[None], shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"max_wavelength": self.max_wavelength})
        return config


def _check_positive_int(name, value):
    if not _is_int(value) or value <= 0:
        raise ValueError(f"`{name}` must be a positive int; got {value!r}.")
    return int(value)


def _as_grid(name, grid_size):
    """int or (h, w) -> (h, w) of positive Python ints."""
    if _is_int(grid_size):
        grid_size = (grid_size, grid_size)
    if not isinstance(grid_size, (list, tuple)) or len(grid_size) != 2:
        raise ValueError(f"`{name}` must be an int or a pair (height, width); got {grid_size!r}.")
    return tuple(_check_positive_int(name, v) for v in grid_size)


@keras.saving.register_keras_serializable(package="tfattn")
class PositionEmbedding(keras.layers.Layer):
    """Learned position embedding for a sequence or a 2-D grid, resized when lengths change.

    Give exactly one of `sequence_length` (1-D) or `grid_size` (tokens of a (h, w) grid,
    flattened row-major). The first `num_prefix_tokens` tokens (e.g. a class token) get
    their own embeddings, which are never interpolated. One weight, `embeddings`, of shape
    `(num_prefix_tokens + num_positions, hidden_dim)` holds both, in token order (the layout
    of timm's `pos_embed` without its leading 1).

    When a grid input has another number of tokens than the layer was built for, the
    position part is resized bilinearly (`keras.ops.image.resize`, half-pixel
    centres, no antialiasing) for grids. A new grid is taken from the `grid_size` call
    argument, or inferred when both the stored grid and the new token count are square.
    Without `grid_size`, resizing needs a static token count and an unknown one is assumed
    to be the stored one; with it, the grid is used whatever the static shape (pass it when
    traced functions may relax shapes, e.g. `tf.function(reduce_retracing=True)`).
    1-D embeddings are not resized on the fly: a shorter input takes the first `tokens`
    rows (padded or incremental sequences), a longer one is an error; `interpolate()`
    resizes them explicitly.

    Args:
        sequence_length: number of positions of a 1-D embedding.
        grid_size: `(height, width)` (or an int for a square grid) of a 2-D embedding.
        num_prefix_tokens: number of leading tokens with their own, never-resized embedding.
        initializer: initializer of `embeddings` (default "glorot_uniform", as keras_hub).

    Call arguments:
        inputs: `(batch, tokens, hidden_dim)`; only its shape is used.
        grid_size: optional `(height, width)` of the input's grid, for grid embeddings.

    Returns:
        `(batch, tokens, hidden_dim)`: the embedding to add to `inputs`.

    Example:
    >>> pos = PositionEmbedding(grid_size=(14, 14), num_prefix_tokens=1)
    >>> tokens = keras.random.normal((2, 1 + 14 * 14, 64))
    >>> tokens = tokens + pos(tokens)  # (2, 197, 64)
    >>> bigger = keras.random.normal((2, 1 + 16 * 16, 64))
    >>> bigger = bigger + pos(bigger)  # grid inferred as (16, 16)

    Reference: Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words" (ViT), section 3.2
    for resizing at higher resolution.
    """

    def __init__(
        self,
        sequence_length=None,
        grid_size=None,
        num_prefix_tokens=0,
        initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if (sequence_length is None) == (grid_size is None):
            raise ValueError(
                "PositionEmbedding needs exactly one of `sequence_length` (1-D) or `grid_size` "
                f"(2-D); got sequence_length={sequence_length!r}, grid_size={grid_size!r}."
            )
        if sequence_length is not None:
            sequence_length = _check_positive_int("sequence_length", sequence_length)
        else:
            grid_size = _as_grid("grid_size", grid_size)
        if not _is_int(num_prefix_tokens) or num_prefix_tokens < 0:
            raise ValueError(
                f"`num_prefix_tokens` must be a non-negative int; got {num_prefix_tokens!r}."
            )
        self.sequence_length = sequence_length
        self.grid_size = grid_size
        self.num_prefix_tokens = num_prefix_tokens
        self.initializer = keras.initializers.get(initializer)

    @property
    def num_positions(self):
        """Number of stored positions, prefix tokens excluded."""
        if self.grid_size is not None:
            return self.grid_size[0] * self.grid_size[1]
        return self.sequence_length

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(
                "PositionEmbedding expects inputs of shape (batch, tokens, hidden_dim) with a known "
                f"hidden_dim; got {tuple(input_shape)}."
            )
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.num_prefix_tokens + self.num_positions, input_shape[-1]),
            initializer=self.initializer,
        )

    def interpolate(self, new_length=None, new_grid_size=None):
        """Stored embedding resized to `new_length` positions or a `new_grid_size` grid.

        Returns `(num_prefix_tokens + new_positions, hidden_dim)` in the compute dtype; the
        stored values themselves when the size is unchanged.
        """
        if not self.built:
            raise ValueError(
                "PositionEmbedding.interpolate() needs a built layer; call it on an input first."
            )
        if self.grid_size is None:
            if new_grid_size is not None or new_length is None:
                raise ValueError(
                    "This PositionEmbedding is 1-D: pass `new_length` (and not `new_grid_size`); "
                    f"got new_length={new_length!r}, new_grid_size={new_grid_size!r}."
                )
            new_length = _check_positive_int("new_length", new_length)
            old_size, new_size = (self.sequence_length, 1), (new_length, 1)
        else:
            if new_length is not None or new_grid_size is None:
                raise ValueError(
                    "This PositionEmbedding is a grid: pass `new_grid_size` (and not `new_length`); "
                    f"got new_length={new_length!r}, new_grid_size={new_grid_size!r}."
                )
            old_size, new_size = self.grid_size, _as_grid("new_grid_size", new_grid_size)

        if new_size == old_size:
            return ops.cast(self.embeddings, self.compute_dtype)
        # Resize in float32 whatever the compute dtype; an (L, 1) grid makes it 1-D.
        embeddings = ops.cast(self.embeddings, "float32")
        hidden_dim = embeddings.shape[-1]
        prefix = embeddings[: self.num_prefix_tokens]  # (prefix, hidden_dim)
        grid = ops.reshape(embeddings[self.num_prefix_tokens :], (1, *old_size, hidden_dim))
        grid = ops.image.resize(
            grid, new_size, interpolation="bilinear", antialias=False, data_format="channels_last"
        )  # (1, new_h, new_w, hidden_dim)
        grid = ops.reshape(grid, (new_size[0] * new_size[1], hidden_dim))
        return ops.concatenate(
            [ops.cast(prefix, self.compute_dtype), ops.cast(grid, self.compute_dtype)], axis=0
        )  # (prefix + new_positions, hidden_dim)

    def _new_grid(self, num_tokens, grid_size):
        """The grid that `num_tokens` input tokens (prefix included) lay out as."""
        count = num_tokens - self.num_prefix_tokens
        if grid_size is not None:
            grid_size = _as_grid("grid_size", grid_size)
            if grid_size[0] * grid_size[1] != count:
                raise ValueError(
                    f"Call argument `grid_size={grid_size}` gives {grid_size[0] * grid_size[1]} "
                    f"positions, but the input has {num_tokens} tokens ({self.num_prefix_tokens} "
                    f"prefix + {count})."
                )
            return grid_size
        side = math.isqrt(max(count, 0))
        if self.grid_size[0] == self.grid_size[1] and count > 0 and side * side == count:
            return (side, side)
        raise ValueError(
            f"PositionEmbedding was built for a {self.grid_size} grid ({self.num_prefix_tokens} "
            f"prefix + {self.num_positions} tokens) and cannot infer the grid of an input with "
            f"{num_tokens} tokens; pass the call argument `grid_size=(height, width)`."
        )

    def call(self, inputs, grid_size=None):
        if len(inputs.shape) != 3:
            raise ValueError(
                f"PositionEmbedding expects inputs of shape (batch, tokens, hidden_dim); got {inputs.shape}."
            )
        num_tokens = inputs.shape[1]
        if grid_size is not None and self.grid_size is None:
            raise ValueError(
                "Call argument `grid_size` is only for grid embeddings; this one is 1-D."
            )
        stored = self.num_prefix_tokens + self.num_positions
        if self.grid_size is None:
            # Sequences take the first `tokens` rows (padded batches, incremental decoding);
            # a longer input needs an explicit `interpolate(new_length=...)`.
            if num_tokens is not None and num_tokens > stored:
                raise ValueError(
                    f"The input has {num_tokens} tokens but this 1-D PositionEmbedding holds "
                    f"{stored} ({self.num_prefix_tokens} prefix + sequence_length="
                    f"{self.num_positions}); build it with a larger `sequence_length`, or "
                    "resize the weights with `interpolate(new_length=...)`."
                )
            embeddings = ops.cast(self.embeddings, self.compute_dtype)[: ops.shape(inputs)[1]]
        elif grid_size is not None:
            # An explicit grid wins, also when the static token count is unknown (e.g. a
            # tf.function retraced with relaxed shapes).
            if num_tokens is not None:
                grid_size = self._new_grid(num_tokens, grid_size)  # checks the token count
            embeddings = self.interpolate(new_grid_size=grid_size)
        elif num_tokens is None or num_tokens == stored:
            embeddings = ops.cast(self.embeddings, self.compute_dtype)
        else:
            embeddings = self.interpolate(new_grid_size=self._new_grid(num_tokens, None))
        return ops.broadcast_to(embeddings[None], ops.shape(inputs))  # (batch, tokens, hidden_dim)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sequence_length": self.sequence_length,
                "grid_size": self.grid_size,
                "num_prefix_tokens": self.num_prefix_tokens,
                "initializer": keras.initializers.serialize(self.initializer),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="tfattn")
class RotaryEmbedding(keras.layers.Layer):
    """Rotary position embedding (RoPE): rotates feature pairs by a position-dependent angle.

    Uses the "rotate half" convention (GPT-NeoX, Llama, keras_hub): feature i is paired with
    feature i + head_dim / 2, not with its neighbour i + 1 as in the paper; both give the
    same attention scores up to a fixed permutation of the features. The pair i turns by
    position / scaling_factor * max_wavelength ** (-2i / head_dim). The angles are computed
    and applied in float32, then cast to the compute dtype.

    Args:
        max_wavelength: the longest wavelength of the rotations (default 10000).
        scaling_factor: positions are divided by it (linear position interpolation,
            Chen et al. 2023, to stretch a trained context length); default 1.0.

    Call arguments:
        inputs: `(batch, seq, num_heads, head_dim)` or `(batch, seq, head_dim)`; head_dim
            must be even.
        start_index: int or int scalar tensor, position of the first token (for
            incremental decoding with a cache).

    Returns:
        The rotated inputs, same shape.

    Example:
    >>> q = keras.random.normal((2, 16, 4, 32))  # (batch, seq, num_heads, head_dim)
    >>> q = RotaryEmbedding()(q)  # (2, 16, 4, 32); apply to keys too, then attend

    Reference: Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position Embedding".
    """

    def __init__(self, max_wavelength=10000, scaling_factor=1.0, **kwargs):
        super().__init__(**kwargs)
        _check_max_wavelength(max_wavelength)
        if not _is_number(scaling_factor) or scaling_factor <= 0:
            raise ValueError(f"`scaling_factor` must be a positive number; got {scaling_factor!r}.")
        self.max_wavelength = max_wavelength
        self.scaling_factor = float(scaling_factor)

    def _check_shape(self, input_shape):
        if len(input_shape) not in (3, 4):
            raise ValueError(
                "RotaryEmbedding expects inputs of shape (batch, seq, num_heads, head_dim) or "
                f"(batch, seq, head_dim); got {tuple(input_shape)}."
            )
        head_dim = input_shape[-1]
        if head_dim is None or head_dim % 2 != 0:
            raise ValueError(
                f"RotaryEmbedding needs an even `head_dim` (the last input dim, rotated in pairs); got {head_dim}."
            )

    def build(self, input_shape):
        self._check_shape(input_shape)

    def call(self, inputs, start_index=0):
        self._check_shape(inputs.shape)
        half = inputs.shape[-1] // 2
        positions = ops.arange(ops.shape(inputs)[1], dtype="float32")
        positions = (positions + ops.cast(start_index, "float32")) / self.scaling_factor
        exponent = ops.arange(half, dtype="float32") * (2.0 / inputs.shape[-1])
        inv_freq = ops.exp(-math.log(self.max_wavelength) * exponent)  # (half,)
        angles = positions[:, None] * inv_freq[None, :]  # (seq, half)
        angles = ops.concatenate([angles, angles], axis=-1)  # (seq, head_dim)
        if len(inputs.shape) == 4:
            angles = angles[:, None, :]  # (seq, 1, head_dim), shared by the heads
        cos, sin = ops.cos(angles)[None], ops.sin(angles)[None]
        x = ops.cast(inputs, "float32")
        x1, x2 = x[..., :half], x[..., half:]
        rotated = ops.concatenate([-x2, x1], axis=-1)
        return ops.cast(x * cos + rotated * sin, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {"max_wavelength": self.max_wavelength, "scaling_factor": self.scaling_factor}
        )
        return config
