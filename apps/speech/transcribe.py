"""Transcribe audio files and folders with an exported speech model (the SavedModel).

    python -m apps.speech.transcribe --export runs/speech/export/speech/1 clip.wav more/ --out out.csv

Reads every file librosa/soundfile can (WAV, FLAC, OGG, MP3 with ffmpeg, ...; headerless
16-bit PCM with `--raw_rate`), mixes to mono, resamples to the model's rate, and runs the
SavedModel's `serving_default` in batches of similar length. Folders are searched
recursively for audio extensions. Unreadable, empty or silent files are skipped with a
count and their paths. Prints `path<TAB>transcript` lines; `--out` also writes a CSV.
`--decoder beam` (or `beam_lm` with `--lm_text`) decodes the returned log-probabilities
with a CTC beam search instead of the graph's greedy decoding.
"""

import argparse
import csv
import os
import sys
import time

from apps.speech.audio import AudioError, read_audio
from apps.speech.export import pad_batch, read_meta
from tfattn import training

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".m4a", ".aiff", ".aif", ".au",
                    ".raw", ".pcm", ".opus")


def find_audio(paths):
    """Files named directly (any extension) plus audio files under named folders, sorted."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            for root, _, files in os.walk(path):
                found += [os.path.join(root, f) for f in sorted(files)
                          if f.lower().endswith(AUDIO_EXTENSIONS)]
        elif os.path.exists(path):
            found.append(path)
        else:
            raise ValueError(f"{path}: no such file or folder")
    return sorted(found)


def transcribe(saved_model, paths, batch_size=16, raw_rate=None, decoder="greedy",
               beam_width=16, lm=None, lm_weight=0.5):
    """[(path, transcript)] for readable files, [(path, reason)] skipped, audio seconds."""
    import tensorflow as tf

    from apps.speech.decode import decode
    from apps.speech.text import Vocabulary

    meta = read_meta(saved_model)
    rate = meta["sample_rate"]
    serve = tf.saved_model.load(saved_model).signatures["serving_default"]
    vocabulary = Vocabulary(digits=meta["digits"])
    if vocabulary.chars != meta["characters"]:
        raise ValueError(f"{saved_model}: its characters {meta['characters']!r} are not this "
                         f"version's vocabulary {vocabulary.chars!r}; re-export it")
    clips, skipped = [], []
    for path in paths:
        try:
            clips.append((path, read_audio(path, rate, raw_rate=raw_rate)[0]))
        except AudioError as err:
            skipped.append((path, f"{err.reason}: {err.detail}" if err.detail else err.reason))
    clips.sort(key=lambda c: len(c[1]))  # similar lengths together: less padding
    results = []
    for start in range(0, len(clips), batch_size):
        chunk = clips[start:start + batch_size]
        waveform, length = pad_batch([c[1] for c in chunk])
        out = serve(waveform=tf.constant(waveform), waveform_length=tf.constant(length))
        if decoder == "greedy":
            texts = [t.decode() for t in out["transcripts"].numpy()]
        else:
            texts = decode(out["log_probs"].numpy(), vocabulary, decoder,
                           lengths=out["output_lengths"].numpy(), beam_width=beam_width, lm=lm,
                           lm_weight=lm_weight)
            texts = [" ".join(t.split()) for t in texts]
        results += [(c[0], t) for c, t in zip(chunk, texts)]
    order = {p: i for i, p in enumerate(paths)}
    results.sort(key=lambda r: order[r[0]])
    seconds = sum(len(c[1]) for c in clips) / rate
    return results, skipped, seconds


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m apps.speech.transcribe",
        description="Transcribe audio files/folders with an exported speech SavedModel.")
    parser.add_argument("inputs", nargs="+", help="audio files and/or folders")
    parser.add_argument("--export", required=True,
                        help="SavedModel version folder, e.g. runs/speech/export/speech/1")
    parser.add_argument("--out", help="also write path,transcript rows to this CSV")
    parser.add_argument("--batch_size", type=int, default=16, help="clips per SavedModel call")
    parser.add_argument("--raw_rate", type=int, help="sample rate of headerless .raw/.pcm files")
    parser.add_argument("--decoder", default="greedy", choices=("greedy", "beam", "beam_lm"),
                        help="greedy: the graph's; beam/beam_lm: CTC beam search here")
    parser.add_argument("--beam_width", type=int, default=16, help="CTC beam width")
    parser.add_argument("--lm_text", help="beam_lm: text file of sentences for the word n-gram LM")
    parser.add_argument("--lm_weight", type=float, default=0.5, help="beam_lm: LM weight")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.export):
        parser.error(f"--export: {args.export} is not a SavedModel folder")
    if args.batch_size < 1:
        parser.error("--batch_size must be >= 1")
    lm = None
    if args.decoder == "beam_lm":
        if not args.lm_text:
            parser.error("--decoder beam_lm needs --lm_text (sentences, one per line)")
        from apps.speech.decode import WordLM
        from apps.speech.text import normalize_transcript

        meta = read_meta(args.export)
        with open(args.lm_text, encoding="utf-8") as f:
            lines = [normalize_transcript(line, digits=meta["digits"]) for line in f]
        lm = WordLM([line for line in lines if line])
    try:
        paths = find_audio(args.inputs)
    except ValueError as err:
        parser.error(str(err))
    if not paths:
        parser.error(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) in {args.inputs}")
    start = time.perf_counter()
    results, skipped, seconds = transcribe(args.export, paths, args.batch_size, args.raw_rate,
                                           args.decoder, args.beam_width, lm, args.lm_weight)
    elapsed = time.perf_counter() - start
    for path, text in results:
        print(f"{path}\t{text}")
    if skipped:
        print(f"skipped {len(skipped)} file(s):", file=sys.stderr)
        for path, reason in skipped[:20]:
            print(f"  {path}: {reason}", file=sys.stderr)
        if len(skipped) > 20:
            print(f"  ... and {len(skipped) - 20} more", file=sys.stderr)
    if args.out:
        with open(args.out, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "transcript"])
            writer.writerows(results)
    print(f"{len(results)} transcribed ({seconds:.1f} s of audio in {elapsed:.1f} s, "
          f"real-time factor {elapsed / max(seconds, 1e-9):.3f}), {len(skipped)} skipped",
          file=sys.stderr)
    return results, skipped


if __name__ == "__main__":
    training.run_cli(main)
