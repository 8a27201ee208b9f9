"""decode_image: every odd or hostile input the web app and the CLI may receive,
built in memory with Pillow (or by hand, for headers Pillow will not write)."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from source_code.imaging import (DEFAULT_MAX_PIXELS, MIN_SIDE, ImageError, ImageTooLarge,
                                     decode_image)


# -- builders ----------------------------------------------------------------------------
def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def raw_png(width: int, height: int, bit_depth: int, colour_type: int, raw: bytes) -> bytes:
    """A PNG written chunk by chunk: any header, any (even missing) pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def noise(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def assert_rgb(a: np.ndarray, h: int, w: int):
    assert isinstance(a, np.ndarray)
    assert a.dtype == np.uint8 and a.shape == (h, w, 3)


def assert_readable(message: str):
    for word in ("Traceback", "PIL", "Errno", "/"):
        assert word not in message.replace("JPEG, PNG", "").replace("±", ""), message
    assert len(message) > 15


# -- good images -------------------------------------------------------------------------
def test_rgb_png_is_decoded_exactly():
    a = noise(48, 80)
    out = decode_image(encode(Image.fromarray(a)))
    assert_rgb(out, 48, 80)
    np.testing.assert_array_equal(out, a)


def test_jpeg_decodes_close_to_the_source():
    a = np.zeros((64, 64, 3), np.uint8)
    a[:, :32] = (200, 40, 40)
    a[:, 32:] = (30, 60, 220)
    out = decode_image(encode(Image.fromarray(a), "JPEG", quality=95))
    assert_rgb(out, 64, 64)
    assert np.abs(out.astype(int) - a).mean() < 3


def test_greyscale_becomes_three_equal_channels():
    g = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (32, 1))        # 32 x 64 ramp
    out = decode_image(encode(Image.fromarray(g, mode="L")))
    assert_rgb(out, 32, 64)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], g)


def test_bilevel_image():
    im = Image.new("1", (20, 20), 0)
    im.paste(1, (0, 0, 10, 20))
    out = decode_image(encode(im))
    assert out[5, 2].tolist() == [255, 255, 255] and out[5, 15].tolist() == [0, 0, 0]


def test_rgba_is_composited_on_white():
    a = np.zeros((20, 30, 4), np.uint8)
    a[:, :10] = (255, 0, 0, 0)        # fully transparent red -> white
    a[:, 10:20] = (255, 0, 0, 255)    # opaque red
    a[:, 20:] = (0, 0, 0, 128)        # half-transparent black -> mid grey
    out = decode_image(encode(Image.fromarray(a, mode="RGBA")))
    assert_rgb(out, 20, 30)
    assert out[5, 5].tolist() == [255, 255, 255]
    assert out[5, 15].tolist() == [255, 0, 0]
    assert np.all(np.abs(out[5, 25].astype(int) - 127) <= 2)


def test_la_is_composited_on_white():
    a = np.zeros((16, 16, 2), np.uint8)
    a[..., 0] = 0
    a[:8, :, 1] = 0      # transparent black -> white
    a[8:, :, 1] = 255    # opaque black
    out = decode_image(encode(Image.fromarray(a, mode="LA")))
    assert out[2, 2].tolist() == [255, 255, 255] and out[12, 2].tolist() == [0, 0, 0]


def test_palette_image_keeps_its_colours():
    rgb = np.zeros((24, 24, 3), np.uint8)
    rgb[:12] = (10, 200, 30)
    rgb[12:] = (250, 220, 0)
    im = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    out = decode_image(encode(im))
    assert out[3, 3].tolist() == [10, 200, 30] and out[20, 3].tolist() == [250, 220, 0]


