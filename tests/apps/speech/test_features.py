import glob
import os
import shutil
import subprocess
import sys

import keras
import librosa
import numpy as np
import pytest

from apps.speech.features import LogMelSpectrogram, SpecAugment
from tests.contract import check_layer_contract

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
CORPUS_WAVS = os.path.join(ROOT, "data", "speech", "digits", "wavs")

# The documented settings: LogMelSpectrogram's defaults, spelled out for librosa.
LIBROSA = dict(sr=16000, n_fft=400, hop_length=160, window="hann", center=True,
               pad_mode="constant", power=2.0, n_mels=80, fmin=0.0, fmax=8000.0)
# Parity tolerance in dB: over bins librosa puts above -80 dB, and over every bin (the
# quietest bins are float32 round-off of tiny powers; measured max 2e-4 and 2e-3 dB).
TOL_SPEECH_DB, TOL_ALL_DB = 0.01, 0.1


def librosa_log_mel(y, **overrides):
    kwargs = dict(LIBROSA, **overrides)
    mel = librosa.feature.melspectrogram(y=y, **kwargs)
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None).T  # (frames, n_mels)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _pad(clips, extra=37):
    lengths = np.array([len(c) for c in clips], np.int32)
    wave = np.zeros((len(clips), lengths.max() + extra), np.float32)
    for i, c in enumerate(clips):
        wave[i, :len(c)] = c
    return wave, lengths


# One worker runs the module, so its module-scoped fixture is built once under xdist.
pytestmark = pytest.mark.xdist_group("apps_speech_test_features")


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """Real (synthesised) speech at 16 kHz: three espeak-ng utterances with different voices
    and rates (espeak writes 22.05 kHz; librosa resamples), plus two corpus clips if
    `make data-speech` has run."""
    clips = []
    if shutil.which("espeak-ng"):
        tmp = tmp_path_factory.mktemp("espeak")
        for i, (voice, rate, text) in enumerate([("en-us", "150", "three oh seven"),
                                                 ("en-gb+f3", "120", "nine two zero five one"),
                                                 ("en-029", "190", "eight")]):
            path = str(tmp / f"u{i}.wav")
            subprocess.run(["espeak-ng", "-v", voice, "-s", rate, "-w", path, text], check=True)
            clips.append(librosa.load(path, sr=16000)[0])
    clips += [librosa.load(p, sr=16000)[0] for p in sorted(glob.glob(f"{CORPUS_WAVS}/*.wav"))[:2]]
    if not clips:
        pytest.fail("no speech: install espeak-ng or run `make data-speech`")
    return clips


