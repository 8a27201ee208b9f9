import math
import random
import warnings

import pytest

from source_code.evaluation.metrics import cider_d, cider_d_scores, corpus_bleu, evaluate_captions

nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")

NLTK_WEIGHTS = [(1, 0, 0, 0), (0.5, 0.5, 0, 0), (1 / 3, 1 / 3, 1 / 3, 0), (0.25, 0.25, 0.25, 0.25)]


def reference_bleu(refs, hyps):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NLTK warns about zero n-gram overlaps
        return nltk_bleu.corpus_bleu(refs, hyps, weights=NLTK_WEIGHTS)


def random_corpus(rng, n_images, vocab_size, hyp_len=(4, 12), ref_len=(1, 12), n_refs=(1, 5)):
    vocab = [f"w{i}" for i in range(vocab_size)]

    def sentence(lo, hi):
        return [rng.choice(vocab) for _ in range(rng.randint(lo, hi))]

    refs = [[sentence(*ref_len) for _ in range(rng.randint(*n_refs))] for _ in range(n_images)]
    hyps = [sentence(*hyp_len) for _ in range(n_images)]
    return refs, hyps


# -- BLEU ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(25))
def test_bleu_matches_nltk_on_random_corpora(seed):
    rng = random.Random(seed)
    refs, hyps = random_corpus(rng, rng.randint(1, 30), rng.choice([3, 5, 8, 20]))
    ours = corpus_bleu(refs, hyps)
    theirs = reference_bleu(refs, hyps)
    assert len(ours) == 4
    for a, b in zip(ours, theirs):
        assert a == pytest.approx(b, abs=1e-9, rel=1e-9)


HAND_MADE = [
    # Papineni et al.'s modified precision example: p1 = 2/7, no bigram match.
    (
        [[["the", "cat", "is", "on", "the", "mat"], ["there", "is", "a", "cat", "on", "the", "mat"]]],
        [["the", "the", "the", "the", "the", "the", "the"]],
    ),
    # perfect match
    ([[["a", "dog", "runs", "on", "grass"]]], [["a", "dog", "runs", "on", "grass"]]),
    # brevity penalty, several images and references
    (
        [
            [["a", "man", "rides", "a", "red", "bike", "down", "the", "hill"], ["man", "on", "a", "bike"]],
            [["two", "dogs", "play", "in", "the", "snow"], ["dogs", "playing", "in", "white", "snow"]],
            [["a", "child", "in", "a", "pink", "dress", "climbs", "stairs"]],
        ],
        [
            ["a", "man", "rides", "a", "bike", "on", "the", "hill"],
            ["two", "dogs", "in", "the", "snow"],
            ["a", "girl", "in", "a", "pink", "dress"],
        ],
    ),
    # closest-reference tie (4 and 6 words for a 5-word hypothesis) goes to the shorter one
    (
        [[["a", "b", "c", "d"], ["a", "b", "c", "d", "e", "f"]]],
        [["a", "b", "c", "d", "x"]],
    ),
    # no overlap at all
    ([[["x", "y", "z", "w"]]], [["a", "b", "c", "d"]]),
]


@pytest.mark.parametrize("refs, hyps", HAND_MADE)
def test_bleu_matches_nltk_on_hand_made(refs, hyps):
    for a, b in zip(corpus_bleu(refs, hyps), reference_bleu(refs, hyps)):
        assert a == pytest.approx(b, abs=1e-9, rel=1e-9)


def test_bleu_hand_values():
    refs, hyps = HAND_MADE[0]
    assert corpus_bleu(refs, hyps) == [pytest.approx(2 / 7), 0.0, 0.0, 0.0]
    refs, hyps = HAND_MADE[1]
    assert corpus_bleu(refs, hyps) == [pytest.approx(1.0)] * 4
    refs, hyps = HAND_MADE[3]
    # BP = 1 because the tie picks the 4-word reference (c = 5 > r = 4)
    assert corpus_bleu(refs, hyps, max_n=1) == [pytest.approx(4 / 5)]
    # hypothesis shorter than the closest reference: BP = exp(1 - 6/4)
    bleu = corpus_bleu([[["a", "b", "c", "d", "e", "f"]]], [["a", "b", "c", "d"]], max_n=2)
    bp = math.exp(1 - 6 / 4)
    assert bleu == [pytest.approx(bp), pytest.approx(bp)]


