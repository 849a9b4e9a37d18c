import csv
import filecmp
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import types

import librosa
import numpy as np
import pytest
import soundfile as sf
import tensorflow as tf

from apps.speech import data as sd
from apps.speech import pipeline as sp
from apps.speech.audio import AudioError, read_audio
from apps.speech.text import Vocabulary, normalize_transcript

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
_spec = importlib.util.spec_from_file_location(
    "make_speech_corpus", os.path.join(ROOT, "data", "make_speech_corpus.py"))
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)

DIGIT_OF = {"oh": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
            "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9"}

# 12 utterances, 2 espeak-ng accents x 2 variants and 2 festival voices: en-029 and
# ked_diphone are held out for test, one en-us combination for validation.
TINY = ["--utterances", "12", "--seed", "3", "--accents", "en-us,en-029", "--variants", ",f2",
        "--test_accents", "en-029", "--test_variants", "none",
        "--festival_voices", "kal_diphone,ked_diphone", "--test_festival_voices", "ked_diphone",
        "--validation_fraction", "0.17", "--test_fraction", "0.33", "--chunk", "4"]


def _build(out, *extra):
    """Runs the generator as a command (its process pool must not fork this TF process)."""
    cmd = [sys.executable, os.path.join(ROOT, "data", "make_speech_corpus.py"), "--out",
           str(out)] + TINY + list(extra)
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


# One worker runs the module, so its module-scoped fixture is built once under xdist.
pytestmark = pytest.mark.xdist_group("apps_speech_test_data")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    assert shutil.which("espeak-ng") and shutil.which("festival"), (
        "espeak-ng and festival are needed to generate the speech corpus: run `make data-speech`"
        " (as root with apt) or apt-get install " + " ".join(gen.DEBIAN_PACKAGES)
    )
    out = tmp_path_factory.mktemp("speech") / "tiny"
    _build(out)
    return out


@pytest.fixture(scope="module")
def loaded(corpus):
    return sd.load_speech_data(str(corpus))


def _wav(path, audio, rate=16000, subtype="PCM_16", **kw):
    sf.write(str(path), audio, rate, subtype=subtype, **kw)
    return str(path)


