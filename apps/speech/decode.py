"""CTC decoding (greedy, beam search, beam + word language model) and WER/CER.

    logits (B, T', V) -> greedy_decode / beam_decode -> transcripts

The searches are `keras.ops.ctc_decode` (TensorFlow's `ctc_greedy_decoder` and
`ctc_beam_search_decoder` on the TF backend), not hand-written ones.

Language model: `WordLM` is a word n-gram model (interpolated absolute discounting,
Ney et al. 1994) estimated on the training transcripts, with an optional lexicon: words
outside it get `oov_log_prob`. With a `WordLM`, `beam_decode` keeps `top_paths` hypotheses
of the CTC beam search and picks the best by

    log p_ctc(y | x) + lm_weight * log p_lm(words of y) + word_bonus * len(words of y)

(N-best rescoring; shallow fusion inside the search would need a decoder that takes an
LM, e.g. pyctcdecode + KenLM, whose numpy<2 pin conflicts with TensorFlow 2.21's numpy).

WER and CER are jiwer's (`error_rates`).
"""

import collections
import math

import numpy as np
from keras import ops


def _to_lists(decoded):
    """(paths, B, L) padded with -1 -> [[ids of path p for utterance b] for b] per path."""
    decoded = np.asarray(decoded)
    return [[row[row > 0] for row in path] for path in decoded]


def _lengths(logits, lengths):
    if lengths is None:
        return np.full((logits.shape[0],), logits.shape[1], np.int32)
    return np.asarray(lengths, np.int32)


def greedy_decode(logits, lengths=None):
    """Best-path decoding: per utterance the id array (blanks and repeats removed)."""
    logits = np.asarray(logits, np.float32)
    decoded, _ = ops.ctc_decode(logits, _lengths(logits, lengths), strategy="greedy")
    return _to_lists(ops.convert_to_numpy(decoded))[0]


def beam_decode(logits, lengths=None, beam_width=16, top_paths=1):
    """CTC beam search: `(paths, scores)`, paths[p][b] the ids of utterance b's p-th best
    hypothesis, scores (B, top_paths) their log-probabilities."""
    logits = np.asarray(logits, np.float32)
    if top_paths > beam_width:
        raise ValueError(f"top_paths ({top_paths}) must be <= beam_width ({beam_width})")
    decoded, scores = ops.ctc_decode(logits, _lengths(logits, lengths), strategy="beam_search",
                                     beam_width=beam_width, top_paths=top_paths)
    return _to_lists(ops.convert_to_numpy(decoded)), ops.convert_to_numpy(scores)


class WordLM:
    """Word n-gram language model with interpolated absolute discounting.

    Args:
        sentences: training transcripts (normalised, words separated by spaces).
        order: n-gram order (2: bigrams).
        discount: absolute discount D in (0, 1).
        lexicon: allowed words; default every training word. Others score `oov_log_prob`.
        oov_log_prob: natural-log probability of a word outside the lexicon.
    """

    BOS, EOS = "<s>", "</s>"

    def __init__(self, sentences, order=2, discount=0.7, lexicon=None, oov_log_prob=-10.0):
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        if not 0.0 < discount < 1.0:
            raise ValueError(f"discount must be in (0, 1), got {discount}")
        self.order, self.discount, self.oov_log_prob = order, discount, oov_log_prob
        self.counts = [collections.Counter() for _ in range(order)]  # n -> Counter(tuple)
        self.context_counts = [collections.Counter() for _ in range(order)]
        self.followers = [collections.defaultdict(set) for _ in range(order)]
        n_sentences = 0
        for sentence in sentences:
            words = sentence.split()
            if not words:
                continue
            n_sentences += 1
            padded = [self.BOS] * (order - 1) + words + [self.EOS]
            for n in range(1, order + 1):
                for i in range(order - n, len(padded) - n + 1):
                    gram = tuple(padded[i:i + n])
                    if n == 1 and gram[0] == self.BOS:
                        continue
                    self.counts[n - 1][gram] += 1
                    self.context_counts[n - 1][gram[:-1]] += 1
                    self.followers[n - 1][gram[:-1]].add(gram[-1])
        if not n_sentences:
            raise ValueError("WordLM needs at least one non-empty training sentence")
        self.vocabulary = {g[0] for g in self.counts[0]}
        self.lexicon = set(lexicon) if lexicon is not None else self.vocabulary - {self.EOS}
        self._uniform = 1.0 / (len(self.vocabulary) + 1)

    def _prob(self, word, context):
        n = len(context) + 1
        if n == 1:
            total = self.context_counts[0][()]
            types = len(self.followers[0][()])
            count = self.counts[0][(word,)]
            return (max(count - self.discount, 0.0) + self.discount * types * self._uniform) / total
        lower = self._prob(word, context[1:])
        total = self.context_counts[n - 1][context]
        if total == 0:
            return lower
        count = self.counts[n - 1][context + (word,)]
        types = len(self.followers[n - 1][context])
        return (max(count - self.discount, 0.0) + self.discount * types * lower) / total

    def log_prob(self, sentence):
        """Natural-log probability of a sentence, end of sentence included."""
        words = sentence.split()
        history = [self.BOS] * (self.order - 1)
        total = 0.0
        for word in words + [self.EOS]:
            if word != self.EOS and word not in self.lexicon:
                total += self.oov_log_prob
            else:
                context = tuple(history[len(history) - (self.order - 1):]) if self.order > 1 else ()
                total += math.log(max(self._prob(word, context), 1e-30))
            history.append(word)
        return total


