"""Caption metrics: corpus BLEU-1..4 and CIDEr-D.

All functions take tokenised text: ``references[i]`` is the list of reference
captions (each a list of tokens) of image ``i`` and ``hypotheses[i]`` the
generated caption (a list of tokens) for the same image.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

Tokens = Sequence[str]


def _check_corpus(references: Sequence[Sequence[Tokens]], hypotheses: Sequence[Tokens]) -> None:
    if len(references) != len(hypotheses):
        raise ValueError(
            f"{len(references)} reference sets for {len(hypotheses)} hypotheses"
        )
    if not hypotheses:
        raise ValueError("empty corpus")
    for i, (refs, hyp) in enumerate(zip(references, hypotheses)):
        if isinstance(hyp, str):
            raise TypeError(f"hypothesis {i} is a str; pass a token list")
        if isinstance(refs, str) or not refs:
            raise ValueError(f"image {i} needs a non-empty list of reference token lists")
        for ref in refs:
            if isinstance(ref, str):
                raise TypeError(f"a reference of image {i} is a str; pass token lists")


def _ngram_counts(tokens: Tokens, n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(
    references: Sequence[Sequence[Tokens]],
    hypotheses: Sequence[Tokens],
    max_n: int = 4,
) -> list[float]:
    """Corpus-level BLEU-1 .. BLEU-``max_n`` (Papineni et al., 2002).

    For each order k the clipped k-gram matches and the hypothesis k-gram
    counts are summed over the corpus, p_k = matches / count.  BLEU-n is
    ``BP * exp(mean(log p_1..p_n))`` with the brevity penalty computed from
    the total hypothesis length c and the total of the per-image closest
    reference lengths r (ties go to the shorter reference):
    ``BP = 1 if c > r else exp(1 - r / c)``.  No smoothing: BLEU-n is 0.0
    when any of p_1..p_n is zero (or has no k-grams at all).

    Difference from ``nltk.translate.bleu_score.corpus_bleu``: NLTK counts at
    least one k-gram for a hypothesis shorter than k (its per-sentence
    denominator is ``max(1, count)``); here such a hypothesis adds 0, as in
    the original definition and coco-caption.  Results agree whenever every
    hypothesis has at least ``max_n`` tokens.
    """
    if max_n < 1:
        raise ValueError(f"max_n must be >= 1, got {max_n}")
    _check_corpus(references, hypotheses)
    matches = [0] * (max_n + 1)
    totals = [0] * (max_n + 1)
    hyp_len = 0
    ref_len = 0
    for refs, hyp in zip(references, hypotheses):
        hyp = list(hyp)
        refs = [list(r) for r in refs]
        for k in range(1, max_n + 1):
            counts = _ngram_counts(hyp, k)
            if not counts:
                continue
            max_ref: Counter = Counter()
            for ref in refs:
                max_ref |= _ngram_counts(ref, k)  # element-wise max
            matches[k] += sum(min(c, max_ref[g]) for g, c in counts.items())
            totals[k] += len(hyp) - k + 1
        c = len(hyp)
        hyp_len += c
        ref_len += min((len(r) for r in refs), key=lambda rl: (abs(rl - c), rl))

    if hyp_len == 0:
        return [0.0] * max_n
    bp = 1.0 if hyp_len > ref_len else math.exp(1.0 - ref_len / hyp_len)

    scores = []
    log_sum = 0.0
    zero = False
    for k in range(1, max_n + 1):
        if zero or matches[k] == 0 or totals[k] == 0:
            zero = True
            scores.append(0.0)
            continue
        log_sum += math.log(matches[k]) - math.log(totals[k])
        scores.append(bp * math.exp(log_sum / k))
    return scores


# -- CIDEr-D -------------------------------------------------------------


def _cider_counts(tokens: Tokens, n: int) -> Counter:
    counts: Counter = Counter()
    for k in range(1, n + 1):
        counts.update(_ngram_counts(tokens, k))
    return counts


def _cider_vec(counts: Counter, df: dict, log_n_images: float, n: int):
    """tf-idf vectors (one dict per order), their norms and the length term."""
    vec: list[dict] = [{} for _ in range(n)]
    norm = [0.0] * n
    for gram, tf in counts.items():
        k = len(gram) - 1
        w = tf * (log_n_images - math.log(max(1.0, df.get(gram, 0.0))))
        vec[k][gram] = w
        norm[k] += w * w
    return vec, [math.sqrt(x) for x in norm]


def _cider_sim(vh, nh, vr, nr, delta: float, n: int, sigma: float) -> list[float]:
    penalty = math.exp(-(delta * delta) / (2.0 * sigma * sigma))
    out = []
    for k in range(n):
        ref_k = vr[k]
        val = 0.0
        for gram, w in vh[k].items():
            r = ref_k.get(gram, 0.0)
            val += min(w, r) * r  # CIDEr-D clipping
        if nh[k] != 0.0 and nr[k] != 0.0:
            val /= nh[k] * nr[k]
        out.append(val * penalty)
    return out


def cider_d_scores(
    references: Sequence[Sequence[Tokens]],
    hypotheses: Sequence[Tokens],
    n: int = 4,
    sigma: float = 6.0,
) -> list[float]:
    """Per-image CIDEr-D scores (see :func:`cider_d`)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    _check_corpus(references, hypotheses)

    ref_counts = [[_cider_counts(r, n) for r in refs] for refs in references]
    hyp_counts = [_cider_counts(h, n) for h in hypotheses]

    # Document frequency: number of images whose references contain the n-gram.
    df: dict = Counter()
    for counts in ref_counts:
        df.update(set().union(*(c.keys() for c in counts)))
    log_n_images = math.log(float(len(references)))

    def length(tokens: Tokens) -> int:
        # The reference implementation measures length as the number of
        # bigrams, i.e. max(len - 1, 0); kept for identical scores.
        return max(len(tokens) - 1, 0)

    scores = []
    for refs, hyp, rcs, hc in zip(references, hypotheses, ref_counts, hyp_counts):
        vh, nh = _cider_vec(hc, df, log_n_images, n)
        lh = length(hyp)
        total = [0.0] * n
        for ref, rc in zip(refs, rcs):
            vr, nr = _cider_vec(rc, df, log_n_images, n)
            sim = _cider_sim(vh, nh, vr, nr, float(lh - length(ref)), n, sigma)
            total = [a + b for a, b in zip(total, sim)]
        scores.append(sum(total) / n / len(refs) * 10.0)
    return scores


