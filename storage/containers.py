"""Byte-level structure of PNG, JPEG and GIF files, read without decoding a pixel.

One walk over the container finds where the image ends (so appended data and truncation are caught
whatever Pillow's global settings are), the declared canvas size (so bombs are refused before any
decoder allocates), and which byte ranges form a copy without metadata (so the stored original is
stripped losslessly, without a second decode).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Literal

from PIL import PngImagePlugin

from storage.errors import InvalidInput, PayloadTooLarge

ImageFormat = Literal["png", "jpeg", "gif"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# A piece of the metadata-free copy: a (start, end) range of the input, or bytes written by us.
Piece = tuple[int, int] | bytes


@dataclass(frozen=True, slots=True)
class Layout:
    """What the walk learnt: the format, the declared canvas, the frame count and the clean pieces."""

    format: ImageFormat
    width: int
    height: int
    frames: int
    end: int
    pieces: tuple[Piece, ...]

    def stripped(self, data: bytes) -> bytes:
        """The file rebuilt from its pixel-bearing parts only: no EXIF, XMP, GPS, comments or text."""
        return b"".join(data[p[0] : p[1]] if isinstance(p, tuple) else p for p in self.pieces)


def sniff(data: bytes) -> ImageFormat | None:
    """The allowed format the leading bytes announce, or None."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return None


def foreign_kind(data: bytes) -> str | None:
    """A human name for a refused file's real type, used only to write a helpful message."""
    head = data[:16]
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[:2] == b"BM":
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[:4] in (b"%!PS", b"\xc5\xd0\xd3\xc6"):
        return "PostScript/EPS"
    if head[:5] == b"%PDF-":
        return "PDF"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"hevc"):
            return "HEIF"
        return "an MP4/QuickTime file"
    if head[:4] == b"PK\x03\x04":
        return "a ZIP archive"
    if head[:4] == b"\x00\x00\x01\x00":
        return "ICO"
    if head[:4] == b"8BPS":
        return "Photoshop PSD"
    if head[:2] == b"\xff\x0a" or head[:12] == b"\x00\x00\x00\x0cJXL \r\n\x87\n":
        return "JPEG XL"
    text = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "SVG"
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<script")):
        return "HTML"
    if text.startswith(b"<?xml"):
        return "XML"
    return None


def scan(data: bytes, fmt: ImageFormat, *, max_pixels: int) -> Layout:
    """Walk the container of `fmt`; raise a typed refusal for anything unsound or oversized."""
    walk = {"png": _scan_png, "jpeg": _scan_jpeg, "gif": _scan_gif}[fmt]
    layout = walk(data, max_pixels)
    rest = data[layout.end :]
    # NUL padding after the end marker carries nothing and some writers emit it; anything else is
    # a second payload (a ZIP, a script, a motion-photo video) that must not ride along.
    if rest and rest.count(0) != len(rest):
        raise InvalidInput(
            f"{len(rest)} bytes follow the end of the {fmt.upper()} image (an appended file, video or "
            "second picture): export the picture alone and upload it again",
            code="trailing_data",
            field="file",
        )
    return layout


def _truncated(fmt: str, where: str) -> InvalidInput:
    return InvalidInput(
        f"the {fmt} file ends early ({where}): upload the complete file", code="truncated_image", field="file"
    )


def _corrupt(fmt: str, what: str) -> InvalidInput:
    return InvalidInput(f"the {fmt} file is damaged: {what}", code="corrupt_image", field="file")


def check_pixels(fmt: str, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"the {fmt} image declares {width}x{height} pixels, more than the limit of {max_pixels}: "
            "scale it down before uploading",
            code="image_too_large_pixels",
            field="file",
        )


# ---------------------------------------------------------------- PNG

# Chunks that shape the pixels (critical, colour, transparency, animation); every other chunk is
# metadata (tEXt, zTXt, iTXt with XMP, eXIf, tIME...) and is left out of the stored copy.
_PNG_KEEP = {
    b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT",
    b"bKGD", b"pHYs", b"acTL", b"fcTL", b"fdAT", b"cICP", b"mDCv", b"cLLI",
}  # fmt: skip
_PNG_CRITICAL = {b"IHDR", b"PLTE", b"IDAT", b"IEND"}
# Pillow refuses one text chunk inflating past MAX_TEXT_CHUNK; we also cap their sum well below
# its 64 MiB so a file of many small zTXt chunks cannot buy gigabytes of inflating.
_PNG_TEXT_TOTAL = 8 * PngImagePlugin.MAX_TEXT_CHUNK


