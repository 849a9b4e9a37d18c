"""Export a trained speech model for TF Serving: raw audio in, transcripts out.

    python -m apps.speech.export --workdir runs/speech [--version 2] [--overwrite]

Signatures (the log-mel front end, the model and greedy CTC decoding all in the graph):

    serving_default
        waveform         float32 (batch, samples)  mono at the model's rate (16 kHz by
                                                   default), zero-padded to the longest
        waveform_length  int32   (batch,)           valid samples of each row
    transcribe_wav
        wav_bytes        string  (batch,)           whole 16-bit PCM WAV files, any rate
                                                   and channel count: mixed to mono and
                                                   resampled in the graph (windowed sinc)

both returning

        transcripts      string  (batch,)           greedy CTC decoding
        log_probs        float32 (batch, T', V)     per-frame log-probabilities (for beam
                                                   search / LM decoding on the client;
                                                   frames past output_lengths are blank)
        output_lengths   int32   (batch,)           valid frames of each row

The vocabulary is written next to the model as `<version>/speech_meta.json`.
`apps.speech.transcribe` uses the SavedModel with any audio format librosa reads.

REST (TF Serving row format; WAV bytes base64-encoded):

    curl -d '{"signature_name": "transcribe_wav", "instances": [{"wav_bytes": {"b64": "UklGR..."}}]}' \\
        http://localhost:8501/v1/models/speech:predict
"""

import argparse
import json
import math
import os

import numpy as np
import tensorflow as tf

from apps.speech.model import PADDED_LOGIT
from tfattn import training

META_FILE = "speech_meta.json"
WAV_SIGNATURE = "transcribe_wav"
RESAMPLE_HALF_WIDTH = 32  # taps on each side of the windowed-sinc interpolator


def speech_meta(cfg, vocabulary):
    return {"sample_rate": cfg.sample_rate, "characters": vocabulary.chars, "blank_id": 0,
            "digits": vocabulary.digits, "architecture": cfg.architecture,
            "signatures": {"serving_default": ["waveform", "waveform_length"],
                           WAV_SIGNATURE: ["wav_bytes"]}}


def resample_tf(x, rate_in, rate_out, half_width=RESAMPLE_HALF_WIDTH):
    """Band-limited resampling of a 1-D float32 signal in the graph: each output sample is
    a Hann-windowed sinc interpolation of `2 * half_width` input samples, with the cut-off
    at the lower Nyquist frequency (anti-aliasing when downsampling)."""
    rate_in = tf.cast(rate_in, tf.float64)
    ratio = tf.cast(rate_out, tf.float64) / rate_in
    n = tf.shape(x)[0]
    n_out = tf.cast(tf.math.floor(tf.cast(n, tf.float64) * ratio), tf.int32)
    t = tf.range(n_out, dtype=tf.float64) / ratio  # output times in input samples
    cutoff = tf.minimum(ratio, 1.0)
    base = tf.math.floor(t)
    offsets = tf.range(-half_width + 1, half_width + 1, dtype=tf.float64)
    index = base[:, None] + offsets[None, :]  # (n_out, 2 * half_width)
    d = t[:, None] - index
    width = tf.cast(half_width, tf.float64)
    x_ = cutoff * d
    ones, zeros = tf.ones_like(x_), tf.zeros_like(x_)
    tiny = tf.abs(x_) < 1e-9
    sinc = tf.where(tiny, ones, tf.sin(math.pi * x_) / (math.pi * tf.where(tiny, ones, x_)))
    window = tf.where(tf.abs(d) < width, 0.5 + 0.5 * tf.cos(math.pi * d / width), zeros)
    weights = cutoff * sinc * window
    inside = (index >= 0) & (index < tf.cast(n, tf.float64))
    gathered = tf.gather(x, tf.clip_by_value(tf.cast(index, tf.int32), 0, tf.maximum(n - 1, 0)))
    values = tf.where(inside, tf.cast(gathered, tf.float64), zeros)
    return tf.cast(tf.reduce_sum(weights * values, axis=-1), tf.float32)


def decode_wav_batch(wav_bytes, sample_rate):
    """(batch,) WAV file bytes -> zero-padded mono waveforms at `sample_rate` + lengths."""
    def one(contents):
        audio, rate = tf.audio.decode_wav(contents)  # (samples, channels) in [-1, 1]
        mono = tf.reduce_mean(audio, axis=-1)
        return tf.cond(tf.equal(rate, sample_rate), lambda: mono,
                       lambda: resample_tf(mono, rate, sample_rate))

    waves = tf.map_fn(one, wav_bytes, fn_output_signature=tf.RaggedTensorSpec([None], tf.float32))
    return waves.to_tensor(0.0), tf.cast(waves.row_lengths(), tf.int32)