def cider_d(
    references: Sequence[Sequence[Tokens]],
    hypotheses: Sequence[Tokens],
    n: int = 4,
    sigma: float = 6.0,
) -> float:
    """Corpus CIDEr-D, as computed by the coco-caption reference code.

    * document frequency df(g): number of images whose reference set
      contains n-gram g (references of this corpus only);
    * each caption -> per-order vectors of ``tf(g) * (log N - log max(1, df(g)))``
      (N = number of images; raw counts as tf);
    * per reference and order k: clipped cosine
      ``sum_g min(h_g, r_g) * r_g / (|h_k| |r_k|)`` times the length penalty
      ``exp(-(len_h - len_r)**2 / (2 sigma**2))``, lengths counted as
      ``max(tokens - 1, 0)`` like the reference code;
    * image score = mean over orders 1..n, averaged over references, x10;
    * corpus score = mean over images.
    """
    scores = cider_d_scores(references, hypotheses, n=n, sigma=sigma)
    return sum(scores) / len(scores)


def evaluate_captions(
    references: Sequence[Sequence[Tokens]],
    hypotheses: Sequence[Tokens],
) -> dict[str, float]:
    """``{"bleu1", "bleu2", "bleu3", "bleu4", "cider"}`` for a tokenised corpus."""
    bleu = corpus_bleu(references, hypotheses, max_n=4)
    result = {f"bleu{k}": bleu[k - 1] for k in range(1, 5)}
    result["cider"] = cider_d(references, hypotheses)
    return result
