"""Reading audio files: any format soundfile reads, headerless PCM, mono, resampled.

`read_audio(path)` returns float32 mono samples in [-1, 1] at `sample_rate` (16 kHz):
    WAV, FLAC, OGG/Vorbis, AIFF, ... through soundfile (libsndfile); anything else
    (e.g. MP3, M4A) through audioread when one of its backends (ffmpeg...) is installed;
    `.raw`/`.pcm` files (or any file when `raw_rate` is given) as headerless int16
    little-endian PCM with `raw_rate` Hz and `raw_channels` interleaved channels.
Channels are averaged; resampling uses soxr (librosa's default, "soxr_hq").
`AudioError` says which file and why (unreadable, corrupt, empty, silent).
"""

import os

import librosa
import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
RAW_EXTENSIONS = (".raw", ".pcm")
SILENCE_PEAK = 1e-4  # -80 dBFS: quieter than any real recording's noise floor


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and the reason.

    Attributes: `path`, and `reason`, one of "missing", "unreadable", "empty", "silent",
    "corrupt".
    """

    def __init__(self, path, reason, detail=""):
        self.path, self.reason, self.detail = path, reason, detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


def _read_raw(path, rate, channels):
    if not rate:
        raise AudioError(path, "unreadable", "headerless PCM needs raw_rate, its rate in Hz")
    data = np.fromfile(path, dtype="<i2")
    if data.size % channels:
        raise AudioError(
            path, "corrupt", f"{data.size} int16 samples, not a multiple of {channels} channels"
        )
    return data.reshape(-1, channels).astype(np.float32) / 32768.0, rate


def read_audio(path, sample_rate=SAMPLE_RATE, raw_rate=None, raw_channels=1,
               check_silence=True):
    """Reads one file as float32 mono at `sample_rate`.

    Args:
        path: audio file.
        sample_rate: output rate in Hz; None keeps the file's rate.
        raw_rate: sample rate of headerless int16 little-endian PCM. Files ending in
            `.raw`/`.pcm` are always read this way; with `raw_rate` set, files soundfile
            cannot identify are too.
        raw_channels: interleaved channels of raw PCM.
        check_silence: raise on all-silent audio (peak below -80 dBFS).

    Returns:
        (samples float32 (n,), rate int).

    Raises:
        AudioError naming the file: missing, unreadable or corrupt, empty, or silent.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AudioError(path, "missing", "no such file")
    if path.lower().endswith(RAW_EXTENSIONS):
        audio, rate = _read_raw(path, raw_rate, raw_channels)
    else:
        try:
            audio, rate = sf.read(path, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as err:
            if raw_rate:
                audio, rate = _read_raw(path, raw_rate, raw_channels)
            else:
                audio, rate = _read_other(path, err)
    if audio.size == 0:
        raise AudioError(path, "empty", "no samples")
    audio = audio.mean(axis=1) if audio.ndim == 2 else audio
    if not np.all(np.isfinite(audio)):
        raise AudioError(path, "corrupt", "NaN or infinite samples")
    if check_silence and np.max(np.abs(audio)) < SILENCE_PEAK:
        raise AudioError(path, "silent", "peak below -80 dBFS")
    if sample_rate and rate != sample_rate:
        audio = librosa.resample(audio, orig_sr=rate, target_sr=sample_rate, res_type="soxr_hq")
        rate = sample_rate
    return np.ascontiguousarray(audio, np.float32), int(rate)


def _read_other(path, sf_error):
    """Formats libsndfile does not know (MP3 on old libsndfile, M4A...) through audioread
    (librosa's fallback, with whichever backend is installed: ffmpeg, GStreamer...)."""
    import audioread

    try:
        with audioread.audio_open(path) as f:
            rate, channels = f.samplerate, f.channels
            data = b"".join(f)  # int16 little-endian, interleaved
    except Exception as err:  # each audioread backend raises its own exception types
        raise AudioError(path, "unreadable", f"{sf_error}; audioread: {type(err).__name__}") from err
    audio = np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
    return audio[: audio.size - audio.size % channels].reshape(-1, channels), rate
