"""ACE concept banks (issue 14): CAVs, TCAV and its significance test on constructed
activations with a known concept direction, the paper's filter, naming from ground truth
and from TCAV, the bank's files, and the request-time JSON on the tiny bundle with and
without a bank."""
import io
import json
from collections import Counter

import numpy as np
from PIL import Image
import pytest

from source_code.explain import ace as A
from source_code.explain import concepts as C

DIM = 24


def _direction(seed=0):
    u = np.random.default_rng(seed).normal(size=DIM)
    return u / np.linalg.norm(u)


def _constructed(seed=0, n=60, shift=3.0):
    """Random activations, a concept set shifted along a known unit direction u."""
    rng = np.random.default_rng(seed)
    u = _direction(seed)
    background = rng.normal(size=(400, DIM)).astype(np.float32)
    concept = (rng.normal(size=(n, DIM)) + shift * u).astype(np.float32)
    return u, concept, background


# -- CAVs and TCAV ---------------------------------------------------------------------------
def test_cav_recovers_the_concept_direction():
    u, concept, background = _constructed()
    cav = C.train_cav(concept, background[:60])
    assert cav.shape == (DIM,) and np.isclose(np.linalg.norm(cav), 1, atol=1e-5)
    assert cav @ u > 0.8, "the CAV points towards the concept"


def test_tcav_score_is_the_fraction_of_positive_directional_derivatives():
    gradients = np.array([[1.0, 0.0], [-1.0, 0.0], [2.0, 1.0], [0.5, -3.0]])
    cavs = np.array([[[1.0, 0.0], [0.0, 1.0]]])             # [1 concept, 2 runs, C]
    assert C.tcav_scores(gradients, cavs).tolist() == [[0.75, 0.25]]


def test_tcav_and_significance_with_a_known_concept():
    rng = np.random.default_rng(1)
    u, concept, background = _constructed(1)
    embeddings = np.concatenate([background, concept])
    members = [np.arange(len(background), len(embeddings))]
    concept_cavs, random_cavs = C.train_cavs(embeddings, members, n_random=15, seed=0,
                                             progress=False)
    assert concept_cavs.shape == (1, 15, DIM) and random_cavs.shape == (15, DIM)
    grads = {
        "driven": (rng.normal(size=(40, DIM)) * 0.3 + u).astype(np.float32),     # s_t rises along u
        "opposed": (rng.normal(size=(40, DIM)) * 0.3 - u).astype(np.float32),
        "unrelated": rng.normal(size=(40, DIM)).astype(np.float32),
        "rare": (rng.normal(size=(3, DIM)) + u).astype(np.float32),             # too few examples
    }
    # the unrelated word's gradients are orthogonal to u: no reason to follow the concept
    g = grads["unrelated"]
    grads["unrelated"] = g - np.outer(g @ u, u)
    table, random_mean = C.tcav_table(grads, concept_cavs, random_cavs, ["c01"], min_examples=5)
    assert "rare" not in table
    assert table["driven"]["c01"]["tcav"] > 0.95 and table["driven"]["c01"]["significant"]
    assert table["opposed"]["c01"]["tcav"] < 0.05 and table["opposed"]["c01"]["significant"]
    assert not table["unrelated"]["c01"]["significant"]
    for row in table.values():        # Bonferroni over the three (concept, word) pairs
        s = row["c01"]
        assert s["p_adjusted"] == pytest.approx(min(1.0, 3 * s["p_value"]), rel=1e-2)
    assert set(random_mean) == {"driven", "opposed", "unrelated"}


def test_the_null_cavs_do_not_share_one_reference_set():
    """Each random-vs-random CAV separates a random set of its own from a counterpart: CAVs
    that all started from one reference set would share its side (mean cosine about 0.5)."""
    _, concept, background = _constructed(2)
    embeddings = np.concatenate([background, concept])
    members = [np.arange(len(background), len(embeddings))]
    _, random_cavs = C.train_cavs(embeddings, members, n_random=12, seed=0, progress=False)
    cos = random_cavs @ random_cavs.T
    assert abs(cos[np.triu_indices(12, 1)].mean()) < 0.2


def test_welch_p_when_scores_do_not_vary():
    assert C.welch_p(np.ones(5), np.ones(5)) == 1.0
    assert C.welch_p(np.ones(5), np.zeros(5)) == 0.0
    assert C.welch_p(np.array([0.9, 1.0, 0.95]), np.array([0.2, 0.6, 0.4, 0.5])) < 0.05


# -- the paper's filter ----------------------------------------------------------------------
def test_keep_cluster_follows_the_papers_conditions():
    # (segments, images they come from, share of the discovery images covered)
    assert not C.keep_cluster(10, 10, 0.1)[0]                  # too small
    assert not C.keep_cluster(60, 1, 0.01)[0]                  # all from one image
    assert C.keep_cluster(40, 30, 0.3)[0]                      # highly common
    assert C.keep_cluster(100, 30, 0.3)[0]                     # mildly common, mildly populated
    assert not C.keep_cluster(100, 30, 0.2)[0]                 # ... not populated enough
    assert C.keep_cluster(500, 60, 0.6)[0]                     # from most images
    assert not C.keep_cluster(2000, 100, 1.0)[0]               # many segments per image


