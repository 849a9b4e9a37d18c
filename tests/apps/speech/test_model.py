"""Speech models: exact CTC frame counts, padding invariance, CTC over padded frames,
serialisation; decoders (greedy, beam, beam + word LM) and WER/CER."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from apps.speech import decode as sdec
from apps.speech.model import ARCHITECTURES, CTCLoss, build_model
from apps.speech.text import Vocabulary

TINY = {
    "conformer": dict(hidden_dim=16, num_layers=1, num_heads=2, intermediate_dim=32,
                      conv_kernel_size=3),
    "transformer": dict(hidden_dim=16, num_layers=1, num_heads=2, intermediate_dim=32),
    "ctc_baseline": dict(hidden_dim=16, num_layers=1, rnn_units=8, conv_filters=4),
}


def _batch(lengths, samples, seed=0):
    rng = np.random.default_rng(seed)
    w = (0.1 * rng.standard_normal((len(lengths), samples))).astype("float32")
    n = np.asarray(lengths, "int32")
    return w, n


# 20 ms frames and the paper's BatchNorm (masked moments) in the convolution module: the
# same exactness (BatchNorm in inference uses its moving statistics, per frame).
VARIANTS = [(arch, {}) for arch in ARCHITECTURES] + [
    ("conformer", dict(time_reduction=2, conv_norm="batch_norm")),
    ("transformer", dict(time_reduction=2)),
]


@pytest.mark.parametrize("arch, extra", VARIANTS,
                         ids=[a + "".join(f"-{v}" for v in e.values()) for a, e in VARIANTS])
def test_output_lengths_padding_and_serialisation(arch, extra, tmp_path):
    model = build_model(arch, 12, front_end=dict(n_mels=40), **TINY[arch], **extra)
    assert model.time_reduction == extra.get("time_reduction", 2 if arch == "ctc_baseline" else 4)
    w, n = _batch([8000, 5000, 3300], 8000)
    logits = np.asarray(model({"waveform": w, "waveform_length": n}))
    frames = np.asarray(model.output_lengths(tf.constant(n)))
    assert logits.shape[1] == model.output_lengths(8000) == frames[0]
    assert [model.output_lengths(int(k)) for k in n] == frames.tolist()
    for row, f in enumerate(frames):
        padded = logits[row, f:]
        assert np.all(padded[:, 0] == 0.0) and np.all(padded[:, 1:] <= -1e4 + 1), arch
        assert not np.any(np.all(logits[row, :f, 1:] <= -1e3, axis=-1))

    # More padding (another bucket) and garbage past each length change no valid frame.
    w2 = np.concatenate([w, np.ones((3, 1600), "float32")], axis=1)
    w2[1, 5000:] = 0.7
    logits2 = np.asarray(model({"waveform": w2, "waveform_length": n}))
    for row, f in enumerate(frames):
        np.testing.assert_allclose(logits2[row, :f], logits[row, :f], atol=2e-5)

    # CTC over all frames (padded ones certainly blank) == CTC over the valid frames only.
    labels = np.array([[1, 2, 2, 3], [4, 5, 0, 0], [6, 0, 0, 0]], "int32")
    full = keras.losses.CTC(reduction=None)(labels, logits)
    exact = keras.ops.ctc_loss(labels, logits, np.array([4, 2, 1], "int32"), frames, mask_index=0)
    np.testing.assert_allclose(np.asarray(full), np.asarray(exact), rtol=1e-5)

    path = str(tmp_path / f"{arch}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    np.testing.assert_allclose(np.asarray(loaded({"waveform": w, "waveform_length": n})), logits,
                               atol=1e-5)
    assert loaded.architecture == arch and loaded.output_lengths(8000) == frames[0]
    assert loaded.time_reduction == model.time_reduction


def test_min_samples_and_attention_maps():
    model = build_model("conformer", 12, front_end=dict(n_mels=40), **TINY["conformer"])
    for frames in (1, 5, 17):
        n = model.min_samples_for_frames(frames)
        assert model.output_lengths(n) >= frames > model.output_lengths(n - 160)
    w, n = _batch([8000, 4000], 8000)
    scores, mask = model.attention_maps({"waveform": w, "waveform_length": n})
    assert len(scores) == 1 and scores[0].shape[:2] == (2, 2)
    a = np.asarray(scores[0])
    np.testing.assert_allclose(a.sum(-1)[np.asarray(mask)[:, None, :].repeat(2, 1)], 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="no attention maps"):
        build_model("ctc_baseline", 12, **TINY["ctc_baseline"]).attention_maps(
            {"waveform": w, "waveform_length": n})


def test_build_model_rejects_unknown_hyperparameters():
    with pytest.raises(ValueError, match="ctc_baseline has no hyperparameter"):
        build_model("ctc_baseline", 12, num_heads=4)
    with pytest.raises(ValueError, match="architecture must be one of"):
        build_model("lstm", 12)


# ------------------------------------------------------------------------------ decoding


def _logits_for(paths, vocab_size=6, frames=None):
    """Logits whose argmax follows `paths` (lists of ids per frame)."""
    frames = frames or max(len(p) for p in paths)
    x = np.full((len(paths), frames, vocab_size), -5.0, np.float32)
    for b, p in enumerate(paths):
        padded = list(p) + [0] * (frames - len(p))
        for t, i in enumerate(padded):
            x[b, t, i] = 5.0
    return x


def test_greedy_collapses_repeats_and_drops_blanks():
    logits = _logits_for([[1, 1, 0, 1, 2, 2, 0], [0, 3, 3, 3, 0, 0, 4]])
    got = sdec.greedy_decode(logits)
    assert [g.tolist() for g in got] == [[1, 1, 2], [3, 4]]
    # Lengths cut the frames read.
    got = sdec.greedy_decode(logits, lengths=np.array([4, 7]))
    assert [g.tolist() for g in got] == [[1, 1], [3, 4]]


def test_beam_finds_the_most_probable_labelling_where_greedy_does_not():
    # Two frames over {blank, a}: best path is blank-blank (0.6^2 = 0.36) but "a" has
    # probability 1 - 0.36 = 0.64 summed over its paths.
    p = np.log(np.array([[[0.6, 0.4], [0.6, 0.4]]], np.float32))
    assert sdec.greedy_decode(p)[0].tolist() == []
    paths, scores = sdec.beam_decode(p, beam_width=4, top_paths=2)
    assert paths[0][0].tolist() == [1]
    assert math.exp(scores[0, 0]) == pytest.approx(0.64, rel=1e-4)


def test_word_lm_is_normalised_and_rescoring_prefers_it():
    lm = sdec.WordLM(["one two three", "one two", "two three four"], order=2)
    words = sorted(lm.vocabulary)
    for context in [("<s>",), ("one",), ("four",), ("nine",)]:
        # The training words plus one share for any unseen word: a distribution.
        total = sum(lm._prob(w, context) for w in words) + lm._prob("<unseen>", context)
        assert total == pytest.approx(1.0, abs=1e-9), context
    assert lm.log_prob("one two three") > lm.log_prob("three one two")
    assert lm.log_prob("one tw three") < lm.log_prob("one two three") - 5  # out of lexicon
    best = sdec.rescore(["one tw three", "one two three"], [-1.0, -1.5], lm, lm_weight=0.5)
    assert best == 1
    assert sdec.rescore(["one tw three", "one two three"], [-1.0, -1.5], lm, lm_weight=0.0) == 0
    with pytest.raises(ValueError, match="at least one"):
        sdec.WordLM(["", "  "])


def test_decode_methods_and_error_rates():
    vocab = Vocabulary()
    ids = [vocab.text_to_ids("one two"), vocab.text_to_ids("six")]
    frames = [[i for c in row for i in (int(c), 0)] for row in ids]
    logits = _logits_for(frames, vocab_size=vocab.size)
    for method in ("greedy", "beam"):
        assert sdec.decode(logits, vocab, method) == ["one two", "six"]
    lm = sdec.WordLM(["one two", "six"])
    assert sdec.decode(logits, vocab, "beam_lm", lm=lm, beam_width=4, top_paths=2) == [
        "one two", "six"]
    with pytest.raises(ValueError, match="needs a WordLM"):
        sdec.decode(logits, vocab, "beam_lm")
    rates = sdec.error_rates(["one two three", "six"], ["one too three", ""])
    assert rates["wer"] == pytest.approx(2 / 4)
    assert rates["cer"] == pytest.approx((1 + 3) / (13 + 3))  # two->too, six->""
    assert rates["per_utterance_wer"] == [pytest.approx(1 / 3), 1.0]
    with pytest.raises(ValueError, match="empty reference"):
        sdec.error_rates(["", "a"], ["a", "a"])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_an_empty_batch_gives_empty_logits(arch):
    """Multi-worker evaluation can hand a worker an empty share of the last batch; TF's
    oneDNN Conv2D/MatMul mis-shape empty batches unless the model guards against them."""
    model = build_model(arch, 12, front_end=dict(n_mels=40), **TINY[arch])
    run = tf.function(lambda w, n: model({"waveform": w, "waveform_length": n}, training=False),
                      reduce_retracing=True)
    full = run(tf.zeros((2, 8000)), tf.constant([8000, 4000]))
    empty = run(tf.zeros((0, 8000)), tf.zeros((0,), tf.int32))
    assert tuple(empty.shape) == (0, *full.shape[1:])
    loss = CTCLoss()
    assert float(np.sum(np.asarray(loss(tf.zeros((0, 4), tf.int32), empty)))) == 0.0
    labels = tf.constant([[1, 2, 0, 0], [3, 0, 0, 0]])
    np.testing.assert_allclose(float(loss(labels, full)),
                               float(keras.losses.CTC()(labels, full)), rtol=1e-6)


def test_spec_augment_warmup_switches_the_masks_on_at_its_epoch(capsys):
    from apps.speech.train import SpecAugmentWarmup

    model = build_model("conformer", 12, front_end=dict(n_mels=40), **TINY["conformer"],
                        spec_augment=dict(freq_mask_param=5, num_freq_masks=1,
                                          time_mask_param=5, num_time_masks=1))
    traced = []  # SpecAugment runs in Python only while the train function is traced
    original = model.spec_augment.call
    model.spec_augment.call = lambda *args, **kwargs: (traced.append(1), original(*args, **kwargs))[1]
    per_epoch = []

    class Count(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            per_epoch.append(len(traced))

    w, n = _batch([8000, 8000, 6000, 6000], 8000)
    labels = np.array([[1, 2, 3, 0], [4, 5, 0, 0], [6, 7, 8, 9], [3, 0, 0, 0]], "int32")
    model.compile(optimizer="adam", loss=CTCLoss())
    model.fit({"waveform": w, "waveform_length": n}, labels, batch_size=2, epochs=3,
              callbacks=[SpecAugmentWarmup(1), Count()], verbose=0)
    assert per_epoch[0] == 0 and per_epoch[1] > 0 and per_epoch[2] == per_epoch[1]
    assert model.spec_augment_enabled
    assert "Epoch 2: SpecAugment on" in capsys.readouterr().out