def test_palette_transparency_is_white():
    im = Image.new("P", (20, 20), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    im.paste(1, (10, 0, 20, 20))
    data = encode(im, transparency=0)
    out = decode_image(data)
    assert out[5, 5].tolist() == [255, 255, 255] and out[5, 15].tolist() == [255, 0, 0]


def test_16_bit_greyscale_png_is_scaled_not_clipped():
    g = np.zeros((16, 24), np.uint16)
    g[:, :8] = 0
    g[:, 8:16] = 128 * 257
    g[:, 16:] = 65535
    data = encode(Image.fromarray(g))
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    out = decode_image(data)
    assert_rgb(out, 16, 24)
    assert out[0, 0].tolist() == [0, 0, 0]
    assert out[0, 10].tolist() == [128, 128, 128]
    assert out[0, 20].tolist() == [255, 255, 255]


def test_16_bit_rgb_png():
    w = h = 16
    row = b"\x00" + struct.pack(">HHH", 65535, 128 * 257, 0) * w
    out = decode_image(raw_png(w, h, 16, 2, row * h))
    assert_rgb(out, h, w)
    assert np.all(out == np.array([255, 128, 0], np.uint8))


def test_float_image_in_unit_range():
    f = np.full((20, 20), 0.5, np.float32)
    out = decode_image(encode(Image.fromarray(f, mode="F"), "TIFF"))
    assert np.all(np.abs(out.astype(int) - 128) <= 1)


def test_cmyk_jpeg_becomes_rgb():
    im = Image.new("CMYK", (32, 32), (0, 255, 255, 0))          # red ink
    im.paste((255, 255, 0, 0), (16, 0, 32, 32))                  # blue ink
    data = encode(im, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_image(data)
    assert_rgb(out, 32, 32)
    assert np.abs(out[16, 4].astype(int) - [255, 0, 0]).max() < 12
    assert np.abs(out[16, 28].astype(int) - [0, 0, 255]).max() < 12


def test_exif_orientation_6_is_applied():
    """Orientation 6: the stored picture must be turned 90 degrees clockwise to be upright."""
    stored = np.zeros((40, 60, 3), np.uint8)       # 60 wide, 40 tall, blue
    stored[...] = (0, 0, 255)
    stored[:20, :30] = (255, 0, 0)                 # red block top-left
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6
    data = encode(im, "JPEG", quality=95, exif=exif.tobytes())
    out = decode_image(data)
    assert_rgb(out, 60, 40)                        # now 40 wide, 60 tall
    # turning clockwise moves the stored top-left corner to the top-right
    assert out[5, 35, 0] > 200 and out[5, 35, 2] < 60
    assert out[5, 5, 2] > 200 and out[5, 5, 0] < 60
    assert out[55, 35, 2] > 200


def test_broken_exif_orientation_is_ignored():
    im = Image.fromarray(noise(20, 30))
    exif = im.getexif()
    exif[0x0112] = 99                              # not an orientation
    out = decode_image(encode(im, "JPEG", exif=exif.tobytes()))
    assert_rgb(out, 20, 30)


def test_animated_gif_gives_the_first_frame():
    frames = [Image.new("RGB", (24, 24), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(buf.getvalue())).n_frames == 3
    out = decode_image(buf.getvalue())
    assert_rgb(out, 24, 24)
    assert np.abs(out[12, 12].astype(int) - [255, 0, 0]).max() < 8


def test_webp_and_bmp():
    a = noise(32, 32)
    np.testing.assert_array_equal(decode_image(encode(Image.fromarray(a), "BMP")), a)
    assert_rgb(decode_image(encode(Image.fromarray(a), "WEBP", lossless=True)), 32, 32)


def test_smallest_accepted_size():
    assert_rgb(decode_image(encode(Image.fromarray(noise(MIN_SIDE, MIN_SIDE)))), MIN_SIDE, MIN_SIDE)


# -- bad images ----------------------------------------------------------------------------
@pytest.mark.parametrize("data", [b"", None])
def test_empty_input(data):
    with pytest.raises(ImageError, match="empty") as info:
        decode_image(data)
    assert info.value.status == 400


@pytest.mark.parametrize("data", [b"hello, this is not an image", b"%PDF-1.7\n" + bytes(200),
                                  bytes(range(256)) * 8])
def test_not_an_image(data):
    with pytest.raises(ImageError, match="not an image") as info:
        decode_image(data)
    assert info.value.status == 400
    assert_readable(str(info.value))


def test_truncated_jpeg_is_an_error():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    data = encode(Image.fromarray(noise(200, 200)), "JPEG", quality=90)
    with pytest.raises(ImageError, match="truncated") as info:
        decode_image(data[: len(data) // 2])
    assert info.value.status == 400
    assert_readable(str(info.value))


def test_truncated_png_is_an_error():
    data = encode(Image.fromarray(noise(100, 100)))
    with pytest.raises(ImageError):
        decode_image(data[: len(data) // 2])


def test_png_with_damaged_pixel_data():
    w = h = 32
    good = raw_png(w, h, 8, 2, (b"\x00" + b"\x80" * 3 * w) * h)
    start = good.index(b"IDAT") + 8
    damaged = good[:start] + bytes(b ^ 0x5A for b in good[start:start + 20]) + good[start + 20:]
    with pytest.raises(ImageError) as info:
        decode_image(damaged)
    assert_readable(str(info.value))


def test_decompression_bomb_header_is_refused_without_decoding():
    """A 300-byte PNG whose header claims 100000 x 100000 pixels (Pillow's own bomb error)."""
    data = raw_png(100_000, 100_000, 8, 2, b"")
    assert len(data) < 400
    with pytest.raises(ImageTooLarge) as info:
        decode_image(data)
    assert info.value.status == 413
    assert_readable(str(info.value))


def test_more_pixels_than_the_limit_is_refused_from_the_header():
    data = raw_png(8_000, 8_000, 8, 2, b"")            # 64 MP > 40 MP, under Pillow's limit
    assert 8_000 * 8_000 > DEFAULT_MAX_PIXELS
    with pytest.raises(ImageTooLarge, match="megapixels") as info:
        decode_image(data)
    assert info.value.status == 413


def test_custom_pixel_limit():
    data = encode(Image.fromarray(noise(64, 64)))
    with pytest.raises(ImageTooLarge, match="megapixels"):
        decode_image(data, max_pixels=64 * 63)
    assert_rgb(decode_image(data, max_pixels=64 * 64), 64, 64)


def test_byte_limit():
    data = encode(Image.fromarray(noise(64, 64)))
    with pytest.raises(ImageTooLarge, match="too large") as info:
        decode_image(data, max_bytes=len(data) - 1)
    assert info.value.status == 413
    assert_rgb(decode_image(data, max_bytes=len(data)), 64, 64)


@pytest.mark.parametrize("size", [(1, 1), (15, 200), (200, 15)])
def test_too_small_images_are_refused(size):
    w, h = size
    with pytest.raises(ImageError, match="too small") as info:
        decode_image(encode(Image.new("RGB", (w, h), (255, 0, 0))))
    assert info.value.status == 400
    assert f"{w} x {h}" in str(info.value)


def test_errors_are_value_errors():
    assert issubclass(ImageError, ValueError) and issubclass(ImageTooLarge, ImageError)
