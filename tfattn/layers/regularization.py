"""Small building blocks of Transformer residual branches: DropPath, LayerScale, MLP."""

import keras
from keras import ops

from tfattn.layers.functional import dropout


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


@keras.saving.register_keras_serializable(package="tfattn")
class MLP(keras.layers.Layer):
    """Position-wise feed-forward block: Dense -> activation -> dropout -> Dense -> dropout.

    Args:
        intermediate_dim: hidden width.
        output_dim: output width; defaults to the input's last dim.
        activation: hidden activation (default "gelu").
        dropout_rate: dropout after the activation and after the output projection.
        use_bias: whether the Dense layers use a bias.
        kernel_initializer, bias_initializer: as in `keras.layers.Dense`.
        seed: optional int seed for dropout.

    Dropout uses `tfattn.layers.dropout` (Philox on TensorFlow), which stays cheap under
    XLA where `keras.layers.Dropout` does not.

    Call arguments:
        inputs: `(batch, ..., dim)`.
        training: enables dropout.

    Returns:
        `(batch, ..., output_dim)`.
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
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(intermediate_dim, int) or intermediate_dim <= 0:
            raise ValueError(f"`intermediate_dim` must be a positive int; got {intermediate_dim!r}.")
        self.intermediate_dim = intermediate_dim
        self.output_dim = output_dim
        self.activation = keras.activations.get(activation)
        self.dropout_rate = float(dropout_rate)
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.seed = seed
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
        self.fc1 = keras.layers.Dense(self.intermediate_dim, activation=self.activation, name="fc1", **common)
        self.fc2 = keras.layers.Dense(out_dim, name="fc2", **common)
        self.fc1.build(input_shape)
        self.fc2.build(tuple(input_shape[:-1]) + (self.intermediate_dim,))

    def _dropout(self, x, training):
        if training and self.dropout_rate > 0:
            return dropout(x, self.dropout_rate, self.seed_generator)
        return x

    def call(self, inputs, training=None):
        x = self._dropout(self.fc1(inputs), training)
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
            }
        )
        return config
