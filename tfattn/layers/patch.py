"""Image to patch tokens, flattened row-major, with an optional class token.

`PatchEmbedding` (ViT: a strided convolution), `ShiftedPatchEmbedding` (Shifted Patch
Tokenization for small datasets) and `ConvPatchEmbedding` (a convolutional stem).
"""

import numbers

import keras
from keras import ops


def _is_positive_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


def _as_pair(name, value):
    """int or (a, b) -> (a, b) of positive Python ints."""
    if _is_positive_int(value):
        value = (value, value)
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(map(_is_positive_int, value))
    ):
        raise ValueError(
            f"`{name}` must be a positive int or a pair of positive ints; got {value!r}."
        )
    return tuple(int(v) for v in value)


def _check_divisible(owner, height, width, patch_size):
    ph, pw = patch_size
    if (height is not None and height % ph) or (width is not None and width % pw):
        raise ValueError(
            f"{owner} needs an image size divisible by the patch size; got image size "
            f"({height}, {width}) and patch_size ({ph}, {pw})."
        )


def _check_image_shape(owner, shape, patch_size):
    if len(shape) != 4:
        raise ValueError(
            f"{owner} expects images of shape (batch, height, width, channels); got {tuple(shape)}."
        )
    _check_divisible(owner, shape[1], shape[2], patch_size)


def _grid_size(owner, image_size, patch_size):
    height, width = _as_pair("image_size", image_size)
    _check_divisible(owner, height, width, patch_size)
    return height // patch_size[0], width // patch_size[1]


