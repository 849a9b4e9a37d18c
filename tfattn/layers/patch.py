"""Image to patch tokens: a strided convolution, flattened row-major, optional class token."""

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
        height, width = _as_pair("image_size", image_size)
        self._check_divisible(height, width)
        return height // self.patch_size[0], width // self.patch_size[1]

    def _check_divisible(self, height, width):
        ph, pw = self.patch_size
        if (height is not None and height % ph) or (width is not None and width % pw):
            raise ValueError(
                f"PatchEmbedding needs an image size divisible by the patch size; got image size "
                f"({height}, {width}) and patch_size ({ph}, {pw})."
            )

    def _check_shape(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                "PatchEmbedding expects images of shape (batch, height, width, channels); got "
                f"{tuple(input_shape)}."
            )
        self._check_divisible(input_shape[1], input_shape[2])

    def build(self, input_shape):
        self._check_shape(input_shape)
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
        self._check_shape(inputs.shape)
        x = self.projection(inputs)  # (batch, grid_h, grid_w, hidden_dim)
        batch = ops.shape(x)[0]
        x = ops.reshape(x, (batch, -1, self.hidden_dim))  # (batch, num_patches, hidden_dim)
        if self.use_class_token:
            token = ops.cast(self.class_token, x.dtype)
            token = ops.broadcast_to(token, (batch, 1, self.hidden_dim))
            x = ops.concatenate([token, x], axis=1)  # (batch, 1 + num_patches, hidden_dim)
        return x

    def compute_output_shape(self, input_shape):
        self._check_shape(input_shape)
        height, width = input_shape[1], input_shape[2]
        num_tokens = None
        if height is not None and width is not None:
            num_tokens = (height // self.patch_size[0]) * (width // self.patch_size[1])
            num_tokens += int(bool(self.use_class_token))
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
