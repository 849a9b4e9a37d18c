"""Builds a synthetic LJSpeech-layout speech corpus offline with espeak-ng and festival.

    python data/make_speech_corpus.py --out data/speech/digits --utterances 600 --seed 0

(`make data-speech` runs this: 15-25 s on this project's 2 shared CPU cores, 0.28 h of
audio: train 450 / validation 60 / test 90 utterances from 122 / 13 / 44 speakers.)

Writes, under `--out`:
    wavs/<id>.wav      16 kHz mono int16 PCM
    metadata.csv       LJSpeech's `id|text|normalized` (no header); `text` is the written
                       form ("3 0 7"), `normalized` what was spoken ("three oh seven")
    splits.json        {"train": [ids], "validation": [...], "test": [...],
                        "speakers": {split: [speaker ids]}}
    utterances.csv     per utterance: split, speaker, speed (x normal rate), pitch (semitones
                       for festival; espeak-ng gets -p 50 + 5 x pitch), seconds, effects
    README.txt         what this is and the exact command that made it

Speakers are voice combinations: espeak-ng accent + variant (`espeak:en-029+f2`) or a
festival voice (`festival:kal_diphone`). Splits are speaker-disjoint, and the test split
holds out whole accents (`--test_accents`), whole variants (`--test_variants`) and whole
festival voices (`--test_festival_voices`): none of them is heard in training. Validation
holds out a random share of the remaining accent+variant combinations (accents and
variants heard in training, combinations not). Speed and pitch vary per utterance.

Optional effects, each per utterance with a probability: background noise (white, pink or
brown at a random SNR), gain (low, or high enough to clip), reverberation (a synthetic
exponentially decaying room impulse response, convolved with scipy) and leading/trailing
silence. Same arguments and seed → byte-identical files (every utterance has its own
random generator seeded by (seed, index), so the process pool's order does not matter).

Needs the Debian packages espeak-ng, festival, festvox-kallpc16k, festvox-kdlpc16k,
festvox-us-slt-hts (`make data-speech` installs them when run as root with apt). The
voices are synthetic: see data/SOURCES.md for what that means and for their licences.
"""

import argparse
import concurrent.futures
import csv
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile as sf
from scipy import signal

SAMPLE_RATE = 16000
ESPEAK_ACCENTS = (
    "en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd",
    "en-029", "en-us-nyc",
)
# espeak-ng variants (files in espeak-ng-data/voices/!v); "" is the accent's own voice.
ESPEAK_VARIANTS = (
    "", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "klatt4", "croak", "whisperf", "iven", "john", "linda",
)
# festival voice -> (Debian package, kind); kind picks how speed and pitch are set.
FESTIVAL_VOICES = {
    "kal_diphone": ("festvox-kallpc16k", "diphone"),
    "ked_diphone": ("festvox-kdlpc16k", "diphone"),
    "cmu_us_slt_arctic_hts": ("festvox-us-slt-hts", "hts"),
}
FESTIVAL_VOICE_ROOT = "/usr/share/festival/voices"
VOICE_CREDITS = """\
Voices (see /usr/share/doc/<package>/copyright):
  espeak-ng (GPL-3+): formant/Klatt synthesis rules, Jonathan Duddington, Reece H. Dunn
    and contributors.
  festival (CSTR, University of Edinburgh) with
    kal_diphone (festvox-kallpc16k): Copyright (c) 1998 Alan W Black and Kevin Lenzo;
    ked_diphone (festvox-kdlpc16k): Copyright (c) 1997 Centre for Speech Technology
      Research, University of Edinburgh;
    cmu_us_slt_arctic_hts (festvox-us-slt-hts): Copyright 2003 Carnegie Mellon University
      (CMU ARCTIC "slt" speaker), HTS files (c) Nagoya and Tokyo Institutes of Technology.
"""
DEBIAN_PACKAGES = ("espeak-ng", "festival") + tuple(p for p, _ in FESTIVAL_VOICES.values())

