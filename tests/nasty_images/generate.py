"""Write the corpus of nasty image files beside this script, and ``expected.json``.

    python tests/nasty_images/generate.py

Every file is small (about 160 KB in all) and deterministic. Each
case says what the server must answer: ``status`` 200 with the decoded ``size``
(width, height after EXIF orientation), or a 4xx with a ``fragment`` of the error
message. tests/test_reliability_inputs.py posts every file and checks both.
"""
from __future__ import annotations

import io
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from source_code.data.synthetic import generate_scene  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- building blocks ---------------------------------------------------------------------------
def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def scene(seed: int = 1, size: int = 64) -> Image.Image:
    return Image.fromarray(generate_scene(seed, image_size=size, jpeg_quality=0).image)


def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_from_chunks(width: int, height: int, bit_depth: int, colour_type: int, raw: bytes,
                    extra: bytes = b"") -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (PNG_MAGIC + png_chunk(b"IHDR", ihdr) + extra + png_chunk(b"IDAT", zlib.compress(raw, 9))
            + png_chunk(b"IEND", b""))


def jpeg_with_dimensions(width: int, height: int) -> bytes:
    """A valid small JPEG whose frame header (SOF0) claims other dimensions."""
    data = bytearray(encode(scene(2), "JPEG", quality=80))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def gif_with_screen(width: int, height: int) -> bytes:
    data = bytearray(encode(scene(3).convert("P"), "GIF"))
    struct.pack_into("<HH", data, 6, width, height)            # logical screen
    return bytes(data)


def bmp_with_size(width: int, height: int) -> bytes:
    data = bytearray(encode(scene(4, 32), "BMP"))
    struct.pack_into("<ii", data, 18, width, height)           # BITMAPINFOHEADER
    return bytes(data)