def test_log_mel_matches_librosa_on_speech(speech):
    wave, lengths = _pad(speech)
    wave[0, lengths[0]:] = 0.3  # garbage past a length must not leak into the features
    feats, frames = LogMelSpectrogram()(wave, lengths)
    feats, frames = _np(feats), _np(frames)
    assert feats.shape == (len(speech), 1 + wave.shape[1] // 160, 80)
    for i, y in enumerate(speech):
        ref = librosa_log_mel(y)
        assert frames[i] == ref.shape[0] == 1 + len(y) // 160
        diff = np.abs(feats[i, :frames[i]] - ref)
        loud = ref > -80
        assert loud.mean() > 0.3, "the clip should be speech, not silence"
        assert diff[loud].max() <= TOL_SPEECH_DB, (i, diff[loud].max())
        assert diff.max() <= TOL_ALL_DB, (i, diff.max())
        np.testing.assert_array_equal(feats[i, frames[i]:], -100.0)


@pytest.mark.parametrize("overrides", [dict(center=False), dict(power=1.0, fmin=20.0, fmax=7600.0)])
def test_log_mel_options_match_librosa(speech, overrides):
    y = speech[0]
    feats, frames = LogMelSpectrogram(**overrides)(y[None, :], np.array([len(y)], np.int32))
    ref = librosa_log_mel(y, **overrides)
    assert _np(frames)[0] == ref.shape[0]
    diff = np.abs(_np(feats)[0] - ref)
    assert diff[ref > -80].max() <= TOL_SPEECH_DB and diff.max() <= TOL_ALL_DB


def test_log_mel_without_lengths_uses_every_sample(speech):
    y = speech[1]
    feats, frames = LogMelSpectrogram()(y[None, :])
    assert _np(frames).tolist() == [1 + len(y) // 160]
    np.testing.assert_allclose(_np(feats)[0], librosa_log_mel(y), atol=TOL_ALL_DB)


def test_normalize_is_per_utterance_cmvn(speech):
    clips = [speech[0], speech[1] * 0.1, speech[2]]  # -20 dB: a quiet microphone
    wave, lengths = _pad(clips)
    feats, frames = LogMelSpectrogram(normalize=True)(wave, lengths)
    feats, frames = _np(feats), _np(frames)
    for i, y in enumerate(clips):
        ref = librosa_log_mel(y)
        expected = (ref - ref.mean(0)) / np.sqrt(ref.var(0) + 1e-5)
        np.testing.assert_allclose(feats[i, :frames[i]], expected, atol=2e-3)
        np.testing.assert_array_equal(feats[i, frames[i]:], 0.0)


def test_frame_lengths_are_exact():
    layer = LogMelSpectrogram(center=False)
    n = np.array([0, 399, 400, 559, 560, 16000], np.int32)
    assert _np(layer.frame_length(n)).tolist() == [0, 0, 1, 1, 2, 98]
    assert _np(LogMelSpectrogram().frame_length(n)).tolist() == [1, 3, 3, 4, 4, 101]


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="fmax"):
        LogMelSpectrogram(fmax=9000.0)
    with pytest.raises(ValueError, match="power"):
        LogMelSpectrogram(power=3.0)
    with pytest.raises(ValueError, match="fill_value"):
        SpecAugment(fill_value="zero")
    with pytest.raises(ValueError, match="max_time_ratio"):
        SpecAugment(max_time_ratio=1.5)


def test_log_mel_contract():
    rng = np.random.default_rng(0)
    wave = rng.normal(0, 0.1, (2, 256)).astype("float32")
    lengths = np.array([256, 150], np.int32)
    check_layer_contract(
        LogMelSpectrogram,
        dict(n_fft=64, hop_length=32, n_mels=8, normalize=True),
        [wave, lengths],
        expected_output_shape=(2, 9, 8),
        atol=1e-3,
        package="tfattn_speech",
    )


# ---------------------------------------------------------------------------- SpecAugment

FILL = -1234.0  # a value no feature takes, so masked cells are exactly the cells equal to it


def _masked(features, lengths, seed, **kwargs):
    layer = SpecAugment(fill_value=FILL, seed=seed, **kwargs)
    return _np(layer(features, lengths, training=True)) == FILL


def test_spec_augment_is_identity_at_inference():
    feats = np.random.default_rng(0).normal(size=(3, 50, 20)).astype("float32")
    layer = SpecAugment(seed=1)
    for training in (False, None):
        np.testing.assert_array_equal(_np(layer(feats, np.array([50, 30, 1]), training=training)),
                                      feats)


def test_spec_augment_masks_within_bounds_and_valid_frames():
    rng = np.random.default_rng(0)
    batch, frames, bins = 16, 120, 40
    feats = rng.normal(size=(batch, frames, bins)).astype("float32")
    lengths = rng.integers(1, frames + 1, batch).astype("int32")
    lengths[:2] = [frames, 60]
    F, T, p = 10, 30, 0.2
    seen_time, seen_freq = [], []
    for seed in range(4):
        masked = _masked(feats, lengths, seed, freq_mask_param=F, num_freq_masks=2,
                         time_mask_param=T, num_time_masks=2, max_time_ratio=p)
        for i, n in enumerate(lengths):
            assert not masked[i, n:].any(), "a mask reached past frame_length"
            rows = masked[i, :n].all(axis=1)  # time-masked frames
            cols = masked[i, :n].all(axis=0)  # frequency-masked bins
            # Every masked cell is explained by a masked frame or a masked bin.
            np.testing.assert_array_equal(masked[i, :n], rows[:, None] | cols[None, :])
            if not cols.all():
                assert rows.sum() <= 2 * min(T, int(p * n)), (n, rows.sum())
                seen_time.append(rows.sum())
            if not rows.all():
                assert cols.sum() <= 2 * F
                seen_freq.append(cols.sum())
    # The masks are not empty on average: the test would notice a layer that never masks.
    assert np.mean(seen_time) > 2 and np.mean(seen_freq) > 2, (seen_time, seen_freq)
    # The paper's p bound: a 60-frame utterance gets at most 2 x 12 masked frames.


def test_spec_augment_single_mask_is_one_span():
    feats = np.random.default_rng(1).normal(size=(8, 200, 80)).astype("float32")
    lengths = np.full((8,), 200, np.int32)
    masked = _masked(feats, lengths, 3)  # LB policy: F=27, mF=1, T=100, mT=1, p=0.2
    for m in masked:
        for line in (m.all(axis=1), m.all(axis=0)):
            idx = np.flatnonzero(line)
            assert idx.size == 0 or idx[-1] - idx[0] + 1 == idx.size  # contiguous
        assert m.all(axis=1).sum() <= 40 and m.all(axis=0).sum() <= 27


def test_spec_augment_mean_fill_and_determinism():
    feats = np.random.default_rng(2).normal(3.0, 1.0, size=(4, 80, 16)).astype("float32")
    lengths = np.array([80, 50, 20, 5], np.int32)
    out = _np(SpecAugment(seed=5, freq_mask_param=8, time_mask_param=20, max_time_ratio=1.0)(
        feats, lengths, training=True))
    again = _np(SpecAugment(seed=5, freq_mask_param=8, time_mask_param=20, max_time_ratio=1.0)(
        feats, lengths, training=True))
    np.testing.assert_array_equal(out, again)  # same seed, same masks
    changed = out != feats
    assert changed.any()
    for i, n in enumerate(lengths):
        mean = feats[i, :n].mean()
        np.testing.assert_allclose(out[i][changed[i]], mean, rtol=1e-5)
        np.testing.assert_array_equal(out[i, n:], feats[i, n:])
    layer = SpecAugment(seed=5)
    first = _np(layer(feats, lengths, training=True))
    second = _np(layer(feats, lengths, training=True))
    assert not np.array_equal(first, second)  # the seed generator advances between calls


def test_spec_augment_mean_fill_under_mixed_precision():
    # Unnormalised log-mel of 3 s: a float16 sum over its cells would overflow to -inf.
    feats = np.full((2, 301, 80), -60.0, np.float32)
    out = SpecAugment(seed=0, dtype="mixed_float16")(feats, np.array([301, 200]), training=True)
    out = _np(out).astype("float32")
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, -60.0)