def make_postprocess(characters):
    """Logits -> {"transcripts", "log_probs", "output_lengths"} (greedy CTC in the graph)."""
    table = tf.constant([""] + list(characters))

    def postprocess(logits):
        logits = tf.cast(logits, tf.float32)
        # Frames past an utterance's end are "certainly blank" (model.py): blank logit 0,
        # every other PADDED_LOGIT; anything else is a real frame.
        padded = (tf.reduce_all(logits[..., 1:] <= PADDED_LOGIT / 2, axis=-1)
                  & tf.equal(logits[..., 0], 0.0))
        lengths = tf.reduce_sum(tf.cast(~padded, tf.int32), axis=-1)
        batch, frames = tf.shape(logits)[0], tf.shape(logits)[1]
        decoded, _ = tf.nn.ctc_greedy_decoder(
            tf.transpose(logits, [1, 0, 2]), tf.fill([batch], frames), blank_index=0)
        ids = tf.sparse.to_dense(decoded[0], default_value=0)
        ids = tf.reshape(ids, [batch, -1])  # a batch with no output characters: (B, 0)
        chars = tf.gather(table, tf.cast(ids, tf.int32))
        text = tf.strings.reduce_join(chars, axis=-1)
        text = tf.strings.strip(tf.strings.regex_replace(text, " +", " "))
        return {"transcripts": text, "log_probs": tf.nn.log_softmax(logits, axis=-1),
                "output_lengths": lengths}

    return postprocess


def export_speech(model, export_dir, name, version, meta, overwrite=False, verify_inputs=None):
    """Writes `<export_dir>/<name>/<version>/` with both signatures (+ speech_meta.json);
    `verify_inputs` ({"waveform", "waveform_length"}) checks `serving_default` after reloading."""
    rate = meta["sample_rate"]
    postprocess = make_postprocess(meta["characters"])

    def from_wav(inputs):
        waveform, length = decode_wav_batch(inputs["wav_bytes"], rate)
        return {"waveform": waveform, "waveform_length": length}

    report = training.export_for_serving(
        model, export_dir, name, version,
        input_signature={"waveform": tf.TensorSpec([None, None], tf.float32),
                         "waveform_length": tf.TensorSpec([None], tf.int32)},
        preprocess=lambda inputs: dict(inputs), postprocess=postprocess,
        overwrite=overwrite, verify_inputs=verify_inputs,
        extra_signatures={WAV_SIGNATURE: {
            "input_signature": {"wav_bytes": tf.TensorSpec([None], tf.string)},
            "preprocess": from_wav, "postprocess": postprocess}},
    )
    with open(os.path.join(report["path"], META_FILE), "w") as f:
        json.dump(meta, f, indent=2)
    return report


def read_meta(saved_model_dir):
    return training.read_json(os.path.join(saved_model_dir, META_FILE), "python -m apps.speech.export")


def pad_batch(waveforms):
    """List of 1-D arrays -> (zero-padded float32 batch, int32 lengths)."""
    lengths = np.array([len(w) for w in waveforms], np.int32)
    batch = np.zeros((len(waveforms), max(int(lengths.max(initial=0)), 1)), np.float32)
    for i, w in enumerate(waveforms):
        batch[i, : len(w)] = w
    return batch, lengths


def load_run(parser, workdir, model_path=None):
    """(config, model) of a training run's folder; `parser.error` naming what is missing."""
    import keras

    from apps.speech.config import Config

    config_path = os.path.join(workdir, "config.json")
    if not os.path.exists(config_path):
        parser.error(f"--workdir: {config_path} does not exist (run apps.speech.train first)")
    cfg = training.load_config(Config, config_path)
    model_path = model_path or os.path.join(workdir, "model.keras")
    if not os.path.exists(model_path):
        parser.error(f"--model: {model_path} does not exist")
    return cfg, keras.saving.load_model(model_path, compile=False)


def main(argv=None):
    from apps.speech.text import Vocabulary

    parser = argparse.ArgumentParser(
        prog="python -m apps.speech.export",
        description="Export a trained speech model for TF Serving (audio in, transcripts out).")
    parser.add_argument("--workdir", required=True, help="folder written by apps.speech.train")
    parser.add_argument("--model", help="a .keras file (default: <workdir>/model.keras)")
    parser.add_argument("--export_dir", help="folder of the exports (default: <workdir>/export)")
    parser.add_argument("--name", default="speech", help="model name TF Serving serves")
    parser.add_argument("--version", type=int, help="SavedModel version (default: one above the newest)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing version")
    args = parser.parse_args(argv)

    cfg, model = load_run(parser, args.workdir, args.model)
    export_dir = args.export_dir or os.path.join(args.workdir, "export")
    version = args.version if args.version is not None else training.next_version(export_dir, args.name)
    meta = speech_meta(cfg, Vocabulary(digits=cfg.digits))
    try:
        report = export_speech(model, export_dir, args.name, version, meta, args.overwrite)
    except FileExistsError as err:
        parser.error(str(err))
    print(f"SavedModel: {report['path']}  signatures serving_default, {WAV_SIGNATURE}; "
          f"outputs {report['outputs']}")
    return report


if __name__ == "__main__":
    training.run_cli(main)
