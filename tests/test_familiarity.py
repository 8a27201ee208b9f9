"""Familiarity: calibrated on held-out in-world frames, low for frames from elsewhere."""
import numpy as np
import pytest

from source_code.model.familiarity import Familiarity, describe


def _world(rng, n, centre):
    """Feature maps whose pooled vectors lie around ``centre`` (one 'world')."""
    maps = rng.normal(0, 0.3, (n, 2, 2, 16)) + centre
    return np.maximum(maps, 0).astype(np.float32)


def test_in_world_frames_pass_at_the_calibrated_rate_and_others_fail(tmp_path):
    rng = np.random.default_rng(0)
    home, away = np.zeros(16), np.zeros(16)
    home[:8], away[8:] = 2.0, 2.0
    model = Familiarity.fit(describe(_world(rng, 400, home)), describe(_world(rng, 300, home)),
                            components=8)
    fresh = model.score(_world(rng, 300, home))
    foreign = model.score(_world(rng, 50, away))
    in_rate = np.mean([f for f, _ in fresh])
    assert 0.95 <= in_rate <= 1.0            # the floor lets about 99 % of in-world frames pass
    assert not any(f for f, _ in foreign)
    assert all(0.0 <= p <= 1.0 for _, p in fresh + foreign)
    model.save(tmp_path)
    again = Familiarity.load(tmp_path)
    assert again.score(_world(np.random.default_rng(5), 20, away)) == \
        model.score(_world(np.random.default_rng(5), 20, away))


def test_a_bundle_without_calibration_claims_nothing():
    assert Familiarity.load("/nonexistent") is None


def test_the_floor_is_set_where_negatives_separate_best():
    from source_code.model import familiarity as F
    # negatives all far below every candidate floor: the lowest floor already flags them
    assert F.choose_floor(np.zeros(50)) == F.FLOOR
    # half the negatives at 0.03: raising the floor above 0.03 flags them (+0.5) for
    # 0.005 more in-world scenes lost; further raising buys nothing
    negatives = np.r_[np.zeros(25), np.full(25, 0.03)]
    assert F.choose_floor(negatives) == 0.035
    # negatives as typical as in-world scenes: never above MAX_FLOOR
    assert F.choose_floor(np.full(50, 0.5)) == F.FLOOR


def test_fit_with_negatives_raises_the_floor_where_they_lie():
    rng = np.random.default_rng(1)
    home, near = np.zeros(16), np.zeros(16)
    home[:8], near[:8], near[8] = 2.0, 2.0, 0.6         # "near": the world's look without its objects
    train, calib = describe(_world(rng, 400, home)), describe(_world(rng, 300, home))
    plain = Familiarity.fit(train, calib, components=8)
    tuned = Familiarity.fit(train, calib, components=8,
                            negative_vectors=describe(_world(np.random.default_rng(3), 200, near)))
    assert plain.floor == 0.01 and 0.01 < tuned.floor <= 0.05
    probe = _world(np.random.default_rng(4), 200, near)        # fresh negatives
    flagged = lambda m: np.mean([not f for f, _ in m.score(probe)])
    assert flagged(tuned) >= flagged(plain) + 0.2
    fresh = tuned.score(_world(np.random.default_rng(5), 300, home))
    assert np.mean([f for f, _ in fresh]) >= 0.9               # in-world frames still pass


def _classifier(channels=16, nouns=2):
    """ImageNet-like classifier: class 0 is a kind of noun 0 and fires on channel 15."""
    kernel = np.zeros((channels, 1000), np.float32)
    kernel[15, 0] = 4.0
    class_nouns = np.zeros((1000, nouns), np.float32)
    class_nouns[0, 0] = 1.0
    return kernel, np.zeros(1000, np.float32), class_nouns


def test_noun_evidence_is_the_surest_cell_for_one_noun():
    from source_code.model.familiarity import noun_evidence
    maps = np.zeros((2, 3, 3, 16), np.float32)
    maps[1, 2, 1, 15] = 5.0                   # one cell of frame 1 shows the noun's class
    e = noun_evidence(maps, _classifier())
    assert e[0] == np.float32(1 / 1000)       # nothing anywhere: the uniform share
    expected = np.exp(20.0) / (np.exp(20.0) + 999)
    assert abs(e[1] - expected) < 1e-6


def test_imagenet_evidence_makes_an_atypical_frame_of_the_world_familiar(tmp_path):
    rng = np.random.default_rng(2)
    home, away = np.zeros(16), np.zeros(16)
    home[:8], away[8:15] = 2.0, 2.0
    train, calib = _world(rng, 400, home), _world(rng, 300, home)
    negatives = _world(rng, 200, away)
    negatives[:4, 0, 0, 15] = 3.0             # a few frames without an object look like one
    model = Familiarity.fit(describe(train), describe(calib), components=8)
    model.with_evidence(_classifier(), negatives)
    # the threshold lets at most 5 % of the negatives pass on evidence alone
    from source_code.model.familiarity import noun_evidence
    assert np.mean(noun_evidence(negatives, _classifier()) >= model.evidence_threshold) <= 0.05
    recognised = _world(rng, 10, away)
    recognised[:, 1, 1, 15] = 3.0             # a real photo of the world's noun: atypical
    assert all(f for f, _ in model.score(recognised))
    assert all(p < model.floor for _, p in model.score(recognised))   # still atypical
    plain = _world(rng, 10, away)
    plain[..., 15] = 0.0                      # nothing of the noun: still unfamiliar
    assert not any(f for f, _ in model.score(plain))
    model.save(tmp_path)
    again = Familiarity.load(tmp_path)
    assert again.evidence_threshold == np.float32(model.evidence_threshold)
    with pytest.raises(RuntimeError, match="classifier"):
        again.score(recognised)
    again.classifier = _classifier()
    assert again.score(recognised) == model.score(recognised)