def test_bleu_short_hypotheses_use_true_ngram_counts():
    # A 1-word hypothesis has no bigrams: it adds nothing to the bigram
    # denominator (NLTK would add 1 there; see the docstring).
    refs = [[["a", "dog", "runs"]], [["a", "cat"]]]
    hyps = [["a", "dog", "runs"], ["cat"]]
    b1, b2 = corpus_bleu(refs, hyps, max_n=2)
    bp = math.exp(1 - 5 / 4)  # c = 3 + 1 words, r = 3 + 2 words
    assert b1 == pytest.approx(bp * 4 / 4)  # p1 = 4/4
    assert b2 == pytest.approx(bp * math.sqrt(1.0 * 2 / 2))  # p2 = 2/2
    nltk_b2 = reference_bleu(refs, hyps)[1]
    assert nltk_b2 == pytest.approx(bp * math.sqrt(1.0 * 2 / 3))


def test_bleu_max_n_and_validation():
    refs, hyps = HAND_MADE[2]
    assert corpus_bleu(refs, hyps, max_n=2) == corpus_bleu(refs, hyps)[:2]
    assert len(corpus_bleu(refs, hyps, max_n=6)) == 6
    with pytest.raises(ValueError):
        corpus_bleu(refs, hyps[:2])
    with pytest.raises(ValueError):
        corpus_bleu([], [])
    with pytest.raises(ValueError):
        corpus_bleu([[]], [["a"]])
    with pytest.raises(ValueError):
        corpus_bleu(refs, hyps, max_n=0)
    with pytest.raises(TypeError):
        corpus_bleu([[["a"]]], ["a"])
    with pytest.raises(TypeError):
        corpus_bleu([["a dog"]], [["a"]])


def test_bleu_empty_hypotheses():
    assert corpus_bleu([[["a", "b"]]], [[]]) == [0.0] * 4


# -- CIDEr-D ------------------------------------------------------------------------


def test_cider_hand_computed():
    refs = [[["a", "b"], ["a", "c", "c"]], [["a", "d"]]]
    hyps = [["a", "b", "c"], ["d"]]
    p1 = math.exp(-1 / 72)  # length difference 1, sigma 6
    r = 1 / math.sqrt(2)
    # image 1: vs ["a","b"]: unigram and bigram cosines 1/sqrt2, penalised;
    #          vs ["a","c","c"]: unigram cosine 1/sqrt2 ("a" has idf 0).
    score1 = (2 * r * p1 + r) / 4 / 2 * 10
    # image 2: unigram cosine 1, length difference 1.
    score2 = p1 / 4 * 10
    assert cider_d_scores(refs, hyps) == [pytest.approx(score1, rel=1e-12), pytest.approx(score2, rel=1e-12)]
    assert cider_d(refs, hyps) == pytest.approx((score1 + score2) / 2, rel=1e-12)


def test_cider_properties():
    rng = random.Random(0)
    refs, hyps = random_corpus(rng, 20, 30, hyp_len=(5, 10), ref_len=(5, 10), n_refs=(3, 5))
    base = cider_d(refs, hyps)
    copied = [r[0] for r in refs]  # hypothesis = one of its references
    assert cider_d(refs, copied) > base
    # identical references and hypothesis score higher than a partial match
    same_refs = [[r[0]] * 3 for r in refs]
    best = cider_d(same_refs, copied)
    partial = cider_d(same_refs, [h[:-2] + ["zzz", "yyy"] for h in copied])
    assert best > partial > 0
    # order of the images does not matter
    order = list(range(20))
    rng.shuffle(order)
    assert cider_d([refs[i] for i in order], [hyps[i] for i in order]) == pytest.approx(base, rel=1e-12)
    # a single image: every n-gram has idf log(1) - log(1) = 0
    assert cider_d([[["a", "b"]]], [["a", "b"]]) == 0.0
    # no overlap
    assert cider_d([[["a", "b"]], [["c", "d"]]], [["x"], ["y"]]) == 0.0
    # the length penalty: same n-grams, extra unrelated words lower the score
    refs2 = [[["a", "dog", "runs"]], [["a", "cat", "sits"]]]
    assert cider_d(refs2, [["a", "dog", "runs"], ["a", "cat", "sits"]]) > cider_d(
        refs2, [["a", "dog", "runs"] + ["q"] * 6, ["a", "cat", "sits"]]
    )


