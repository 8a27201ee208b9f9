"""Photographs inside Debian's ``gcompris-qt-data`` (GPL-3+), read with Qt's own resource reader.

GCompris packs each activity's images into a compiled Qt resource file
(``/usr/share/gcompris-qt/rcc/<activity>.rcc``); PySide6's ``QResource`` mounts one
under a prefix and ``QFile`` reads a member, so nothing here parses Qt's format by
hand. Its activities carry real photographs of animals, monuments and household
things, which serve the objects world as *validation* photographs (see
``evaluation/validation_photos.py``): never trained on, and not the test photos.

A source is written ``gcompris:<activity>/<path inside the activity's resource folder>``,
e.g. ``gcompris:explore_farm_animals/animals/cat.webp``.
"""
from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

RCC_DIR = Path("/usr/share/gcompris-qt/rcc")
PACKAGE = "gcompris-qt-data"      # GPL-3+ (README, licences)


class GcomprisMissing(OSError):
    """The Debian package or the Qt reader is not installed."""


@lru_cache(maxsize=None)
def _mount(activity: str) -> str:
    """Mount one activity's resource file (once) and return its prefix."""
    try:
        from PySide6.QtCore import QResource
    except ImportError as e:
        raise GcomprisMissing("reading GCompris photographs needs PySide6-Essentials "
                              "(pip install -r requirements.txt)") from e
    path = RCC_DIR / f"{activity}.rcc"
    if not path.is_file():
        raise GcomprisMissing(f"{path} is missing: install Debian's {PACKAGE} "
                              f"(apt-get install {PACKAGE})")
    prefix = f"/gcompris-{activity}"
    if not QResource.registerResource(str(path), prefix):
        raise GcomprisMissing(f"Qt could not read {path} as a resource file")
    return prefix


def read_bytes(source: str) -> bytes:
    """The bytes of ``gcompris:<activity>/<path>``."""
    from PySide6.QtCore import QFile, QIODevice
    activity, _, inner = source.removeprefix("gcompris:").partition("/")
    prefix = _mount(activity)
    name = f":{prefix}/gcompris/src/activities/{activity}/resource/{inner}"
    f = QFile(name)
    if not f.open(QIODevice.OpenModeFlag.ReadOnly):
        raise GcomprisMissing(f"{source}: no such image in {PACKAGE}")
    try:
        return bytes(f.readAll().data())
    finally:
        f.close()


def load_image(source: str) -> np.ndarray:
    """``gcompris:...`` -> RGB uint8 array (transparent parts on white, as the game shows them)."""
    with Image.open(io.BytesIO(read_bytes(source))) as im:
        im = im.convert("RGBA")
        canvas = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(canvas, im).convert("RGB"))