# TIDIGITS' eleven words; `spoken=written` gives the written form for the text column.
DIGITS_GRAMMAR = """\
# Connected digit strings of 1-7 digits, as TIDIGITS ("oh" and "zero" both mean 0).
utterance: $digit{1,7}
digit: oh=0 | zero=0 | one=1 | two=2 | three=3 | four=4 | five=5 | six=6 | seven=7 | eight=8 | nine=9
"""


# --------------------------------------------------------------------------- grammar


class Grammar:
    """A tiny generative grammar: the first rule is the start symbol.

    Format, one rule per line (`#` starts a comment):
        name: alternative | alternative | ...
    An alternative is a sequence of tokens: a word (`seven`), a word with its written form
    (`seven=7`), or a rule reference `$name`, optionally repeated `$name{min,max}`.
    Alternatives are picked uniformly, repeat counts uniformly in [min, max].
    """

    _TOKEN = re.compile(r"^\$(\w+)(?:\{(\d+),(\d+)\})?$")

    def __init__(self, text, where="grammar"):
        self.rules = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if ":" not in line:
                raise ValueError(f"{where} line {number}: expected `name: a | b`, got {line!r}")
            name, body = (s.strip() for s in line.split(":", 1))
            alternatives = [a.split() for a in body.split("|")]
            if not name.isidentifier() or any(not a for a in alternatives):
                raise ValueError(f"{where} line {number}: bad rule {line!r}")
            self.rules[name] = alternatives
        if not self.rules:
            raise ValueError(f"{where}: no rules")
        self.start = next(iter(self.rules))
        for name, alternatives in self.rules.items():
            for token in (t for a in alternatives for t in a if t.startswith("$")):
                match = self._TOKEN.match(token)
                if not match or match.group(1) not in self.rules:
                    raise ValueError(f"{where}: rule {name!r} refers to unknown {token!r}")

    def sample(self, rng, name=None):
        """Returns (spoken words, written words) lists."""
        spoken, written = [], []
        for token in self.rules[name or self.start][rng.integers(len(self.rules[name or self.start]))]:
            match = self._TOKEN.match(token)
            if match:
                low, high = int(match.group(2) or 1), int(match.group(3) or 1)
                for _ in range(rng.integers(low, high + 1)):
                    s, w = self.sample(rng, match.group(1))
                    spoken += s
                    written += w
            else:
                say, _, write = token.partition("=")
                spoken.append(say)
                written.append(write or say)
        return spoken, written


class PhraseList:
    """Phrases picked uniformly from a file, one per line (`spoken|written` or just text)."""

    def __init__(self, path):
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
        if not lines:
            raise ValueError(f"{path}: no phrases (one per line expected)")
        self.phrases = [(line.split("|") + [line])[:2] for line in lines]

    def sample(self, rng):
        spoken, written = self.phrases[rng.integers(len(self.phrases))]
        return spoken.split(), written.split()


# --------------------------------------------------------------------------- speakers


def _espeak_speaker(accent, variant):
    return f"espeak:{accent}" + (f"+{variant}" if variant else "")


def assign_speakers(args, rng):
    """Speaker ids per split, held out as the module docstring says."""
    for accent in args.test_accents + args.accents:
        if accent not in ESPEAK_ACCENTS:
            raise ValueError(f"unknown espeak-ng accent {accent!r}; known: {ESPEAK_ACCENTS}")
    for voice in args.festival_voices + args.test_festival_voices:
        if voice not in FESTIVAL_VOICES:
            raise ValueError(f"unknown festival voice {voice!r}; known: {list(FESTIVAL_VOICES)}")
    splits = {"train": [], "validation": [], "test": []}
    rest = []
    for accent in args.accents:
        for variant in args.variants:
            speaker = _espeak_speaker(accent, variant)
            if accent in args.test_accents or variant in args.test_variants:
                splits["test"].append(speaker)
            else:
                rest.append(speaker)
    order = rng.permutation(len(rest))
    n_val = max(1, round(args.validation_combinations * len(rest))) if len(rest) > 1 else 0
    splits["validation"] = sorted(rest[i] for i in order[:n_val])
    splits["train"] = sorted(rest[i] for i in order[n_val:])
    for voice in args.festival_voices:
        split = "test" if voice in args.test_festival_voices else "train"
        splits[split].append(f"festival:{voice}")
    splits["test"].sort()
    return splits


