"""The speech app end to end on a few utterances of the synthetic digits corpus: train,
TensorBoard output, test WER/CER with every decoder, export (waveform and WAV-bytes
signatures), REST, transcribe and evaluate from the command line; XLA trace counts."""

import base64
import csv
import io
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf

from apps.speech import export as sex
from apps.speech import train as str_
from apps.speech.config import PRESETS, Config
from apps.speech.decode import decode
from apps.speech.model import build_model
from apps.speech.pipeline import batches_per_epoch, make_pipeline
from tfattn import training

pytestmark = pytest.mark.xdist_group("speech_e2e")  # one worker trains the shared run once

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
CORPUS = os.path.join(REPO, "data", "speech", "digits")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    if not os.path.exists(os.path.join(CORPUS, "metadata.csv")):
        pytest.skip("data/speech/digits missing: run `make data-speech` (make test does)")
    cfg = Config(**PRESETS["test"], data=CORPUS, workdir=str(tmp_path_factory.mktemp("sp") / "run"))
    return cfg, str_.run(cfg)


def _tags(directory):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(directory, size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    return set(tags.get("images", [])) | set(tags.get("scalars", [])) | set(tags.get("tensors", []))


def _all_tags(root):
    tags = set()
    for folder, _, files in os.walk(root):
        if any(f.startswith("events.") for f in files):
            tags |= _tags(folder)
    return tags


def _wav_bytes(waveform, rate, channels=1):
    buf = io.BytesIO()
    data = np.stack([waveform] * channels, axis=-1) if channels > 1 else waveform
    sf.write(buf, data, rate, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def test_run_writes_summary_tensorboard_and_results(run):
    cfg, summary = run
    for key in ("test_wer", "test_cer", "test_decoders", "train_seconds", "parameters",
                "train_utterances_per_second", "saved_model", "epochs_run"):
        assert key in summary, key
    assert summary["epochs_run"] == 2 and summary["test_utterances"] == 24
    assert set(summary["test_decoders"]) == {"greedy", "beam", "beam_lm"}
    with open(os.path.join(cfg.workdir, "summary.json")) as f:
        assert json.load(f)["test_cer"] == pytest.approx(summary["test_cer"])
    with open(os.path.join(cfg.workdir, "eval_test.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24 and {"hyp_greedy", "hyp_beam", "hyp_beam_lm"} <= set(rows[0])
    tags = _all_tags(os.path.join(cfg.workdir, "tensorboard"))
    assert {"epoch_cer", "epoch_wer", "epoch_loss", "spectrograms",
            "attention/last_block", "transcripts/validation"} <= tags, tags


def test_saved_model_transcribes_like_python(run, tmp_path):
    cfg, summary = run
    path = summary["saved_model"]
    model = keras.saving.load_model(os.path.join(cfg.workdir, "model.keras"), compile=False)
    vocabulary = str_.Vocabulary(digits=cfg.digits)
    data = str_.load_data(cfg, model)
    waves = data.test.waveforms[:5]
    waveform, length = sex.pad_batch(waves)
    loaded = tf.saved_model.load(path)
    out = loaded.signatures["serving_default"](waveform=tf.constant(waveform),
                                               waveform_length=tf.constant(length))
    logits = np.asarray(model({"waveform": waveform, "waveform_length": length}))
    frames = np.asarray(model.output_lengths(tf.constant(length)))
    want = [" ".join(t.split()) for t in decode(logits, vocabulary, "greedy", lengths=frames)]
    assert [t.decode() for t in out["transcripts"].numpy()] == want
    assert out["output_lengths"].numpy().tolist() == frames.tolist()
    np.testing.assert_allclose(out["log_probs"].numpy(), tf.nn.log_softmax(logits).numpy(),
                               atol=1e-4)

    # WAV bytes at the model's rate give the same as the waveform (16-bit quantisation aside).
    wav = [_wav_bytes(w, 16000) for w in waves]
    got = loaded.signatures[sex.WAV_SIGNATURE](wav_bytes=tf.constant(wav))
    assert got["output_lengths"].numpy().tolist() == frames.tolist()
    np.testing.assert_allclose(got["log_probs"].numpy(), out["log_probs"].numpy(), atol=0.05)
    # 44.1 kHz stereo: resampled in the graph to the same number of frames.
    import librosa

    up = librosa.resample(waves[0], orig_sr=16000, target_sr=44100)
    stereo = [_wav_bytes(up, 44100, channels=2)]
    got = loaded.signatures[sex.WAV_SIGNATURE](wav_bytes=tf.constant(stereo))
    assert abs(int(got["output_lengths"].numpy()[0]) - int(frames[0])) <= 1

    # REST row format through the WAV signature.
    body = {"signature_name": sex.WAV_SIGNATURE,
            "instances": [{"wav_bytes": {"b64": base64.b64encode(wav[0]).decode()}}]}
    response = training.call_like_rest(loaded, body)
    assert response["predictions"][0]["transcripts"] == got_text(loaded, wav[:1])[0]
    meta = sex.read_meta(path)
    assert meta["sample_rate"] == 16000 and meta["characters"] == vocabulary.chars


def got_text(loaded, wavs):
    out = loaded.signatures[sex.WAV_SIGNATURE](wav_bytes=tf.constant(wavs))
    return [t.decode() for t in out["transcripts"].numpy()]


def test_graph_resampler_matches_librosa():
    import librosa

    rng = np.random.default_rng(0)
    t = np.arange(44100) / 44100
    x = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3000 * t)
         + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    for rate_in in (44100, 8000, 22050):
        y = librosa.resample(x, orig_sr=44100, target_sr=rate_in, res_type="soxr_hq")
        want = librosa.resample(y, orig_sr=rate_in, target_sr=16000, res_type="soxr_hq")
        got = sex.resample_tf(tf.constant(y), rate_in, 16000).numpy()
        n = min(len(got), len(want))
        assert abs(len(got) - len(want)) <= 1
        core = slice(200, n - 200)  # edges: each resampler pads differently
        err = got[core] - want[core]
        snr = 10 * np.log10(np.sum(want[core] ** 2) / np.sum(err**2))
        assert snr > 30, (rate_in, snr)


def test_transcribe_and_evaluate_command_line(run, tmp_path):
    cfg, summary = run
    folder = tmp_path / "audio"
    folder.mkdir()
    model = keras.saving.load_model(os.path.join(cfg.workdir, "model.keras"), compile=False)
    data = str_.load_data(cfg, model)
    for i in range(3):
        sf.write(folder / f"clip{i}.flac", data.test.waveforms[i], 16000)
    (folder / "broken.wav").write_bytes(b"RIFF not really a wav")
    (folder / "notes.txt").write_text("ignored: not an audio extension")
    out_csv = tmp_path / "out.csv"
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    result = subprocess.run(
        [sys.executable, "-m", "apps.speech.transcribe", "--export", summary["saved_model"],
         str(folder), "--out", str(out_csv)], capture_output=True, text=True, cwd=REPO, env=env,
        timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "3 transcribed" in result.stderr and "1 skipped" in result.stderr
    assert "broken.wav" in result.stderr
    with open(out_csv) as f:
        rows = list(csv.DictReader(f))
    assert [os.path.basename(r["path"]) for r in rows] == ["clip0.flac", "clip1.flac", "clip2.flac"]

    result = subprocess.run(
        [sys.executable, "-m", "apps.speech.transcribe", "--export", summary["saved_model"],
         str(tmp_path / "nothing_here")], capture_output=True, text=True, cwd=REPO, env=env,
        timeout=120)
    assert result.returncode == 2 and "no such file or folder" in result.stderr

    result = subprocess.run(
        [sys.executable, "-m", "apps.speech.evaluate", "--workdir", cfg.workdir, "--split",
         "validation", "--decoders", "greedy,beam"], capture_output=True, text=True, cwd=REPO,
        env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "greedy" in result.stdout and "beam" in result.stdout
    with open(os.path.join(cfg.workdir, "eval_validation.json")) as f:
        report = json.load(f)
    assert report["utterances"] == 24 and set(report["decoders"]) == {"greedy", "beam"}


def test_each_duration_bucket_traces_once_under_xla(tmp_path):
    """No retracing per batch: the padded shapes are a fixed set (one per bucket), the
    first epoch traces at most once per shape (Keras's reduce_retracing may merge them
    into one shape-generic trace; XLA then compiles once per concrete shape), and later
    epochs trace nothing."""
    if not os.path.exists(os.path.join(CORPUS, "metadata.csv")):
        pytest.skip("data/speech/digits missing")
    cfg = Config(**{**PRESETS["test"], "limit_utterances": 48}, data=CORPUS, workdir=str(tmp_path))
    model = build_model("conformer", 29, spec_augment=cfg.spec_augment(), **cfg.model_hparams())
    data = str_.load_data(cfg, model)
    ds = make_pipeline(data.train, 4, training=True, bucket_seconds=cfg.bucket_seconds,
                       max_label_length=str_.max_label_length(data), augment=str_.augment_of(cfg))
    shapes = {tuple(w.shape) for w, *_ in ds}
    assert len(shapes) >= 2  # several buckets, so the test means something
    # The batch counts train.py asserts to tf.data, training (partial batches dropped) and not.
    assert batches_per_epoch(data.train, 4, cfg.bucket_seconds) == len(list(ds))
    eval_ds = make_pipeline(data.train, 4, training=False, bucket_seconds=cfg.bucket_seconds,
                            max_label_length=str_.max_label_length(data))
    assert batches_per_epoch(data.train, 4, cfg.bucket_seconds, training=False) == len(list(eval_ds))
    traces = []
    call = model.call

    def counting_call(*args, **kwargs):
        traces.append(1)
        return call(*args, **kwargs)

    model.call = counting_call
    model.compile(optimizer="adam", loss=keras.losses.CTC(), jit_compile=True)
    model.fit(str_.as_keras(ds), epochs=1, verbose=0)
    first = len(traces)
    assert 1 <= first <= len(shapes), (first, shapes)
    model.fit(str_.as_keras(ds), epochs=3, verbose=0)
    assert len(traces) == first, (len(traces), first)


def test_bad_config_values_name_the_field():
    with pytest.raises(ValueError, match="ctc_baseline has no --num_heads"):
        Config(architecture="ctc_baseline", num_heads=4)
    with pytest.raises(ValueError, match="bucket_seconds"):
        Config(bucket_seconds=(2.0, 1.0))
    with pytest.raises(ValueError, match="conv_kernel_size"):
        Config(conv_kernel_size=4)
    assert training.fields_without_help(Config) == []
    for preset in PRESETS.values():
        Config(**preset)
