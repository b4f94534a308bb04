"""Safe image intake: judge an upload by its bytes, refuse the unsound with a typed code, and make
the copies the rest of the system keeps (a stripped original, a display copy, an RGB model image).

Order of work: length limits, the untrusted name and declared type, the container walk
(`storage.containers`: truncation, appended data, bombs), and only then a pixel decode.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import mimetypes
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageFile, JpegImagePlugin

from storage import containers
from storage.containers import ImageFormat, Layout
from storage.errors import AtelierError, InvalidInput, PayloadTooLarge, UnsupportedMedia
from storage.settings import StorageSettings

MIME = {"png": "image/png", "jpeg": "image/jpeg", "gif": "image/gif", "webp": "image/webp"}
EXTENSION = {"png": "png", "jpeg": "jpg", "gif": "gif", "webp": "webp"}

_PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG", "gif": "GIF"}
_NAME_EXTENSIONS = {"png": "png", "apng": "png", "jpg": "jpeg", "jpeg": "jpeg", "jpe": "jpeg", "jfif": "jpeg", "gif": "gif"}
_DECLARED_TYPES = {
    "image/png": "png", "image/x-png": "png", "image/apng": "png",
    "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/pjpeg": "jpeg",
    "image/gif": "gif",
}  # fmt: skip
# Clients that do not know the type send these; they declare nothing, so they cannot mismatch.
_UNDECLARED_TYPES = {"", "application/octet-stream", "binary/octet-stream"}
# Python's built-in table only (never the host's /etc/mime.types), so answers are the same everywhere.
_KNOWN_TYPES = mimetypes.MimeTypes()

# EXIF orientation -> the transpose that makes the picture upright (the table ImageOps.exif_transpose uses).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ORIENTATION_TAG = 0x0112
# Text-direction overrides make "photo\u202egpj.exe" read as "photoexe.jpg"; emoji joiners stay allowed.
_BIDI_CONTROLS = set("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_WHITE = (255, 255, 255)


@dataclass(frozen=True, slots=True, eq=False)
class DecodedImage:
    """An upload that passed every check, decoded for the models.

    `width`/`height` are the full upright size (after EXIF orientation), whatever size
    `model_image` was decoded at; `model_image` is RGB, alpha composited on white, first frame.
    """

    content_hash: str
    format: ImageFormat
    width: int
    height: int
    frames: int
    model_image: Image.Image

    @property
    def mime(self) -> str:
        return MIME[self.format]

    @property
    def size_text(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass(frozen=True, slots=True, eq=False)
class IntakeResult(DecodedImage):
    """A decoded upload plus the two copies that get stored.

    `original`: the uploaded file in its own format with every metadata block removed (EXIF, XMP,
    GPS, IPTC, comments, text chunks), byte-for-byte otherwise; only an EXIF-rotated original is
    re-encoded upright (lossless for PNG, JPEG at `original_quality`). `display`: an upright RGB
    still, at most `display_max_side` pixels on its longest side.
    """

    original: bytes = b""
    display: bytes = b""
    display_format: Literal["jpeg", "webp"] = "jpeg"

    @property
    def display_mime(self) -> str:
        return MIME[self.display_format]


class ImageIntake:
    """Checks and decodes uploads under one `StorageSettings`; safe to share between threads."""

    def __init__(self, settings: StorageSettings | None = None):
        self.settings = settings or StorageSettings()
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and self.settings.max_pixels > limit:
            # Our own refusal must come first, so Pillow's DecompressionBombWarning can never be
            # the only thing standing between a bomb and the decoder.
            raise ValueError(
                f"max_pixels={self.settings.max_pixels} exceeds PIL.Image.MAX_IMAGE_PIXELS={limit}: "
                "lower ATELIER_MAX_PIXELS or raise Pillow's limit with it"
            )

    def check(self, data: bytes, *, filename: str | None = None, content_type: str | None = None) -> Layout:
        """Every refusal that needs no pixel decode: size, name, type by bytes, structure, bombs."""
        size = len(data)
        if size == 0:
            raise InvalidInput("the file is empty: choose an image file to upload", code="empty_file", field="file")
        limit = self.settings.max_upload_bytes
        if size > limit:
            raise PayloadTooLarge(
                f"the file is {size} bytes, over the limit of {limit}: compress or scale it down",
                code="file_too_large",
                field="file",
            )
        _check_filename(filename)
        fmt = containers.sniff(data)
        if fmt is None:
            kind = containers.foreign_kind(data)
            raise UnsupportedMedia(
                f"the file is {kind or 'not an image we recognise'}; allowed are PNG, JPEG and GIF",
                code="not_an_allowed_image",
                field="file",
            )
        _check_declared(fmt, filename, content_type)
        return containers.scan(data, fmt, max_pixels=self.settings.max_pixels)

    def decode(
        self,
        data: bytes,
        *,
        filename: str | None = None,
        content_type: str | None = None,
        model_size: int | None = None,
    ) -> DecodedImage:
        """Check, then decode for the models only (search by image: nothing is stored)."""
        layout = self.check(data, filename=filename, content_type=content_type)
        return self._process(data, layout, model_size, copies=False)

    def admit(
        self,
        data: bytes,
        *,
        filename: str | None = None,
        content_type: str | None = None,
        model_size: int | None = None,
    ) -> IntakeResult:
        """Check, decode and make the stored copies of one upload.

        `filename` and `content_type` are untrusted labels: used only to refuse a mismatch with the
        bytes, never as a path. With `model_size` (bulk ingestion), a JPEG is decoded at the
        smallest libjpeg scale that still covers both the display copy and a model input whose
        shortest side is `model_size`, and `model_image` is scaled to that shortest side.
        """
        layout = self.check(data, filename=filename, content_type=content_type)
        result = self._process(data, layout, model_size, copies=True)
        assert isinstance(result, IntakeResult)
        return result

    # ------------------------------------------------------------------ internals

    def _process(self, data: bytes, layout: Layout, model_size: int | None, *, copies: bool) -> DecodedImage:
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            # Someone flipped Pillow's global switch; decoding now could half-accept a broken file.
            raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; image intake refuses to run with it")
        if model_size is not None and model_size < 1:
            raise ValueError(f"model_size must be a positive number of pixels, got {model_size}")
        fmt = layout.format
        with _decoding(fmt):
            im = Image.open(io.BytesIO(data), formats=[_PIL_FORMAT[fmt]])
            full_w, full_h = im.size
            containers.check_pixels(fmt.upper(), full_w, full_h, self.settings.max_pixels)
            if fmt == "jpeg" and model_size is not None:
                im.draft(None, self._draft_box(full_w, full_h, model_size))
            drafted = im.size != (full_w, full_h)
            im.load()
            # Animations keep their frames as sent, so their orientation is left alone too.
            orientation = _orientation(im) if layout.frames == 1 else 1
            icc = im.info.get("icc_profile")
            transparency = im.info.get("transparency")
            sampling = JpegImagePlugin.get_sampling(im) if fmt == "jpeg" else -1
            upright = im.transpose(_UPRIGHT[orientation]) if orientation in _UPRIGHT else im
            rgb = _to_rgb(upright)
        rotated = orientation in _UPRIGHT
        if orientation in (5, 6, 7, 8):
            full_w, full_h = full_h, full_w
        common = dict(
            content_hash=hashlib.sha256(data).hexdigest(),
            format=fmt,
            width=full_w,
            height=full_h,
            frames=layout.frames,
            model_image=_shrink_to_short_side(rgb, model_size) if model_size else rgb,
        )
        if not copies:
            return DecodedImage(**common)
        if not rotated:
            original = layout.stripped(data)  # lossless: the same pixel bytes, minus metadata
        else:
            if drafted:
                # Upright pixels need the full image; only rotated JPEGs in bulk ingestion pay this.
                with _decoding(fmt):
                    full = Image.open(io.BytesIO(data), formats=[_PIL_FORMAT[fmt]])
                    full.load()
                    upright = full.transpose(_UPRIGHT[orientation])
            original = self._upright_original(upright, fmt, icc, transparency, sampling)
        return IntakeResult(
            **common,
            original=original,
            display=self._display_copy(rgb, icc),
            display_format=self.settings.display_format,
        )

    def _draft_box(self, width: int, height: int, model_size: int) -> tuple[int, int]:
        # libjpeg decodes at 1/2, 1/4 or 1/8 scale almost for free; ask for the largest reduction
        # that keeps the long side >= the display side and the short side >= the model's input.
        factor = min(
            max(width, height) / self.settings.display_max_side,
            min(width, height) / model_size,
        )
        if factor < 2:
            return (width, height)
        return (max(1, math.ceil(width / factor)), max(1, math.ceil(height / factor)))

    def _display_copy(self, rgb: Image.Image, icc: bytes | None) -> bytes:
        side = self.settings.display_max_side
        image = rgb
        if max(rgb.size) > side:
            scale = side / max(rgb.size)
            target = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
            image = rgb.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
        out = io.BytesIO()
        options: dict = {"quality": self.settings.display_quality}
        if icc and icc[16:20] == b"RGB ":  # an RGB profile still describes these pixels; others do not
            options["icc_profile"] = icc
        if self.settings.display_format == "webp":
            image.save(out, "WEBP", method=4, **options)
        else:
            image.save(out, "JPEG", optimize=True, **options)
        return out.getvalue()

    def _upright_original(
        self, upright: Image.Image, fmt: ImageFormat, icc: bytes | None, transparency, sampling: int
    ) -> bytes:
        """Re-encode an EXIF-rotated original upright, carrying colour but no metadata."""
        upright.info = {}  # encoders fall back to `info` for EXIF, XMP and comments
        out = io.BytesIO()
        if fmt == "png":
            options = {} if transparency is None else {"transparency": transparency}
            upright.save(out, "PNG", icc_profile=icc, **options)
        else:
            upright.save(
                out,
                "JPEG",
                quality=self.settings.original_quality,
                subsampling="4:4:4" if sampling == 0 else "4:2:0",
                icc_profile=icc,
            )
        return out.getvalue()


@contextlib.contextmanager
def _decoding(fmt: str) -> Iterator[None]:
    """Turn whatever Pillow raises on hostile bytes into our typed refusals.

    Every exception a decoder raises here is about the input (Pillow uses SyntaxError, ValueError,
    struct.error, EOFError, zlib.error...), so all of them are refusals; ours pass through.
    """
    name = fmt.upper()
    try:
        yield
    except (AtelierError, MemoryError):
        raise
    except Image.DecompressionBombError as error:
        raise PayloadTooLarge(
            f"the {name} image has too many pixels: scale it down", code="image_too_large_pixels", field="file"
        ) from error
    except OSError as error:
        if "truncated" in str(error).lower():
            raise InvalidInput(
                f"the {name} file ends early: upload the complete file", code="truncated_image", field="file"
            ) from error
        raise _corrupt(name, error) from error
    except Exception as error:
        raise _corrupt(name, error) from error


def _corrupt(name: str, error: Exception) -> InvalidInput:
    return InvalidInput(
        f"the {name} file could not be decoded ({type(error).__name__}: {error}): re-export it and retry",
        code="corrupt_image",
        field="file",
    )


def _check_filename(filename: str | None) -> None:
    """A name is a label, never a path; refuse names only a broken or hostile client sends."""
    if filename is None or filename == "":
        return
    problem = None
    if len(filename) > 255:
        problem = "it is longer than 255 characters"
    elif any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") or ch in _BIDI_CONTROLS for ch in filename):
        problem = "it contains control characters (NUL, newline, text-direction overrides...)"
    else:
        parts = filename.replace("\\", "/").split("/")
        if filename.startswith(("/", "\\")) or (len(filename) > 1 and filename[1] == ":"):
            problem = "it is an absolute path"
        elif any(part in (".", "..") for part in parts):
            problem = "it contains '.' or '..' path segments"
    if problem:
        raise InvalidInput(
            f"the file name is not acceptable ({problem}): rename the file and retry",
            code="invalid_filename",
            field="filename",
        )


def _check_declared(fmt: ImageFormat, filename: str | None, content_type: str | None) -> None:
    """Refuse a name extension or declared media type that contradicts the bytes."""
    if filename:
        base = filename.replace("\\", "/").rsplit("/", 1)[-1]
        ext = base.rsplit(".", 1)[-1].lower() if "." in base.strip(".") else ""
        claimed = _NAME_EXTENSIONS.get(ext)
        if claimed is None and ext:
            claimed = "other" if _KNOWN_TYPES.guess_type(f"x.{ext}", strict=False)[0] else None
        if claimed is not None and claimed != fmt:
            raise UnsupportedMedia(
                f"the file is named .{ext} but its bytes are {fmt.upper()}: rename it to match its real type",
                code="type_mismatch",
                field="filename",
            )
    if content_type is not None:
        declared = content_type.split(";", 1)[0].strip().lower()
        if declared not in _UNDECLARED_TYPES and _DECLARED_TYPES.get(declared) != fmt:
            raise UnsupportedMedia(
                f"the file was sent as {declared!r} but its bytes are {fmt.upper()}: send it as {MIME[fmt]}",
                code="type_mismatch",
                field="content_type",
            )


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # unreadable EXIF is treated as absent: it is stripped anyway
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB for the models and the display copy: 16-bit scaled (not clipped), alpha on white."""
    if im.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        # Pillow's I->L conversion clips at 255, which turns a 16-bit picture white; scale instead.
        wide = np.asarray(im).astype(np.uint32)
        im = Image.fromarray((np.clip(wide, 0, 0xFFFF) >> 8).astype(np.uint8), "L")
    if im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        rgb = Image.new("RGB", im.size, _WHITE)
        rgb.paste(rgba, mask=rgba.getchannel("A"))
    elif im.mode == "RGB":
        rgb = im
    else:
        rgb = im.convert("RGB")
    rgb.info = {}  # nothing of the source's metadata may reach an encoder through `info`
    return rgb


def _shrink_to_short_side(im: Image.Image, side: int) -> Image.Image:
    short = min(im.size)
    if short <= side:
        return im
    scale = side / short
    target = (max(side, round(im.width * scale)), max(side, round(im.height * scale)))
    return im.resize(target, Image.Resampling.BICUBIC, reducing_gap=3.0)