def _num_tokens(input_shape, patch_size, use_class_token):
    height, width = input_shape[1], input_shape[2]
    if height is None or width is None:
        return None
    return (height // patch_size[0]) * (width // patch_size[1]) + int(bool(use_class_token))


def _prepend_class_token(x, class_token):
    """(batch, num_patches, dim) -> (batch, 1 + num_patches, dim)."""
    batch = ops.shape(x)[0]
    token = ops.broadcast_to(ops.cast(class_token, x.dtype), (batch, 1, x.shape[-1]))
    return ops.concatenate([token, x], axis=1)


@keras.saving.register_keras_serializable(package="tfattn")
class PatchEmbedding(keras.layers.Layer):
    """Splits an image into non-overlapping patches and projects each to a token.

    The projection is a `Conv2D` with kernel = stride = patch size and "valid" padding (the
    same as a Dense on each flattened patch). Tokens are flattened row-major, so token
    `r * grid_width + c` is the patch in grid row r, column c; a learned class token, if
    used, comes first. Works for any image size divisible by the patch size.

    Args:
        hidden_dim: size of each token.
        patch_size: int or `(patch_height, patch_width)`.
        use_class_token: prepend a learned class token (initialised to zeros).
        kernel_initializer: initializer of the projection kernel.

    Call arguments:
        inputs: images `(batch, height, width, channels)`.

    Returns:
        `(batch, num_patches, hidden_dim)`, or `(batch, 1 + num_patches, hidden_dim)` with the
        class token, where num_patches = (height // patch_height) * (width // patch_width).

    Example:
    >>> images = keras.random.normal((2, 32, 32, 3))
    >>> patches = PatchEmbedding(hidden_dim=64, patch_size=8, use_class_token=True)
    >>> tokens = patches(images)  # (2, 1 + 4 * 4, 64)
    >>> patches.grid_size((32, 32))  # (4, 4)

    Reference: Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words: Transformers for
    Image Recognition at Scale" (ViT).
    """

    def __init__(
        self,
        hidden_dim,
        patch_size,
        use_class_token=False,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not _is_positive_int(hidden_dim):
            raise ValueError(f"`hidden_dim` must be a positive int; got {hidden_dim!r}.")
        self.hidden_dim = int(hidden_dim)
        self.patch_size = _as_pair("patch_size", patch_size)
        self.use_class_token = use_class_token
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def grid_size(self, image_size):
        """`(height, width)` (or an int for a square image) -> `(height // ph, width // pw)`."""
        return _grid_size("PatchEmbedding", image_size, self.patch_size)

    def build(self, input_shape):
        _check_image_shape("PatchEmbedding", input_shape, self.patch_size)
        self.projection = keras.layers.Conv2D(
            self.hidden_dim,
            kernel_size=self.patch_size,
            strides=self.patch_size,
            padding="valid",
            data_format="channels_last",
            kernel_initializer=self.kernel_initializer,
            dtype=self.dtype_policy,
            name="projection",
        )
        self.projection.build(input_shape)
        if self.use_class_token:
            self.class_token = self.add_weight(
                name="class_token", shape=(1, 1, self.hidden_dim), initializer="zeros"
            )

    def call(self, inputs):
        _check_image_shape("PatchEmbedding", inputs.shape, self.patch_size)
        x = self.projection(inputs)  # (batch, grid_h, grid_w, hidden_dim)
        batch = ops.shape(x)[0]
        x = ops.reshape(x, (batch, -1, self.hidden_dim))  # (batch, num_patches, hidden_dim)
        if self.use_class_token:
            x = _prepend_class_token(x, self.class_token)
        return x

    def compute_output_shape(self, input_shape):
        _check_image_shape("PatchEmbedding", input_shape, self.patch_size)
        num_tokens = _num_tokens(input_shape, self.patch_size, self.use_class_token)
        return (input_shape[0], num_tokens, self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "patch_size": self.patch_size,
                "use_class_token": self.use_class_token,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config


def _shift(images, dy, dx):
    """Moves the content of `(batch, h, w, c)` images by (dy, dx) pixels (+ = down / right),
    filling with zeros; the size is unchanged."""

    def kept(d):  # the rows (columns) that stay inside the image
        return slice(None, -d) if d > 0 else slice(-d, None)

    cropped = images[:, kept(dy), kept(dx), :]
    padding = ((0, 0), (max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0)), (0, 0))
    return ops.pad(cropped, padding)


def shifted_patches(images, patch_size):
    """Shifted Patch Tokenization's patch features, before the norm and the projection.

    The image and four copies whose content is shifted by half a patch (ph // 2, pw // 2)
    towards each diagonal, with zero fill, are concatenated on channels in the official
    implementation's order: unshifted, down-right, down-left, up-right, up-left. The
    result is cut into non-overlapping patches, row-major like `PatchEmbedding`, so each
    patch also sees the pixels up to half a patch beyond its borders.

    Args:
        images: `(batch, height, width, channels)`, height and width divisible by the
            patch size, channels known statically.
        patch_size: int or `(patch_height, patch_width)`.

    Returns:
        `(batch, num_patches, patch_height * patch_width * 5 * channels)`, each patch
        flattened in (row, column, channel) order; channels `[g * C, (g + 1) * C)` come
        from shifted copy g.

    Example:
    >>> shifted_patches(keras.random.normal((2, 8, 8, 3)), patch_size=4).shape  # (2, 4, 240)

    Reference: Lee, Lee & Song 2021, "Vision Transformer for Small-Size Datasets"
    (https://github.com/aanna0701/SPT_LSA_ViT).
    """
    ph, pw = _as_pair("patch_size", patch_size)
    _check_image_shape("shifted_patches", images.shape, (ph, pw))
    if images.shape[-1] is None:
        raise ValueError("shifted_patches needs a statically known number of image channels.")
    sy, sx = ph // 2, pw // 2
    shifts = ((0, 0), (sy, sx), (sy, -sx), (-sy, sx), (-sy, -sx))
    x = ops.concatenate([_shift(images, dy, dx) for dy, dx in shifts], axis=-1)
    channels = x.shape[-1]  # 5 * C
    shape = ops.shape(x)
    batch, height, width = shape[0], shape[1], shape[2]
    x = ops.reshape(x, (batch, height // ph, ph, width // pw, pw, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))  # (batch, grid_h, grid_w, ph, pw, 5 C)
    return ops.reshape(x, (batch, -1, ph * pw * channels))  # (batch, num_patches, patch_dim)


@keras.saving.register_keras_serializable(package="tfattn")
class ShiftedPatchEmbedding(keras.layers.Layer):
    """Shifted Patch Tokenization (SPT): patch tokens that also see their neighbourhood.

    The image and four copies shifted by half a patch towards each diagonal are stacked
    on channels and cut into non-overlapping patches (`shifted_patches`); each flattened
    patch is layer-normalised and projected to a token by a Dense layer. Tokens are
    row-major and the optional class token comes first, as in `PatchEmbedding`. Works
    for any image size divisible by the patch size.

    Args:
        hidden_dim: size of each token.
        patch_size: int or `(patch_height, patch_width)`; the shift is
            `(patch_height // 2, patch_width // 2)`.
        use_class_token: prepend a learned class token (initialised to zeros).
        layer_norm_epsilon: epsilon of the LayerNormalization over each flattened patch.
        kernel_initializer: initializer of the projection kernel.

    Call arguments:
        inputs: images `(batch, height, width, channels)`.

    Returns:
        `(batch, num_patches, hidden_dim)`, or `(batch, 1 + num_patches, hidden_dim)` with the
        class token, where num_patches = (height // patch_height) * (width // patch_width).

    Example:
    >>> images = keras.random.normal((2, 32, 32, 3))
    >>> patches = ShiftedPatchEmbedding(hidden_dim=64, patch_size=4, use_class_token=True)
    >>> tokens = patches(images)  # (2, 1 + 8 * 8, 64)
    >>> patches.grid_size((32, 32))  # (8, 8)

    Reference: Lee, Lee & Song 2021, "Vision Transformer for Small-Size Datasets".
    """

    def __init__(
        self,
        hidden_dim,
        patch_size,
        use_class_token=False,
        layer_norm_epsilon=1e-6,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not _is_positive_int(hidden_dim):
            raise ValueError(f"`hidden_dim` must be a positive int; got {hidden_dim!r}.")
        self.hidden_dim = int(hidden_dim)
        self.patch_size = _as_pair("patch_size", patch_size)
        self.use_class_token = use_class_token
        self.layer_norm_epsilon = layer_norm_epsilon
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def grid_size(self, image_size):
        """`(height, width)` (or an int for a square image) -> `(height // ph, width // pw)`."""
        return _grid_size("ShiftedPatchEmbedding", image_size, self.patch_size)

    def build(self, input_shape):
        _check_image_shape("ShiftedPatchEmbedding", input_shape, self.patch_size)
        if input_shape[-1] is None:
            raise ValueError("ShiftedPatchEmbedding needs a known number of image channels.")
        patch_dim = self.patch_size[0] * self.patch_size[1] * 5 * input_shape[-1]
        self.norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name="norm"
        )
        self.projection = keras.layers.Dense(
            self.hidden_dim,
            kernel_initializer=self.kernel_initializer,
            dtype=self.dtype_policy,
            name="projection",
        )
        self.norm.build((None, None, patch_dim))
        self.projection.build((None, None, patch_dim))
        if self.use_class_token:
            self.class_token = self.add_weight(
                name="class_token", shape=(1, 1, self.hidden_dim), initializer="zeros"
            )

    def call(self, inputs):
        _check_image_shape("ShiftedPatchEmbedding", inputs.shape, self.patch_size)
        x = shifted_patches(inputs, self.patch_size)  # (batch, num_patches, patch_dim)
        x = self.projection(self.norm(x))  # (batch, num_patches, hidden_dim)
        if self.use_class_token:
            x = _prepend_class_token(x, self.class_token)
        return x

    def compute_output_shape(self, input_shape):
        _check_image_shape("ShiftedPatchEmbedding", input_shape, self.patch_size)
        num_tokens = _num_tokens(input_shape, self.patch_size, self.use_class_token)
        return (input_shape[0], num_tokens, self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "patch_size": self.patch_size,
                "use_class_token": self.use_class_token,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="tfattn")
class ConvPatchEmbedding(keras.layers.Layer):
    """Convolutional stem: patch tokens from a stack of stride-2 3x3 convolutions.

    Replaces ViT's single patchify convolution by `log2(patch_size)` convolutions with
    kernel 3, stride 2 and "same" padding, each followed by BatchNormalization and ReLU,
    then a 1x1 convolution to `hidden_dim` (Xiao et al. 2021 report that such a stem makes
    ViTs optimise faster, less sensitive to the learning rate and more accurate at equal
    compute). Each token sees a (2 * patch_size - 1)-pixel neighbourhood instead of its own
    patch. The grid, row-major token order and optional class token are those of
    `PatchEmbedding`, so position embeddings, pooling and attention maps are unchanged.

    Args:
        hidden_dim: size of each token.
        patch_size: int or `(patch_height, patch_width)`, each a power of two >= 2 (the
            number of stride-2 convolutions is log2 of it; non-square sizes use stride 1 on
            the shorter side once it is reached).
        filters: channels of the stride-2 convolutions: a list with one entry per
            convolution, or None for `hidden_dim // 2**(n - 1 - i)` for convolution i of n
            (doubling up to `hidden_dim`; at least 8).
        depth: convolutions per resolution: each stride-2 convolution is followed by
            `depth - 1` stride-1 3x3 convolutions of the same width (each with
            BatchNormalization and ReLU). 1 is Xiao et al.'s stem; 2 adds a small
            ResNet-like stage per halving, a stronger locality prior for small images.
        use_class_token: prepend a learned class token (initialised to zeros).
        kernel_initializer: initializer of the convolution kernels.

    Call arguments:
        inputs: images `(batch, height, width, channels)`.
        training: BatchNormalization mode.

    Returns:
        `(batch, num_patches, hidden_dim)`, or `(batch, 1 + num_patches, hidden_dim)` with
        the class token, where num_patches = (height // patch_height) * (width // patch_width).

    Example:
    >>> images = keras.random.normal((2, 32, 32, 3))
    >>> stem = ConvPatchEmbedding(hidden_dim=64, patch_size=4, use_class_token=True)
    >>> tokens = stem(images)  # (2, 1 + 8 * 8, 64); convolutions with 32, 64 filters

    Reference: Xiao et al. 2021, "Early Convolutions Help Transformers See Better".
    """

    def __init__(
        self,
        hidden_dim,
        patch_size,
        filters=None,
        use_class_token=False,
        kernel_initializer="he_normal",
        depth=1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not _is_positive_int(hidden_dim):
            raise ValueError(f"`hidden_dim` must be a positive int; got {hidden_dim!r}.")
        self.hidden_dim = int(hidden_dim)
        self.patch_size = _as_pair("patch_size", patch_size)
        for side in self.patch_size:
            if side < 2 or side & (side - 1):
                raise ValueError(
                    "ConvPatchEmbedding needs a patch size whose sides are powers of two >= 2 "
                    f"(one stride-2 convolution per halving); got patch_size {self.patch_size}."
                )
        self.strides = self._strides()
        n = len(self.strides)
        if filters is None:
            filters = [max(8, self.hidden_dim // 2 ** (n - 1 - i)) for i in range(n)]
        filters = list(filters)
        if len(filters) != n or not all(map(_is_positive_int, filters)):
            raise ValueError(
                f"`filters` must be {n} positive ints (one per stride-2 convolution for "
                f"patch_size {self.patch_size}); got {filters!r}."
            )
        self.filters = [int(f) for f in filters]
        if not _is_positive_int(depth):
            raise ValueError(f"`depth` must be a positive int; got {depth!r}.")
        self.depth = int(depth)
        self.use_class_token = use_class_token
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def _strides(self):
        """One (sy, sx) per convolution: 2 on each side until that side is reduced."""
        steps_h, steps_w = (side.bit_length() - 1 for side in self.patch_size)
        return [
            (2 if i < steps_h else 1, 2 if i < steps_w else 1)
            for i in range(max(steps_h, steps_w))
        ]

    def grid_size(self, image_size):
        """`(height, width)` (or an int for a square image) -> `(height // ph, width // pw)`."""
        return _grid_size("ConvPatchEmbedding", image_size, self.patch_size)

    def build(self, input_shape):
        _check_image_shape("ConvPatchEmbedding", input_shape, self.patch_size)
        self.convs, self.norms = [], []
        shape = tuple(input_shape)
        layers = [
            (filters, strides if j == 0 else (1, 1), f"{i}" if j == 0 else f"{i}_{j}")
            for i, (filters, strides) in enumerate(zip(self.filters, self.strides))
            for j in range(self.depth)
        ]
        for filters, strides, suffix in layers:
            conv = keras.layers.Conv2D(
                filters,
                kernel_size=3,
                strides=strides,
                padding="same",
                use_bias=False,
                kernel_initializer=self.kernel_initializer,
                dtype=self.dtype_policy,
                name=f"conv{suffix}",
            )
            norm = keras.layers.BatchNormalization(
                momentum=0.9, epsilon=1e-5, dtype=self.dtype_policy, name=f"norm{suffix}"
            )
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            norm.build(shape)
            self.convs.append(conv)
            self.norms.append(norm)
        # The 1x1 projection, row-major flattening and class token: a 1-pixel PatchEmbedding.
        self.tokens = PatchEmbedding(
            self.hidden_dim,
            patch_size=1,
            use_class_token=self.use_class_token,
            dtype=self.dtype_policy,
            name="tokens",
        )
        self.tokens.build(shape)

    def call(self, inputs, training=None):
        _check_image_shape("ConvPatchEmbedding", inputs.shape, self.patch_size)
        x = inputs
        for conv, norm in zip(self.convs, self.norms):
            x = ops.relu(norm(conv(x), training=training))  # down to (batch, grid_h, grid_w, c)
        return self.tokens(x)

    def compute_output_shape(self, input_shape):
        _check_image_shape("ConvPatchEmbedding", input_shape, self.patch_size)
        num_tokens = _num_tokens(input_shape, self.patch_size, self.use_class_token)
        return (input_shape[0], num_tokens, self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "patch_size": self.patch_size,
                "filters": self.filters,
                "use_class_token": self.use_class_token,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "depth": self.depth,
            }
        )
        return config
