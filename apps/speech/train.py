"""Train a speech recogniser (Conformer + CTC by default), log to TensorBoard, test and export it.

    python -m apps.speech.train --preset digits --workdir runs/speech       # make data-speech first
    python -m apps.speech.train --preset digits_baseline --workdir runs/speech_baseline
    python -m apps.speech.train --data my_corpus/ --workdir runs/my_asr     # LJSpeech layout or CSV
    python -m apps.speech.train --help                                      # every field

Config -> strategy -> model (its exact CTC frame counts are needed to check the data) ->
data -> bucketed tf.data pipelines with augmentation -> compile (AdamW, warm-up + cosine,
CTC loss) -> fit -> test WER/CER with every decoder -> export. A job killed mid-run
resumes from `<workdir>/backup` when started again with the same command. The weights kept
are the best on validation (`--monitor`, default greedy CER); the test split is only used
for the final report.

Writes under `--workdir`: config.json, model.keras, summary.json, eval_test.json/.csv
(per utterance), tensorboard/ (loss, val_wer, val_cer, learning rate, spectrograms with
transcripts, attention maps, sample transcripts as text), checkpoints/ and
export/<name>/<version>/.
"""

import math
import os
import time

import keras
import tensorflow as tf

from apps.speech import plots
from apps.speech.config import PRESETS, Config
from apps.speech.data import load_speech_data
from apps.speech.evaluate import (
    evaluate_split,
    format_table,
    language_model,
    to_model_inputs,
    write_results,
)
from apps.speech.export import export_speech, pad_batch, speech_meta
from apps.speech.model import CTCLoss, build_model, count_params
from apps.speech.pipeline import Augment, batches_per_epoch, make_pipeline
from apps.speech.text import Vocabulary
from tfattn import training

# Weights that AdamW leaves undecayed: biases, norms, relative-position tables.
NO_DECAY = ["bias", "gamma", "beta", "moving_mean", "moving_variance", "relative"]

RESUME_MAY_CHANGE = training.AppConfig.RESUME_MAY_CHANGE + (
    "early_stopping_patience", "sample_transcripts", "image_every_epochs", "decoder",
    "beam_width", "lm_order", "lm_weight", "word_bonus",
)


def load_data(cfg, model):
    """The run's data, with clips too short for `model`'s CTC frames skipped."""
    data = load_speech_data(
        cfg.data, sample_rate=cfg.sample_rate, vocabulary=Vocabulary(digits=cfg.digits),
        columns=cfg.columns, audio_dir=cfg.audio_dir, raw_rate=cfg.raw_rate,
        encoder_frames=model.output_lengths, max_seconds=cfg.bucket_seconds[-1],
        strict=cfg.strict, validation_fraction=cfg.validation_fraction,
        test_fraction=cfg.test_fraction, seed=cfg.seed,
    )
    if cfg.limit_utterances:
        for split in data.splits.values():
            for field in ("ids", "paths", "texts", "waveforms", "labels"):
                setattr(split, field, getattr(split, field)[: cfg.limit_utterances])
    return data


