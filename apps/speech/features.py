"""Speech front end in the graph: log-mel spectrogram and SpecAugment, as Keras layers.

    waveform (B, S) float32, 16 kHz  +  waveform_length (B,) int32
        │  LogMelSpectrogram: zero "center" padding → STFT (keras.ops.stft, Hann, 400/160)
        │  → |X|² → mel filterbank matmul (librosa's Slaney matrix, a constant)
        │  → 10·log10(max(·, 1e-10)) → [per-utterance mean/variance normalisation]
        ▼
    log-mel (B, T, n_mels), T = 1 + S // hop   +  frame_length (B,) = 1 + n // hop
        │  SpecAugment (training only): frequency and time masks inside the valid frames
        ▼
    features for the encoder

Both layers use `keras.ops` only (no `tf.signal`): they run on TensorFlow and JAX, and a
SavedModel of a model that starts with them takes raw waveforms of any length. Export
that way on the TensorFlow backend: on JAX, `keras.ops.stft` (jax.scipy.signal.stft)
needs a concrete sample count, so a symbolic sample axis fails to export.

Cost per batch of 32 three-second clips (B=32, S=48000 -> T=301, n_mels=80), TensorFlow on
this project's 2-core CPU while another benchmark and a CI run shared it (load average
5-6): median ms of 7 calls after warm-up, range over three runs of
`python -m apps.speech.features` (`time_front_end()`), which prints this table:
                                     eager    tf.function    tf.function(jit_compile=True)
    LogMelSpectrogram                52-65    21-39          36-55
    LogMelSpectrogram + SpecAugment  67-95    19-43          36-45
Inside a graph SpecAugment is within the run-to-run noise. XLA makes the front end no
faster on this CPU (slower in most runs), so it needs no `jit_compile` of its own.
On JAX (KERAS_BACKEND=jax, one run): LogMelSpectrogram 29 ms under `jax.jit`, 139 ms eager.
"""

import keras
import numpy as np
from keras import ops


def mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax):
    """The (n_fft // 2 + 1, n_mels) float32 mel matrix of `librosa.filters.mel` (Slaney
    mel scale and area normalisation, htk=False), transposed for `power @ filterbank`."""
    import librosa  # build-time only: the matrix becomes a constant of the graph

    weights = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin,
                                  fmax=fmax, htk=False, norm="slaney", dtype=np.float32)
    return np.ascontiguousarray(weights.T)


def _check(name, ok, expected, value):
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {value!r}")


