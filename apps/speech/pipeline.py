"""tf.data pipeline for the speech app: duration buckets with fixed shapes, augmentation.

`make_pipeline(split, batch_size, training)` yields

    (waveform (B, S) float32, waveform_length (B,) int32,
     labels (B, L) int32, label_length (B,) int32)

Labels are padded with 0, which is also the CTC blank id (`Vocabulary.blank_id`), so a
padded label row is harmless to any CTC implementation that reads `label_length`.

Shapes are bounded: a clip of n samples goes to the first bucket whose edge
(`bucket_seconds`, in seconds) holds it and is zero-padded to exactly that edge, and labels
are padded to a fixed `max_label_length`. So the padded shapes are
`pipeline_shapes(...)`: one (B, edge x rate) per bucket for training (drop_remainder);
evaluation adds the last, smaller batch of each bucket. A model traced on these shapes
compiles at most `len(bucket_seconds)` times (twice that in evaluation).

Training augmentation (`Augment`), per example, each with its own probability, in the
order a real recording chain applies them: leading/trailing silence → background noise
at a random SNR → a random microphone/EQ frequency response → gain (low, or high enough
to clip) → clipping to [-1, 1]. Everything is seeded (stateless random ops): the same
seed gives the same batches.
"""

import dataclasses
import math
import time

import numpy as np
import tensorflow as tf

DEFAULT_BUCKET_SECONDS = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)


def _check_range(name, value, low=-math.inf, high=math.inf):
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        a = b = math.nan
    if not (low <= a <= b <= high):
        raise ValueError(f"Augment.{name} must be (min, max) with {low} <= min <= max <= "
                         f"{high}, got {value!r}")
    return (a, b)


