"""Speech data for the speech recognition app: loaders, checks and splits.

Sources (`load_speech_data(source, ...)`):
    a folder with `metadata.csv`   LJSpeech layout: `wavs/<id>.wav` and `id|text[|normalized]`
                                   lines (no header; the normalized column is used when
                                   present). A `splits.json` beside it (as written by
                                   `data/make_speech_corpus.py`) gives the splits.
    a `.csv`/`.tsv` file           a transcript table: one row per audio file, columns
                                   `file,text` or `path,transcript` (or name them with
                                   `columns=(audio_column, text_column)`); paths relative to
                                   the CSV's folder (or `audio_dir`); an optional `split`
                                   column gives the splits.
    "tfds:NAME"                    a TFDS speech dataset for online users, e.g.
                                   "tfds:ljspeech" (imported lazily; offline it fails with
                                   a RuntimeError that says so).
Without given splits, a seeded random split by `validation_fraction`/`test_fraction` is
made (fine for one speaker, as LJSpeech; give speaker-disjoint splits otherwise).

Audio (`apps/speech/audio.py`): WAV, FLAC, OGG and anything else soundfile or librosa
reads, headerless int16 PCM with `raw_rate`; mixed to mono, resampled to `sample_rate`.
Transcripts (`apps/speech/text.py`): normalised, then checked against the vocabulary.

Bad input, in the order it is checked:
    - no rows / malformed lines                 ValueError naming the file (and line)
    - files listed but missing                  ValueError naming the first missing file
    - characters outside the vocabulary         ValueError listing them and where
    - unreadable, corrupt, empty, silent audio  skipped, counted and logged with paths
    - empty transcripts, clips longer than      skipped, counted and logged
      `max_seconds`, clips too short for their
      label under CTC (`ctc_frames`)
`strict=True` turns every skip into a ValueError. `SpeechData.report` holds what was skipped.

    data = load_speech_data("data/speech/digits", frames_per_second=100, subsampling=4)
    print(data.report.summary())
    train = make_pipeline(data.train, batch_size=32, training=True, augment=Augment())
"""

import concurrent.futures
import csv
import dataclasses
import json
import logging
import os

import numpy as np

from apps.speech.audio import SAMPLE_RATE, AudioError, read_audio
from apps.speech.text import Vocabulary, normalize_transcript

__all__ = [
    "LoadReport", "SpeechData", "SpeechSplit", "ctc_frames", "ctc_min_frames",
    "load_speech_data", "normalize_transcript", "read_audio", "Vocabulary", "AudioError",
]

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
CSV_COLUMN_GUESSES = (("file", "text"), ("path", "transcript"), ("path", "text"),
                      ("file", "transcript"), ("audio", "text"), ("wav", "text"))


@dataclasses.dataclass
class SpeechSplit:
    """One split, in memory: `waveforms[i]` float32 (samples,) at `sample_rate`."""

    ids: list
    paths: list
    texts: list  # normalised transcripts
    waveforms: list
    labels: list  # int32 id arrays (no blank, no padding)
    sample_rate: int = SAMPLE_RATE

    def __len__(self):
        return len(self.ids)

    @property
    def seconds(self):
        return np.array([len(w) for w in self.waveforms]) / self.sample_rate



@dataclasses.dataclass
class LoadReport:
    """What loading skipped: reason -> [(path or id, detail)]."""

    source: str = ""
    rows: int = 0
    kept: int = 0
    skipped: dict = dataclasses.field(default_factory=dict)

    def add(self, reason, where, detail=""):
        self.skipped.setdefault(reason, []).append((where, detail))

    def summary(self, max_paths=5):
        lines = [f"{self.source}: {self.rows} rows, {self.kept} kept"]
        for reason, items in self.skipped.items():
            shown = "; ".join(f"{w} ({d})" if d else str(w) for w, d in items[:max_paths])
            more = f" and {len(items) - max_paths} more" if len(items) > max_paths else ""
            lines.append(f"  skipped {len(items)} {reason}: {shown}{more}")
        return "\n".join(lines)