def plan_utterances(args):
    """One dict per utterance (text, speaker, speed, pitch, effects), all drawn up front."""
    rng = np.random.default_rng([args.seed, 0])
    if args.phrases:
        source = PhraseList(args.phrases)
    else:
        text = DIGITS_GRAMMAR
        if args.grammar:
            with open(args.grammar, encoding="utf-8") as f:
                text = f.read()
        source = Grammar(text, where=args.grammar or "digits grammar")
    speakers = assign_speakers(args, rng)
    fractions = {"validation": args.validation_fraction, "test": args.test_fraction}
    counts = {s: round(f * args.utterances) for s, f in fractions.items()}
    counts["train"] = args.utterances - counts["validation"] - counts["test"]
    plans = []
    for split in ("train", "validation", "test"):
        pool = speakers[split]
        if counts[split] and not pool:
            raise ValueError(f"no speakers left for the {split} split; change the hold-outs")
        pool = [pool[i] for i in rng.permutation(len(pool))]
        festival = [s for s in pool if s.startswith("festival:")]
        espeak = [s for s in pool if s.startswith("espeak:")]
        if festival and espeak:
            n_festival = round(args.festival_share * counts[split])
            if args.festival_share > 0 and counts[split] >= 2:
                n_festival = min(max(n_festival, 1), counts[split] - 1)  # both engines
        else:
            n_festival = counts[split] if festival else 0
        # Round-robin over the shuffled speakers: every speaker gets an even share.
        chosen = [festival[i % len(festival)] for i in range(n_festival)]
        chosen += [espeak[i % len(espeak)] for i in range(counts[split] - n_festival)]
        for i in rng.permutation(len(chosen)):
            plans.append({"split": split, "speaker": chosen[i]})
    for index, plan in enumerate(plans):
        spoken, written = source.sample(rng)
        plan["id"] = f"{args.prefix}{index:06d}"
        plan["normalized"] = " ".join(spoken)
        plan["text"] = " ".join(written)
        plan["speed"] = float(rng.uniform(*args.speed))  # x normal rate
        plan["pitch"] = float(rng.uniform(*args.pitch))  # semitones
        plan["effects_seed"] = [args.seed, index + 1]
    return plans, speakers


# --------------------------------------------------------------------------- synthesis


