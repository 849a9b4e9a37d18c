"""Speech recognition models: raw waveform in, per-frame CTC logits out.

    waveform (B, S) float32 + waveform_length (B,) int32
      -> LogMelSpectrogram (in the graph; normalised per utterance)   (B, T, n_mels)
      -> SpecAugment (training only)
      -> encoder, by `architecture`:
           "conformer"     ConvSubsampling (x4 or x2 in time) + ConformerBlock x N (Gulati et
                           al. 2020; relative-position attention bias + depthwise conv)
           "transformer"   ConvSubsampling + sinusoidal positions + TransformerEncoderBlock x N
           "ctc_baseline"  the keras.io "CTC ASR" recipe (2-D conv x2, bidirectional GRU
                           x N, Dense): the Keras ecosystem's end-to-end ASR example, scaled
                           down; here with padding masks through the GRUs
      -> Dense(vocabulary size) logits (B, T', V)

Padding: each encoder knows every utterance's exact output length, and the logits of
frames past it are set to "certainly blank" (blank logit 0, every other -1e4). CTC over
all T' frames then gives the same loss as CTC over the valid frames (the extra frames
can only be blanks, with probability 1) and decoders read the same transcripts, so the
model is one tensor in, one out: `keras.losses.CTC`, `keras.ops.ctc_decode` and
`model.predict` work unchanged. `model.output_lengths(waveform_length)` gives T' exactly.
"""

import keras
from keras import ops

from apps.speech.features import LogMelSpectrogram, SpecAugment
from tfattn.layers import (
    ConformerBlock,
    ConvSubsampling,
    SinePositionEncoding,
    TransformerEncoderBlock,
)
from tfattn.layers.functional import nonempty_batch

ARCHITECTURES = ("conformer", "transformer", "ctc_baseline")
PADDED_LOGIT = -1e4  # non-blank logits of padded frames: exp(-1e4) underflows to 0

# Per-architecture defaults of the encoder hyperparameters (None in the config = these).
DEFAULTS = {
    "conformer": dict(hidden_dim=144, num_layers=4, num_heads=4, intermediate_dim=576,
                      conv_kernel_size=15, dropout_rate=0.1, attention_dropout_rate=0.0,
                      drop_path_rate=0.05, subsampling_filters=None, time_reduction=4,
                      conv_norm="layer_norm"),
    "transformer": dict(hidden_dim=144, num_layers=4, num_heads=4, intermediate_dim=576,
                        dropout_rate=0.1, attention_dropout_rate=0.0, drop_path_rate=0.05,
                        subsampling_filters=None, time_reduction=4),
    # keras.io uses 32 conv filters, 5 x BiGRU(512) and Dense(1024): ~26M parameters.
    "ctc_baseline": dict(hidden_dim=256, num_layers=3, rnn_units=192, conv_filters=32,
                         dropout_rate=0.2),
}


def _sequence_mask(lengths, maxlen):
    return ops.arange(maxlen, dtype="int32")[None, :] < ops.cast(lengths, "int32")[:, None]