def test_familiarity_from_trainings_cached_maps_equals_one_from_the_images(tmp_path):
    """The recipe's familiarity bank may read the training scenes' feature maps from
    training's float16 cache instead of passing the scenes through the backbone again:
    the fitted bank is the same to float16's rounding; no cache, or one with fewer
    scenes than the bank wants, means the images are read."""
    from conftest import make_tiny_captioner
    from source_code.data.datasets import load_dataset
    from source_code.data.synthetic import write_flickr8k_layout
    from source_code.training.features import cached_array
    from source_code.training.recipes import cached_training_maps, fit_familiarity
    from source_code.training.samples import load_images
    write_flickr8k_layout(tmp_path / "data", 30, seed=700, image_size=64, progress=False)
    dataset = load_dataset("flickr8k", tmp_path / "data")
    captioner = make_tiny_captioner()
    ids = dataset.splits["train"][:12]
    pixels = load_images([dataset.image_path(i) for i in ids], 64, False).astype(np.float32)
    out = tmp_path / "bundle"
    assert cached_training_maps(out, 12) is None
    cache = tmp_path / "bundle.work" / "features_train"
    features = captioner.features(pixels).numpy()

    def rows(start, stop):          # training's cache writer, stopped after one batch
        if start >= 4:
            raise KeyboardInterrupt
        return features[start:stop]
    with pytest.raises(KeyboardInterrupt):
        cached_array(rows, features.shape, "key", cache, "caching", False, batch_size=4)
    assert cached_training_maps(out, 2) is None      # an unfinished cache is not read
    cached_array(lambda a, b: features[a:b], features.shape, "key", cache, "caching", False,
                 batch_size=4)
    assert cached_training_maps(out, 13) is None
    maps = cached_training_maps(out, 10)
    assert maps.shape[0] == 10 and maps.dtype == np.float16
    calibration = list(pixels[:6])
    fit_familiarity(captioner, dataset, calibration, 10)
    from_images = captioner.familiarity
    fit_familiarity(captioner, dataset, calibration, 10, train_maps=maps)
    # (PCA directions may flip sign: compare what does not depend on it)
    np.testing.assert_allclose(captioner.familiarity.bank_residual, from_images.bank_residual,
                               atol=2e-3)
    np.testing.assert_allclose(captioner.familiarity.calibration, from_images.calibration,
                               atol=2e-3)
    other = np.random.default_rng(0).random(maps.shape).astype(np.float16)   # really read
    fit_familiarity(captioner, dataset, calibration, 10, train_maps=other)
    assert not np.allclose(captioner.familiarity.calibration, from_images.calibration,
                           atol=2e-3)


def test_the_evidence_quantile_is_chosen_where_validation_photos_separate_best():
    from source_code.model.familiarity import EVIDENCE_QUANTILES, choose_evidence_quantile
    negative = np.linspace(0, 1, 1001)                 # quantile q of it is q itself
    atypical = np.zeros(40)                            # p-values below any floor
    photos = (np.r_[np.full(36, 0.96), np.full(4, 0.3)], atypical)   # 90 % at 0.96
    outside = (np.r_[np.full(38, 0.2), np.full(2, 0.98)], atypical)  # 5 % at 0.98
    q, rows = choose_evidence_quantile(negative, photos, outside, floor=0.01)
    assert [r["quantile"] for r in rows] == list(EVIDENCE_QUANTILES)
    # thresholds 0.5 to 0.95 all let the same 36 photos and 2 outsiders pass: the strictest
    assert q == 0.95
    best = next(r for r in rows if r["quantile"] == q)
    assert best["familiar_in_world"] == 0.9 and best["unfamiliar_out_of_world"] == 0.95
    assert best["balanced_accuracy"] == max(r["balanced_accuracy"] for r in rows)
    # a typical frame (p-value at the floor) is familiar whatever its evidence
    q2, rows2 = choose_evidence_quantile(negative, (np.zeros(40), np.ones(40)), outside, 0.01)
    assert all(r["familiar_in_world"] == 1.0 for r in rows2) and q2 == max(EVIDENCE_QUANTILES)


def test_an_evidence_threshold_chosen_on_validation_photos_is_kept_with_its_quantile(tmp_path):
    rng = np.random.default_rng(3)
    home, away = np.zeros(16), np.zeros(16)
    home[:8], away[8:15] = 2.0, 2.0
    model = Familiarity.fit(describe(_world(rng, 300, home)), describe(_world(rng, 200, home)),
                            components=8)
    negatives = _world(rng, 200, away)
    photos, outside = _world(rng, 30, away), _world(rng, 30, away)
    photos[:, 1, 1, 15] = 3.0                 # photos of the world's noun: atypical, recognised
    model.with_evidence(_classifier(), negatives, validation=(photos, outside))
    assert model.evidence_choice and model.evidence_quantile in [r["quantile"] for r in
                                                                  model.evidence_choice]
    assert all(f for f, _ in model.score(photos)) and not any(f for f, _ in model.score(outside))
    model.save(tmp_path)
    again = Familiarity.load(tmp_path)
    assert again.evidence_quantile == model.evidence_quantile
    assert again.evidence_threshold == np.float32(model.evidence_threshold)
    plain = Familiarity.fit(describe(_world(rng, 300, home)), describe(_world(rng, 200, home)),
                            components=8).with_evidence(_classifier(), negatives)
    assert plain.evidence_quantile == 0.95 and plain.evidence_choice is None
