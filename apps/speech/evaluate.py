"""Evaluate a trained speech model: WER/CER on a split with every decoder, per-utterance results.

    python -m apps.speech.evaluate --workdir runs/speech [--split test] [--decoders greedy,beam,beam_lm]

Loads `<workdir>/model.keras` (or `--model`), the run's config.json (data, vocabulary,
buckets) and the same split the run used; prints one row per decoder (WER, CER, decode
milliseconds per utterance) and writes `<workdir>/eval_<split>.json` and
`<workdir>/eval_<split>.csv` (id, path, reference, one hypothesis per decoder, CER and WER
of the headline decoder per utterance).
"""

import argparse
import csv
import os
import time

import numpy as np
import tensorflow as tf

from apps.speech.decode import DECODERS, WordLM, decode, error_rates
from apps.speech.model import PADDED_LOGIT
from apps.speech.pipeline import make_pipeline
from tfattn import training


def to_model_inputs(waveform, waveform_length):
    return {"waveform": waveform, "waveform_length": waveform_length}


def logits_function(model):
    """A tf.function running `model` in inference mode; one trace per padded shape."""
    @tf.function(reduce_retracing=True)
    def run(waveform, waveform_length):
        return model(to_model_inputs(waveform, waveform_length), training=False)
    return run


def split_logits(model, split, batch_size, bucket_seconds, max_label_length=None, run=None):
    """Logits of every utterance of `split`, in the split's order: a list of `(T'_i, V)`
    arrays cut to each utterance's encoder length. Runs locally (no distribution), so
    it is safe on any worker under multi-worker training."""
    run = run or logits_function(model)
    ds = make_pipeline(split, batch_size, training=False, bucket_seconds=bucket_seconds,
                       max_label_length=max_label_length, with_index=True)
    out = [None] * len(split)
    for waveform, length, _, _, index in ds:
        logits = run(waveform, length).numpy()
        frames = np.asarray(model.output_lengths(length))
        for row, i in enumerate(index.numpy()):
            out[int(i)] = logits[row, : frames[row]]
    return out


def decode_logits(logits_list, vocabulary, method, lm=None, beam_width=16, lm_weight=0.5,
                  word_bonus=0.0, batch_size=64):
    """Transcripts of per-utterance logits; batches of `batch_size`, padded with blanks."""
    texts = []
    for start in range(0, len(logits_list), batch_size):
        chunk = logits_list[start:start + batch_size]
        frames = max(len(x) for x in chunk)
        v = chunk[0].shape[-1]
        batch = np.full((len(chunk), max(frames, 1), v), PADDED_LOGIT, np.float32)
        batch[:, :, 0] = 0.0
        for i, x in enumerate(chunk):
            batch[i, : len(x)] = x
        lengths = np.array([len(x) for x in chunk], np.int32)
        texts += decode(batch, vocabulary, method, lengths=lengths, beam_width=beam_width, lm=lm,
                        lm_weight=lm_weight, word_bonus=word_bonus)
    return [" ".join(t.split()) for t in texts]


def language_model(cfg, data):
    """The beam_lm word n-gram model: the training transcripts, their words as the lexicon."""
    return WordLM(data.train.texts, order=cfg.lm_order)


def evaluate_split(model, split, vocabulary, cfg, lm=None, decoders=DECODERS, max_label_length=None):
    """WER/CER of `split` for each decoder: {"decoders": {name: {wer, cer, ms_per_utterance}},
    "hypotheses": {name: [text]}, "per_utterance": {name: {"wer": [...], "cer": [...]}}}."""
    logits = split_logits(model, split, cfg.batch_size, cfg.bucket_seconds, max_label_length)
    results, hypotheses, per_utterance = {}, {}, {}
    for name in decoders:
        if name == "beam_lm" and lm is None:
            continue
        start = time.perf_counter()
        hyps = decode_logits(logits, vocabulary, name, lm=lm, beam_width=cfg.beam_width,
                             lm_weight=cfg.lm_weight, word_bonus=cfg.word_bonus)
        ms = 1000 * (time.perf_counter() - start) / len(split)
        rates = error_rates(split.texts, hyps)
        results[name] = {"wer": rates["wer"], "cer": rates["cer"], "ms_per_utterance": ms}
        hypotheses[name] = hyps
        per_utterance[name] = {"wer": rates["per_utterance_wer"], "cer": rates["per_utterance_cer"]}
    return {"decoders": results, "hypotheses": hypotheses, "per_utterance": per_utterance}


def write_results(workdir, split_name, split, result, headline):
    """eval_<split>.json (rates per decoder) and eval_<split>.csv (per utterance)."""
    names = list(result["hypotheses"])
    path_csv = os.path.join(workdir, f"eval_{split_name}.csv")
    with open(path_csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "path", "reference", *[f"hyp_{n}" for n in names],
                         f"cer_{headline}", f"wer_{headline}"])
        per = result["per_utterance"][headline]
        for i in range(len(split)):
            writer.writerow([split.ids[i], split.paths[i], split.texts[i],
                             *[result["hypotheses"][n][i] for n in names],
                             f"{per['cer'][i]:.4f}", f"{per['wer'][i]:.4f}"])
    path_json = os.path.join(workdir, f"eval_{split_name}.json")
    training.write_json(path_json, {"split": split_name, "utterances": len(split),
                                    "headline_decoder": headline, "decoders": result["decoders"]})
    return path_json, path_csv


def format_table(result, title):
    lines = [title, f"{'decoder':<10}{'WER %':>8}{'CER %':>8}{'ms/utt':>9}"]
    for name, r in result["decoders"].items():
        lines.append(f"{name:<10}{100 * r['wer']:>8.2f}{100 * r['cer']:>8.2f}"
                     f"{r['ms_per_utterance']:>9.1f}")
    return "\n".join(lines)


def main(argv=None):
    from apps.speech.export import load_run
    from apps.speech.train import load_data

    parser = argparse.ArgumentParser(
        prog="python -m apps.speech.evaluate",
        description="WER/CER of a trained speech model on a split, with every decoder.")
    parser.add_argument("--workdir", required=True, help="folder written by apps.speech.train")
    parser.add_argument("--model", help="a .keras file (default: <workdir>/model.keras)")
    parser.add_argument("--split", default="test", choices=("train", "validation", "test"))
    parser.add_argument("--data", help="evaluate on this data source instead of the run's")
    parser.add_argument("--decoders", default=",".join(DECODERS),
                        help=f"comma-separated, of {', '.join(DECODERS)}")
    args = parser.parse_args(argv)
    decoders = [d for d in args.decoders.split(",") if d]
    bad = [d for d in decoders if d not in DECODERS]
    if bad:
        parser.error(f"--decoders: unknown {bad}; choose from {', '.join(DECODERS)}")
    cfg, model = load_run(parser, args.workdir, args.model)
    if args.data:
        cfg.data = args.data
    data = load_data(cfg, model)
    split = data.splits[args.split]
    if not len(split):
        parser.error(f"--split {args.split}: no utterances in {cfg.data}")
    lm = language_model(cfg, data) if len(data.train) else None
    result = evaluate_split(model, split, data.vocabulary, cfg, lm=lm, decoders=decoders)
    headline = cfg.decoder if cfg.decoder in result["decoders"] else next(iter(result["decoders"]))
    print(format_table(result, f"{args.split}: {len(split)} utterances of {cfg.data}"))
    paths = write_results(args.workdir, args.split, split, result, headline)
    print(f"wrote {paths[0]} and {paths[1]}")
    return result


if __name__ == "__main__":
    training.run_cli(main)
