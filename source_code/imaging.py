"""Decoding untrusted image bytes into the RGB frames the captioner reads.

``decode_image`` is the one gate every upload, webcam frame and CLI file passes
through. It never writes anything to disk and it refuses, with a message a
person can act on, everything it cannot turn into a faithful picture:

* empty bodies, bytes that are not an image, images in any format outside
  ``ALLOWED_FORMATS`` (no other Pillow decoder, such as EPS through Ghostscript,
  ever sees an upload), truncated files (a cut-off JPEG is an error, never a
  half-grey picture: Pillow's ``LOAD_TRUNCATED_IMAGES`` must stay False, which
  is its default and which this module never changes);
* more than ``max_bytes`` bytes, or more than ``max_pixels`` pixels (checked
  from the header, before any pixel is decoded, so a "decompression bomb" costs
  nothing; Pillow's own bomb error and warning are reported the same way). Both
  raise ``ImageTooLarge`` (HTTP 413);
* images smaller than ``min_side`` pixels on a side (default 16): there is not
  enough picture to caption, and upscaling a thumbnail would only invent one,
  so they are refused (HTTP 400) rather than upscaled.

What it accepts is normalised to an ``H x W x 3`` ``uint8`` RGB array:

* EXIF orientation is applied (a phone photo taken upright comes out upright);
* animated images (GIF, APNG, WebP) give their first frame;
* greyscale (1, L, I, F), palette (P), CMYK and YCbCr images become RGB;
* transparency (LA, PA, RGBA, palette transparency) is composited on white;
* 16-bit images (I;16 PNG) are scaled to 8 bits (65535 -> 255), not clipped.
"""
from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 10 * 1024 * 1024      # 10 MiB
DEFAULT_MAX_PIXELS = 40_000_000           # 40 megapixels
MIN_SIDE = 16                             # pixels, on the shorter side

SUPPORTED = "JPEG, PNG, GIF, WebP, BMP or TIFF"
# The Pillow formats behind SUPPORTED (the JPEG opener also reads MPO, the JPEG with
# extra pictures that phones write). Pillow would otherwise try some 40 formats, EPS
# among them, whose load() runs Ghostscript on the upload: only these see untrusted bytes.
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
_TRANSPARENT_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


class ImageError(ValueError):
    """An upload that is not a usable image; ``status`` is the HTTP status to answer."""

    status = 400


class ImageTooLarge(ImageError):
    """Too many bytes or too many pixels."""

    status = 413


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.1f} megapixels"


def _bytes(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB" if n >= 1024 * 1024 else f"{n} bytes"


def decode_image(data: bytes, max_bytes: int | None = DEFAULT_MAX_BYTES,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 min_side: int = MIN_SIDE) -> np.ndarray:
    """Image file bytes -> ``H x W x 3`` uint8 RGB array (see the module docstring).

    Raises:
        ImageTooLarge: more than ``max_bytes`` bytes or ``max_pixels`` pixels.
        ImageError: anything else that is not a readable image of at least
            ``min_side`` pixels on each side.
    """
    if data is None or len(data) == 0:
        raise ImageError("the image is empty: no image data was received")
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageTooLarge(f"the image file is too large ({_bytes(len(data))}); "
                            f"the limit is {_bytes(max_bytes)}")
    try:
        im = Image.open(io.BytesIO(bytes(data)), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise ImageError(f"this file is not an image this server can read "
                         f"(send a {SUPPORTED} file)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge("the image has far too many pixels to be decoded safely") from None
    except Exception as exc:  # a malformed header can raise almost anything
        log.debug("image header rejected: %r", exc)
        raise ImageError("the image header is damaged and cannot be read") from None

    with im:
        width, height = im.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageTooLarge(f"the image is too large ({width} x {height} = "
                                f"{_megapixels(width * height)}); the limit is "
                                f"{_megapixels(max_pixels)}")
        if min(width, height) < min_side:
            raise ImageError(f"the image is too small ({width} x {height} pixels); it must be "
                             f"at least {min_side} pixels on each side")
        try:
            im.seek(0)          # animated images: the first frame
            im.load()           # decodes everything now: a truncated file fails here
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageTooLarge("the image has far too many pixels to be decoded safely") from None
        except Exception as exc:
            log.debug("image data rejected: %r", exc)
            if "truncated" in str(exc).lower():
                raise ImageError("the image file is incomplete (truncated): "
                                 "upload the whole file again") from None
            raise ImageError(f"the image data is damaged and cannot be decoded ({im.format or 'unknown'} "
                             "file)") from None
        try:
            rgb = _to_rgb(_upright(im))
        except ImageError:
            raise
        except (ValueError, OSError, TypeError) as exc:  # what Pillow raises for a mode it
            # cannot convert; anything else (MemoryError, a bug) is not the upload's fault
            # and must stay a 500, not read as "colour mode not supported"
            log.debug("image conversion failed: %r", exc)
            raise ImageError(f"images in colour mode {im.mode} are not supported; "
                             "save it as an RGB JPEG or PNG") from None
    return rgb


def _upright(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception as exc:
        log.debug("ignoring unreadable EXIF orientation: %r", exc)
        return im


def _to_rgb(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        im = Image.fromarray(_scale_to_uint8(np.asarray(im), mode), mode="L")
    elif mode == "1":
        im = im.convert("L")
    if im.mode in _TRANSPARENT_MODES:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    rgb = im.convert("RGB")
    out = np.asarray(rgb, dtype=np.uint8)
    if out.ndim != 3 or out.shape[2] != 3:
        raise ImageError(f"images in colour mode {mode} are not supported")
    return np.ascontiguousarray(out)


def _scale_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """Single-channel integer or float pixels -> uint8, keeping the full range."""
    a = a.astype(np.float64)
    if mode.startswith("I;16"):
        a = a / 257.0                               # 0..65535 -> 0..255 exactly
    elif mode == "F" and a.size and a.min() >= 0.0 and a.max() <= 1.0:
        a = a * 255.0                               # float images in [0, 1]
    elif a.size and (a.min() < 0 or a.max() > 255):
        if a.min() >= 0 and a.max() <= 65535:
            a = a / 257.0                           # 16-bit data in a 32-bit container
        else:
            lo, hi = float(a.min()), float(a.max())
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)