def test_cider_validation():
    with pytest.raises(ValueError):
        cider_d([[["a"]]], [])
    with pytest.raises(ValueError):
        cider_d([[["a"]]], [["a"]], sigma=0)
    with pytest.raises(ValueError):
        cider_d([[["a"]]], [["a"]], n=0)


pycocoevalcap_cider = None
try:  # optional test-only dependency: the reference CIDEr-D implementation
    from pycocoevalcap.cider.cider import Cider as pycocoevalcap_cider
except Exception:  # pragma: no cover - depends on the environment
    pass


@pytest.mark.skipif(pycocoevalcap_cider is None, reason="pycocoevalcap not installed")
@pytest.mark.parametrize("seed", range(15))
def test_cider_matches_pycocoevalcap(seed):
    rng = random.Random(1000 + seed)
    refs, hyps = random_corpus(
        rng, rng.randint(2, 25), rng.choice([4, 10, 40]), hyp_len=(0, 12), ref_len=(1, 12), n_refs=(1, 5)
    )
    gts = {i: [" ".join(r) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [" ".join(h)] for i, h in enumerate(hyps)}
    expected, per_image = pycocoevalcap_cider().compute_score(gts, res)
    assert cider_d(refs, hyps) == pytest.approx(float(expected), rel=1e-9, abs=1e-12)
    assert cider_d_scores(refs, hyps) == pytest.approx([float(x) for x in per_image], rel=1e-9, abs=1e-12)


@pytest.mark.skipif(pycocoevalcap_cider is None, reason="pycocoevalcap not installed")
def test_cider_matches_pycocoevalcap_hand_made():
    refs, hyps = HAND_MADE[2]
    gts = {i: [" ".join(r) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [" ".join(h)] for i, h in enumerate(hyps)}
    expected, _ = pycocoevalcap_cider().compute_score(gts, res)
    assert cider_d(refs, hyps) == pytest.approx(float(expected), rel=1e-9)


# -- evaluate_captions ------------------------------------------------------------


def test_evaluate_captions():
    refs, hyps = HAND_MADE[2]
    result = evaluate_captions(refs, hyps)
    assert set(result) == {"bleu1", "bleu2", "bleu3", "bleu4", "cider"}
    assert [result[f"bleu{k}"] for k in range(1, 5)] == corpus_bleu(refs, hyps)
    assert result["cider"] == cider_d(refs, hyps)
    assert all(isinstance(v, float) for v in result.values())


# Gaps found by mutation testing (bench/mutation.sh): each of these kills a mutant that
# the tests above let through.

def test_bleu_of_a_corpus_with_a_single_k_gram():
    # one 4-token hypothesis = exactly one 4-gram, matched: every p_k = 1
    assert corpus_bleu([[list("abcd")]], [list("abcd")]) == pytest.approx([1.0] * 4)


def test_cider_accepts_one_order_and_a_small_sigma():
    refs, hyps = [[["a", "b"]], [["c", "d"]]], [["a", "b"], ["c", "e"]]
    assert cider_d(refs, hyps, n=1) > 0
    assert cider_d(refs, hyps, sigma=0.5) > 0


@pytest.mark.parametrize("refs", [[], "ab"])
def test_empty_or_str_reference_sets_are_value_errors(refs):
    with pytest.raises(ValueError, match="non-empty list of reference"):
        corpus_bleu([refs], [["a"]])
    with pytest.raises(ValueError, match="non-empty list of reference"):
        cider_d([refs], [["a"]])