@keras.saving.register_keras_serializable(package="tfattn_speech")
class SpeechRecognizer(keras.Model):
    """Waveform-to-CTC-logits model (see the module docstring).

    Args:
        vocabulary_size: CTC classes including the blank (id 0): `Vocabulary.size`.
        architecture: "conformer", "transformer" or "ctc_baseline".
        sample_rate, n_fft, hop_length, n_mels: the log-mel front end
            (`LogMelSpectrogram`; 25 ms windows every 10 ms at 16 kHz by default).
        spec_augment: dict of `SpecAugment` arguments, or None for no SpecAugment.
        hidden_dim: encoder width (baseline: the Dense after the GRUs).
        num_layers: Conformer / Transformer blocks, or bidirectional GRU layers.
        num_heads, intermediate_dim, conv_kernel_size, attention_dropout_rate,
            drop_path_rate, max_relative_position: Conformer/Transformer block settings.
        rnn_units, conv_filters: baseline GRU units per direction and 2-D conv filters.
        subsampling_filters: channels of the two ConvSubsampling convolutions (default
            `hidden_dim`); at width 144 its second convolution is ~60% of the Conformer's
            multiply-adds, so fewer filters buy training steps on a CPU.
        time_reduction: ConvSubsampling's stride over time: 4 (40 ms frames, the paper's)
            or 2 (20 ms frames: more CTC steps per character for fast speech).
        conv_norm: "layer_norm" or "batch_norm" (the paper's) in the Conformer
            convolution module.
        dropout_rate: dropout inside the encoder.
        seed: dropout / SpecAugment seed.

    Inputs: `{"waveform": (B, S) float32, "waveform_length": (B,) int}`.
    Output: logits `(B, T', vocabulary_size)`.
    """

    def __init__(self, vocabulary_size, architecture="conformer", *, sample_rate=16000,
                 n_fft=400, hop_length=160, n_mels=80, spec_augment=None, hidden_dim=144,
                 num_layers=4, num_heads=4, intermediate_dim=576, conv_kernel_size=15,
                 dropout_rate=0.1, attention_dropout_rate=0.0, drop_path_rate=0.0,
                 max_relative_position=64, rnn_units=192, conv_filters=32,
                 subsampling_filters=None, time_reduction=4, conv_norm="layer_norm", seed=None,
                 **kwargs):
        super().__init__(**kwargs)
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
        if vocabulary_size < 2:
            raise ValueError(f"vocabulary_size must be >= 2 (blank + 1), got {vocabulary_size}")
        self.vocabulary_size = vocabulary_size
        self.architecture = architecture
        self.front_end_config = dict(sample_rate=sample_rate, n_fft=n_fft,
                                     hop_length=hop_length, n_mels=n_mels)
        self.spec_augment_config = None if spec_augment is None else dict(spec_augment)
        self.encoder_config = dict(
            hidden_dim=hidden_dim, num_layers=num_layers, num_heads=num_heads,
            intermediate_dim=intermediate_dim, conv_kernel_size=conv_kernel_size,
            dropout_rate=dropout_rate, attention_dropout_rate=attention_dropout_rate,
            drop_path_rate=drop_path_rate, max_relative_position=max_relative_position,
            rnn_units=rnn_units, conv_filters=conv_filters,
            subsampling_filters=subsampling_filters, time_reduction=time_reduction,
            conv_norm=conv_norm)
        self.seed = seed

        self.log_mel = LogMelSpectrogram(**self.front_end_config, normalize=True, name="log_mel")
        self.spec_augment = (None if spec_augment is None else
                             SpecAugment(**spec_augment, seed=seed, name="spec_augment"))
        # Switched off for the first epochs by train.SpecAugmentWarmup (a Python switch:
        # it takes effect when the train function is traced again).
        self.spec_augment_enabled = True
        self.blocks = []
        if architecture in ("conformer", "transformer"):
            self.subsampling = ConvSubsampling(hidden_dim, filters=subsampling_filters,
                                               time_reduction=time_reduction,
                                               dropout_rate=dropout_rate, seed=seed,
                                               name="subsampling")
            self.positions = (SinePositionEncoding(name="positions")
                              if architecture == "transformer" else None)
            for i in range(num_layers):
                rate = drop_path_rate * (i + 1) / num_layers  # stochastic depth, linear
                if architecture == "conformer":
                    block = ConformerBlock(
                        hidden_dim, num_heads, intermediate_dim,
                        conv_kernel_size=conv_kernel_size, dropout_rate=dropout_rate,
                        attention_dropout_rate=attention_dropout_rate, drop_path_rate=rate,
                        max_relative_position=max_relative_position, conv_norm=conv_norm,
                        seed=seed, name=f"conformer_{i}")
                else:
                    block = TransformerEncoderBlock(
                        num_heads, intermediate_dim, dropout_rate=dropout_rate,
                        attention_dropout_rate=attention_dropout_rate, drop_path_rate=rate,
                        seed=seed, name=f"transformer_{i}")
                self.blocks.append(block)
            self.final_norm = (keras.layers.LayerNormalization(epsilon=1e-6, name="final_norm")
                               if architecture == "transformer" else None)
        else:
            # keras.io "CTC ASR": Conv2D(32, [11, 41], strides [2, 2]) + BN + ReLU,
            # Conv2D(32, [11, 21], strides [1, 2]) + BN + ReLU, BiGRU x N, Dense + ReLU.
            # Explicit symmetric padding + 'valid' (not 'same', whose stride-2 padding
            # depends on the padded length's parity): outputs do not depend on the padding.
            self.conv_specs = (((11, 41), (2, 2)), ((11, 21), (1, 2)))
            self.convs = [
                keras.layers.Conv2D(conv_filters, kernel, strides=strides, padding="valid",
                                    use_bias=False, name=f"conv_{i + 1}")
                for i, (kernel, strides) in enumerate(self.conv_specs)
            ]
            self.conv_norms = [keras.layers.BatchNormalization(name=f"conv_{i + 1}_bn")
                               for i in range(2)]
            self.blocks = [
                keras.layers.Bidirectional(
                    keras.layers.GRU(rnn_units, return_sequences=True, reset_after=True),
                    name=f"bigru_{i}")
                for i in range(num_layers)
            ]
            self.rnn_dropout = keras.layers.Dropout(dropout_rate, seed=seed)
            self.dense = keras.layers.Dense(hidden_dim, activation="relu", name="dense")
        self.classifier = keras.layers.Dense(vocabulary_size, name="classifier")

    # ------------------------------------------------------------------ lengths

    @property
    def time_reduction(self):
        return 2 if self.architecture == "ctc_baseline" else self.subsampling.time_reduction

    def feature_lengths(self, waveform_length):
        return self.log_mel.frame_length(ops.cast(waveform_length, "int32"))

    def output_lengths(self, waveform_length):
        """Exact encoder frames (CTC time steps) for `waveform_length` samples (int or tensor)."""
        if isinstance(waveform_length, int):
            n = waveform_length // self.log_mel.hop_length + 1  # center=True framing
            if self.architecture == "ctc_baseline":
                return -(-n // 2)  # 'same' padding, stride 2
            return self.subsampling.output_lengths(n)
        frames = self.feature_lengths(waveform_length)
        if self.architecture == "ctc_baseline":
            return (frames + 1) // 2
        return self.subsampling.output_lengths(frames)

    def min_samples_for_frames(self, frames):
        """Fewest samples whose output has at least `frames` frames (CTC length checks)."""
        n = 0
        step = self.log_mel.hop_length
        while self.output_lengths(n) < frames:
            n += step
        return n

    # ------------------------------------------------------------------ forward

    def encode(self, inputs, training=None, return_attention_scores=False):
        """Encoder output `(B, T', D)`, the valid-frame mask `(B, T')` and, for attention
        encoders with `return_attention_scores`, each block's weights `(B, heads, T', T')`."""
        # No lengths: every sample is valid (LogMelSpectrogram's own default).
        features, frames = self.log_mel(inputs["waveform"], inputs.get("waveform_length"))
        if self.spec_augment is not None and self.spec_augment_enabled:
            features = self.spec_augment(features, frames, training=training)
        scores = []
        if self.architecture == "ctc_baseline":
            x = features[..., None]  # (B, T, mel, 1)
            lengths = frames
            for conv, norm, (kernel, strides) in zip(self.convs, self.conv_norms,
                                                     self.conv_specs):
                pad = [[0, 0], [kernel[0] // 2] * 2, [kernel[1] // 2] * 2, [0, 0]]
                x = ops.relu(norm(conv(ops.pad(x, pad)), training=training))
                lengths = (lengths + strides[0] - 1) // strides[0]
                # Zero the frames past each utterance, as the padding the next conv adds.
                keep = _sequence_mask(lengths, ops.shape(x)[1])
                x = ops.where(keep[:, :, None, None], x, ops.zeros_like(x))
            shape = ops.shape(x)
            x = ops.reshape(x, (shape[0], shape[1], x.shape[2] * x.shape[3]))
            mask = _sequence_mask(lengths, ops.shape(x)[1])
            for i, block in enumerate(self.blocks):
                x = block(x, mask=mask, training=training)
                if i < len(self.blocks) - 1:
                    x = self.rnn_dropout(x, training=training)
            x = self.rnn_dropout(self.dense(x), training=training)
            return x, mask, scores
        x = self.subsampling(features, training=training)
        lengths = self.subsampling.output_lengths(frames)
        mask = _sequence_mask(lengths, ops.shape(x)[1])
        if self.positions is not None:
            x = x + ops.cast(self.positions(x), x.dtype)
        for block in self.blocks:
            if return_attention_scores:
                x, s = block(x, padding_mask=mask, return_attention_scores=True,
                             training=training)
                scores.append(s)
            else:
                x = block(x, padding_mask=mask, training=training)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x, mask, scores

    def call(self, inputs, training=None):
        # TensorFlow 2.21's oneDNN kernels (Conv2D, MatMul) mis-shape empty batches, which
        # multi-worker evaluation can hand a worker: run one zero row instead, drop it.
        waveform, batch = nonempty_batch(inputs["waveform"])
        length = inputs.get("waveform_length")
        if length is None:
            length = ops.full((ops.shape(inputs["waveform"])[0],),
                              ops.shape(inputs["waveform"])[1], "int32")
        length = ops.concatenate([ops.cast(length, "int32"), ops.zeros((1,), "int32")])
        inputs = {"waveform": waveform, "waveform_length": length[: ops.shape(waveform)[0]]}
        x, mask, _ = self.encode(inputs, training=training)
        x, mask = x[:batch], mask[:batch]
        logits = ops.cast(self.classifier(x), "float32")
        blank = ops.one_hot(ops.zeros_like(mask, dtype="int32"), self.vocabulary_size)
        padded = (1.0 - blank) * PADDED_LOGIT  # blank 0, the rest -1e4
        return ops.where(mask[..., None], logits, padded)

    def attention_maps(self, inputs):
        """Per-block attention weights `[(B, heads, T', T')]` and the frame mask (inference)."""
        if self.architecture == "ctc_baseline":
            raise ValueError("the ctc_baseline architecture has no attention maps")
        _, mask, scores = self.encode(inputs, training=False, return_attention_scores=True)
        return scores, mask

    def build_for(self, samples=16000):
        """Creates the weights by running one batch of `samples` zeros."""
        self({"waveform": ops.zeros((1, samples)),
              "waveform_length": ops.convert_to_tensor([samples], "int32")})
        return self

    def get_config(self):
        config = super().get_config()
        config.update(vocabulary_size=self.vocabulary_size, architecture=self.architecture,
                      **self.front_end_config, spec_augment=self.spec_augment_config,
                      **self.encoder_config, seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package="tfattn_speech")
class CTCLoss(keras.losses.Loss):
    """`keras.losses.CTC` (labels padded with the blank id 0) that also takes an empty
    batch: TensorFlow's dense CTC fails on batch 0 ("Indices and updates specified for
    empty output shape"), which multi-worker evaluation can hand a worker. The loss of an
    empty batch is 0 (no utterances, no loss)."""

    def __init__(self, reduction="sum_over_batch_size", name="ctc", dtype=None):
        super().__init__(reduction=reduction, name=name, dtype=dtype)

    def call(self, y_true, y_pred):
        y_pred, batch = nonempty_batch(y_pred)
        y_true = ops.concatenate([ops.cast(y_true, "int32"),
                                  ops.zeros((1, ops.shape(y_true)[1]), "int32")])
        y_true = y_true[: ops.shape(y_pred)[0]]
        label_length = ops.sum(ops.cast(y_true != 0, "int32"), axis=-1)
        frames = ops.full((ops.shape(y_pred)[0],), ops.shape(y_pred)[1], "int32")
        loss = ops.ctc_loss(y_true, y_pred, label_length, frames, mask_index=0)
        return loss[:batch]


def build_model(architecture, vocabulary_size, *, front_end=None, spec_augment=None, seed=None,
                **hparams):
    """A built `SpeechRecognizer`: the architecture's DEFAULTS updated by `hparams`."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    unknown = set(hparams) - set(DEFAULTS[architecture])
    if unknown:
        raise ValueError(f"{architecture} has no hyperparameter(s) {sorted(unknown)}; it takes "
                         f"{sorted(DEFAULTS[architecture])}")
    kwargs = {**DEFAULTS[architecture], **hparams, **(front_end or {})}
    model = SpeechRecognizer(vocabulary_size, architecture, spec_augment=spec_augment, seed=seed,
                             name=architecture, **kwargs)
    return model.build_for()


def count_params(model):
    return int(sum(int(ops.size(w)) for w in model.trainable_weights))