def test_populated_share_is_taken_per_word():
    red = set(range(10))                                       # 10 of 100 images are red
    cluster = set(range(8))
    assert C.populated_share(cluster, 100) == 0.08             # the paper: 8 % of all images
    assert C.populated_share(cluster, 100, {"red": red, "a": set(range(100))}) == 0.8
    assert C.populated_share(cluster, 100, {"red": set(range(3))}) == 0.08   # too few images
    assert C.content_word_images([[["a", "red", "cup"]], [["a", "cup"]]], 2) == {
        "red": {0}, "cup": {0, 1}}


def test_discover_drops_poor_clusters_and_keeps_the_nearest_members():
    rng = np.random.default_rng(0)
    centres = np.eye(4, DIM) * 20
    emb, image = [], []
    for c in range(3):                     # good: spread over many images
        emb.append(centres[c] + rng.normal(size=(50, DIM)))
        image.append(rng.integers(0, 60, 50))
    emb.append(centres[3] + rng.normal(size=(50, DIM)))   # poor: every segment from one image
    image.append(np.full(50, 7))
    emb, image = np.concatenate(emb).astype(np.float32), np.concatenate(image)
    found = C.discover(emb, image, n_clusters=4, n_discovery=60, max_per_concept=40)
    assert all("images" in why for why in found.dropped.values())
    assert len(found.kept) == 3 and len(found.dropped) == 1
    dropped = next(iter(found.dropped))
    assert set(image[found.assignment == dropped]) == {7}
    for m, members in zip(found.kept, found.members):
        assert len(members) == 40
        inside = np.flatnonzero(found.assignment == m)
        d = np.linalg.norm(emb[inside] - found.centres[m], axis=1)
        assert np.linalg.norm(emb[members] - found.centres[m], axis=1).max() <= np.sort(d)[39] + 1e-5




def test_discovery_per_word_clusters_each_words_images_on_their_own():
    """Two words' images, each with its own object (a tight blob) on a background shared
    by all: each word's run finds its object, and the paper's filter judges a cluster by
    the share of that word's images it covers."""
    rng = np.random.default_rng(1)
    objects = {"cup": np.eye(3, DIM)[0] * 20, "dog": np.eye(3, DIM)[1] * 20}
    images = {"cup": set(range(0, 30)), "dog": set(range(30, 60)) | {0}}   # image 0 has both
    emb, image, truth = [], [], []
    for i in range(60):
        for word in [w for w in objects if i in images[w]]:
            emb.append(objects[word] + rng.normal(size=DIM))
            image.append(i)
            truth.append(word)
        for _ in range(2):                                       # background, everywhere
            emb.append(np.eye(3, DIM)[2] * 20 + rng.normal(size=DIM))
            image.append(i)
            truth.append("background")
    emb, image, truth = np.asarray(emb, np.float32), np.asarray(image), np.asarray(truth)
    found = C.discover_per_word(emb, image, images | {"rare": {5, 6}}, n_clusters=2,
                                min_size=10)
    assert found.words == ["cup", "cup", "dog", "dog"]         # "rare": too few images
    assert len(found.centres) == 4 and len(found.assignment) == len(found.rows)
    # image 0's segments are clustered in both runs
    assert (found.clustered_segments() == np.flatnonzero(image == 0)[0]).sum() == 2
    found_in = set()
    for m, members in zip(found.kept, found.members):
        assert set(found.segments_of(m)) >= set(members)
        assert set(image[found.segments_of(m)]) <= images[found.words[m]]
        name, count = Counter(truth[members]).most_common(1)[0]
        assert count >= 0.9 * len(members)
        found_in.add((found.words[m], name))
    assert found_in == {("cup", "cup"), ("cup", "background"), ("dog", "dog"), ("dog", "background")}
    with pytest.raises(ValueError, match="no word has 5 discovery images"):
        C.discover_per_word(emb, image, {"rare": {5, 6}}, n_clusters=2)
    # each word's run clusters only the segments relevant to that word
    relevant = [{t} if t != "background" else set() for t in truth]
    found = C.discover_per_word(emb, image, images, n_clusters=1, min_size=10,
                                relevant=relevant)
    assert found.words == ["cup", "dog"] and found.kept == [0, 1]
    for m in (0, 1):
        assert set(truth[found.segments_of(m)]) == {found.words[m]}
