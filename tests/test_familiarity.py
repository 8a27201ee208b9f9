"""Familiarity: calibrated on held-out in-world frames, low for frames from elsewhere."""
import numpy as np

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