def _scan_png(data: bytes, max_pixels: int) -> Layout:
    n = len(data)
    pos = len(PNG_SIGNATURE)
    pieces: list[Piece] = [(0, pos)]
    width = height = 0
    frames = 1
    text_total = 0
    view = memoryview(data)
    while True:
        if pos + 8 > n:
            raise _truncated("PNG", "inside a chunk header, before IEND")
        length, ctype = struct.unpack_from(">I4s", data, pos)
        if length > 0x7FFFFFFF:
            raise _corrupt("PNG", "a chunk length is out of range")
        end = pos + 12 + length
        if end > n:
            raise _truncated("PNG", f"inside the {ctype.decode('latin-1')!r} chunk")
        body = view[pos + 8 : pos + 8 + length]
        if zlib.crc32(body, zlib.crc32(ctype)) != struct.unpack_from(">I", data, end - 4)[0]:
            raise _corrupt("PNG", f"the {ctype.decode('latin-1')!r} chunk fails its checksum")
        if pos == len(PNG_SIGNATURE):
            if ctype != b"IHDR" or length != 13:
                raise _corrupt("PNG", "the first chunk is not a valid IHDR")
            width, height = struct.unpack_from(">II", body)
            if width == 0 or height == 0:
                raise _corrupt("PNG", "the image declares a zero width or height")
            check_pixels("PNG", width, height, max_pixels)
        elif ctype == b"IHDR":
            raise _corrupt("PNG", "a second IHDR chunk")
        elif not ctype[0] & 0x20 and ctype not in _PNG_CRITICAL:
            raise _corrupt("PNG", f"unknown critical chunk {ctype.decode('latin-1')!r}")
        if ctype == b"acTL" and length >= 8:
            frames = max(1, struct.unpack_from(">I", body)[0])
        if ctype in (b"tEXt", b"zTXt", b"iTXt", b"iCCP"):
            text_total += _png_inflated_size(ctype, bytes(body))
            if text_total > _PNG_TEXT_TOTAL:
                raise _metadata_bomb(f"its text chunks inflate past {_PNG_TEXT_TOTAL} bytes")
        if ctype in _PNG_KEEP:
            pieces.append((pos, end))
        pos = end
        if ctype == b"IEND":
            break
    return Layout("png", width, height, frames, pos, tuple(_merge(pieces)))


def _metadata_bomb(why: str) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the PNG file's metadata is too large ({why}): save it without text chunks",
        code="metadata_too_large",
        field="file",
    )


def _png_inflated_size(ctype: bytes, body: bytes) -> int:
    """Size of a text or ICC chunk once inflated, found with a bounded inflate (never a bomb)."""
    nul = body.find(b"\x00")
    if ctype == b"tEXt":
        return len(body)
    if ctype == b"iTXt":
        # keyword NUL flag method language NUL translated-keyword NUL text
        if nul < 0 or nul + 2 >= len(body):
            return len(body)
        compressed = body[nul + 1] == 1
        rest = body[nul + 3 :]
        parts = rest.split(b"\x00", 2)
        if len(parts) < 3:
            return len(body)
        payload = parts[2]
        if not compressed:
            return len(payload)
    else:  # zTXt, iCCP: keyword NUL method zlib-data
        payload = body[nul + 2 :] if nul >= 0 else body
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(payload, PngImagePlugin.MAX_TEXT_CHUNK)
    except zlib.error:
        return len(body)  # Pillow ignores text it cannot inflate, and we drop it anyway
    if inflater.unconsumed_tail:
        raise _metadata_bomb(
            f"a {ctype.decode()} chunk inflates past {PngImagePlugin.MAX_TEXT_CHUNK} bytes"
        )
    return len(out)


# ---------------------------------------------------------------- JPEG

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}


def _scan_jpeg(data: bytes, max_pixels: int) -> Layout:
    n = len(data)
    pos = 2
    pieces: list[Piece] = [(0, 2)]
    width = height = 0
    seen_scan = False
    while True:
        if pos >= n:
            raise _truncated("JPEG", "before the end-of-image marker")
        if data[pos] != 0xFF:
            raise _corrupt("JPEG", f"expected a marker at byte {pos}")
        start = pos
        while pos < n and data[pos] == 0xFF:  # fill bytes may precede any marker
            pos += 1
        if pos >= n:
            raise _truncated("JPEG", "before the end-of-image marker")
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            if not seen_scan or not width:
                raise _corrupt("JPEG", "it ends before any image data")
            pieces.append((start, pos))
            break
        if marker in _JPEG_STANDALONE:
            pieces.append((start, pos))
            continue
        if marker in (0xD8, 0x00):
            raise _corrupt("JPEG", f"unexpected marker 0x{marker:02X}")
        if pos + 2 > n:
            raise _truncated("JPEG", "inside a segment header")
        length = struct.unpack_from(">H", data, pos)[0]
        if length < 2:
            raise _corrupt("JPEG", "a segment length is out of range")
        end = pos + length
        if end > n:
            raise _truncated("JPEG", f"inside segment 0x{marker:02X}")
        body = data[pos + 2 : end]
        if marker in _JPEG_SOF:
            if width:
                raise _corrupt("JPEG", "more than one frame header")
            if len(body) < 6:
                raise _corrupt("JPEG", "the frame header is too short")
            height, width = struct.unpack_from(">HH", body, 1)
            if width == 0 or height == 0:
                raise _corrupt("JPEG", "the image declares a zero width or height")
            check_pixels("JPEG", width, height, max_pixels)
        piece = _jpeg_clean_segment(marker, body, start, end)
        if piece is not None:
            pieces.append(piece)
        pos = end
        if marker == 0xDA:
            if not width:
                raise _corrupt("JPEG", "image data comes before the frame header")
            seen_scan = True
            pos = _jpeg_scan_end(data, pos)
            pieces.append((end, pos))
    return Layout("jpeg", width, height, 1, pos, tuple(_merge(pieces)))