@dataclasses.dataclass
class Augment:
    """Training-time waveform augmentation for `make_pipeline` (robustness to real audio).

    Args:
        silence_prob: chance of adding leading and trailing silence, each up to
            `max_silence_seconds` and never beyond the bucket's padded length.
        max_silence_seconds: longest silence added at each end.
        noise_prob: chance of white noise at an SNR drawn uniformly from `snr_db`
            (over the clip's samples; it then passes through the EQ, so it is coloured).
        snr_db: (min, max) signal-to-noise ratio in dB.
        eq_prob: chance of a random microphone response: a smooth gain curve (`eq_bands`
            log-spaced bands of ±`eq_db` dB, interpolated), a 2nd-order high-pass at a
            cut-off drawn from `highpass_hz` and a 4th-order low-pass from `lowpass_hz`
            (3.4 kHz is telephone bandwidth), applied as a zero-phase filter by FFT.
        eq_db: largest band boost or cut in dB.
        eq_bands: bands of the gain curve.
        highpass_hz, lowpass_hz: (min, max) cut-off frequencies.
        gain_prob: chance of a gain drawn from `gain_db`, after which samples are clipped
            to [-1, 1]: -30 dB is a distant, quiet microphone; on clips peaking at 0.5
            (the corpus generator's level) anything above +6 dB clips.
        gain_db: (min, max) gain in dB.

    Cost per batch of 32 three-second clips at 16 kHz, each at probability 1, measured
    with `time_augmentations()` (tf.function, 5 repeats) on this project's 2-core CPU while
    another benchmark ran (load average 5), so ranges over three runs:
        silence 10-18 ms, noise 12-36 ms, eq 47-130 ms, gain 1.5-5 ms, all 85-130 ms.
    The EQ's FFTs dominate. tf.data runs them in a parallel map, overlapping training;
    a 450-utterance epoch of the digits corpus (batches of 32) takes 1.7 s to produce.
    """

    silence_prob: float = 0.5
    max_silence_seconds: float = 0.5
    noise_prob: float = 0.5
    snr_db: tuple = (5.0, 40.0)
    eq_prob: float = 0.5
    eq_db: float = 10.0
    eq_bands: int = 8
    highpass_hz: tuple = (20.0, 300.0)
    lowpass_hz: tuple = (3400.0, 8000.0)
    gain_prob: float = 0.5
    gain_db: tuple = (-30.0, 12.0)

    def __post_init__(self):
        for name in ("silence_prob", "noise_prob", "eq_prob", "gain_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"Augment.{name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.max_silence_seconds < 0 or self.eq_db < 0 or self.eq_bands < 2:
            raise ValueError("Augment: max_silence_seconds and eq_db must be >= 0, eq_bands >= 2")
        self.snr_db = _check_range("snr_db", self.snr_db)
        self.gain_db = _check_range("gain_db", self.gain_db)
        self.highpass_hz = _check_range("highpass_hz", self.highpass_hz, 0.0)
        self.lowpass_hz = _check_range("lowpass_hz", self.lowpass_hz, 0.0)


# --------------------------------------------------------------------------- augmentations
# Batch functions on zero-padded (batch, S) float32 waveforms with lengths (batch,) int32;
# `seed` is a stateless seed (2,). Each returns (waveform, length) of the same shapes.


def _mask(waveform, length):
    return tf.sequence_mask(length, tf.shape(waveform)[1], dtype=waveform.dtype)


def _chosen(prob, batch, seed):
    return tf.random.stateless_uniform((batch,), seed) < prob  # (batch,)


def add_silence(waveform, length, max_samples, prob, seed):
    """Shifts each chosen clip right by a random lead and extends its length by a random
    trail of zeros; both fit in the padding, so the shape does not change."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    batch, size = tf.shape(waveform)[0], tf.shape(waveform)[1]
    room = size - length
    u = tf.random.stateless_uniform((batch, 2), seeds[0])
    lead = tf.cast(u[:, 0] * tf.cast(tf.minimum(room, max_samples), tf.float32), tf.int32)
    trail = tf.cast(u[:, 1] * tf.cast(tf.minimum(room - lead, max_samples), tf.float32), tf.int32)
    chosen = _chosen(prob, batch, seeds[1])
    lead = tf.where(chosen, lead, 0)
    trail = tf.where(chosen, trail, 0)
    source = tf.range(size)[None] - lead[:, None]  # (batch, S): sample index read from
    valid = (source >= 0) & (source < length[:, None])
    shifted = tf.gather(waveform, tf.clip_by_value(source, 0, size - 1), batch_dims=1)
    return tf.where(valid, shifted, 0.0), length + lead + trail


def add_noise(waveform, length, snr_db, prob, seed):
    """White noise at a uniform random SNR (dB) over each chosen clip's samples."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    batch = tf.shape(waveform)[0]
    mask = _mask(waveform, length)
    power = tf.reduce_sum(waveform**2, axis=1) / tf.maximum(tf.cast(length, tf.float32), 1.0)
    snr = tf.random.stateless_uniform((batch,), seeds[0], snr_db[0], snr_db[1])
    scale = tf.sqrt(power / 10.0 ** (snr / 10.0))
    noise = tf.random.stateless_normal(tf.shape(waveform), seeds[1]) * scale[:, None] * mask
    return tf.where(_chosen(prob, batch, seeds[2])[:, None], waveform + noise, waveform), length


def random_eq(waveform, length, sample_rate, augment, seed):
    """A random smooth microphone response (see `Augment`), zero-phase, by real FFT."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    batch, size = tf.shape(waveform)[0], tf.shape(waveform)[1]
    bins = size // 2 + 1
    freq = tf.linspace(0.0, sample_rate / 2.0, bins)  # (bins,)
    # Band gains at log-spaced centres from 100 Hz to Nyquist, linear in log frequency.
    bands = augment.eq_bands
    gains_db = tf.random.stateless_uniform((batch, bands), seeds[0], -augment.eq_db, augment.eq_db)
    low, high = math.log(100.0), math.log(sample_rate / 2.0)
    pos = (tf.math.log(tf.maximum(freq, 100.0)) - low) / (high - low) * (bands - 1)
    left = tf.minimum(tf.cast(tf.floor(pos), tf.int32), bands - 2)  # (bins,)
    frac = pos - tf.cast(left, tf.float32)
    curve_db = (tf.gather(gains_db, left, axis=1) * (1.0 - frac)
                + tf.gather(gains_db, left + 1, axis=1) * frac)  # (batch, bins)
    cutoffs = tf.random.stateless_uniform((batch, 2), seeds[1])
    hp = augment.highpass_hz[0] + cutoffs[:, :1] * (augment.highpass_hz[1] - augment.highpass_hz[0])
    lp = augment.lowpass_hz[0] + cutoffs[:, 1:] * (augment.lowpass_hz[1] - augment.lowpass_hz[0])
    f = tf.maximum(freq, 1.0)[None]
    response = (10.0 ** (curve_db / 20.0)
                / tf.sqrt(1.0 + (hp / f) ** 4)  # 2nd-order Butterworth high-pass magnitude
                / tf.sqrt(1.0 + (f / lp) ** 8))  # 4th-order Butterworth low-pass magnitude
    spectrum = tf.signal.rfft(waveform, fft_length=[size])  # (batch, bins)
    filtered = tf.signal.irfft(spectrum * tf.cast(response, tf.complex64), fft_length=[size])
    filtered = filtered * _mask(waveform, length)  # the wrap-around tail falls in the padding
    chosen = _chosen(augment.eq_prob, batch, seeds[2])
    return tf.where(chosen[:, None], filtered, waveform), length


def random_gain(waveform, length, gain_db, prob, seed):
    """A uniform random gain in dB on each chosen clip; clipping happens afterwards."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    batch = tf.shape(waveform)[0]
    gain = 10.0 ** (tf.random.stateless_uniform((batch,), seeds[0], gain_db[0], gain_db[1]) / 20.0)
    gain = tf.where(_chosen(prob, batch, seeds[1]), gain, 1.0)
    return waveform * gain[:, None], length


def augment_batch(waveform, length, augment, sample_rate, seed):
    """All of `Augment` on one padded batch, in order; samples end clipped to [-1, 1]."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    max_silence = int(augment.max_silence_seconds * sample_rate)
    waveform, length = add_silence(waveform, length, max_silence, augment.silence_prob, seeds[0])
    waveform, length = add_noise(waveform, length, augment.snr_db, augment.noise_prob, seeds[1])
    if augment.eq_prob > 0:
        waveform, length = random_eq(waveform, length, sample_rate, augment, seeds[2])
    waveform, length = random_gain(waveform, length, augment.gain_db, augment.gain_prob, seeds[3])
    return tf.clip_by_value(waveform, -1.0, 1.0), length


def time_augmentations(augment=None, batch_size=32, seconds=3.0, sample_rate=16000, repeats=5):
    """Milliseconds per batch of each augmentation (probability 1) and of all of them."""
    augment = augment or Augment()
    rng = np.random.default_rng(0)
    size = int(seconds * sample_rate)
    waveform = tf.constant(0.3 * rng.standard_normal((batch_size, size)), tf.float32)
    length = tf.constant(rng.integers(size // 2, size, batch_size), tf.int32)
    seed = tf.constant([1, 2], tf.int64)
    full = dataclasses.replace(augment, silence_prob=1.0, noise_prob=1.0, eq_prob=1.0,
                               gain_prob=1.0)
    runs = {
        "silence": lambda: add_silence(waveform, length, sample_rate // 2, 1.0, seed),
        "noise": lambda: add_noise(waveform, length, full.snr_db, 1.0, seed),
        "eq": lambda: random_eq(waveform, length, sample_rate, full, seed),
        "gain": lambda: random_gain(waveform, length, full.gain_db, 1.0, seed),
        "all": lambda: augment_batch(waveform, length, full, sample_rate, seed),
    }
    out = {}
    for name, run in runs.items():
        fn = tf.function(run)
        fn()  # trace
        start = time.perf_counter()
        for _ in range(repeats):
            fn()[0].numpy()
        out[name] = 1000 * (time.perf_counter() - start) / repeats
    return out


# --------------------------------------------------------------------------- pipeline


def pipeline_shapes(bucket_seconds, sample_rate, batch_size, max_label_length, training=True):
    """Every (waveform shape, labels shape) `make_pipeline` can yield; None = smaller than B."""
    sizes = [batch_size] * len(bucket_seconds) if isinstance(batch_size, int) else list(batch_size)
    shapes = []
    for edge, b in zip(bucket_seconds, sizes):
        samples = int(round(edge * sample_rate))
        shapes.append(((b, samples), (b, max_label_length)))
        if not training:
            shapes.append(((None, samples), (None, max_label_length)))
    return shapes


def batches_per_epoch(split, batch_size, bucket_seconds=DEFAULT_BUCKET_SECONDS, training=True):
    """Batches `make_pipeline(split, batch_size, training, bucket_seconds=...)` yields per
    epoch, counted from the clip lengths (bucketing hides it from tf.data): each bucket's
    full batches, plus its partial last batch unless training drops it."""
    edges = np.array([int(round(s * split.sample_rate)) for s in bucket_seconds])
    lengths = np.array([len(w) for w in split.waveforms], np.int64)
    bucket = np.searchsorted(edges, lengths, side="left")  # first edge >= length
    sizes = [batch_size] * len(edges) if isinstance(batch_size, int) else list(batch_size)
    total = 0
    for b, size in enumerate(sizes):
        count = int(np.sum(bucket == b))
        total += count // size if training else -(-count // size)
    return total


def make_pipeline(
    split,
    batch_size,
    training,
    *,
    bucket_seconds=DEFAULT_BUCKET_SECONDS,
    max_label_length=None,
    augment=None,
    seed=0,
    drop_remainder=None,
    with_index=False,
):
    """Bucketed, padded batches of a `SpeechSplit` (see the module docstring).

    Args:
        split: a `SpeechSplit` from `load_speech_data`.
        batch_size: examples per batch, one int or one per bucket.
        training: shuffle (seeded, reshuffled each epoch), augment, drop partial batches.
        bucket_seconds: increasing padded lengths in seconds. Every clip must fit in the
            last one: load with `max_seconds=bucket_seconds[-1]`.
        max_label_length: labels are padded to this; default the split's longest label
            rounded up to a multiple of 16. Pass the same value to every split.
        augment: an `Augment`, or None; only applied when `training`.
        seed: shuffling and augmentation seed.
        drop_remainder: drop each bucket's last partial batch; default `training`.
        with_index: also yield each utterance's index in `split` (int64 (B,)), last;
            bucketing reorders utterances, the index maps results back.

    Returns:
        tf.data.Dataset of (waveform, waveform_length, labels, label_length).

    Raises:
        ValueError naming the clip or label that does not fit.
    """
    if len(split) == 0:
        raise ValueError("make_pipeline: the split is empty")
    edges = [int(round(s * split.sample_rate)) for s in bucket_seconds]
    if any(b <= a for a, b in zip(edges, edges[1:])) or edges[0] <= 0:
        raise ValueError(f"bucket_seconds must be positive and increasing, got {bucket_seconds}")
    sizes = [batch_size] * len(edges) if isinstance(batch_size, int) else list(batch_size)
    if len(sizes) != len(edges):
        raise ValueError(f"batch_size: one per bucket expected ({len(edges)}), got {len(sizes)}")
    lengths = np.array([len(w) for w in split.waveforms], np.int64)
    label_lengths = np.array([len(lab) for lab in split.labels], np.int64)
    longest = int(np.argmax(lengths))
    if lengths[longest] > edges[-1]:
        raise ValueError(
            f"{split.ids[longest]} is {lengths[longest] / split.sample_rate:.2f} s, longer than "
            f"the last bucket ({bucket_seconds[-1]} s): load with max_seconds="
            f"{bucket_seconds[-1]} or add a bucket"
        )
    if max_label_length is None:
        max_label_length = int(-(-label_lengths.max() // 16) * 16)
    if label_lengths.max() > max_label_length:
        i = int(np.argmax(label_lengths))
        raise ValueError(f"{split.ids[i]}: label of {label_lengths[i]} characters > "
                         f"max_label_length={max_label_length}")
    drop_remainder = training if drop_remainder is None else drop_remainder

    waves = tf.RaggedTensor.from_row_lengths(
        np.concatenate(split.waveforms).astype(np.float32), lengths)
    labels = tf.RaggedTensor.from_row_lengths(
        np.concatenate(split.labels).astype(np.int32), label_lengths)
    index = tf.range(len(split), dtype=tf.int64)
    ds = tf.data.Dataset.from_tensor_slices((waves, labels, index))
    if training:
        ds = ds.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    if with_index:
        ds = ds.map(lambda w, lab, i: (w, tf.shape(w)[0], lab, tf.shape(lab)[0], i))
    else:
        ds = ds.map(lambda w, lab, i: (w, tf.shape(w)[0], lab, tf.shape(lab)[0]))
    # bucket_by_sequence_length pads to boundary - 1; boundaries are edge + 1 so the padded
    # length is the edge itself. Its extra last bucket (>= edges[-1] + 1) stays empty.
    ds = ds.bucket_by_sequence_length(
        lambda w, n, *rest: n,
        bucket_boundaries=[e + 1 for e in edges],
        bucket_batch_sizes=sizes + [sizes[-1]],
        padded_shapes=([None], [], [max_label_length], []) + (([],) if with_index else ()),
        padding_values=(0.0, 0, 0, 0) + ((tf.constant(0, tf.int64),) if with_index else ()),
        pad_to_bucket_boundary=True,
        drop_remainder=drop_remainder,
    )
    if training and augment is not None:
        seeds = tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)

        def apply(batch, s):
            waveform, length, *rest = batch
            waveform, length = augment_batch(waveform, length, augment, split.sample_rate, s)
            return (waveform, length, *rest)

        ds = tf.data.Dataset.zip((ds, seeds)).map(apply, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
