"""Validation WER/CER per epoch, and TensorBoard spectrograms, attention maps and transcripts.

`ValidationMetrics` decodes the whole validation split after each epoch (greedy, locally
on every worker, so each worker computes the same numbers) and adds `val_wer` and
`val_cer` to the epoch logs: put it before the checkpoint and TensorBoard callbacks, which
then pick the best model by and plot them. Every `every_n_epochs` (and after the last
epoch) it also writes `sample_transcripts` (reference vs hypothesis) as TensorBoard text.

`image_callbacks` draws, for the same fixed validation utterances, their log-mel
spectrograms with the reference and hypothesis, and the last block's self-attention
(mean over heads) for attention encoders.
"""

import os

import keras
import numpy as np
import tensorflow as tf

from apps.speech.decode import error_rates
from apps.speech.evaluate import decode_logits, logits_function, split_logits, to_model_inputs
from apps.speech.export import pad_batch
from tfattn import training


class ValidationMetrics(keras.callbacks.Callback):
    """Adds `val_wer`/`val_cer` (greedy decoding) to the logs after every epoch."""

    def __init__(self, split, vocabulary, batch_size, bucket_seconds, max_label_length,
                 log_dir=None, samples=(), every_n_epochs=1):
        super().__init__()
        self.split, self.vocabulary = split, vocabulary
        self.batch_size, self.bucket_seconds = batch_size, bucket_seconds
        self.max_label_length = max_label_length
        self.log_dir, self.samples, self.every_n_epochs = log_dir, list(samples), every_n_epochs
        self._run = None
        self._last = None
        self._writer = None

    def on_train_begin(self, logs=None):
        self._run = logits_function(self.model)
        if self.log_dir and self.samples:
            self._writer = tf.summary.create_file_writer(self.log_dir)

    def on_epoch_end(self, epoch, logs=None):
        logits = split_logits(self.model, self.split, self.batch_size, self.bucket_seconds,
                              self.max_label_length, run=self._run)
        hyps = decode_logits(logits, self.vocabulary, "greedy")
        rates = error_rates(self.split.texts, hyps)
        if logs is not None:
            logs["val_wer"] = rates["wer"]
            logs["val_cer"] = rates["cer"]
        self._last = (epoch, hyps)
        if self._writer is not None and (epoch + 1) % self.every_n_epochs == 0:
            self._write_text(epoch, hyps)
            self._last = None

    def _write_text(self, epoch, hyps):
        rows = ["| id | reference | hypothesis |", "|---|---|---|"]
        rows += [f"| {self.split.ids[i]} | {self.split.texts[i]} | {hyps[i] or '(empty)'} |"
                 for i in self.samples]
        with self._writer.as_default():
            tf.summary.text("transcripts/validation", "\n".join(rows), step=epoch)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            if self._last is not None:
                self._write_text(*self._last)
            self._writer.close()
            self._writer = None


def sample_indices(split, count):
    """`count` fixed validation utterances spread over the split (by position)."""
    if count <= 0 or not len(split):
        return []
    return sorted(set(np.linspace(0, len(split) - 1, min(count, len(split))).astype(int).tolist()))


def spectrogram_figure(features, titles):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 1.8 * len(features)), dpi=80)
    for i, (feat, title) in enumerate(zip(features, titles)):
        ax = fig.add_subplot(len(features), 1, i + 1)
        ax.imshow(feat.T, origin="lower", aspect="auto", cmap="magma")
        ax.set_title(title, fontsize=8, loc="left")
        ax.set_ylabel("mel")
        ax.tick_params(labelsize=7)
    fig.axes[-1].set_xlabel("frame (10 ms)")
    fig.tight_layout()
    return fig


def attention_figure(maps, titles):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.0 * len(maps), 3.2), dpi=80)
    for i, (a, title) in enumerate(zip(maps, titles)):
        ax = fig.add_subplot(1, len(maps), i + 1)
        ax.imshow(a, cmap="viridis", origin="upper")
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("key frame (40 ms)", fontsize=7)
        ax.set_ylabel("query frame", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    return fig


def image_callbacks(model, split, vocabulary, indices, log_dir, every_n_epochs):
    """Spectrogram (+ transcripts) and attention-map hooks for `indices` of `split`."""
    if not indices:
        return []
    waveform, length = pad_batch([split.waveforms[i] for i in indices])
    inputs = to_model_inputs(waveform, length)

    def spectrograms(model, epoch):
        features, frames = model.log_mel(waveform, length)
        features, frames = np.asarray(features), np.asarray(frames)
        logits = np.asarray(model(inputs, training=False))
        frames_out = np.asarray(model.output_lengths(length))
        hyps = decode_logits([logits[r, : frames_out[r]] for r in range(len(indices))],
                             vocabulary, "greedy")
        titles = [f"{split.ids[i]}  ref: {split.texts[i]}  |  hyp: {h}"
                  for i, h in zip(indices, hyps)]
        return training.figure_to_image(spectrogram_figure(
            [features[r, : frames[r]] for r in range(len(indices))], titles))

    callbacks = [training.ImageHookCallback(spectrograms, log_dir, "spectrograms",
                                            every_n_epochs=every_n_epochs)]
    if model.architecture != "ctc_baseline":
        def attention(model, epoch):
            scores, mask = model.attention_maps(inputs)
            last = np.asarray(scores[-1]).mean(axis=1)  # (B, T', T') mean over heads
            n = np.asarray(mask).sum(axis=1)
            maps = [last[r, : n[r], : n[r]] for r in range(len(indices))]
            titles = [f"{split.ids[i]}, last block" for i in indices]
            return training.figure_to_image(attention_figure(maps, titles))

        callbacks.append(training.ImageHookCallback(attention, log_dir, "attention/last_block",
                                                    every_n_epochs=every_n_epochs))
    return callbacks


def tensorboard_image_dir(workdir):
    return os.path.join(workdir, "tensorboard", "images")
