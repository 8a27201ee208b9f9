"""Bundles by name or directory, and the list the page and /healthz show."""
from source_code.model.bundles import BUNDLES_DIR, list_bundles, resolve_bundle


def test_names_resolve_under_models_and_paths_stay_paths(tmp_path, monkeypatch):
    monkeypatch.delenv("CAPTION_BUNDLE", raising=False)
    assert resolve_bundle("shapes") == BUNDLES_DIR / "shapes"
    assert resolve_bundle(None) == BUNDLES_DIR / "objects"
    assert resolve_bundle(str(tmp_path)) == tmp_path
    assert resolve_bundle("no-such-name").name == "no-such-name"     # Captioner.load says why
    monkeypatch.setenv("CAPTION_BUNDLE", "shapes")
    assert resolve_bundle(None) == BUNDLES_DIR / "shapes"


def test_the_shipped_bundles_are_listed_with_the_default_marked():
    bundles = {b["name"]: b for b in list_bundles()}
    assert bundles["objects"]["default"] and not bundles["shapes"]["default"]
    assert all(b["description"] for b in bundles.values())