def max_label_length(data):
    longest = max((len(lab) for s in data.splits.values() for lab in s.labels), default=1)
    return int(-(-longest // 16) * 16)


def augment_of(cfg):
    if not cfg.augment:
        return None
    return Augment(silence_prob=cfg.silence_prob, noise_prob=cfg.noise_prob,
                   eq_prob=cfg.eq_prob, gain_prob=cfg.gain_prob)


class SpecAugmentWarmup(keras.callbacks.Callback):
    """SpecAugment off for the first `start_epoch` epochs, on from then (also when a run
    resumes past it): an attention encoder under CTC first learns to align labels on clean
    spectrograms, then the masks regularise it. Switching retraces the train function
    once (an XLA recompile with `--jit_compile`)."""

    def __init__(self, start_epoch):
        super().__init__()
        self.start_epoch = int(start_epoch)

    def on_epoch_begin(self, epoch, logs=None):
        enabled = epoch >= self.start_epoch
        if self.model.spec_augment_enabled != enabled:
            self.model.spec_augment_enabled = enabled
            self.model.make_train_function(force=True)
            print(f"\nEpoch {epoch + 1}: SpecAugment {'on' if enabled else 'off'}", flush=True)


def as_keras(ds):
    """(waveform, length, labels, label_length) batches -> ({"waveform", ...}, labels)."""
    return ds.map(lambda w, n, lab, m: (to_model_inputs(w, n), lab))


def run(cfg):
    """Trains, tests and exports as `cfg` says; returns the summary dict."""
    keras.utils.set_random_seed(cfg.seed)
    strategy = training.resolve_strategy(cfg.strategy, cfg.tpu)
    chief = training.is_chief(strategy)
    training.set_precision(cfg.precision)
    workdir = cfg.workdir
    training.check_resume(cfg, workdir, ignore=RESUME_MAY_CHANGE)
    training.write_config(cfg, workdir)
    vocabulary = Vocabulary(digits=cfg.digits)

    with strategy.scope():
        model = build_model(cfg.architecture, vocabulary.size,
                            front_end=dict(sample_rate=cfg.sample_rate, n_mels=cfg.n_mels),
                            spec_augment=cfg.spec_augment(), seed=cfg.seed, **cfg.model_hparams())

    data = load_data(cfg, model)
    print(data.describe())
    print(data.report.summary())
    for name in ("train", "validation"):
        if not len(data.splits[name]):
            raise ValueError(f"{cfg.data}: no {name} utterances left after loading "
                             f"(see the report above)")
    labels_len = max_label_length(data)
    global_batch = training.global_batch_size(cfg.batch_size, strategy)
    train_ds = as_keras(make_pipeline(data.train, global_batch, training=True,
                                      bucket_seconds=cfg.bucket_seconds,
                                      max_label_length=labels_len, augment=augment_of(cfg),
                                      seed=cfg.seed))
    val_ds = as_keras(make_pipeline(data.validation, global_batch, training=False,
                                    bucket_seconds=cfg.bucket_seconds,
                                    max_label_length=labels_len))
    # Bucketing hides the number of batches from tf.data; it is fixed (each bucket's full
    # batches; augmentation runs after batching), so count it once and assert it.
    steps_per_epoch = batches_per_epoch(data.train, global_batch, cfg.bucket_seconds)
    if not steps_per_epoch:
        raise ValueError(
            f"no full training batch: each duration bucket holds fewer than --batch_size "
            f"{global_batch} utterances ({len(data.train)} in all); lower --batch_size")
    options = training.dataset_options()
    train_ds = train_ds.apply(tf.data.experimental.assert_cardinality(steps_per_epoch))
    val_ds = val_ds.apply(tf.data.experimental.assert_cardinality(
        batches_per_epoch(data.validation, global_batch, cfg.bucket_seconds, training=False)))
    train_ds, val_ds = train_ds.with_options(options), val_ds.with_options(options)

    with strategy.scope():
        peak = cfg.learning_rate * global_batch / cfg.batch_size  # linear in the replicas
        fit_to_budget = bool(cfg.time_budget_minutes) and cfg.fit_schedule_to_budget
        schedule = training.warmup_cosine(
            peak, cfg.epochs, steps_per_epoch, warmup_epochs=cfg.warmup_epochs,
            end_learning_rate=min(cfg.min_learning_rate, peak), resizable=fit_to_budget,
        )
        optimizer = keras.optimizers.AdamW(
            schedule, weight_decay=cfg.weight_decay, global_clipnorm=cfg.gradient_clip_norm
        )
        optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
        model.compile(optimizer=optimizer, loss=CTCLoss(),
                      jit_compile=cfg.jit_compile, steps_per_execution=cfg.steps_per_execution)
    # Multi-worker: fit/evaluate as collectives, predict locally. A no-op otherwise.
    training.enable_multi_worker_fit(model)
    print(f"{cfg.architecture}: {count_params(model):,} parameters, {len(data.train):,} training "
          f"utterances ({data.train.seconds.sum() / 60:.1f} min), {steps_per_epoch} steps per "
          f"epoch, global batch {global_batch} on {strategy.num_replicas_in_sync} replica(s)")

    samples = plots.sample_indices(data.validation, cfg.sample_transcripts)
    image_dir = plots.tensorboard_image_dir(workdir)
    metrics = plots.ValidationMetrics(
        data.validation, vocabulary, cfg.batch_size, cfg.bucket_seconds, labels_len,
        log_dir=os.path.join(image_dir, "..", "text") if chief else None, samples=samples,
        every_n_epochs=cfg.image_every_epochs)
    callbacks = training.standard_callbacks(
        workdir, config=cfg, chief=chief, monitor=cfg.monitor, mode="min",
        early_stopping_patience=cfg.early_stopping_patience,
    )
    input_wait = training.InputWaitCallback()
    budget = training.TimeBudget(
        cfg.time_budget_minutes, schedule=schedule if fit_to_budget else None,
        steps_per_epoch=steps_per_epoch,
    )
    # Before the checkpoint and TensorBoard callbacks, so they see val_wer / val_cer.
    callbacks[:0] = [input_wait, budget, metrics]
    if cfg.spec_augment_start_epoch and model.spec_augment is not None:
        callbacks.insert(0, SpecAugmentWarmup(cfg.spec_augment_start_epoch))
    if chief:
        callbacks += plots.image_callbacks(model, data.validation, vocabulary, samples,
                                           image_dir, cfg.image_every_epochs)

    start = time.time()
    history = model.fit(input_wait.wrap(train_ds), validation_data=val_ds, epochs=cfg.epochs,
                        callbacks=callbacks, verbose=cfg.verbose, shuffle=False)
    train_seconds = time.time() - start

    best = os.path.join(workdir, "checkpoints", "best.keras")
    training.load_weights_everywhere(model, best, strategy, missing_ok=True)
    training.print_weights_fingerprint(model, strategy)  # multi-worker: equal everywhere

    summary = {
        "best_" + cfg.monitor: float(min(history.history.get(cfg.monitor, [math.nan]))),
        **training.fit_epochs(history),
        "stopped_by_time_budget": budget.stopped_epoch is not None,
        "schedule_epochs": budget.planned_epochs or cfg.epochs,
        "train_seconds": round(train_seconds, 1),
        "train_utterances": len(data.train),
        "train_audio_minutes": round(float(data.train.seconds.sum()) / 60, 2),
        "input_wait": input_wait.summary(),
        "parameters": count_params(model),
        "architecture": cfg.architecture,
        "num_replicas": strategy.num_replicas_in_sync,
        "global_batch_size": global_batch,
        "skipped": {reason: len(items) for reason, items in data.report.skipped.items()},
    }
    epochs_run = len(history.history.get("loss", []))
    if train_seconds > 0 and epochs_run:
        summary["train_utterances_per_second"] = round(
            epochs_run * steps_per_epoch * global_batch / train_seconds, 2)
    if len(data.test):
        lm = language_model(cfg, data)
        result = evaluate_split(model, data.test, vocabulary, cfg, lm=lm,
                                max_label_length=labels_len)
        print(format_table(result, f"test: {len(data.test)} utterances"))
        head = result["decoders"][cfg.decoder if cfg.decoder in result["decoders"] else "greedy"]
        summary.update(test_wer=head["wer"], test_cer=head["cer"], decoder=cfg.decoder,
                       test_decoders=result["decoders"], test_utterances=len(data.test))
        if chief:
            write_results(workdir, "test", data.test, result, cfg.decoder)
    if chief:
        model.save(os.path.join(workdir, "model.keras"))
        export_dir = os.path.join(workdir, "export")
        version = cfg.export_version or training.next_version(export_dir, cfg.export_name)
        check = data.test if len(data.test) else data.validation
        waveform, length = pad_batch(check.waveforms[:4])
        report = export_speech(model, export_dir, cfg.export_name, version,
                               speech_meta(cfg, vocabulary), overwrite=cfg.overwrite,
                               verify_inputs={"waveform": waveform, "waveform_length": length})
        summary["saved_model"] = report["path"]
        training.write_json(os.path.join(workdir, "summary.json"), summary)
    return summary


def print_next_steps(cfg, summary):
    if "test_wer" in summary:
        print(f"\nTest WER {100 * summary['test_wer']:.2f}%, CER {100 * summary['test_cer']:.2f}% "
              f"({summary['decoder']} decoding, {summary['test_utterances']} utterances) after "
              f"{training.epochs_text(summary)}")
    if "saved_model" in summary:
        training.print_next_steps(cfg.workdir, summary["saved_model"], cfg.export_name, [
            ("Evaluate", f"python -m apps.speech.evaluate --workdir {cfg.workdir}  "
                         "(every decoder, per-utterance CSV)"),
            ("Transcribe", f"python -m apps.speech.transcribe --export {summary['saved_model']} "
                           "<audio files or folders>"),
        ])


def main(argv=None):
    cfg = training.parse_config(Config, argv, presets=PRESETS, prog="python -m apps.speech.train")
    summary = run(cfg)
    print_next_steps(cfg, summary)
    return summary


if __name__ == "__main__":
    training.run_cli(main)