def _read(path):
    audio, rate = sf.read(path, dtype="float64", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        g = math.gcd(rate, SAMPLE_RATE)
        audio = signal.resample_poly(audio, SAMPLE_RATE // g, rate // g)
    return audio


def synth_espeak(plan, tmp):
    accent_variant = plan["speaker"].split(":", 1)[1]
    path = os.path.join(tmp, plan["id"] + ".wav")
    # espeak-ng: -s words per minute (175 normal), -p pitch 0..99 (50 normal).
    wpm = round(175 * plan["speed"])
    pitch = int(np.clip(round(50 + 5 * plan["pitch"]), 0, 99))
    subprocess.run(
        ["espeak-ng", "-v", accent_variant, "-s", str(wpm), "-p", str(pitch), "-w", path,
         plan["normalized"]], check=True, capture_output=True,
    )
    return _read(path)


def synth_festival(plans, tmp):
    """Synthesises many utterances in one festival process (its start-up is ~0.4 s)."""
    lines = []
    for plan in plans:
        voice = plan["speaker"].split(":", 1)[1]
        kind = FESTIVAL_VOICES[voice][1]
        lines.append(f"(voice_{voice})")
        if kind == "hts":  # hts_engine: -r speech rate, -fm pitch shift in half-tones
            lines.append(
                f'(set! hts_engine_params (append {voice}::hts_engine_params '
                f'(list (list "-r" {plan["speed"]:.4f}) (list "-fm" {plan["pitch"]:.4f}))))'
            )
        else:  # diphone voices: duration stretch and the intonation model's target mean F0
            f0 = 105 * 2 ** (plan["pitch"] / 12)
            lines.append(f"(Parameter.set 'Duration_Stretch {1 / plan['speed']:.4f})")
            lines.append(
                f"(set! int_lr_params '((target_f0_mean {f0:.2f}) (target_f0_std 14) "
                "(model_f0_mean 170) (model_f0_std 34)))"
            )
        out = os.path.join(tmp, plan["id"] + ".wav")
        text = plan["normalized"].replace("\\", " ").replace('"', " ")
        lines.append(f'(set! u (utt.synth (Utterance Text "{text}")))')
        lines.append(f'(utt.save.wave u "{out}" \'riff)')
    script = os.path.join(tmp, "batch.scm")
    with open(script, "w") as f:
        f.write("\n".join(lines) + "\n")
    subprocess.run(["festival", "-b", script], check=True, capture_output=True)
    return [_read(os.path.join(tmp, p["id"] + ".wav")) for p in plans]


def room_impulse_response(rng, rt60, sample_rate=SAMPLE_RATE):
    """Direct path + exponentially decaying noise tail (60 dB down after `rt60` seconds)."""
    n = max(2, int(rt60 * sample_rate))
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * np.exp(-6.908 * t / rt60)
    delay = int(rng.uniform(0.002, 0.01) * sample_rate)  # first reflections after 2-10 ms
    rir = np.zeros(n + delay)
    rir[0] = 1.0
    rir[delay:] += 0.4 * tail
    return rir / np.sqrt(np.sum(rir**2))


def _noise(rng, n):
    kind = rng.choice(["white", "pink", "brown"])
    white = rng.standard_normal(n)
    if kind == "white":
        return white, kind
    spectrum = np.fft.rfft(white)
    f = np.maximum(np.arange(len(spectrum)), 1)
    spectrum /= np.sqrt(f) if kind == "pink" else f
    return np.fft.irfft(spectrum, n), kind


def apply_effects(audio, plan, args):
    """Peak-normalises, then silence, reverb, noise and gain as drawn from the plan's seed."""
    rng = np.random.default_rng(plan["effects_seed"])
    effects = []
    audio = audio / max(np.max(np.abs(audio)), 1e-9) * 0.5
    lead, trail = (int(rng.uniform(*args.silence) * SAMPLE_RATE) for _ in range(2))
    audio = np.concatenate([np.zeros(lead), audio, np.zeros(trail)])
    if rng.random() < args.reverb_prob:
        rt60 = rng.uniform(*args.rt60)
        audio = signal.fftconvolve(audio, room_impulse_response(rng, rt60))[: len(audio)]
        audio = audio / max(np.max(np.abs(audio)), 1e-9) * 0.5
        effects.append(f"reverb rt60={rt60:.2f}s")
    if rng.random() < args.noise_prob:
        snr = rng.uniform(*args.snr)
        noise, kind = _noise(rng, len(audio))
        power = np.mean(audio**2)
        noise *= np.sqrt(power / (np.mean(noise**2) * 10 ** (snr / 10)))
        audio = audio + noise
        effects.append(f"{kind} noise snr={snr:.1f}dB")
    if rng.random() < args.gain_prob:
        gain = rng.uniform(*args.gain_db)
        audio = audio * 10 ** (gain / 20)
        clipped = np.mean(np.abs(audio) > 1)
        effects.append(f"gain {gain:+.1f}dB" + (f" clipped {clipped:.1%}" if clipped else ""))
    audio = np.clip(audio, -1.0, 1.0)
    return np.round(audio * 32767).astype(np.int16), effects


def synthesise_chunk(plans, out_dir, args):
    """Worker: synthesises, post-processes and writes a chunk; returns (id, seconds, effects)."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if plans[0]["speaker"].startswith("festival:"):
            raw = synth_festival(plans, tmp)
        else:
            raw = [synth_espeak(p, tmp) for p in plans]
        for plan, audio in zip(plans, raw):
            pcm, effects = apply_effects(audio, plan, args)
            sf.write(os.path.join(out_dir, "wavs", plan["id"] + ".wav"), pcm, SAMPLE_RATE,
                     subtype="PCM_16")
            results.append((plan["id"], len(pcm) / SAMPLE_RATE, effects))
    return results


# --------------------------------------------------------------------------- main


def _range(text):
    low, high = (float(v) for v in text.split(","))
    if low > high:
        raise argparse.ArgumentTypeError(f"expected min,max with min <= max, got {text}")
    return (low, high)


def _names(text):
    return [] if text.strip() in ("", "none") else [t.strip() for t in text.split(",")]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="corpus folder (created)")
    p.add_argument("--utterances", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="worker processes")
    p.add_argument("--grammar", help="grammar file (see Grammar); default: TIDIGITS-style digits")
    p.add_argument("--phrases", help="file of phrases, one per line, instead of a grammar")
    p.add_argument("--prefix", default="SD", help="utterance id prefix")
    p.add_argument("--accents", type=_names, default=list(ESPEAK_ACCENTS))
    p.add_argument("--variants", type=_names, default=list(ESPEAK_VARIANTS),
                   help="comma-separated espeak-ng variants; an empty item is the plain voice")
    p.add_argument("--festival_voices", type=_names, default=list(FESTIVAL_VOICES))
    p.add_argument("--test_accents", type=_names, default=["en-029"])
    p.add_argument("--test_variants", type=_names, default=["f4", "m7", "klatt3"])
    p.add_argument("--test_festival_voices", type=_names, default=["ked_diphone"])
    p.add_argument("--validation_combinations", type=float, default=0.1,
                   help="share of the remaining accent+variant combinations held out")
    p.add_argument("--validation_fraction", type=float, default=0.1)
    p.add_argument("--test_fraction", type=float, default=0.15)
    p.add_argument("--festival_share", type=float, default=0.25,
                   help="share of each split's utterances spoken by festival voices")
    p.add_argument("--speed", type=_range, default=(0.8, 1.25), help="min,max x normal rate")
    p.add_argument("--pitch", type=_range, default=(-3.0, 3.0), help="min,max semitones")
    p.add_argument("--silence", type=_range, default=(0.0, 0.2), help="lead/trail s, min,max")
    p.add_argument("--noise_prob", type=float, default=0.3)
    p.add_argument("--snr", type=_range, default=(10.0, 40.0), help="min,max dB")
    p.add_argument("--gain_prob", type=float, default=0.2)
    p.add_argument("--gain_db", type=_range, default=(-24.0, 12.0),
                   help="min,max dB on a 0.5 peak; above +6 dB clips")
    p.add_argument("--reverb_prob", type=float, default=0.2)
    p.add_argument("--rt60", type=_range, default=(0.15, 0.6), help="min,max seconds")
    p.add_argument("--clean", action="store_true", help="no noise, gain or reverberation")
    p.add_argument("--chunk", type=int, default=25, help="utterances per worker task")
    args = p.parse_args(argv)
    if args.clean:
        args.noise_prob = args.gain_prob = args.reverb_prob = 0.0
    return args


def check_tools(festival_needed):
    """SystemExit naming what is missing; `festival_needed`: festival voice names in use."""
    needed = ["espeak-ng"] + (["festival"] if festival_needed else [])
    missing = [t for t in needed if shutil.which(t) is None]
    missing += [f"{FESTIVAL_VOICES[v][0]} (voice {v})" for v in festival_needed
                if not any(os.path.isdir(os.path.join(FESTIVAL_VOICE_ROOT, lang, v))
                           for lang in ("english", "us"))]
    if missing:
        raise SystemExit(
            f"missing {', '.join(missing)}: run `make data-speech` (as root with apt) or "
            f"apt-get install {' '.join(DEBIAN_PACKAGES)}"
        )


def _tool_versions():
    versions = {}
    for tool, flag in (("espeak-ng", "--version"), ("festival", "--version")):
        try:
            out = subprocess.run([tool, flag], capture_output=True, text=True, check=False)
            versions[tool] = out.stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            versions[tool] = "not installed"
    return versions


def build_corpus(args, command=None):
    """Writes the corpus; returns the summary dict (also in README.txt)."""
    plans, speakers = plan_utterances(args)
    check_tools(sorted({p["speaker"][9:] for p in plans if p["speaker"].startswith("festival:")}))
    os.makedirs(os.path.join(args.out, "wavs"), exist_ok=True)
    # Chunks never mix engines; festival chunks share one festival process.
    chunks = []
    for engine in ("espeak:", "festival:"):
        same = [p for p in plans if p["speaker"].startswith(engine)]
        chunks += [same[i : i + args.chunk] for i in range(0, len(same), args.chunk)]
    start = time.perf_counter()
    results = {}
    with concurrent.futures.ProcessPoolExecutor(max(1, args.jobs)) as pool:
        for chunk_results in pool.map(synthesise_chunk, chunks, [args.out] * len(chunks),
                                      [args] * len(chunks)):
            results.update({i: (s, e) for i, s, e in chunk_results})
    seconds = time.perf_counter() - start

    with open(os.path.join(args.out, "metadata.csv"), "w", encoding="utf-8", newline="") as f:
        for p in plans:
            f.write(f"{p['id']}|{p['text']}|{p['normalized']}\n")
    split_ids = {s: [p["id"] for p in plans if p["split"] == s] for s in speakers}
    with open(os.path.join(args.out, "splits.json"), "w") as f:
        json.dump({**split_ids, "speakers": speakers}, f, indent=1, sort_keys=True)
    with open(os.path.join(args.out, "utterances.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "split", "speaker", "speed", "pitch", "seconds",
                         "effects"])
        for p in plans:
            dur, effects = results[p["id"]]
            writer.writerow([p["id"], p["split"], p["speaker"], f"{p['speed']:.3f}",
                             f"{p['pitch']:.2f}", f"{dur:.3f}", "; ".join(effects)])

    summary = {"splits": {}, "synthesis_seconds": round(seconds, 1), "tools": _tool_versions()}
    for split, ids in split_ids.items():
        used = sorted({p["speaker"] for p in plans if p["split"] == split})
        summary["splits"][split] = {
            "utterances": len(ids),
            "hours": round(sum(results[i][0] for i in ids) / 3600, 4),
            "speakers": len(used),
            "accents": sorted({s[7:].split("+")[0] for s in used if s.startswith("espeak:")}),
            "festival_voices": sorted(s.split(":")[1] for s in used if s.startswith("festival")),
        }
    command = command or "python data/make_speech_corpus.py " + " ".join(
        shlex.quote(a) for a in sys.argv[1:])
    with open(os.path.join(args.out, "README.txt"), "w") as f:
        f.write(
            "Synthetic speech corpus (LJSpeech layout) made by tfattn's "
            "data/make_speech_corpus.py.\nAll voices are synthetic (espeak-ng formant/klatt "
            "voices and festival diphone/HTS voices), not recordings of people.\n\n"
            f"{VOICE_CREDITS}\nCommand:\n  {command}\n\nOptions:\n{json.dumps(vars(args), indent=1, sort_keys=True)}"
            f"\n\nSummary (synthesis time varies by machine):\n{json.dumps(summary, indent=1)}\n"
        )
    return summary


def print_summary(summary):
    print(f"{'split':<11}{'utts':>6}{'hours':>8}{'speakers':>9}  accents / festival voices")
    for split, s in summary["splits"].items():
        print(f"{split:<11}{s['utterances']:>6}{s['hours']:>8.3f}{s['speakers']:>9}  "
              f"{', '.join(s['accents'])} / {', '.join(s['festival_voices']) or '-'}")
    total = sum(s["hours"] for s in summary["splits"].values())
    print(f"total {total:.3f} h of audio, synthesised in {summary['synthesis_seconds']} s")


def main(argv=None):
    args = parse_args(argv)
    print_summary(build_corpus(args))


if __name__ == "__main__":
    main()
