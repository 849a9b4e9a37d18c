"""Speech app: tfattn Conformer + CTC vs the keras.io CTC ASR model, same data, features, budget.

Both models are trained by the app's own `apps.speech.train.run` on the same corpus,
splits, log-mel features, augmentation and wall-clock budget (one after the other, so
each has the machine to itself): AdamW, warm-up + cosine fitted to the budget, the best
checkpoint by validation CER (greedy), then the test split with every decoder and the
SavedModel export.

Corpus: the synthetic digits corpus of `data/make_speech_corpus.py` (connected digit
strings, TIDIGITS-style), generated if missing. The test split is voices never heard in
training: the whole espeak-ng accent en-029 (every variant) and the whole festival voice
ked_diphone, plus held-out variants (f4, m7, klatt3) of the training accents.

Reported per model: test WER and CER for greedy, beam and beam + word-LM decoding (decode
ms per utterance for each), the headline decoder (the best on *validation* CER), training
minutes, epochs, training utterances per second, parameters, and the real-time factor of
transcribing the test files through the reloaded SavedModel (`apps.speech.transcribe`,
batches of 16: processing seconds / audio seconds, file reading included).

Usage:
    python benchmarks/speech.py                      # 2 x 60 min + corpus + evaluation
    python benchmarks/speech.py --minutes 30         # a shorter budget per model
    python benchmarks/speech.py --quick --out /tmp/speech.json   # tiny models, ~2 min
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from apps.speech import train  # noqa: E402
from apps.speech.config import PRESETS, Config  # noqa: E402
from apps.speech.evaluate import evaluate_split  # noqa: E402
from apps.speech.transcribe import transcribe  # noqa: E402
from benchmarks.machine import load_average, machine_info  # noqa: E402

tf.get_logger().setLevel("ERROR")

TARGETS = {"cer": "<= 0.03 (Conformer, 60 min on 2 CPU cores)", "wer": "<= 0.10",
           "vs_baseline": "Conformer better on CER and WER"}
CORPUS = os.path.join("data", "speech", "digits_2400")
CORPUS_UTTERANCES = 2400
MODELS = {"conformer": "digits", "ctc_baseline": "digits_baseline"}


def ensure_corpus(path, utterances):
    if os.path.exists(os.path.join(path, "metadata.csv")):
        return
    print(f"generating {path} ({utterances} utterances)", flush=True)
    subprocess.run([sys.executable, os.path.join(ROOT, "data", "make_speech_corpus.py"),
                    "--out", path, "--utterances", str(utterances), "--seed", "0"], check=True)


def run_model(name, args, corpus, root):
    preset = dict(PRESETS["test"] if args.quick else PRESETS[MODELS[name]])
    preset.update(architecture=name, data=corpus, workdir=os.path.join(root, name), verbose=0,
                  time_budget_minutes=args.minutes, epochs=args.epochs)
    if args.quick:
        preset.update(epochs=2, time_budget_minutes=None)
        if name == "ctc_baseline":
            for key in ("num_heads", "intermediate_dim", "conv_kernel_size"):
                preset.pop(key, None)
            preset.update(hidden_dim=32, num_layers=1, rnn_units=16, conv_filters=4)
    cfg = Config(**preset)
    print(f"{name}: training ({'quick' if args.quick else f'{args.minutes} min budget'})",
          flush=True)
    summary = train.run(cfg)

    # Headline decoder: the best on validation CER (ties: the simplest), never the test split.
    model = keras.saving.load_model(os.path.join(cfg.workdir, "model.keras"), compile=False)
    data = train.load_data(cfg, model)
    lm = train.language_model(cfg, data)
    val = evaluate_split(model, data.validation, data.vocabulary, cfg, lm=lm,
                         max_label_length=train.max_label_length(data))
    order = ["greedy", "beam", "beam_lm"]
    chosen = min(order, key=lambda d: (round(val["decoders"][d]["cer"], 6), order.index(d)))

    start = time.perf_counter()
    results, skipped, seconds = transcribe(summary["saved_model"], list(data.test.paths))
    elapsed = time.perf_counter() - start
    test = summary["test_decoders"]
    return {
        "architecture": name,
        "parameters": summary["parameters"],
        "train_minutes": round(summary["train_seconds"] / 60, 2),
        "epochs_run": summary["epochs_run"],
        "stopped_by_time_budget": summary["stopped_by_time_budget"],
        "train_utterances": summary["train_utterances"],
        "train_audio_minutes": summary["train_audio_minutes"],
        "train_utterances_per_second": summary.get("train_utterances_per_second"),
        "test_utterances": summary["test_utterances"],
        "validation": val["decoders"],
        "test": test,
        "headline_decoder": chosen,
        "cer": test[chosen]["cer"],
        "wer": test[chosen]["wer"],
        "real_time_factor": elapsed / seconds,
        "transcribed_files": len(results),
        "skipped_files": len(skipped),
        "input_wait": summary.get("input_wait"),
    }


def table(info):
    rows = ["| model | params | train min | epochs | utt/s | decoder | test CER % | test WER % | "
            "greedy CER/WER % | beam CER/WER % | beam+LM CER/WER % | RTF |",
            "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in info["models"].items():
        t = r["test"]
        pair = {d: f"{100 * t[d]['cer']:.2f} / {100 * t[d]['wer']:.2f}" for d in t}
        rows.append(
            f"| {name} | {r['parameters']:,} | {r['train_minutes']:.1f} | {r['epochs_run']} | "
            f"{r['train_utterances_per_second'] or float('nan'):.1f} | {r['headline_decoder']} | "
            f"{100 * r['cer']:.2f} | {100 * r['wer']:.2f} | {pair.get('greedy', '-')} | "
            f"{pair.get('beam', '-')} | {pair.get('beam_lm', '-')} | {r['real_time_factor']:.3f} |")
    decode = ["| model | " + " | ".join(f"{d} ms/utt" for d in ("greedy", "beam", "beam_lm")) + " |",
              "|---|---:|---:|---:|"]
    for name, r in info["models"].items():
        decode.append(f"| {name} | " + " | ".join(
            f"{r['test'][d]['ms_per_utterance']:.1f}" for d in ("greedy", "beam", "beam_lm")) + " |")
    return "\n".join(rows) + "\n\n" + "\n".join(decode)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny models on a few utterances of data/speech/digits: the code path")
    parser.add_argument("--minutes", type=float, default=60.0, help="training budget per model")
    parser.add_argument("--epochs", type=int, default=400,
                        help="schedule length cap (the budget normally ends training first)")
    parser.add_argument("--corpus", help=f"corpus folder (default {CORPUS}, generated if missing; "
                        "with --quick data/speech/digits)")
    parser.add_argument("--models", default="conformer,ctc_baseline",
                        help="comma-separated, of conformer, ctc_baseline")
    parser.add_argument("--out", help="results JSON (default benchmarks/results/speech.json; "
                        "with --quick a file in the temp dir)")
    parser.add_argument("--workdir", help="where the runs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    if any(m not in MODELS for m in models):
        parser.error(f"--models: choose from {', '.join(MODELS)}")
    corpus = args.corpus or (os.path.join("data", "speech", "digits") if args.quick else CORPUS)
    if not args.quick and args.corpus is None:
        ensure_corpus(corpus, CORPUS_UTTERANCES)
    if not os.path.exists(os.path.join(corpus, "metadata.csv")):
        parser.error(f"--corpus: {corpus} has no metadata.csv (make data-speech builds the default)")
    out = args.out or (os.path.join(tempfile.gettempdir(), "speech_quick.json") if args.quick
                       else os.path.join("benchmarks", "results", "speech.json"))
    info = {
        "benchmark": "speech", "quick": args.quick,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "targets": TARGETS, "corpus": corpus, "budget_minutes": None if args.quick else args.minutes,
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or tmp
        for name in models:
            start, load = time.perf_counter(), load_average()
            result = run_model(name, args, corpus, root)
            result.update(seconds=round(time.perf_counter() - start, 1),
                          load_average_start=load, load_average_end=load_average())
            info["models"][name] = result
            if "conformer" in info["models"]:
                c = info["models"]["conformer"]
                b = info["models"].get("ctc_baseline", {})
                info["headline"] = {
                    "cer": c["cer"], "wer": c["wer"],
                    "baseline_cer": b.get("cer", float("nan")),
                    "baseline_wer": b.get("wer", float("nan")),
                    "train_minutes": c["train_minutes"],
                    "real_time_factor": c["real_time_factor"],
                }
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            with open(out, "w") as f:
                json.dump(info, f, indent=2, default=float)
    print(table(info))
    print("\nheadline:", json.dumps(info.get("headline", {}), indent=1))
    print(f"wrote {out}")
    return info


if __name__ == "__main__":
    main()