def _jpeg_scan_end(data: bytes, pos: int) -> int:
    """Offset of the marker that ends the entropy-coded data starting at `pos`."""
    n = len(data)
    while True:
        j = data.find(b"\xff", pos)
        if j < 0 or j + 1 >= n:
            raise _truncated("JPEG", "inside the image data")
        follower = data[j + 1]
        if follower == 0x00 or 0xD0 <= follower <= 0xD7:  # stuffed byte or restart marker
            pos = j + 2
        elif follower == 0xFF:  # fill byte: the marker starts later
            pos = j + 1
        else:
            return j


def _jpeg_clean_segment(marker: int, body: bytes, start: int, end: int) -> Piece | None:
    """The segment as kept in the stripped copy: itself, a cleaned rewrite, or None (dropped)."""
    if marker == 0xE0:
        # JFIF: keep the colour/density header, never its embedded thumbnail (a preview of the
        # uncropped picture has leaked more than once).
        if body[:5] != b"JFIF\x00" or len(body) < 14:
            return None
        if body[12] == 0 and body[13] == 0:
            return (start, end)
        clean = body[:12] + b"\x00\x00"
        return b"\xff\xe0" + struct.pack(">H", len(clean) + 2) + clean
    if marker == 0xE2:
        return (start, end) if body.startswith(b"ICC_PROFILE\x00") else None
    if marker == 0xEE:
        # Adobe: says whether the channels are RGB, YCbCr or (inverted) CMYK/YCCK.
        return (start, end) if body.startswith(b"Adobe") else None
    if 0xE0 <= marker <= 0xEF or marker == 0xFE or 0xF0 <= marker <= 0xFD:
        return None  # EXIF/XMP (APP1), IPTC (APP13), other APPn, comments, JPG extensions
    return (start, end)


# ---------------------------------------------------------------- GIF

# Application extensions that drive animation; others (XMP, ICC, vendor data) are metadata.
_GIF_KEEP_APPS = (b"NETSCAPE2.0", b"ANIMEXTS1.0")


def _scan_gif(data: bytes, max_pixels: int) -> Layout:
    n = len(data)
    if n < 13:
        raise _truncated("GIF", "inside the header")
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    if width == 0 or height == 0:
        raise _corrupt("GIF", "the logical screen has a zero width or height")
    check_pixels("GIF", width, height, max_pixels)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    if pos > n:
        raise _truncated("GIF", "inside the global colour table")
    pieces: list[Piece] = [(0, pos)]
    frames = 0
    while True:
        if pos >= n:
            raise _truncated("GIF", "before the trailer")
        kind = data[pos]
        start = pos
        if kind == 0x3B:
            pos += 1
            pieces.append((start, pos))
            break
        if kind == 0x21:
            if pos + 2 > n:
                raise _truncated("GIF", "inside an extension")
            label = data[pos + 1]
            pos = _gif_skip_blocks(data, pos + 2)
            if label == 0xF9 or (label == 0xFF and data[start + 3 : start + 14] in _GIF_KEEP_APPS):
                pieces.append((start, pos))
            continue
        if kind == 0x2C:
            if pos + 10 > n:
                raise _truncated("GIF", "inside an image descriptor")
            left, top, w, h, fflags = struct.unpack_from("<HHHHB", data, pos + 1)
            # Pillow grows the canvas to fit a frame that overhangs it: check the grown size.
            check_pixels("GIF", max(width, left + w), max(height, top + h), max_pixels)
            pos += 10 + (3 << ((fflags & 7) + 1) if fflags & 0x80 else 0)
            if pos + 1 > n:
                raise _truncated("GIF", "inside a frame")
            pos = _gif_skip_blocks(data, pos + 1)  # +1: the LZW minimum code size byte
            pieces.append((start, pos))
            frames += 1
            continue
        raise _corrupt("GIF", f"unknown block 0x{kind:02X} at byte {pos}")
    if frames == 0:
        raise _corrupt("GIF", "it holds no image")
    return Layout("gif", width, height, frames, pos, tuple(_merge(pieces)))


def _gif_skip_blocks(data: bytes, pos: int) -> int:
    """Offset just past a chain of data sub-blocks (each length-prefixed, ending with a zero)."""
    n = len(data)
    while True:
        if pos >= n:
            raise _truncated("GIF", "inside a data block")
        size = data[pos]
        pos += 1 + size
        if size == 0:
            return pos


def _merge(pieces: list[Piece]) -> list[Piece]:
    """Join touching ranges so rebuilding copies a few large slices instead of many small ones."""
    merged: list[Piece] = []
    for piece in pieces:
        last = merged[-1] if merged else None
        if isinstance(piece, tuple) and isinstance(last, tuple) and last[1] == piece[0]:
            merged[-1] = (last[0], piece[1])
        else:
            merged.append(piece)
    return merged