# -- segments, patches and names -------------------------------------------------------------
def test_unique_segments_drops_tiny_and_duplicate_segments():
    coarse = np.zeros((20, 20), int)
    coarse[:, 10:] = 1
    fine = coarse.copy() * 2          # the same halves (duplicates) ...
    fine[:, :10] = 0
    fine[0, 0] = 1                    # ... and one pixel alone (tiny at 1 %)
    kept = A.MIN_SEGMENT_FRACTION
    assert C.unique_segments([coarse, fine], min_fraction=0.01) == [(0, 0), (0, 1)]
    assert kept == 0.001


def test_both_segmentations_label_every_pixel_and_felzenszwalb_finds_a_whole_shape():
    from source_code.data.synthetic import generate_scene
    scene = generate_scene(31_000_002, image_size=160, n_objects=1)
    best = {}
    mask = scene.objects[0].mask
    for method, levels in A.SEGMENTATIONS.items():
        for level in levels:
            labels = A.segment(scene.image, level, method)
            assert labels.shape == (160, 160) and labels.min() == 0
            assert set(np.unique(labels)) == set(range(int(labels.max()) + 1))
            best[method] = max([best.get(method, 0)] + [
                ((labels == s) & mask).sum() / ((labels == s) | mask).sum()
                for s in range(int(labels.max()) + 1)])
    # a flat shape on a printed sheet: some Felzenszwalb segment is nearly all of it
    assert best["felzenszwalb"] > 0.8, best
    with pytest.raises(ValueError, match="unknown segmentation"):
        A.segment(scene.image, 10, "watershed")


def test_segment_truth_names_the_object_covering_half_of_a_segment():
    labels = np.zeros((10, 10), int)
    labels[:, 5:] = 1
    labels[:2, :2] = 2
    mask = np.zeros((10, 10), bool)
    mask[:, 6:] = True                # 80 % of segment 1
    truth = C.segment_truth(labels, [0, 1, 2], [(mask, ("red", "circle"))])
    assert truth == [(C.BACKGROUND,), ("red", "circle"), (C.BACKGROUND,)]