def tiff_header_only(width: int, height: int) -> bytes:
    """A little-endian baseline TIFF whose one strip is far too short for its size."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
            (273, 4, 8 + 2 + 12 * 8 + 4), (278, 4, height), (279, 4, 16)]
    ifd = struct.pack("<H", len(tags))
    for tag, kind, value in tags:
        ifd += struct.pack("<HHII", tag, kind, 1, value)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + bytes(16)


def exif_jpeg(orientation: int) -> bytes:
    im = scene(5, 96).crop((0, 0, 64, 96))                    # stored 64 wide, 96 tall
    exif = im.getexif()
    exif[0x0112] = orientation
    return encode(im, "JPEG", quality=90, exif=exif.tobytes())


def broken_exif_jpeg() -> bytes:
    data = encode(scene(6), "JPEG", quality=90)
    app1 = b"Exif\x00\x00II*\x00\xff\xff\xff\x7f" + b"\xde\xad" * 20
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]


def corrupt_png_crc() -> bytes:
    data = bytearray(encode(scene(7), "PNG"))
    idat = data.index(b"IDAT")
    length = struct.unpack(">I", data[idat - 4:idat])[0]
    data[idat + 4 + length] ^= 0xFF                            # first CRC byte
    return bytes(data)


def png_with_garbage_idat() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 32, 32, 8, 2, 0, 0, 0)
    return (PNG_MAGIC + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"\x78\x9c" + b"\xff" * 64)
            + png_chunk(b"IEND", b""))


def png_without_iend() -> bytes:
    data = encode(scene(8), "PNG")
    return data[: data.rindex(b"IEND") - 4]


def png_text_bomb() -> bytes:
    """A zTXt chunk that inflates to 8 MB (Pillow allows 1 MB of text)."""
    ztxt = b"Comment\x00\x00" + zlib.compress(b"A" * (8 * 1024 * 1024), 9)
    raw = b"".join(b"\x00" + bytes(32 * 3) for _ in range(32))
    return png_from_chunks(32, 32, 8, 2, raw, extra=png_chunk(b"zTXt", ztxt))


def png_pixel_bomb() -> bytes:
    """4000 x 4000 black pixels in 16 KB: inside the pixel limit, so it must be decoded."""
    row = b"\x00" + bytes(4000)
    return png_from_chunks(4000, 4000, 8, 0, row * 4000)


def png_16bit_rgb() -> bytes:
    a = (np.arange(40 * 40 * 3, dtype=np.uint32).reshape(40, 40, 3) * 37 % 65536).astype(">u2")
    raw = b"".join(b"\x00" + a[y].tobytes() for y in range(40))
    return png_from_chunks(40, 40, 16, 2, raw)


def palette_with_transparency() -> bytes:
    im = scene(9).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encode(im, "PNG", transparency=0)


def animated_gif() -> bytes:
    frames = [scene(10 + i).convert("P") for i in range(3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def multipage_tiff() -> bytes:
    return encode(scene(13), "TIFF", save_all=True, append_images=[Image.new("RGB", (300, 300), "white")],
                  compression="tiff_lzw")


def mpo() -> bytes:
    return encode(scene(14), "MPO", save_all=True, append_images=[scene(15)])


def gif_html_polyglot() -> bytes:
    return encode(scene(16).convert("P"), "GIF",
                  comment=b"<html><script>alert(document.domain)</script></html>")


def jpeg_html_polyglot() -> bytes:
    return encode(scene(17), "JPEG", comment=b"<script>alert(1)</script>")


def png_zip_polyglot() -> bytes:
    buf = io.BytesIO()
    import zipfile
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("payload.py", "import os\nos.system('echo owned')\n")
    return encode(scene(18), "PNG") + buf.getvalue()


def jpeg_with_corrupt_scan() -> bytes:
    data = bytearray(encode(noise(64, 64, 3), "JPEG", quality=90))
    sos = data.index(b"\xff\xda")
    rng = np.random.default_rng(3)
    for i in rng.integers(sos + 20, len(data) - 4, 30):
        data[i] = 0xFF if rng.random() < 0.5 else 0x00
    return bytes(data)


EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n"
       b"(%pipe%echo owned) (w) file closefile\nshowpage\n%%EOF\n")
SVG = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
       b'<script>alert(1)</script><rect width="64" height="64" fill="red"/></svg>')
PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
HTML = b"<!DOCTYPE html><html><body><script>alert('not a jpeg')</script></body></html>\n"


def gradient(w: int, h: int) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1),
                                     (x + y) % 256], -1).astype(np.uint8))


def ok(size):
    return {"status": 200, "size": list(size)}


def refused(status, fragment):
    return {"status": status, "fragment": fragment}


# name -> (bytes, expectation). The names keep the extension a client would send.
CASES = {
    "zero-length.jpg": (lambda: b"", refused(400, "empty")),
    "html-disguised.jpg": (lambda: HTML, refused(400, "not an image")),
    "svg-with-script.svg": (lambda: SVG, refused(400, "not an image")),
    "eps-with-pipe.eps": (lambda: EPS, refused(400, "not an image")),
    "pdf.pdf": (lambda: PDF, refused(400, "not an image")),
    "ico.ico": (lambda: encode(scene(19), "ICO"), refused(400, "not an image")),
    "truncated.jpg": (lambda: encode(noise(120, 120), "JPEG")[:1500], refused(400, "truncated")),
    "truncated.png": (lambda: encode(noise(120, 120), "PNG")[:3000], refused(400, "")),
    "truncated.webp": (lambda: encode(noise(120, 120), "WEBP")[:800], refused(400, "")),
    "corrupt-crc.png": (corrupt_png_crc, ok((64, 64))),     # Pillow checks CRCs in verify() only
    "garbage-idat.png": (png_with_garbage_idat, refused(400, "damaged")),
    "zero-width.jpg": (lambda: jpeg_with_dimensions(0, 64), refused(400, "")),
    "one-pixel.png": (lambda: encode(Image.new("RGB", (1, 1), "red"), "PNG"), refused(400, "too small")),
    "thin-15x400.png": (lambda: encode(gradient(15, 400), "PNG"), refused(400, "too small")),
    "bomb-header.png": (lambda: png_from_chunks(100_000, 100_000, 8, 2, b""), refused(413, "pixels")),
    "huge-header.jpg": (lambda: jpeg_with_dimensions(65_000, 65_000), refused(413, "pixels")),
    "huge-screen.gif": (lambda: gif_with_screen(65_535, 65_535), refused(413, "pixels")),
    "huge-header.bmp": (lambda: bmp_with_size(50_000, 50_000), refused(413, "pixels")),
    "huge-header.tif": (lambda: tiff_header_only(100_000, 100_000), refused(413, "pixels")),
    "ztxt-bomb.png": (png_text_bomb, refused(400, "")),
    "lab.tif": (lambda: encode(Image.new("LAB", (32, 32), (50, 10, 10)), "TIFF"), ok((32, 32))),
    "pixel-bomb-4000x4000.png": (png_pixel_bomb, ok((4000, 4000))),
    "smallest-16x16.png": (lambda: encode(noise(16, 16), "PNG"), ok((16, 16))),
    "long-16x2000.png": (lambda: encode(gradient(16, 2000), "PNG"), ok((16, 2000))),
    "wide-2000x16.jpg": (lambda: encode(gradient(2000, 16), "JPEG"), ok((2000, 16))),
    "grey-16bit.png": (lambda: encode(Image.fromarray((np.arange(48 * 48).reshape(48, 48) * 28)
                                                      .astype(np.uint16)), "PNG"), ok((48, 48))),
    "rgb-16bit.png": (png_16bit_rgb, ok((40, 40))),
    "cmyk.jpg": (lambda: encode(scene(20).convert("CMYK"), "JPEG"), ok((64, 64))),
    "cmyk.tif": (lambda: encode(scene(21).convert("CMYK"), "TIFF"), ok((64, 64))),
    "float32.tif": (lambda: encode(Image.fromarray(np.linspace(0, 1, 64 * 64, dtype=np.float32)
                                                   .reshape(64, 64), mode="F"), "TIFF"), ok((64, 64))),
    "bilevel.tif": (lambda: encode(scene(22).convert("1"), "TIFF", compression="group4"), ok((64, 64))),
    "palette-transparent.png": (palette_with_transparency, ok((64, 64))),
    "grey-alpha.png": (lambda: encode(scene(23).convert("LA"), "PNG"), ok((64, 64))),
    "animated.gif": (animated_gif, ok((64, 64))),
    "multipage.tif": (multipage_tiff, ok((64, 64))),
    "mpo.jpg": (mpo, ok((64, 64))),
    "top-down.bmp": (lambda: bmp_with_size(32, -32), ok((32, 32))),
    "exif-rotated-6.jpg": (lambda: exif_jpeg(6), ok((96, 64))),
    "exif-orientation-9.jpg": (lambda: exif_jpeg(9), ok((64, 96))),
    "broken-exif.jpg": (broken_exif_jpeg, ok((64, 64))),
    "no-iend.png": (png_without_iend, ok((64, 64))),
    "corrupt-scan.jpg": (jpeg_with_corrupt_scan, refused(400, "damaged")),
    "polyglot-html.gif": (gif_html_polyglot, ok((64, 64))),
    "polyglot-html.jpg": (jpeg_html_polyglot, ok((64, 64))),
    "polyglot-zip.png": (png_zip_polyglot, ok((64, 64))),
    "webp.webp": (lambda: encode(scene(24), "WEBP", quality=80), ok((64, 64))),
}


def main() -> int:
    expected = {}
    for name, (make, expectation) in CASES.items():
        data = make()
        (HERE / name).write_bytes(data)
        expected[name] = expectation
    (HERE / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    total = sum((HERE / n).stat().st_size for n in CASES)
    print(f"wrote {len(CASES)} files ({total / 1024:.0f} KB) and expected.json to {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