@keras.saving.register_keras_serializable(package="tfattn_speech")
class LogMelSpectrogram(keras.layers.Layer):
    """Log-mel spectrogram of a zero-padded waveform batch, with exact frame lengths.

    Matches `librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=16000, n_fft=400,
    hop_length=160, window="hann", center=True, pad_mode="constant", power=2.0, n_mels=80,
    fmin=0.0, fmax=8000.0), ref=1.0, amin=1e-10, top_db=None)` frame for frame (librosa
    0.10+ defaults to `pad_mode="constant"`; `keras.ops.stft(center=True)` reflects, so the
    layer zero-pads `n_fft // 2` samples itself and calls the STFT uncentred). Within the
    valid frames of a padded batch the result equals librosa on the unpadded clip, since
    librosa's end padding is zeros too; samples past `waveform_length` are zeroed first.
    Parity on synthesised speech (espeak-ng, festival; 16 kHz): max |diff| 0.002 dB over
    bins librosa puts above -80 dB, on 20 clips of the digits corpus; tests assert 0.01 dB.

    Defaults are for 16 kHz speech: 25 ms windows (400 samples) every 10 ms (160), 80 mel
    bands over 0-8 kHz, power 2, log10 dB with ref 1.0 and floor 1e-10 (-100 dB), no top_db.
    The STFT and log run in float32 whatever the dtype policy; the output is cast to the
    layer's compute dtype (float16 under `mixed_float16`: dB values are well within range).

    Args:
        sample_rate: waveform rate in Hz.
        n_fft: FFT size and window length in samples.
        hop_length: samples between frames.
        n_mels: mel bands.
        fmin, fmax: band edges of the filterbank in Hz (`fmax=None`: sample_rate / 2).
        power: 2.0 for power, 1.0 for magnitude before the mel matmul.
        amin: floor before the log (librosa's `amin`).
        center: True pads `n_fft // 2` zeros on both sides so frame t is centred at sample
            `t * hop_length` (T = 1 + S // hop); False frames from sample 0
            (T = 1 + (S - n_fft) // hop).
        normalize: if True, standardise each mel band of each utterance by the mean and
            standard deviation over its valid frames (per-utterance CMVN, epsilon 1e-5).
            Removes gain and channel offsets; SpecAugment's zero fill is then the mean.
        **kwargs: base Layer arguments (name, dtype).

    Call arguments:
        waveform: (batch, samples) float waveform, zero-padded.
        waveform_length: optional (batch,) int valid samples per row; default all samples.

    Returns:
        `(log_mel, frame_length)`: (batch, frames, n_mels) in dB (or normalised) and (batch,)
        int32 valid frames, `1 + n // hop_length` for center=True. Frames at or past
        `frame_length` are set to the silence floor `10 * log10(amin)` (0 when normalised).

    Example:

    >>> wave = keras.random.normal((2, 16000)) * 0.1
    >>> feats, frames = LogMelSpectrogram()(wave, keras.ops.array([16000, 8000]))
    >>> tuple(feats.shape), keras.ops.convert_to_numpy(frames).tolist()
    ((2, 101, 80), [101, 51])
    """

    def __init__(self, sample_rate=16000, n_fft=400, hop_length=160, n_mels=80, fmin=0.0,
                 fmax=8000.0, power=2.0, amin=1e-10, center=True, normalize=False, **kwargs):
        # The waveform stays float32 under mixed precision: float16 samples would add
        # quantisation noise at about -66 dB, above quiet speech bins.
        super().__init__(autocast=False, **kwargs)
        _check("sample_rate", sample_rate > 0, "> 0", sample_rate)
        _check("n_fft", n_fft >= 2, ">= 2", n_fft)
        _check("hop_length", hop_length >= 1, ">= 1", hop_length)
        _check("n_mels", n_mels >= 1, ">= 1", n_mels)
        nyquist = sample_rate / 2
        _check("fmax", fmax is None or fmin < fmax <= nyquist,
               f"None or in (fmin, sample_rate / 2 = {nyquist}]", fmax)
        _check("power", power in (1.0, 2.0), "1.0 or 2.0", power)
        _check("amin", amin > 0, "> 0", amin)
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.fmin = fmin
        self.fmax = fmax
        self.power = power
        self.amin = amin
        self.center = center
        self.normalize = normalize

    def build(self, waveform_shape, waveform_length_shape=None):
        fmax = self.sample_rate / 2 if self.fmax is None else self.fmax
        self._filterbank = mel_filterbank(self.sample_rate, self.n_fft, self.n_mels,
                                          self.fmin, fmax)
        # Periodic Hann, as scipy.signal.get_window("hann", n_fft) which librosa uses.
        self._window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(self.n_fft) / self.n_fft)
                        ).astype(np.float32)
        self.built = True

    def frame_length(self, waveform_length):
        """Valid frames for `waveform_length` valid samples (librosa's frame count)."""
        n = ops.cast(waveform_length, "int32")
        if self.center:
            return 1 + n // self.hop_length
        return ops.maximum(0, 1 + (n - self.n_fft) // self.hop_length)

    def call(self, waveform, waveform_length=None):
        x = ops.cast(waveform, "float32")
        samples = ops.shape(x)[1]
        if waveform_length is None:
            waveform_length = ops.full((ops.shape(x)[0],), samples, dtype="int32")
        waveform_length = ops.minimum(ops.cast(waveform_length, "int32"), samples)
        valid = ops.arange(samples, dtype="int32")[None, :] < waveform_length[:, None]
        x = ops.where(valid, x, 0.0)
        if self.center:
            pad = self.n_fft // 2
            x = ops.pad(x, [[0, 0], [pad, pad]])
        real, imag = ops.stft(x, sequence_length=self.n_fft, sequence_stride=self.hop_length,
                              fft_length=self.n_fft, window=ops.convert_to_tensor(self._window),
                              center=False)  # (batch, frames, n_fft // 2 + 1)
        spec = real * real + imag * imag
        if self.power == 1.0:
            spec = ops.sqrt(spec)
        mel = ops.matmul(spec, ops.convert_to_tensor(self._filterbank))  # (batch, frames, n_mels)
        log_mel = 10.0 * ops.log10(ops.maximum(mel, self.amin))

        frame_length = self.frame_length(waveform_length)
        frame_mask = (ops.arange(ops.shape(log_mel)[1], dtype="int32")[None, :]
                      < frame_length[:, None])[:, :, None]  # (batch, frames, 1)
        if self.normalize:
            log_mel = _standardize(log_mel, frame_mask, frame_length)
            floor = 0.0
        else:
            floor = float(10.0 * np.log10(self.amin))
        log_mel = ops.where(frame_mask, log_mel, floor)
        return ops.cast(log_mel, self.compute_dtype), frame_length

    def compute_output_shape(self, waveform_shape, waveform_length_shape=None):
        batch, samples = waveform_shape
        frames = None
        if samples is not None:
            if self.center:
                frames = 1 + samples // self.hop_length
            else:
                frames = max(0, 1 + (samples - self.n_fft) // self.hop_length)
        return (batch, frames, self.n_mels), (batch,)

    def compute_output_spec(self, waveform, waveform_length=None):
        feats, lengths = self.compute_output_shape(waveform.shape)
        return (keras.KerasTensor(feats, dtype=self.compute_dtype),
                keras.KerasTensor(lengths, dtype="int32"))

    def get_config(self):
        config = super().get_config()
        config.update(sample_rate=self.sample_rate, n_fft=self.n_fft,
                      hop_length=self.hop_length, n_mels=self.n_mels, fmin=self.fmin,
                      fmax=self.fmax, power=self.power, amin=self.amin, center=self.center,
                      normalize=self.normalize)
        return config


def _standardize(x, mask, length, epsilon=1e-5):
    """Per-utterance, per-band mean/variance normalisation over the valid frames."""
    mask = ops.cast(mask, x.dtype)
    count = ops.maximum(ops.cast(length, x.dtype), 1.0)[:, None, None]  # (batch, 1, 1)
    mean = ops.sum(x * mask, axis=1, keepdims=True) / count  # (batch, 1, n_mels)
    var = ops.sum(ops.square(x - mean) * mask, axis=1, keepdims=True) / count
    return (x - mean) * ops.rsqrt(var + epsilon)


@keras.saving.register_keras_serializable(package="tfattn_speech")
class SpecAugment(keras.layers.Layer):
    """SpecAugment frequency and time masking of a (batch, frames, bins) spectrogram.

    In training, each utterance gets `num_freq_masks` bands of f ~ U{0..freq_mask_param}
    consecutive bins starting at f0 ~ U{0..bins - f}, and `num_time_masks` spans of
    t ~ U{0..min(time_mask_param, floor(max_time_ratio * n))} frames starting at
    t0 ~ U{0..n - t}, where n is the utterance's valid frame count, so masks never reach
    past `frame_length` and padding frames keep their value. Masks may overlap. Identity
    when `training` is falsy (inference, evaluation, export).

    Defaults are the paper's LibriSpeech basic (LB) policy, F=27, mF=1, T=100, mT=1, except
    the upper bound p = `max_time_ratio`: 0.2, from the paper's Switchboard policies (SM,
    SS), instead of LB's 1.0, because a 1 s digit string has 101 frames and a 100-frame
    mask could erase it. Time warping is not implemented (the paper reports it as the most
    expensive and least influential of the three). The fill is the utterance's mean over
    its valid frames and bins (`fill_value="mean"`), which is 0 for normalised features, as
    the paper's zero; or a fixed float.

    Args:
        freq_mask_param: F, the widest frequency mask in bins.
        num_freq_masks: mF.
        time_mask_param: T, the widest time mask in frames.
        num_time_masks: mT.
        max_time_ratio: p, a time mask covers at most this fraction of the valid frames.
        fill_value: "mean" or a float written into masked cells.
        seed: int seed for the layer's `keras.random.SeedGenerator` (None: unseeded).
        **kwargs: base Layer arguments (name, dtype).

    Call arguments:
        features: (batch, frames, bins).
        frame_length: optional (batch,) int valid frames; default all frames.
        training: masks only when True.

    Returns:
        The masked features, same shape and dtype.

    Example:

    >>> feats = keras.random.normal((2, 300, 80))
    >>> out = SpecAugment(seed=0)(feats, keras.ops.array([300, 120]), training=True)
    >>> tuple(out.shape)
    (2, 300, 80)

    Reference:
        Park et al., "SpecAugment: A Simple Data Augmentation Method for Automatic Speech
        Recognition", Interspeech 2019, https://arxiv.org/abs/1904.08779
    """

    def __init__(self, freq_mask_param=27, num_freq_masks=1, time_mask_param=100,
                 num_time_masks=1, max_time_ratio=0.2, fill_value="mean", seed=None, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("freq_mask_param", freq_mask_param),
                            ("num_freq_masks", num_freq_masks),
                            ("time_mask_param", time_mask_param),
                            ("num_time_masks", num_time_masks)):
            _check(name, isinstance(value, int) and value >= 0, "an int >= 0", value)
        _check("max_time_ratio", 0.0 <= max_time_ratio <= 1.0, "in [0, 1]", max_time_ratio)
        _check("fill_value", fill_value == "mean" or isinstance(fill_value, (int, float)),
               '"mean" or a number', fill_value)
        self.freq_mask_param = freq_mask_param
        self.num_freq_masks = num_freq_masks
        self.time_mask_param = time_mask_param
        self.num_time_masks = num_time_masks
        self.max_time_ratio = max_time_ratio
        self.fill_value = fill_value
        self.seed = seed
        self.supports_masking = True

    def build(self, features_shape, frame_length_shape=None):
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self.built = True

    def call(self, features, frame_length=None, training=None):
        if not training:
            return features
        batch, frames, bins = ops.shape(features)[0], ops.shape(features)[1], ops.shape(features)[2]
        if frame_length is None:
            frame_length = ops.full((batch,), frames, dtype="int32")
        n = ops.minimum(ops.cast(frame_length, "int32"), frames)  # (batch,)
        valid = ops.arange(frames, dtype="int32")[None, :] < n[:, None]  # (batch, frames)

        max_t = ops.minimum(self.time_mask_param,
                            ops.cast(ops.floor(self.max_time_ratio * ops.cast(n, "float32")),
                                     "int32"))
        time_masked = self._spans(frames, n, max_t, self.num_time_masks, batch)
        freq_masked = self._spans(bins, ops.full((batch,), bins, dtype="int32"),
                                  ops.full((batch,), self.freq_mask_param, dtype="int32"),
                                  self.num_freq_masks, batch)
        masked = ops.logical_and(
            valid[:, :, None],
            ops.logical_or(time_masked[:, :, None], freq_masked[:, None, :]))  # (batch, frames, bins)

        if self.fill_value == "mean":
            # In float32: a float16 sum over 300 x 80 dB values overflows.
            weight = ops.cast(valid, "float32")[:, :, None]
            count = ops.maximum(ops.cast(n, "float32"), 1.0) * ops.cast(bins, "float32")
            total = ops.sum(ops.cast(features, "float32") * weight, axis=(1, 2))
            fill = ops.cast(total / count, features.dtype)[:, None, None]
        else:
            fill = ops.cast(self.fill_value, features.dtype)
        return ops.where(masked, fill, features)

    def _spans(self, size, extent, max_width, num, batch):
        """(batch, size) bool: union of `num` random spans per row, each of width
        U{0..max_width} inside [0, extent)."""
        covered = ops.zeros((batch, size), dtype="bool")
        positions = ops.arange(size, dtype="int32")[None, :]
        max_width = ops.minimum(max_width, extent)
        for _ in range(num):
            u = keras.random.uniform((2, batch), seed=self.seed_generator)
            width = ops.cast(ops.floor(u[0] * ops.cast(max_width + 1, "float32")), "int32")
            width = ops.minimum(width, max_width)  # u may round to 1.0 in float32
            start = ops.cast(ops.floor(u[1] * ops.cast(extent - width + 1, "float32")), "int32")
            start = ops.minimum(start, extent - width)
            span = ops.logical_and(positions >= start[:, None],
                                   positions < (start + width)[:, None])
            covered = ops.logical_or(covered, span)
        return covered

    def compute_output_shape(self, features_shape, frame_length_shape=None):
        return features_shape

    def get_config(self):
        config = super().get_config()
        config.update(freq_mask_param=self.freq_mask_param, num_freq_masks=self.num_freq_masks,
                      time_mask_param=self.time_mask_param, num_time_masks=self.num_time_masks,
                      max_time_ratio=self.max_time_ratio, fill_value=self.fill_value,
                      seed=self.seed)
        return config


def time_front_end(batch=32, seconds=3.0, repeats=7, seed=0):
    """Median ms per call of LogMelSpectrogram (+ SpecAugment in training mode) on a batch
    of `batch` clips of `seconds` s, eager and as tf.function with and without XLA."""
    import time

    import tensorflow as tf  # timing harness only; the layers themselves are keras.ops

    wave = np.random.default_rng(seed).normal(0, 0.1, (batch, int(16000 * seconds)))
    wave = tf.constant(wave.astype("float32"))
    length = tf.constant(np.full((batch,), wave.shape[1], np.int32))
    logmel, augment = LogMelSpectrogram(), SpecAugment(seed=seed)

    def mel_only(w, n):
        return logmel(w, n)[0]

    def mel_augment(w, n):
        feats, frames = logmel(w, n)
        return augment(feats, frames, training=True)

    rows = {}
    for name, fn in (("LogMelSpectrogram", mel_only), ("+ SpecAugment", mel_augment)):
        for mode, f in (("eager", fn), ("tf.function", tf.function(fn)),
                        ("tf.function(jit_compile)", tf.function(fn, jit_compile=True))):
            f(wave, length).numpy()  # trace / compile
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                f(wave, length).numpy()
                times.append(1000 * (time.perf_counter() - start))
            rows[(name, mode)] = float(np.median(times))
    return rows


if __name__ == "__main__":
    for (name, mode), ms in time_front_end().items():
        print(f"{name:20s} {mode:26s} {ms:7.1f} ms")