def rescore(texts, ctc_scores, lm, lm_weight=0.5, word_bonus=0.0):
    """Index of the best of `texts` (one utterance's N-best) by CTC + weighted LM score."""
    best, best_score = 0, -math.inf
    for i, (text, score) in enumerate(zip(texts, ctc_scores)):
        if not np.isfinite(score):
            continue
        total = score + lm_weight * lm.log_prob(text) + word_bonus * len(text.split())
        if total > best_score:
            best, best_score = i, total
    return best


def decode(logits, vocabulary, method="greedy", lengths=None, beam_width=16, lm=None,
           lm_weight=0.5, word_bonus=0.0, top_paths=8):
    """Transcripts of a logits batch. method: "greedy", "beam", or "beam_lm" (needs `lm`)."""
    if method == "greedy":
        return [vocabulary.ids_to_text(ids) for ids in greedy_decode(logits, lengths)]
    if method == "beam":
        paths, _ = beam_decode(logits, lengths, beam_width=beam_width, top_paths=1)
        return [vocabulary.ids_to_text(ids) for ids in paths[0]]
    if method == "beam_lm":
        if lm is None:
            raise ValueError('method="beam_lm" needs a WordLM (lm=...)')
        top = min(top_paths, beam_width)
        paths, scores = beam_decode(logits, lengths, beam_width=beam_width, top_paths=top)
        out = []
        for b in range(len(paths[0])):
            texts = [" ".join(vocabulary.ids_to_text(paths[p][b]).split()) for p in range(top)]
            out.append(texts[rescore(texts, scores[b], lm, lm_weight, word_bonus)])
        return out
    raise ValueError(f'method must be "greedy", "beam" or "beam_lm", got {method!r}')


DECODERS = ("greedy", "beam", "beam_lm")


def error_rates(references, hypotheses):
    """Corpus WER and CER (jiwer: edit operations summed over all utterances / reference
    words or characters), and per-utterance lists of both."""
    import jiwer

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("error_rates: no utterances")
    refs = [" ".join(r.split()) for r in references]
    hyps = [" ".join(h.split()) for h in hypotheses]
    # jiwer refuses empty references; an empty hypothesis is fine.
    keep = [i for i, r in enumerate(refs) if r]
    if len(keep) < len(refs):
        raise ValueError(f"error_rates: {len(refs) - len(keep)} empty reference transcript(s)")
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    per_wer = [jiwer.wer(r, h) for r, h in zip(refs, hyps)]
    per_cer = [jiwer.cer(r, h) for r, h in zip(refs, hyps)]
    return {"wer": float(words.wer), "cer": float(chars.cer), "per_utterance_wer": per_wer,
            "per_utterance_cer": per_cer}
