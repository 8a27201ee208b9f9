"""Where model bundles live and how a name or a folder picks one.

The repository ships two bundles under ``models/``: ``objects`` (the default:
everyday things, what a webcam should be pointed at) and ``shapes`` (printed
shapes with exact ground truth, the faithfulness lab). ``--bundle`` and
``$CAPTION_BUNDLE`` take either a bundle's name (a folder under ``models/``)
or a path to any bundle directory.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLES_DIR = REPO_ROOT / "models"
DEFAULT_NAME = "objects"
BUNDLE_ENV = "CAPTION_BUNDLE"


def resolve_bundle(name_or_dir: str | os.PathLike | None = None) -> Path:
    """A bundle name under models/ or a directory -> its path; None -> $CAPTION_BUNDLE
    or the default. Only resolves: Captioner.load says what is wrong with a bundle."""
    value = str(name_or_dir or os.environ.get(BUNDLE_ENV) or DEFAULT_NAME)
    named = BUNDLES_DIR / value
    if os.sep not in value and "/" not in value and (named / "config.json").is_file():
        return named
    return Path(value)


def default_bundle() -> Path:
    return resolve_bundle(None)


def list_bundles() -> list[dict]:
    """The bundles shipped under models/: name, path and one line from the model card."""
    out = []
    for cfg in sorted(BUNDLES_DIR.glob("*/config.json")):
        try:
            card = json.loads(cfg.read_text())
        except ValueError:
            continue
        out.append({"name": cfg.parent.name, "path": str(cfg.parent),
                    "description": card.get("description", ""),
                    "default": cfg.parent.name == DEFAULT_NAME})
    return out
