"""Transcripts: normalisation and the character vocabulary of the CTC targets.

Normalisation (`normalize_transcript`), in order:
    1. Unicode NFKD, accents dropped ("café" → "cafe"), lowercase.
    2. Curly apostrophes become "'"; hyphens, slashes and underscores become spaces.
    3. Digits: when the vocabulary has no digits, each run of digits is written out digit
       by digit ("7" → "seven", "307" → "three zero seven", as a digit string is read;
       no "three hundred and seven"); with `digits=True` vocabularies they stay.
    4. Other punctuation (. , ; : ! ? " ( ) etc.) is removed, whitespace collapsed.
Characters still outside the vocabulary after this (e.g. "é" that NFKD cannot reduce,
"€", Cyrillic) are left in, so `Vocabulary.check` reports them instead of hiding them.

    vocab = Vocabulary()
    vocab.text_to_ids("oh seven")  # [16, 9, 1, 20, 6, 23, 6, 15]
"""

import re
import unicodedata

import numpy as np

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
LETTERS = "abcdefghijklmnopqrstuvwxyz"
_PUNCTUATION = re.compile(r"[.,;:!?\"()\[\]{}<>*#@&%+=~^|\\\u201c\u201d\u201e\u00ab\u00bb\u2026]")
_SPACES = re.compile(r"\s+")


class Vocabulary:
    """Character vocabulary for CTC: id 0 is the blank (and the label padding value).

    Args:
        digits: include "0"–"9" as characters; without them transcripts spell digits out.
        extra: more characters to add (after the defaults), e.g. "-".

    The characters are space, the 26 lowercase letters, the apostrophe, then the digits and
    `extra`: ids 1, 2, ... in that order (`size` counts the blank).
    """

    blank_id = 0

    def __init__(self, digits=False, extra=""):
        self.digits = digits
        self.chars = " " + LETTERS + "'" + ("0123456789" if digits else "") + extra
        if len(set(self.chars)) != len(self.chars):
            raise ValueError(f"Vocabulary: duplicate characters in {self.chars!r}")
        self._ids = {c: i + 1 for i, c in enumerate(self.chars)}

    @property
    def size(self):
        return len(self.chars) + 1

    def normalize(self, text):
        return normalize_transcript(text, digits=self.digits)

    def unknown(self, text):
        """Characters of `text` outside the vocabulary, sorted."""
        return sorted({c for c in text if c not in self._ids})

    def text_to_ids(self, text):
        """int32 ids of an already normalised transcript; ValueError on unknown characters."""
        bad = self.unknown(text)
        if bad:
            raise ValueError(f"characters outside the vocabulary {bad} in {text!r}")
        return np.array([self._ids[c] for c in text], np.int32)

    def ids_to_text(self, ids):
        """Transcript of ids; the blank (0, also the padding) and negative ids are dropped."""
        return "".join(self.chars[i - 1] for i in np.asarray(ids).ravel() if 0 < i <= len(self.chars))

    def check(self, transcripts, names):
        """ValueError listing every character outside the vocabulary and where it occurs."""
        where = {}
        for name, text in zip(names, transcripts):
            for c in self.unknown(text):
                where.setdefault(c, []).append(name)
        if where:
            lines = [f"  {c!r} (U+{ord(c):04X}) in {len(n)} transcript(s): {', '.join(n[:5])}"
                     + (" ..." if len(n) > 5 else "") for c, n in sorted(where.items())]
            raise ValueError(
                "transcripts hold characters outside the vocabulary "
                f"{self.chars!r} (after normalisation):\n" + "\n".join(lines)
                + "\nFix the transcripts, or add the characters with Vocabulary(extra=...)."
            )


def _spell_digits(match):
    return " " + " ".join(DIGIT_WORDS[int(d)] for d in match.group(0)) + " "


def normalize_transcript(text, digits=False):
    """Lowercase, punctuation removed, digits written out unless `digits`; see module doc."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")
    text = re.sub(r"[-_/\u2013\u2014]", " ", text)
    if not digits:
        text = re.sub(r"[0-9]+", _spell_digits, text)
    text = _PUNCTUATION.sub("", text)
    text = " ".join(w.strip("'") if w.strip("'") else "" for w in text.split())
    return _SPACES.sub(" ", text).strip()
