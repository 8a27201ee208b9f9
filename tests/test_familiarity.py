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