def _tone(seconds=0.6, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


# --------------------------------------------------------------------------- generator


def test_corpus_layout(corpus):
    rows = [line.split("|") for line in (corpus / "metadata.csv").read_text().splitlines()]
    assert len(rows) == 12 and all(len(r) == 3 for r in rows)
    assert sorted(os.listdir(corpus / "wavs")) == sorted(r[0] + ".wav" for r in rows)
    for uid, text, normalized in rows:
        info = sf.info(str(corpus / "wavs" / f"{uid}.wav"))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert 0.2 < info.duration < 10
        words = normalized.split()
        assert 1 <= len(words) <= 7 and set(words) <= set(DIGIT_OF)
        assert text.split() == [DIGIT_OF[w] for w in words]
    assert "Command:\n  python data/make_speech_corpus.py --out" in (corpus / "README.txt").read_text()


def test_splits_are_speaker_disjoint_with_held_out_accent_and_voice(corpus):
    splits = json.loads((corpus / "splits.json").read_text())
    with open(corpus / "utterances.csv") as f:
        table = list(csv.DictReader(f))
    speakers = {s: {r["speaker"] for r in table if r["split"] == s} for s in sd.SPLITS}
    assert all(speakers.values())
    assert not speakers["train"] & speakers["validation"]
    assert not speakers["train"] & speakers["test"]
    assert not speakers["validation"] & speakers["test"]
    assert {r["id"] for r in table if r["split"] == "test"} == set(splits["test"])
    heard = {s.split(":")[1].split("+")[0] for s in speakers["train"] | speakers["validation"]}
    assert "en-029" not in heard and "ked_diphone" not in heard
    assert {"espeak:en-029", "espeak:en-029+f2", "festival:ked_diphone"} >= speakers["test"]
    assert "festival:ked_diphone" in speakers["test"]
    assert "festival:kal_diphone" in speakers["train"]


def test_generator_is_deterministic(corpus, tmp_path):
    _build(tmp_path / "again")
    for name in ("metadata.csv", "splits.json", "utterances.csv"):
        assert filecmp.cmp(corpus / name, tmp_path / "again" / name, shallow=False), name
    match, mismatch, errors = filecmp.cmpfiles(
        corpus / "wavs", tmp_path / "again" / "wavs", os.listdir(corpus / "wavs"), shallow=False)
    assert len(match) == 12 and not mismatch and not errors
    _build(tmp_path / "other", "--seed", "4")
    assert (corpus / "metadata.csv").read_bytes() != (tmp_path / "other" / "metadata.csv").read_bytes()


def test_generator_effects_and_grammar(tmp_path):
    grammar = tmp_path / "g.txt"
    grammar.write_text("s: call $name | dial $name $name\nname: alice | bob=Bob\n")
    printed = _build(tmp_path / "g", "--grammar", str(grammar), "--festival_voices", "none",
                     "--test_festival_voices", "none", "--noise_prob", "1", "--gain_prob", "1",
                     "--gain_db", "10,12", "--reverb_prob", "1", "--utterances", "6")
    assert "test" in printed and "hours" in printed
    rows = [line.split("|") for line in (tmp_path / "g" / "metadata.csv").read_text().splitlines()]
    assert all(r[2].split()[0] in ("call", "dial") and "Bob" not in r[2] for r in rows)
    assert any("Bob" in r[1] for r in rows) or all("bob" not in r[2] for r in rows)
    with open(tmp_path / "g" / "utterances.csv") as f:
        table = list(csv.DictReader(f))
    effects = [r["effects"] for r in table]
    assert {r["speaker"] for r in table if r["split"] == "test"} <= {"espeak:en-029",
                                                                      "espeak:en-029+f2"}
    assert all("reverb" in e and "noise" in e and "clipped" in e for e in effects)
    pcm, _ = sf.read(str(tmp_path / "g" / "wavs" / f"{rows[0][0]}.wav"), dtype="int16")
    assert np.abs(pcm.astype(np.int32)).max() == 32767  # +10 dB on a 0.5 peak clips

    phrases = tmp_path / "p.txt"
    phrases.write_text("hello world\nturn left|Turn left.\n")
    src = gen.PhraseList(str(phrases))
    assert {tuple(src.sample(np.random.default_rng(i))[0]) for i in range(20)} == {
        ("hello", "world"), ("turn", "left")}


def test_grammar_errors():
    with pytest.raises(ValueError, match="unknown '\\$nope'"):
        gen.Grammar("s: $nope\n")
    with pytest.raises(ValueError, match="line 1: expected"):
        gen.Grammar("no colon here\n")
    spoken, written = gen.Grammar(gen.DIGITS_GRAMMAR).sample(np.random.default_rng(0))
    assert 1 <= len(spoken) <= 7 and len(written) == len(spoken)


# --------------------------------------------------------------------------- text


def test_vocabulary_round_trip_and_normalisation():
    vocab = Vocabulary()
    ids = vocab.text_to_ids("oh seven")
    assert ids.dtype == np.int32 and ids.min() >= 1 and vocab.blank_id == 0
    assert vocab.ids_to_text(np.concatenate([[0], ids, [0, 0, -1]])) == "oh seven"
    assert vocab.size == 29 and Vocabulary(digits=True).size == 39
    assert normalize_transcript("Call 911, NOW!  It’s café-time.") == (
        "call nine one one now it's cafe time")
    assert normalize_transcript("Call 911.", digits=True) == "call 911"
    assert normalize_transcript("7") == "seven"


def test_vocabulary_error_lists_characters_and_lines():
    vocab = Vocabulary()
    with pytest.raises(ValueError, match=r"'ж' \(U\+0436\) in 1 transcript\(s\): b \(line 2\)") as e:
        vocab.check(["ok", "жук €"], ["a (line 1)", "b (line 2)"])
    assert "'€'" in str(e.value)


def test_ctc_lengths():
    assert sd.ctc_min_frames([1, 1, 2]) == 4 and sd.ctc_min_frames([1, 2, 3]) == 3
    assert sd.ctc_frames(16000, 16000, 100, 4) == 25


# --------------------------------------------------------------------------- loading


def test_load_ljspeech_layout_uses_splits_and_normalized_column(corpus, loaded):
    splits = json.loads((corpus / "splits.json").read_text())
    for name in sd.SPLITS:
        assert sorted(loaded.splits[name].ids) == sorted(splits[name])
    assert loaded.report.kept == 12 and not loaded.report.skipped
    split = loaded.train
    assert all(w.dtype == np.float32 and w.ndim == 1 for w in split.waveforms)
    assert all(not any(c.isdigit() for c in t) for t in split.texts)  # normalized, not "3 0 7"
    assert loaded.vocabulary.ids_to_text(split.labels[0]) == split.texts[0]


def test_ljspeech_without_normalized_column(tmp_path):
    os.makedirs(tmp_path / "wavs")
    _wav(tmp_path / "wavs" / "a.wav", _tone())
    (tmp_path / "metadata.csv").write_text("a|Dial 4, then 2.\n")
    data = sd.load_speech_data(str(tmp_path), validation_fraction=0, test_fraction=0)
    assert data.train.texts == ["dial four then two"]
    (tmp_path / "metadata.csv").write_text("a|x|y|z\n")
    with pytest.raises(ValueError, match=r"metadata\.csv line 1: expected `id\|text`"):
        sd.load_speech_data(str(tmp_path))


def test_folder_csv_formats_rates_and_channels(corpus, loaded, tmp_path):
    uid = loaded.train.ids[0]
    ref = loaded.train.waveforms[0]
    audio, rate = sf.read(str(corpus / "wavs" / f"{uid}.wav"), dtype="float32")
    files = {
        "a.flac": lambda p: _wav(p, audio, subtype="PCM_16"),
        "b.ogg": lambda p: _wav(p, audio, subtype="VORBIS"),
        "c.raw": lambda p: (np.round(audio * 32767).astype("<i2").tofile(p), p)[1],
        "d44.wav": lambda p: _wav(p, librosa.resample(audio, orig_sr=16000, target_sr=44100), 44100),
        "e8k.wav": lambda p: _wav(p, librosa.resample(audio, orig_sr=16000, target_sr=8000), 8000),
        "stereo.wav": lambda p: _wav(p, np.stack([audio, 0.5 * audio], axis=1), subtype="FLOAT"),
    }
    os.makedirs(tmp_path / "audio")
    for name, write in files.items():
        write(str(tmp_path / "audio" / name))
    with open(tmp_path / "t.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "transcript", "split"])
        for name in files:
            w.writerow([f"audio/{name}", loaded.train.texts[0], "train"])
    data = sd.load_speech_data(str(tmp_path / "t.csv"), raw_rate=16000)
    got = dict(zip([os.path.basename(p) for p in data.train.paths], data.train.waveforms))
    assert sorted(got) == sorted(files)
    for name, wave in got.items():
        assert wave.dtype == np.float32 and wave.ndim == 1, name
        assert abs(len(wave) - len(ref)) <= 2, name
    n = len(ref)
    np.testing.assert_allclose(got["a.flac"], ref, atol=1e-4)
    np.testing.assert_allclose(got["c.raw"], ref, atol=1e-4)
    np.testing.assert_allclose(got["stereo.wav"], 0.75 * ref, atol=1e-4)
    assert np.corrcoef(got["d44.wav"][:n], ref[: len(got["d44.wav"])])[0, 1] > 0.999
    assert np.corrcoef(got["b.ogg"][:n], ref[: len(got["b.ogg"])])[0, 1] > 0.98
    # 8 kHz loses everything above 4 kHz: compare below it.
    low = librosa.resample(ref, orig_sr=16000, target_sr=8000)
    back = librosa.resample(got["e8k.wav"], orig_sr=16000, target_sr=8000)
    m = min(len(low), len(back))
    assert np.corrcoef(low[:m], back[:m])[0, 1] > 0.99
    # The column names can be given, here file,text in a CSV with other names.
    (tmp_path / "u.csv").write_text(f"clip,words\naudio/a.flac,{loaded.train.texts[0]}\n")
    data = sd.load_speech_data(str(tmp_path / "u.csv"), columns=("clip", "words"),
                               validation_fraction=0, test_fraction=0)
    assert len(data.train) == 1


def test_raw_pcm_needs_rate(tmp_path):
    path = tmp_path / "x.raw"
    (np.ones(100) * 1000).astype("<i2").tofile(path)
    with pytest.raises(AudioError, match="needs raw_rate"):
        read_audio(path)
    wave, rate = read_audio(path, raw_rate=8000)
    assert rate == 16000 and abs(len(wave) - 200) <= 1


def _bad_files(folder):
    os.makedirs(folder / "wavs")
    good = _tone(1.5)
    _wav(folder / "wavs" / "good.wav", good)
    (folder / "wavs" / "garbage.wav").write_bytes(b"this is not audio at all" * 10)
    (folder / "wavs" / "truncated.wav").write_bytes((folder / "wavs" / "good.wav").read_bytes()[:30])
    _wav(folder / "wavs" / "empty.wav", np.zeros(0, np.float32))
    _wav(folder / "wavs" / "silent.wav", np.zeros(16000, np.float32))
    nan = good.copy()
    nan[100] = np.nan
    _wav(folder / "wavs" / "nan.wav", nan, subtype="FLOAT")
    _wav(folder / "wavs" / "short.wav", _tone(0.1))
    ids = ["good", "garbage", "truncated", "empty", "silent", "nan", "short"]
    text = "one two three"
    (folder / "metadata.csv").write_text("".join(f"{i}|{text}\n" for i in ids))
    (folder / "splits.json").write_text(json.dumps({"train": ids}))


def test_bad_files_are_skipped_with_counts_and_paths(tmp_path, caplog):
    _bad_files(tmp_path)
    with caplog.at_level(logging.WARNING, logger="apps.speech.data"):
        data = sd.load_speech_data(str(tmp_path), frames_per_second=100, subsampling=4)
    assert data.train.ids == ["good"]
    skipped = {reason: [os.path.basename(p) for p, _ in items]
               for reason, items in data.report.skipped.items()}
    assert skipped == {
        "unreadable audio files": ["garbage.wav", "truncated.wav"],
        "empty audio files": ["empty.wav"],
        "silent audio files": ["silent.wav"],
        "corrupt audio files": ["nan.wav"],
        "clips too short for their label under CTC": ["short.wav"],
    }
    assert "skipped 2 unreadable audio files" in caplog.text and "garbage.wav" in caplog.text
    # 0.1 s at 100 frames/s is 10 frames, 2 after 4x subsampling; "one two three" needs
    # 13 characters + 1 blank between the two e's of "three".
    assert "2 encoder frames < 14" in data.report.summary()


@pytest.mark.parametrize("name, message", [
    ("garbage", "garbage.wav: unreadable audio files"),
    ("empty", "empty.wav: empty audio files"),
    ("silent", "silent.wav: silent audio files"),
    ("nan", "nan.wav: corrupt audio files"),
    ("short", "short.wav: clips too short for their label under CTC"),
])
def test_strict_turns_each_skip_into_an_error(tmp_path, name, message):
    _bad_files(tmp_path)
    (tmp_path / "metadata.csv").write_text(f"good|one two three\n{name}|one two three\n")
    (tmp_path / "splits.json").write_text(json.dumps({"train": ["good", name]}))
    with pytest.raises(ValueError, match=message):
        sd.load_speech_data(str(tmp_path), strict=True, frames_per_second=100, subsampling=4)


def test_missing_files_and_empty_csv_name_the_problem(tmp_path):
    _wav(tmp_path / "here.wav", _tone())
    (tmp_path / "t.csv").write_text("file,text\nhere.wav,hi\ngone1.wav,hi\ngone2.wav,hi\n")
    with pytest.raises(ValueError, match=r"2 of 3 listed audio files are missing; first: .*gone1\.wav \(line 3\)"):
        sd.load_speech_data(str(tmp_path / "t.csv"))
    (tmp_path / "empty.csv").write_text("file,text\n")
    with pytest.raises(ValueError, match=r"empty\.csv: empty transcript CSV"):
        sd.load_speech_data(str(tmp_path / "empty.csv"))
    (tmp_path / "cols.csv").write_text("a,b\nhere.wav,hi\n")
    with pytest.raises(ValueError, match="expected `file,text` or `path,transcript`"):
        sd.load_speech_data(str(tmp_path / "cols.csv"))


def test_out_of_vocabulary_transcripts_are_an_error(tmp_path):
    _wav(tmp_path / "a.wav", _tone())
    (tmp_path / "t.csv").write_text("file,text\na.wav,fine\na.wav,naïve ß\n")
    with pytest.raises(ValueError, match=r"'ß' \(U\+00DF\) in 1 transcript\(s\): a\.wav \(line 3\)"):
        sd.load_speech_data(str(tmp_path / "t.csv"))


def test_tfds_offline_error_and_conversion(monkeypatch):
    def offline(name, **kw):
        raise ConnectionError("no network")

    monkeypatch.setattr(sd, "_tfds_load", offline)
    with pytest.raises(RuntimeError, match="TFDS needs network access"):
        sd.load_speech_data("tfds:ljspeech")

    clips = [(np.round(_tone(0.5, 22050) * 32767).astype(np.int16), b"Hello, 2 you.")] * 4

    def fake(name, **kw):
        ds = tf.data.Dataset.from_generator(
            lambda: ({"id": str(i).encode(), "speech": c, "text_normalized": t}
                     for i, (c, t) in enumerate(clips)),
            output_signature={"id": tf.TensorSpec((), tf.string),
                              "speech": tf.TensorSpec((None,), tf.int16),
                              "text_normalized": tf.TensorSpec((), tf.string)})
        features = {"id": None, "speech": types.SimpleNamespace(sample_rate=22050),
                    "text_normalized": None}
        return {"train": ds}, types.SimpleNamespace(features=features)

    monkeypatch.setattr(sd, "_tfds_load", fake)
    data = sd.load_speech_data("tfds:ljspeech", validation_fraction=0.25, test_fraction=0.25)
    assert [len(data.splits[s]) for s in sd.SPLITS] == [2, 1, 1]
    assert data.train.texts[0] == "hello two you"
    assert abs(len(data.train.waveforms[0]) - 8000) <= 1


# --------------------------------------------------------------------------- pipeline


BUCKETS = (1.0, 2.0, 3.0, 4.0, 6.0)


def test_buckets_have_bounded_shapes(loaded):
    split = loaded.train
    for training in (True, False):
        ds = sp.make_pipeline(split, 2, training, bucket_seconds=BUCKETS, max_label_length=48)
        allowed = sp.pipeline_shapes(BUCKETS, 16000, 2, 48, training=training)
        allowed_w = {w[1] for w, _ in allowed}
        n = 0
        for waveform, length, labels, label_length in ds:
            n += int(waveform.shape[0])
            assert waveform.shape[1] in allowed_w and labels.shape[1] == 48
            assert (waveform.shape[0] == 2) or not training
            assert waveform.dtype == tf.float32 and labels.dtype == tf.int32
            assert length.dtype == tf.int32 and label_length.dtype == tf.int32
            w, lab, length = waveform.numpy(), labels.numpy(), length.numpy()
            for i in range(w.shape[0]):
                assert not np.any(w[i, length[i]:]) and not np.any(lab[i, label_length[i]:])
                edge = BUCKETS[[int(round(b * 16000)) for b in BUCKETS].index(w.shape[1])]
                assert (edge == BUCKETS[0]) or length[i] > BUCKETS[BUCKETS.index(edge) - 1] * 16000
        assert n == len(split) if not training else n <= len(split)
    assert len(sp.pipeline_shapes(BUCKETS, 16000, 2, 48)) == len(BUCKETS)


def test_pipeline_rejects_clips_beyond_the_last_bucket(loaded):
    with pytest.raises(ValueError, match="longer than the last bucket"):
        sp.make_pipeline(loaded.train, 2, False, bucket_seconds=(0.5,))


def _batches(split, seed, augment):
    ds = sp.make_pipeline(split, 2, True, bucket_seconds=BUCKETS, max_label_length=48,
                          augment=augment, seed=seed)
    return [[t.numpy() for t in batch] for batch in ds]


def test_augmentation_keeps_shapes_and_is_seeded(loaded):
    split = loaded.train
    aug = sp.Augment(silence_prob=1, noise_prob=1, eq_prob=1, gain_prob=1)
    plain = _batches(split, 0, None)
    a, b, c = _batches(split, 0, aug), _batches(split, 0, aug), _batches(split, 1, aug)
    assert len(a) == len(plain)
    for x, y, p in zip(a, b, plain):
        for t, u, v in zip(x, y, p):
            np.testing.assert_array_equal(t, u)
            assert t.shape == v.shape and t.dtype == v.dtype
        waveform, length = x[0], x[1]
        assert np.all(length >= p[1]) and np.all(length <= waveform.shape[1])
        assert np.abs(waveform).max() <= 1.0
        for i in range(len(length)):
            assert not np.any(waveform[i, length[i]:])
        np.testing.assert_array_equal(x[2], p[2])  # labels untouched
    assert any(not np.array_equal(x[0], z[0]) for x, z in zip(a, c))


def test_each_augmentation():
    rng = np.random.default_rng(0)
    size, n = 16000, 12000
    wave = np.zeros((4, size), np.float32)
    wave[:, :n] = 0.1 * rng.standard_normal((4, n))
    wave, length = tf.constant(wave), tf.constant([n] * 4, tf.int32)
    seed = tf.constant([3, 4], tf.int64)

    out, new_len = sp.add_silence(wave, length, 2000, 1.0, seed)
    lead = np.argmax(out.numpy() != 0, axis=1)
    assert np.all(lead <= 2000) and np.all(new_len.numpy() - n - lead <= 2000)
    np.testing.assert_array_equal(out.numpy()[0, lead[0] : lead[0] + n], wave.numpy()[0, :n])

    out, _ = sp.add_noise(wave, length, (10.0, 20.0), 1.0, seed)
    noise = (out - wave).numpy()[:, :n]
    snr = 10 * np.log10(np.mean(wave.numpy()[:, :n] ** 2, 1) / np.mean(noise**2, 1))
    assert np.all((snr > 9.5) & (snr < 20.5)) and not np.any(out.numpy()[:, n:])

    out, _ = sp.random_gain(wave, length, (-30.0, -20.0), 1.0, seed)
    gain_db = 20 * np.log10(np.abs(out.numpy()[:, 0] / wave.numpy()[:, 0]))
    assert np.all((gain_db > -30.01) & (gain_db < -19.99))
    out, _ = sp.random_gain(wave, length, (0.0, 0.0), 0.0, seed)
    np.testing.assert_array_equal(out.numpy(), wave.numpy())

    tel = sp.Augment(eq_prob=1.0, eq_db=0.0, highpass_hz=(300, 300), lowpass_hz=(3400, 3400))
    out, _ = sp.random_eq(wave, length, 16000, tel, seed)
    spec_in = np.abs(np.fft.rfft(wave.numpy()[:, :n], axis=1)).mean(0)
    spec_out = np.abs(np.fft.rfft(out.numpy()[:, :n], axis=1)).mean(0)
    freqs = np.fft.rfftfreq(n, 1 / 16000)
    band = (freqs > 800) & (freqs < 2500)
    high = freqs > 6000
    assert np.mean(spec_out[band] / spec_in[band]) > 0.9  # passband kept
    assert np.mean(spec_out[high] / spec_in[high]) < 0.1  # telephone low-pass
    assert not np.any(out.numpy()[:, n:])


def test_augment_validates_fields():
    with pytest.raises(ValueError, match="Augment.noise_prob must be in"):
        sp.Augment(noise_prob=2)
    with pytest.raises(ValueError, match="Augment.snr_db must be"):
        sp.Augment(snr_db=(30, 10))