def test_spec_augment_contract():
    feats = np.random.default_rng(0).normal(size=(2, 20, 8)).astype("float32")
    check_layer_contract(
        SpecAugment,
        dict(freq_mask_param=3, time_mask_param=5, fill_value=0.0, seed=0),
        [feats, np.array([20, 12], np.int32)],
        expected_output_shape=(2, 20, 8),
        package="tfattn_speech",
    )


def test_front_end_in_a_functional_model_with_unknown_lengths():
    wave_in = keras.Input((None,), name="waveform")
    length_in = keras.Input((), dtype="int32", name="waveform_length")
    feats, frames = LogMelSpectrogram()(wave_in, length_in)
    out = SpecAugment(seed=0)(feats, frames)
    model = keras.Model([wave_in, length_in], [out, frames])
    assert tuple(feats.shape) == (None, None, 80)
    wave = np.random.default_rng(0).normal(0, 0.1, (2, 3200)).astype("float32")
    got, n = model([wave, np.array([3200, 1000], np.int32)])
    assert tuple(got.shape) == (2, 21, 80) and _np(n).tolist() == [21, 7]


JAX_SCRIPT = """
import sys
import numpy as np
import keras
from apps.speech.features import LogMelSpectrogram, SpecAugment
assert keras.backend.backend() == "jax"
data = np.load(sys.argv[1])
feats, frames = LogMelSpectrogram()(data["wave"], data["lengths"])
aug = SpecAugment(seed=0, fill_value=-1234.0)
masked = aug(feats, frames, training=True)
same = aug(feats, frames, training=False)
np.savez(sys.argv[2], feats=np.asarray(feats), frames=np.asarray(frames),
         masked=np.asarray(masked), same=np.asarray(same))
"""


@pytest.mark.slow  # a JAX subprocess: ~10-20 s on the busy 2-core CPU, mostly imports
def test_jax_backend_matches(speech, tmp_path):
    wave, lengths = _pad(speech[:3])
    np.savez(tmp_path / "in.npz", wave=wave, lengths=lengths)
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, "-c", JAX_SCRIPT, str(tmp_path / "in.npz"),
                             str(tmp_path / "out.npz")], env=env, cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    feats, frames = LogMelSpectrogram()(wave, lengths)
    np.testing.assert_array_equal(out["frames"], _np(frames))
    loud = _np(feats) > -80
    assert np.abs(out["feats"] - _np(feats))[loud].max() <= TOL_SPEECH_DB
    np.testing.assert_array_equal(out["same"], out["feats"])
    masked = out["masked"] == -1234.0
    assert masked.any()
    for i, n in enumerate(out["frames"]):
        assert not masked[i, n:].any()


@pytest.mark.slow  # a SavedModel export and reload: ~5 s
@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="JAX export with a symbolic sample axis fails inside keras.ops.stft (Keras 3.15 "
           "calls jax.scipy.signal.stft, which needs a concrete length); the app exports on TF")
def test_saved_model_takes_raw_waveforms(speech, tmp_path):
    import tensorflow as tf

    wave_in = keras.Input((None,), name="waveform")
    length_in = keras.Input((), dtype="int32", name="waveform_length")
    feats, frames = LogMelSpectrogram()(wave_in, length_in)
    model = keras.Model([wave_in, length_in], [SpecAugment(seed=0)(feats, frames), frames])
    model.export(str(tmp_path / "front_end"), format="tf_saved_model")
    serve = tf.saved_model.load(str(tmp_path / "front_end")).serve
    wave, lengths = _pad(speech[:2])
    got, n = serve([tf.constant(wave), tf.constant(lengths)])
    for i, y in enumerate(speech[:2]):
        ref = librosa_log_mel(y)
        assert n.numpy()[i] == ref.shape[0]
        diff = np.abs(got.numpy()[i, :n.numpy()[i]] - ref)
        assert diff[ref > -80].max() <= TOL_SPEECH_DB  # and no masks: serving is inference