@dataclasses.dataclass
class SpeechData:
    splits: dict  # name -> SpeechSplit
    vocabulary: Vocabulary
    report: LoadReport
    sample_rate: int = SAMPLE_RATE

    @property
    def train(self):
        return self.splits["train"]

    @property
    def validation(self):
        return self.splits["validation"]

    @property
    def test(self):
        return self.splits["test"]

    def describe(self):
        rows = []
        for name, split in self.splits.items():
            hours = split.seconds.sum() / 3600 if len(split) else 0.0
            rows.append(f"{name:<11}{len(split):>7} utterances {hours:8.3f} h")
        return "\n".join(rows)


# --------------------------------------------------------------------------- CTC lengths


def ctc_frames(num_samples, sample_rate, frames_per_second, subsampling=1):
    """Encoder frames of a clip: feature frames (`frames_per_second`, e.g. 100 for a 10 ms
    hop) divided by the model's time `subsampling`, rounded down (an upper bound for
    convolutions without padding: check against your front end)."""
    features = np.floor(np.asarray(num_samples) / sample_rate * frames_per_second)
    return (features // subsampling).astype(np.int64)


def ctc_min_frames(labels):
    """Fewest frames CTC needs to emit `labels`: its length plus one blank between each
    pair of equal neighbours ("oo" needs o, blank, o)."""
    labels = np.asarray(labels)
    return int(len(labels) + np.sum(labels[1:] == labels[:-1]))


# --------------------------------------------------------------------------- sources


def _read_ljspeech(folder):
    path = os.path.join(folder, "metadata.csv")
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n\r")
            if not line.strip():
                continue
            fields = line.split("|")
            if len(fields) not in (2, 3) or not fields[0]:
                raise ValueError(
                    f"{path} line {number}: expected `id|text` or `id|text|normalized`, "
                    f"got {len(fields)} field(s): {line[:80]!r}"
                )
            text = fields[2] if len(fields) == 3 and fields[2].strip() else fields[1]
            rows.append((fields[0], os.path.join(folder, "wavs", fields[0] + ".wav"), text,
                         f"line {number}"))
    if not rows:
        raise ValueError(f"{path}: no transcripts (expected `id|text[|normalized]` lines)")
    splits = None
    splits_path = os.path.join(folder, "splits.json")
    if os.path.exists(splits_path):
        with open(splits_path) as f:
            listed = json.load(f)
        splits = {i: name for name in SPLITS for i in listed.get(name, [])}
    return rows, splits, path


def _read_transcript_csv(path, columns, audio_dir):
    with open(path, encoding="utf-8", newline="") as f:
        lines = list(csv.reader(f, delimiter="\t" if path.lower().endswith(".tsv") else ","))
    header = [h.strip() for h in lines[0]] if lines else []
    table = [(number, dict(zip(header, line))) for number, line in enumerate(lines[1:], 2)
             if any(c.strip() for c in line)]  # (line number, row); line 1 is the header
    if not header or not table:
        raise ValueError(f"{path}: empty transcript CSV (expected a header and one row per file)")
    if columns is None:
        columns = next((c for c in CSV_COLUMN_GUESSES if set(c) <= set(header)), None)
        if columns is None:
            raise ValueError(
                f"{path}: no audio/transcript columns among {header}; expected "
                "`file,text` or `path,transcript`, or pass columns=(audio, text)"
            )
    for column in columns:
        if column not in header:
            raise ValueError(f"{path}: no column {column!r}; columns are {header}")
    audio_col, text_col = columns
    root = audio_dir or os.path.dirname(os.path.abspath(path))
    rows, splits = [], {}
    for number, row in table:
        file = (row.get(audio_col) or "").strip()
        if not file:
            raise ValueError(f"{path} line {number}: empty {audio_col!r}")
        full = file if os.path.isabs(file) else os.path.join(root, file)
        rows.append((file, full, row.get(text_col) or "", f"line {number}"))
        if row.get("split"):
            splits[file] = row["split"].strip()
    bad = sorted(set(splits.values()) - set(SPLITS))
    if bad:
        raise ValueError(f"{path}: unknown split names {bad}; expected {SPLITS}")
    return rows, (splits or None), path


def _tfds_load(name, **kwargs):
    """`tfds.load`, isolated so tests can replace it (TFDS cannot download offline)."""
    import tensorflow_datasets as tfds

    return tfds.load(name, **kwargs)


def _load_tfds(name):
    """(ids, waveforms, rates, texts) of every split of a TFDS speech dataset."""
    try:
        ds, info = _tfds_load(name, split=None, with_info=True)
    except Exception as err:  # TFDS raises many kinds of errors when offline
        raise RuntimeError(
            f"Cannot load TFDS dataset {name!r} ({type(err).__name__}: {err}). TFDS needs "
            "network access to download it; offline, use a local LJSpeech-layout folder, a "
            "transcript CSV, or `python data/make_speech_corpus.py` (make data-speech)."
        ) from err
    features = info.features
    audio_key = next(k for k in ("speech", "audio") if k in features)
    text_key = next(k for k in ("text_normalized", "text", "transcript") if k in features)
    rate = getattr(features[audio_key], "sample_rate", None) or 16000
    out = {}
    for split_name, split_ds in ds.items():
        items = []
        for i, example in enumerate(split_ds.as_numpy_iterator()):
            audio = np.asarray(example[audio_key])
            scale = 32768.0 if audio.dtype.kind == "i" else 1.0
            text = example[text_key]
            items.append((example.get("id", f"{split_name}-{i}"),
                          audio.astype(np.float32) / scale,
                          text.decode("utf-8") if isinstance(text, bytes) else str(text)))
        out[split_name] = items
    return out, rate


# --------------------------------------------------------------------------- loading


def _skip(report, strict, reason, where, detail=""):
    if strict:
        raise ValueError(f"{where}: {reason}: {detail} (strict=True: no skipping)")
    report.add(reason, where, detail)


def _random_splits(n, validation_fraction, test_fraction, seed):
    order = np.random.default_rng(seed).permutation(n)
    n_val, n_test = round(validation_fraction * n), round(test_fraction * n)
    names = np.array(["train"] * n, dtype=object)
    names[order[:n_val]] = "validation"
    names[order[n_val : n_val + n_test]] = "test"
    return names.tolist()


def load_speech_data(
    source,
    *,
    sample_rate=SAMPLE_RATE,
    vocabulary=None,
    columns=None,
    audio_dir=None,
    raw_rate=None,
    raw_channels=1,
    frames_per_second=None,
    subsampling=1,
    encoder_frames=None,
    max_seconds=None,
    strict=False,
    validation_fraction=0.1,
    test_fraction=0.1,
    seed=0,
    num_threads=4,
):
    """Loads, checks and splits a speech dataset into memory.

    Args:
        source: LJSpeech-layout folder, transcript CSV or "tfds:NAME" (module docstring).
        sample_rate: rate every clip is resampled to.
        vocabulary: a `Vocabulary`; default `Vocabulary()` (letters, space, apostrophe; no
            digits, so "7" in a transcript becomes "seven").
        columns: (audio column, text column) of a transcript CSV; guessed when None.
        audio_dir: folder CSV paths are relative to; default the CSV's folder.
        raw_rate, raw_channels: headerless int16 PCM (see `read_audio`).
        frames_per_second, subsampling: the model's feature frame rate and time
            subsampling, for the CTC length check (`ctc_frames`); None skips the check.
        encoder_frames: `fn(num_samples) -> frames`, the model's exact CTC frame count
            (e.g. `SpeechRecognizer.output_lengths`); replaces the two arguments above.
        max_seconds: clips longer than this are skipped (the pipeline's last bucket).
        strict: raise instead of skipping any file or clip.
        validation_fraction, test_fraction, seed: random split when none is given.
        num_threads: threads reading audio.

    Returns:
        `SpeechData` with `train`, `validation`, `test` `SpeechSplit`s and a `LoadReport`.

    Raises:
        ValueError as listed in the module docstring; RuntimeError when TFDS fails.
    """
    vocabulary = vocabulary or Vocabulary()
    if encoder_frames is None and frames_per_second:
        def encoder_frames(n):
            return int(ctc_frames(n, sample_rate, frames_per_second, subsampling))
    source = os.fspath(source)
    report = LoadReport(source=source)
    if source.startswith("tfds:"):
        return _load_from_tfds(source[5:], sample_rate, vocabulary, report, encoder_frames,
                               max_seconds, strict, validation_fraction, test_fraction, seed)
    if os.path.isdir(source):
        if not os.path.exists(os.path.join(source, "metadata.csv")):
            raise ValueError(f"{source}: no metadata.csv (expected the LJSpeech layout)")
        rows, given_splits, table_path = _read_ljspeech(source)
    elif source.lower().endswith((".csv", ".tsv")) and os.path.isfile(source):
        rows, given_splits, table_path = _read_transcript_csv(source, columns, audio_dir)
    else:
        raise ValueError(
            f"unknown speech source {source!r}: expected an LJSpeech-layout folder, a "
            "transcript .csv file or 'tfds:NAME'"
        )
    report.rows = len(rows)
    missing = [r for r in rows if not os.path.isfile(r[1])]
    if missing:
        raise ValueError(
            f"{table_path}: {len(missing)} of {len(rows)} listed audio files are missing; "
            f"first: {missing[0][1]} ({missing[0][3]})"
        )
    texts = [vocabulary.normalize(r[2]) for r in rows]
    vocabulary.check(texts, [f"{r[0]} ({r[3]})" for r in rows])

    def read(row):
        try:
            return read_audio(row[1], sample_rate, raw_rate, raw_channels)[0]
        except AudioError as err:
            return err

    with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
        waves = list(pool.map(read, rows))
    if given_splits is None:
        split_of = _random_splits(len(rows), validation_fraction, test_fraction, seed)
    else:
        default = "train" if table_path.lower().endswith((".csv", ".tsv")) else None
        split_of = [given_splits.get(r[0], default) for r in rows]
    items = [(r[0], r[1], t, w, s) for r, t, w, s in zip(rows, texts, waves, split_of)]
    return _finish(items, vocabulary, report, sample_rate, encoder_frames, max_seconds, strict)


def _finish(items, vocabulary, report, sample_rate, encoder_frames, max_seconds, strict):
    """Skips bad clips, makes labels and groups by split. items: (id, path, text, wave|err, split)."""
    out = {name: SpeechSplit([], [], [], [], [], sample_rate) for name in SPLITS}
    for uid, path, text, wave, split in items:
        if isinstance(wave, AudioError):
            _skip(report, strict, f"{wave.reason} audio files", path, wave.detail)
            continue
        if split is None:
            _skip(report, strict, "utterances not listed in splits.json", path)
            continue
        if not text:
            _skip(report, strict, "empty transcripts", path)
            continue
        seconds = len(wave) / sample_rate
        if max_seconds and seconds > max_seconds:
            _skip(report, strict, "clips longer than max_seconds", path,
                  f"{seconds:.2f} s > {max_seconds} s")
            continue
        labels = vocabulary.text_to_ids(text)
        if encoder_frames is not None:
            frames = int(encoder_frames(len(wave)))
            need = ctc_min_frames(labels)
            if frames < need:
                _skip(report, strict, "clips too short for their label under CTC", path,
                      f"{frames} encoder frames < {need} needed for {text!r}")
                continue
        split = out[split]
        for field, value in zip(("ids", "paths", "texts", "waveforms", "labels"),
                                (uid, path, text, wave, labels)):
            getattr(split, field).append(value)
    report.kept = sum(len(s) for s in out.values())
    if report.skipped:
        logger.warning("%s", report.summary())
    return SpeechData(out, vocabulary, report, sample_rate)


def _load_from_tfds(name, sample_rate, vocabulary, report, encoder_frames, max_seconds, strict,
                    validation_fraction, test_fraction, seed):
    import librosa

    by_split, rate = _load_tfds(name)
    items = []
    for split_name, examples in by_split.items():
        for uid, audio, text in examples:
            uid = uid.decode() if isinstance(uid, bytes) else str(uid)
            audio = audio.mean(axis=-1) if audio.ndim == 2 else audio
            if rate != sample_rate:
                audio = librosa.resample(audio, orig_sr=rate, target_sr=sample_rate,
                                         res_type="soxr_hq")
            items.append([uid, f"tfds:{name}/{split_name}/{uid}", text, audio, split_name])
    report.rows = len(items)
    names = {s for *_, s in items}
    if names <= {"train"}:  # LJSpeech has one split
        for item, s in zip(items, _random_splits(len(items), validation_fraction,
                                                  test_fraction, seed)):
            item[4] = s
    else:
        for item in items:
            item[4] = {"dev": "validation", "valid": "validation"}.get(item[4], item[4])
            if item[4] not in SPLITS:
                item[4] = "train"
    for item in items:
        item[2] = vocabulary.normalize(item[2])
    vocabulary.check([i[2] for i in items], [i[0] for i in items])
    return _finish([tuple(i) for i in items], vocabulary, report, sample_rate, encoder_frames,
                   max_seconds, strict)