def test_ace_patch_is_grey_outside_the_segment_and_square():
    image = np.full((40, 40, 3), 200, np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[5:15, 10:30] = True          # 10 x 20: padded to a square with grey
    patch = A.ace_patch(image, mask, 32)
    assert patch.shape == (32, 32, 3)
    assert (patch[0, 16] == A.GREY).all() and (patch[16, 16] == 200).all()


def test_names_from_ground_truth_take_the_most_specific_agreeing_level():
    red_circle, red_square = ("red", "circle"), ("red", "square")
    name, purity, level, _ = C.name_from_truth([red_circle] * 19 + [red_square])
    assert (name, purity, level) == ("red circle", 0.95, (0, 1))
    name, purity, _, by = C.name_from_truth([red_circle] * 10 + [red_square] * 10)
    assert (name, purity) == ("red", 1.0) and by["0 + 1"] == 0.5
    name, purity, _, _ = C.name_from_truth([(C.BACKGROUND,)] * 9 + [red_circle])
    assert (name, purity) == ("background", 0.9)
    mixed = [red_circle] * 5 + [("blue", "circle")] * 3 + [("blue", "square")] * 2
    name, purity, _, _ = C.name_from_truth(mixed)       # no level reaches 0.9: the purest
    assert (name, purity) == ("circle", 0.8)
    assert C.name_from_truth([("cup",)] * 8 + [("dog",)] * 2, levels=((0,),))[:2] == ("cup", 0.8)
    # no majority on any level: unnamed, never dressed up; its purity still says how mixed
    split = [("cup",)] * 3 + [(C.BACKGROUND,)] * 3 + [("dog",)] * 2 + [("cat",)] * 2
    assert C.name_from_truth(split, levels=((0,),))[:2] == ("", 0.3)
    assert C.name_from_truth([red_circle] * 5 + [("blue", "square")] * 5)[:2] == ("", 0.5)


def test_names_from_tcav_use_significant_content_words():
    table = {"cup": {"c01": {"tcav": 0.9, "significant": True}},
             "a": {"c01": {"tcav": 1.0, "significant": True}},
             "table": {"c01": {"tcav": 0.7, "significant": True}},
             "dog": {"c01": {"tcav": 0.95, "significant": False}},
             "cat": {"c01": {"tcav": 0.2, "significant": True}}}
    assert C.name_from_tcav(table, "c01") == "cup, table"
    assert C.name_from_tcav(table, "c02") == ""


# -- a small bank on the tiny model ----------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    from conftest import make_tiny_captioner
    return make_tiny_captioner(seed=2)


@pytest.fixture(scope="module")
def small_bank(tiny, tmp_path_factory):
    """A bank as a bundle holds it: saved, so its example patches are files (a request's
    JSON links or inlines them)."""
    images, captions, truths = C.world_examples("shapes", 8, 20_000_000, tiny.input_size, False)
    bank, patches = C.build_concept_bank(tiny, images, captions, truths, n_clusters=6,
                                         resolutions=(15, 50), min_cluster_size=3,
                                         random_sets=4, min_word_examples=2, progress=False)
    C.save_bank(bank, patches, tmp_path_factory.mktemp("small_bank"))
    return bank, patches


def test_small_bank_is_named_from_ground_truth_and_round_trips(small_bank, tmp_path):
    bank, patches = small_bank
    assert len(bank) >= 1 and bank.cavs.shape == (len(bank), bank.matcher_w.shape[1])
    assert len(bank.matcher_w) == len(bank.matcher_b) == bank.info["clusters"] >= len(bank)
    assert all(by == "ground truth" for by in bank.named_by)
    assert all(0 < p <= 1 for p in bank.purity)
    assert set(patches) == set(bank.ids) and all(p[0].shape == (64, 64, 3) for p in patches.values())
    for row in bank.word_scores.values():
        assert set(row) <= set(bank.ids)
        assert all({"tcav", "p_value", "p_adjusted", "significant"} <= set(s) for s in row.values())
    root = C.save_bank(bank, patches, tmp_path)
    (root / A.RENAMES_FILE).write_text(json.dumps({bank.ids[0]: "my concept", "c99": "x"}))
    loaded = A.ConceptBank.load(tmp_path)
    assert loaded.ids == bank.ids and np.allclose(loaded.cavs, bank.cavs)
    assert loaded.names[0] == "my concept" and loaded.named_by[0] == "user"
    assert loaded.patch_png(bank.ids[0], 0).startswith(b"\x89PNG")
    assert loaded.patch_png(bank.ids[0], 99) is None and loaded.patch_png("c99", 0) is None
    C.save_bank(bank, patches, tmp_path)             # a rebuild keeps a person's names
    assert A.ConceptBank.load(tmp_path).names[0] == "my concept"


def test_a_bank_naming_a_path_outside_its_patches_is_refused(small_bank, tmp_path):
    from source_code.model.captioner import BundleError
    bank, patches = small_bank
    root = C.save_bank(bank, patches, tmp_path)
    meta = json.loads((root / "bank.json").read_text())
    meta["concepts"][0]["patches"] = ["../../config.json"]
    (root / "bank.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="outside"):
        A.ConceptBank.load(tmp_path)
    meta["concepts"][0]["patches"] = []
    meta["schema"] = 1
    (root / "bank.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="rebuild"):
        A.ConceptBank.load(tmp_path)


def test_a_felzenszwalb_bank_records_its_segmentation_and_requests_follow_it(tiny, tiny_loaded):
    images, captions, truths = C.world_examples("shapes", 6, 20_000_000, tiny.input_size, False)
    bank, _ = C.build_concept_bank(tiny, images, captions, truths, n_clusters=4,
                                   segmentation="felzenszwalb", min_cluster_size=2,
                                   random_sets=3, min_word_examples=2, progress=False)
    assert bank.info["segmentation"] == "felzenszwalb"
    assert bank.info["resolutions"] == list(A.SEGMENTATIONS["felzenszwalb"])
    assert A.bank_segmentation(bank) == "felzenszwalb" and A.bank_segmentation(None) == "slic"
    ace = _explain(tiny_loaded, bank)["explanations"]["ace"]
    assert ace["segmentation"] == "felzenszwalb"
    assert ace["resolution"] == A.SEGMENTATIONS["felzenszwalb"][-1]
    with pytest.raises(ValueError, match="unknown segmentation"):
        C.build_concept_bank(tiny, images, captions, truths, segmentation="quickshift",
                             progress=False)



@pytest.fixture(scope="module")
def word_bank(tiny):
    """A bank discovered per word on the tiny model (and its discovery scenes' captions)."""
    images, captions, truths = C.world_examples("shapes", 8, 20_000_000, tiny.input_size, False)
    bank, _ = C.build_concept_bank(tiny, images, captions, truths, n_clusters=3,
                                   discovery="word", resolutions=(15,), min_cluster_size=2,
                                   random_sets=3, min_word_examples=2, progress=False)
    return bank, captions, len(images)


def test_a_bank_discovered_per_word_serves_requests(tiny, tiny_loaded, word_bank):
    """Discovery per word end to end on the tiny model: every concept says in whose images
    it was found, the matcher covers every word's clusters, and a request ranks them."""
    bank, captions, n = word_bank
    words = C.content_word_images(captions, n)
    assert bank.info["discovery"] == "word" and len(bank) >= 1
    assert {bank.details[cid]["discovered_in"] for cid in bank.ids} <= set(words)
    runs = sum(1 for imgs in words.values() if len(imgs) >= 5)
    assert len(bank.matcher_w) == bank.info["clusters"] == 3 * runs
    # every cluster records its word: the kept ones agree with their concept's
    cluster_words = bank.info["cluster_words"]
    assert len(cluster_words) == len(bank.matcher_w) and set(cluster_words) <= set(words)
    for m, k in enumerate(bank.cluster_concept):
        if k >= 0:
            assert cluster_words[m] == bank.details[bank.ids[k]]["discovered_in"]
    ace = _explain(tiny_loaded, bank)["explanations"]["ace"]
    assert ace["concepts"] and all(c["id"] in bank.ids for c in ace["concepts"])
    with pytest.raises(ValueError, match="unknown discovery"):
        images, captions, truths = C.world_examples("shapes", 2, 20_000_000, tiny.input_size, False)
        C.build_concept_bank(tiny, images, captions, truths, discovery="class", progress=False)


@pytest.mark.parametrize("raising_only", [True, False])
def test_a_word_reads_its_own_concepts_where_they_lie(tiny_loaded, word_bank, raising_only,
                                                      monkeypatch):
    """In a bank discovered per word, a word's concepts stand on the segments matched to
    them among all clusters or, on the segments that raise the word (or on every segment),
    among the clusters of the word's own images; their evidence is the shrunk mean of
    ds_t/dA_hw . v_C over those segments' cells. Recomputed here from the segments, the
    matcher and the teacher pass."""
    monkeypatch.setattr(A, "OWN_MATCH_RAISING_ONLY", raising_only)
    bank, cap = word_bank[0], tiny_loaded
    out, grads, fmap, cover, concept_of = _explained_and_recomputed(cap, bank)
    region = A.region_embeddings(np.asarray(fmap)[0], cover)
    prior = A.EVIDENCE_PRIOR_CELLS["word"]
    assert prior > 0
    checked = own_only = 0
    for t, (w, m) in enumerate(zip(out["words"], out["explanations"]["ace"]["words"])):
        clusters = bank.clusters_of_word(w)
        own = (bank.match(region, clusters)[0] if clusters is not None
               else np.full(len(concept_of), -1))
        if raising_only:    # grad x activation pooled over the segment, positive
            raises = np.einsum("hwc,hwc,shw->s", grads[t], np.asarray(fmap)[0], cover) > 0
            own = np.where(raises, own, -1)
        expected = {int(k) for k in np.concatenate([concept_of, own]) if k >= 0}
        assert {bank.ids.index(c["id"]) for c in m["concepts"]} == expected
        for c in m["concepts"]:
            k = bank.ids.index(c["id"])
            stands = (concept_of == k) | (own == k)
            own_only += bool(((own == k) & (concept_of != k)).any())
            presence = cover[stands].sum(0)
            local = (grads[t] @ bank.cavs[k] * presence).sum() / (presence.sum() + prior)
            assert c["evidence"] == pytest.approx(float(local), rel=1e-3, abs=1e-9)
            checked += 1
    assert checked and own_only, "no word's own clusters placed a concept elsewhere"


def test_relevant_segments_are_each_words_most_raising_ones(tiny):
    """Per caption word, the top segments by grad x activation (positive only); the same
    teacher pass gives the word gradients TCAV reads."""
    from source_code.explain.target import caption_target, teacher_pass
    images, captions, _ = C.world_examples("shapes", 2, 20_000_000, tiny.input_size, False)
    pixels = tiny.preprocess(images[0])
    fmap = tiny.features(pixels).numpy()
    labels = A.segment(np.asarray(pixels[0]).astype(np.uint8), 15)
    cover = A.coverage(labels, tiny.grid)
    words_of, grads = C.relevant_segments(tiny, fmap, captions[0], cover, top=2)
    words = captions[0][0]
    g = teacher_pass(tiny, fmap, caption_target(tiny, words)).gradients.numpy()
    importance = A.segment_importance(fmap[0], g, cover)
    for t, w in enumerate(words):
        chosen = {j for j, ws in enumerate(words_of) if w in ws}
        if w in A.FUNCTION_WORDS:
            assert not chosen
            continue
        best = [j for j in np.argsort(-importance[t], kind="stable")[:2] if importance[t, j] > 0]
        assert chosen == set(best)
    expected = C.word_gradient_examples(tiny, images[:1], captions[:1], [fmap], progress=False)
    assert set(grads) == set(expected)
    for w in grads:
        assert np.allclose(np.asarray(grads[w]), expected[w], atol=1e-5)


def test_a_bank_of_relevant_segments_embeds_and_clusters_only_them(tiny, tiny_loaded):
    images, captions, truths = C.world_examples("shapes", 8, 20_000_000, tiny.input_size, False)
    kw = dict(n_clusters=2, discovery="word", resolutions=(15,), min_cluster_size=2,
              random_sets=3, min_word_examples=2, progress=False)
    segs, fmaps = C.collect_segments(tiny, images, (15,), truths, captions=captions,
                                     relevant_per_word=2, progress=False)
    embedded = np.isfinite(segs.embeddings).all(1)
    assert embedded.any() and not embedded.all()
    assert (embedded == np.array([bool(r) for r in segs.relevant])).all()
    # the discovery images' teacher passes are TCAV's word gradients
    expected = C.word_gradient_examples(tiny, images, captions, fmaps, progress=False)
    assert set(segs.word_grads) == set(expected)
    assert all(np.allclose(segs.word_grads[w], expected[w], atol=1e-5) for w in expected)
    bank, _ = C.build_concept_bank(tiny, images, captions, truths, relevant_per_word=2,
                                   discovery_images=6, **kw)
    assert bank.info["relevant_per_word"] == 2 and len(bank) >= 1
    assert bank.info["segments_embedded"] < bank.info["segments"]
    assert _explain(tiny_loaded, bank)["explanations"]["ace"]["concepts"]
    with pytest.raises(ValueError, match="relevant_per_word"):
        C.build_concept_bank(tiny, images, captions, truths, relevant_per_word=2,
                             discovery="world", progress=False)


def test_a_bank_batches_its_backbone_passes_without_changing_them(tiny, monkeypatch):
    """Scenes and patches go through the backbone several at a time (a call on one image
    costs more an image); each scene's map and each patch's embedding are what a pass of
    its own gives."""
    images, captions, truths = C.world_examples("shapes", 5, 20_000_000, tiny.input_size, False)
    monkeypatch.setattr(C, "embed_batch_size", lambda size: 2)
    calls = []
    features = tiny.features
    monkeypatch.setattr(tiny, "features", lambda x: calls.append(len(x)) or features(x))
    segs, fmaps = C.collect_segments(tiny, images, (15,), truths, progress=False)
    assert max(calls) == 2 and len(calls) < len(images) + len(segs.embeddings)
    for view, fmap in zip(segs.views, fmaps):
        assert fmap.shape == (1,) + features(view[None].astype(np.float32)).shape[1:]
        assert np.allclose(fmap, features(view[None].astype(np.float32)).numpy(), atol=1e-4)
    for n in (0, len(segs.embeddings) - 1):
        alone = C._embed_batch(tiny, [segs.patch(n, tiny.input_size)])[0]
        assert np.allclose(segs.embeddings[n], alone, atol=1e-4)


def test_unnamed_concepts_say_so(small_bank):
    bank = small_bank[0]
    saved = bank.names[0]
    bank.names[0] = ""
    try:
        assert bank.label(0) == f"unnamed concept {bank.ids[0]}"
    finally:
        bank.names[0] = saved


# -- the request-time JSON -------------------------------------------------------------------
CONCEPT_KEYS = {"id", "name", "sensitivity", "evidence", "tcav", "p_value", "significant",
                "lowers", "purity", "heatmap"}


@pytest.fixture(scope="module")
def tiny_loaded(tiny_bundle):
    """The saved tiny bundle, loaded once (its compiled functions trace once)."""
    from source_code.model.captioner import Captioner
    return Captioner.load(tiny_bundle)


def _explain(captioner, bank, **kw):
    from source_code.data.synthetic import generate_scene
    from source_code.explain.pipeline import Explainer
    explainer = Explainer(captioner, concept_bank=bank)
    image = generate_scene(31_000_001, image_size=captioner.input_size, n_objects=2).image
    return explainer.explain(image, methods="ace", adversarial=False, **kw)


def _explained_and_recomputed(cap, bank):
    """_explain's answer, and what a test recomputes it from: the teacher pass's gradients,
    the feature map, the segments' coverage and the concept each segment matches."""
    from source_code.data.synthetic import generate_scene
    from source_code.explain.target import caption_target, teacher_pass
    out = _explain(cap, bank)
    image = generate_scene(31_000_001, image_size=cap.input_size, n_objects=2).image
    pixels = cap.preprocess(image)
    fmap = cap.features(pixels)
    grads = teacher_pass(cap, fmap, caption_target(cap, out["words"])).gradients.numpy()
    _, cover, _, concept_of, _ = A.locate_concepts(cap, pixels, fmap, bank)
    return out, grads, fmap, cover, concept_of


def _check_grid(grid, limit=64):
    g = np.asarray(grid)
    assert g.ndim == 2 and max(g.shape) <= limit and 0 <= g.min() and g.max() <= 1


def test_ace_json_without_a_bank(tiny_loaded):
    out = _explain(tiny_loaded, None)
    ace = out["explanations"]["ace"]
    assert len(ace["words"]) == len(out["words"])
    _check_grid(ace["caption"]["heatmap"])
    assert ace["caption"]["concepts"] == [] and all(w["concepts"] == [] for w in ace["words"])
    assert ace["concepts"] == [] and "no concept bank" in ace["note"]


def test_ace_json_with_a_bank(tiny_loaded, small_bank):
    bank = small_bank[0]
    out = _explain(tiny_loaded, bank, overlays=True)
    ace = out["explanations"]["ace"]
    assert len(ace["words"]) == len(out["words"]) and "adversarial" not in ace
    assert ace["bank"]["concepts"] == len(bank)
    assert ace["caption"]["overlay"].startswith("data:image/png")   # MAPs still get overlays
    for m in [ace["caption"]] + ace["words"]:
        _check_grid(m["heatmap"])
        evidence = [c["evidence"] for c in m["concepts"]]
        assert evidence == sorted(evidence, reverse=True), "ranked by the evidence where they lie"
        for c in m["concepts"]:
            assert CONCEPT_KEYS <= set(c)
            _check_grid(c["heatmap"], A.CONCEPT_MAP_SIDE)
            assert isinstance(c["significant"], bool)
            assert c["lowers"] is (c["significant"] and c["tcav"] < 0.5)
    present = {c["id"] for c in ace["concepts"]}
    assert present == {c["id"] for c in ace["caption"]["concepts"]}
    for c in ace["concepts"]:
        assert c["patches"] and all(p.startswith("data:image/png;base64,") for p in c["patches"])
        assert 0 < c["area"] <= 1
    # the per-word TCAV is the bank's own figure for that word
    for t, w in enumerate(out["words"]):
        for c in ace["words"][t]["concepts"]:
            score = bank.word_scores.get(w, {}).get(c["id"])
            assert c["tcav"] == (round(score["tcav"], 4) if score else None)


def test_patches_are_urls_when_the_web_layer_serves_them(tiny_loaded, small_bank):
    bank = small_bank[0]
    bank.patch_route = "/api/concepts/{key}/{concept}/{n}.png"
    try:
        ace = _explain(tiny_loaded, bank)["explanations"]["ace"]
    finally:
        bank.patch_route = None
    for c in ace["concepts"]:
        assert c["patches"][0] == f"/api/concepts/{bank.key}/{c['id']}/0.png"


def test_the_server_serves_the_patches_its_answers_link(tiny_loaded, small_bank, tmp_path):
    """Answers of the web app carry patch URLs (not inlined images); each URL gives the
    PNG, cacheable; a key of another bank or an unknown concept is a clear 404."""
    from source_code.data.synthetic import generate_scene
    from source_code.explain.pipeline import Explainer
    from source_code.web import create_app
    bank, patches = small_bank
    C.save_bank(bank, patches, tmp_path)
    loaded = A.ConceptBank.load(tmp_path)
    app = create_app({"QUEUE_SIZE": 2}, explainer=Explainer(tiny_loaded, concept_bank=loaded))
    client = app.test_client()
    image = generate_scene(31_000_001, image_size=tiny_loaded.input_size, n_objects=2).image
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    res = client.post("/api/explain", data={"image": (io.BytesIO(buf.getvalue()), "f.png"),
                                             "methods": "ace", "adversarial": "0"})
    assert res.status_code == 200 and res.headers["Cache-Control"] == "no-store"
    urls = [u for c in res.get_json()["explanations"]["ace"]["concepts"] for u in c["patches"]]
    assert urls and all(u.startswith(f"/api/concepts/{loaded.key}/") for u in urls)
    got = client.get(urls[0])
    assert got.status_code == 200 and got.mimetype == "image/png"
    _, _, _, _, concept, name = urls[0].split("/")
    assert got.data == loaded.patch_png(concept, int(name.removesuffix(".png")))
    assert "public" in got.headers["Cache-Control"]
    for bad in (urls[0].replace(loaded.key, "0" * len(loaded.key)),
                f"/api/concepts/{loaded.key}/c99/0.png", f"/api/concepts/{loaded.key}/{loaded.ids[0]}/99.png"):
        res = client.get(bad)
        assert res.status_code == 404 and "no such concept patch" in res.get_json()["error"]


def test_sensitivity_is_the_gradient_along_the_cav(tiny_loaded, small_bank):
    """S_C,t(x) = (sum_hw ds_t/dA) . v_C, recomputed from the teacher pass."""
    from source_code.data.synthetic import generate_scene
    from source_code.explain.target import caption_target, teacher_pass
    bank, cap = small_bank[0], tiny_loaded
    out = _explain(cap, bank)
    image = generate_scene(31_000_001, image_size=cap.input_size, n_objects=2).image
    fmap = cap.features(cap.preprocess(image))
    grads = teacher_pass(cap, fmap, caption_target(cap, out["words"])).gradients.numpy()
    checked = 0
    for t, m in enumerate(out["explanations"]["ace"]["words"]):
        for c in m["concepts"]:
            k = bank.ids.index(c["id"])
            assert c["sensitivity"] == pytest.approx(float(grads[t].sum((0, 1)) @ bank.cavs[k]),
                                                     rel=1e-3, abs=1e-9)
            checked += 1
    assert checked


def test_evidence_is_the_sensitivity_where_the_concept_lies(tiny_loaded, small_bank):
    """The ranking: ds_t/dA_hw . v_C averaged over the cells the concept's segments cover,
    weighted by how much of each they cover, recomputed from the segments and the pass."""
    bank, cap = small_bank[0], tiny_loaded
    out, grads, fmap, cover, concept_of = _explained_and_recomputed(cap, bank)
    checked = 0
    for t, m in enumerate(out["explanations"]["ace"]["words"]):
        for c in m["concepts"]:
            k = bank.ids.index(c["id"])
            presence = cover[concept_of == k].sum(0)                  # [gh, gw]
            local = (grads[t] @ bank.cavs[k] * presence).sum() / presence.sum()
            assert c["evidence"] == pytest.approx(float(local), rel=1e-3, abs=1e-9)
            checked += 1
    assert checked


def test_the_caption_cards_speak_of_content_words(tiny_loaded, small_bank):
    """For the whole caption a card names the caption's word the concept is most
    significant for among its content words, not "a" or "of", wherever it can."""
    from source_code.data.synthetic import generate_scene
    bank = small_bank[0]
    scene = generate_scene(31_000_001, image_size=tiny_loaded.input_size, n_objects=2)
    out = _explain(tiny_loaded, bank, caption=scene.caption)
    spoken_of = 0
    for c in out["explanations"]["ace"]["caption"]["concepts"]:
        content = [w for w in out["words"] if w not in A.FUNCTION_WORDS
                   and bank.word_score(w, bank.ids.index(c["id"]))]
        if content:
            assert c["tcav_word"] in content and set(c["significant_for"]) <= set(content)
            spoken_of += 1
    assert spoken_of, "no caption card had a content word to speak of"


def test_a_world_bank_follows_its_worlds_recipe_unless_told_otherwise(monkeypatch):
    """objects: per-word discovery on Felzenszwalb's coarsest scale; shapes: one k-means
    over SLIC; a caller's choice wins, and the world's levels never go to another
    segmentation."""
    calls = []
    monkeypatch.setattr(C, "world_examples", lambda world, n, *a: ([None] * n, [], []))
    monkeypatch.setattr(C, "build_concept_bank", lambda cap, images, *a, **k: (
        calls.append({"images": len(images), **k}), (A.ConceptBank([], [], [], [], *[np.zeros((0,))] * 4,
                                                                  {}, {}), {}))[1])

    class Cap:
        input_size = 32

        def __init__(self, world):
            self.config = {"world": world}

    C.build_world_bank(Cap("objects"), progress=False)
    C.build_world_bank(Cap("objects"), clusters=5, segmentation="slic", discovery=None,
                       progress=False)
    C.build_world_bank(Cap("objects"), discovery="world", progress=False)
    C.build_world_bank(Cap("objects"), embedding="region", relevant_per_word=None,
                       progress=False)
    C.build_world_bank(Cap("shapes"), progress=False)
    objects, objects_slic, objects_world, objects_region, shapes = calls
    assert objects["discovery"] == "word" and objects["segmentation"] == "felzenszwalb"
    assert objects["resolutions"] == (1200,) and objects["n_clusters"] == 8
    assert objects["discovery_images"] == 3000 and objects["images"] == 3000
    assert objects["relevant_per_word"] == 3
    assert objects_slic["segmentation"] == "slic" and "resolutions" not in objects_slic
    assert objects_slic["discovery"] == "word" and objects_slic["n_clusters"] == 5
    assert objects_slic["relevant_per_word"] == 3
    # relevance picks per-word discovery's patches: another discovery or embedding drops it
    assert objects_world["discovery"] == "world" and "relevant_per_word" not in objects_world
    assert objects_region["embedding"] == "region" and "relevant_per_word" not in objects_region
    assert "relevant_per_word" not in shapes
    assert shapes["discovery"] == "world" and shapes["segmentation"] == "slic"
    assert shapes["n_clusters"] == 40 and "min_cluster_size" not in shapes
    assert shapes["discovery_images"] == 400 and shapes["images"] == 800


def test_the_ranking_variants_of_the_benchmark_restore_the_shipped_ranking(word_bank):
    """bench/ace_concepts.py --ranking-variants swaps the request-time matching and prior
    for the duration of a variant, and puts the shipped ones back."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from ace_concepts import ranking_variant
    bank = word_bank[0]
    word = bank.info["cluster_words"][0]
    shipped = dict(A.EVIDENCE_PRIOR_CELLS), A.OWN_MATCH_RAISING_ONLY
    with ranking_variant(bank, "no", 2.5):
        assert bank.clusters_of_word(word) is None
        assert set(A.EVIDENCE_PRIOR_CELLS.values()) == {2.5}
    with ranking_variant(bank, "every", 0.0):
        assert A.OWN_MATCH_RAISING_ONLY is False and bank.clusters_of_word(word) is not None
    assert (A.EVIDENCE_PRIOR_CELLS, A.OWN_MATCH_RAISING_ONLY) == shipped
    assert word in [bank.info["cluster_words"][m] for m in bank.clusters_of_word(word)]
