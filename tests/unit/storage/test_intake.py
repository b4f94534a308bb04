"""Image intake against a corpus of hostile and odd uploads, all generated here from code."""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
import zipfile
import zlib

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageFile

from storage.blobs import LocalBlobStore, store_image
from storage.errors import AtelierError
from storage.intake import DecodedImage, ImageIntake, IntakeResult
from storage.settings import StorageSettings


LIMIT = 10 * 1024 * 1024


@pytest.fixture(scope="module")
def intake() -> ImageIntake:
    return ImageIntake(StorageSettings(max_upload_bytes=LIMIT))


# ---------------------------------------------------------------- builders


def encode(im: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **options)
    return out.getvalue()


def photo(size=(48, 32)) -> Image.Image:
    """A picture with structure, so decoders really work and landmarks can be checked."""
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.uint8)[:, None].repeat(w, 1)
    return Image.fromarray(np.dstack([x, y, 255 - x]), "RGB")


def png_chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def png_by_hand(width: int, height: int, rows: bytes, *, bit_depth=8, colour=2) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def with_chunks_after_ihdr(png: bytes, *chunks: bytes) -> bytes:
    return png[:33] + b"".join(chunks) + png[33:]


def gif_by_hand(screen=(1, 1), frame=(0, 0, 1, 1)) -> bytes:
    """The classic 1x1 GIF, with its logical screen and frame box set as asked."""
    return (
        b"GIF89a"
        + struct.pack("<HHBBB", *screen, 0x80, 0, 0)
        + b"\x00\x00\x00\xff\xff\xff"
        + b","
        + struct.pack("<HHHHB", *frame, 0)
        + b"\x02\x02\x44\x01\x00"
        + b";"
    )


def jpeg_with_size(width: int, height: int) -> bytes:
    """A real JPEG whose frame header is rewritten to declare another size."""
    data = bytearray(encode(photo((16, 16)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def zip_bytes() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("payload.sh", "#!/bin/sh\necho owned\n")
    return out.getvalue()


def eps_bytes() -> bytes:
    return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n"


PNG = encode(photo(), "PNG")
JPEG = encode(photo(), "JPEG", quality=90)


# ---------------------------------------------------------------- the hostile corpus

# (id, bytes, filename, content type, code, HTTP status)
HOSTILE = [
    ("truncated-jpeg", JPEG[: len(JPEG) // 2], "photo.jpg", "image/jpeg", "truncated_image", 400),
    ("jpeg-missing-eoi", JPEG[:-2], "photo.jpg", None, "truncated_image", 400),
    ("truncated-png", PNG[: len(PNG) - 30], "photo.png", "image/png", "truncated_image", 400),
    ("png-missing-iend", PNG[:-12], "photo.png", None, "truncated_image", 400),
    ("png-100000x100000", png_by_hand(100_000, 100_000, b"\x00" * 64), "bomb.png", None, "image_too_large_pixels", 413),
    # Between our limit (40 MP) and Pillow's (89 MP), where Pillow would only warn.
    ("png-8000x6000", png_by_hand(8000, 6000, b"\x00" * 64), "big.png", None, "image_too_large_pixels", 413),
    ("jpeg-30000x30000", jpeg_with_size(30_000, 30_000), "big.jpg", None, "image_too_large_pixels", 413),
    (
        "png-ztxt-bomb",
        with_chunks_after_ihdr(PNG, png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"\x00" * (8 << 20), 9))),
        "text.png",
        None,
        "metadata_too_large",
        413,
    ),
    (
        "png-itxt-bomb",
        with_chunks_after_ihdr(
            PNG, png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x01\x00\x00\x00" + zlib.compress(b"A" * (8 << 20), 9))
        ),
        "xmp.png",
        None,
        "metadata_too_large",
        413,
    ),
    (
        "png-many-text-chunks",  # each under Pillow's per-chunk cap, together gigabytes' worth of work
        with_chunks_after_ihdr(
            PNG, *[png_chunk(b"zTXt", b"k%d\x00\x00" % i + zlib.compress(b"\x00" * 1_000_000, 9)) for i in range(12)]
        ),
        "texts.png",
        None,
        "metadata_too_large",
        413,
    ),
    ("gif-huge-screen", gif_by_hand(screen=(65535, 65535)), "huge.gif", None, "image_too_large_pixels", 413),
    ("gif-frame-overhang", gif_by_hand(frame=(60000, 60000, 1, 1)), "grow.gif", None, "image_too_large_pixels", 413),
    ("jpeg-plus-zip", JPEG + zip_bytes(), "photo.jpg", "image/jpeg", "trailing_data", 400),
    ("png-plus-script", PNG + b"<script>alert(1)</script>", "photo.png", None, "trailing_data", 400),
    ("gif-plus-data", gif_by_hand() + b"MZ\x90\x00", "dot.gif", None, "trailing_data", 400),
    ("html-named-png", b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>", "x.png", "image/png", "not_an_allowed_image", 415),
    (
        "svg-named-png",
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"><script>alert(1)</script></svg>',
        "x.png",
        "image/png",
        "not_an_allowed_image",
        415,
    ),
    ("eps-named-png", eps_bytes(), "x.png", "image/png", "not_an_allowed_image", 415),
    ("webp-named-jpg", encode(photo(), "WEBP"), "x.jpg", "image/jpeg", "not_an_allowed_image", 415),
    ("bmp-named-jpg", encode(photo(), "BMP"), "x.jpg", "image/jpeg", "not_an_allowed_image", 415),
    ("tiff-named-jpg", encode(photo(), "TIFF"), "x.jpg", "image/jpeg", "not_an_allowed_image", 415),
    ("empty", b"", "x.png", "image/png", "empty_file", 400),
    # Valid PNG bytes padded with NULs (which alone would be accepted): refused on length alone.
    ("10MB-plus-1", PNG + b"\x00" * (LIMIT + 1 - len(PNG)), "x.png", None, "file_too_large", 413),
    ("name-dotdot", PNG, "../../etc/cron.d/x.png", None, "invalid_filename", 400),
    ("name-dotdot-windows", PNG, "..\\..\\boot.png", None, "invalid_filename", 400),
    ("name-absolute", PNG, "/etc/passwd.png", None, "invalid_filename", 400),
    ("name-nul", PNG, "x.png\x00.sh", None, "invalid_filename", 400),
    ("name-newline", PNG, "x\r\nSet-Cookie: a=b.png", None, "invalid_filename", 400),
    ("name-rtl-override", PNG, "photo\u202egnp.exe", None, "invalid_filename", 400),
    ("png-named-jpg", PNG, "photo.jpg", None, "type_mismatch", 415),
    ("png-sent-as-jpeg", PNG, "photo", "image/jpeg", "type_mismatch", 415),
    ("png-sent-as-html", PNG, None, "text/html", "type_mismatch", 415),
    ("jpeg-named-webp", JPEG, "photo.webp", None, "type_mismatch", 415),
    ("png-bad-crc", PNG[:40] + bytes([PNG[40] ^ 0xFF]) + PNG[41:], "x.png", None, "corrupt_image", 400),
    ("png-garbage-idat", png_by_hand(8, 8, b"") .replace(
        png_chunk(b"IDAT", zlib.compress(b"")), png_chunk(b"IDAT", b"not zlib at all")), "x.png", None, "corrupt_image", 400),
    ("png-short-rows", png_by_hand(64, 64, b"\x00" * 10), "x.png", None, "truncated_image", 400),
    ("jpeg-zero-width", jpeg_with_size(0, 16), "x.jpg", None, "corrupt_image", 400),
    ("jpeg-no-marker", JPEG[:20] + b"garbage" + JPEG[20:], "x.jpg", None, "corrupt_image", 400),
    ("gif-no-frame", gif_by_hand()[:19] + b";", "x.gif", None, "corrupt_image", 400),
]


@pytest.mark.parametrize(
    "data, filename, content_type, code, status", [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE]
)
def test_hostile_upload_is_refused_with_its_code_and_nothing_is_stored(
    intake, tmp_path, data, filename, content_type, code, status
):
    store = LocalBlobStore(tmp_path / "blobs")
    with warnings.catch_warnings():
        # Pillow's DecompressionBombWarning (or any other) must never be what stops a bomb.
        warnings.simplefilter("error")
        with pytest.raises(AtelierError) as refused:
            store_image(store, "alice", intake.admit(data, filename=filename, content_type=content_type))
    assert (refused.value.code, refused.value.status) == (code, status), refused.value.message
    assert refused.value.message and "Traceback" not in refused.value.message
    assert list((tmp_path / "blobs").rglob("*")) == []
    # The model-only path refuses the same way.
    with pytest.raises(AtelierError) as again:
        intake.decode(data, filename=filename, content_type=content_type)
    assert again.value.code == code


def test_the_corpus_bytes_are_what_they_claim():
    """Guards the corpus itself: each hostile file differs from an accepted one only where intended."""
    by_id = {case[0]: case[1] for case in HOSTILE}
    assert Image.open(io.BytesIO(by_id["webp-named-jpg"])).format == "WEBP"
    assert Image.open(io.BytesIO(by_id["bmp-named-jpg"])).format == "BMP"
    assert Image.open(io.BytesIO(by_id["tiff-named-jpg"])).format == "TIFF"
    assert len(by_id["10MB-plus-1"]) == LIMIT + 1
    assert by_id["jpeg-plus-zip"].startswith(JPEG) and zipfile.is_zipfile(io.BytesIO(by_id["jpeg-plus-zip"]))
    # Pillow alone opens the appended-ZIP JPEG and the 8000x6000 PNG header without complaint:
    # the refusals come from intake, not from Pillow.
    assert Image.open(io.BytesIO(by_id["jpeg-plus-zip"])).size == (48, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert Image.open(io.BytesIO(by_id["png-8000x6000"])).size == (8000, 6000)
    assert not any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught)


def test_refusals_name_the_real_type(intake):
    by_id = {case[0]: case for case in HOSTILE}
    for case_id, word in [("html-named-png", "HTML"), ("svg-named-png", "SVG"), ("eps-named-png", "EPS"),
                          ("webp-named-jpg", "WebP"), ("bmp-named-jpg", "BMP"), ("tiff-named-jpg", "TIFF")]:  # fmt: skip
        _, data, filename, content_type, *_ = by_id[case_id]
        with pytest.raises(AtelierError) as refused:
            intake.check(data, filename=filename, content_type=content_type)
        assert word in refused.value.message


def test_the_unmodified_originals_of_the_corpus_are_accepted(intake):
    """Each hostile file was made from one of these: without the tampering, they pass."""
    for data, name in [(PNG, "photo.png"), (JPEG, "photo.jpg"), (gif_by_hand(), "dot.gif")]:
        assert isinstance(intake.admit(data, filename=name), IntakeResult)


def test_pixel_limit_comes_from_settings():
    small = ImageIntake(StorageSettings(max_pixels=1000))
    with pytest.raises(AtelierError) as refused:
        small.admit(encode(photo((40, 40)), "PNG"))
    assert refused.value.code == "image_too_large_pixels"
    assert small.admit(encode(photo((40, 20)), "PNG")).width == 40


def test_a_limit_beyond_pillows_bomb_threshold_is_refused_at_start():
    with pytest.raises(ValueError, match="MAX_IMAGE_PIXELS"):
        ImageIntake(StorageSettings(max_pixels=Image.MAX_IMAGE_PIXELS + 1))


def test_intake_refuses_to_run_if_pillow_was_told_to_load_truncated_images(intake, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        intake.admit(PNG)
    # The structural walk refuses truncation on its own, whatever the global switch says.
    with pytest.raises(AtelierError) as refused:
        intake.check(JPEG[: len(JPEG) // 2])
    assert refused.value.code == "truncated_image"


@pytest.mark.parametrize(
    "filename, content_type",
    [
        (None, None),
        ("photo.PNG", "image/png"),
        ("my photo (1).png", "image/png; charset=binary"),
        ("照片.png", "application/octet-stream"),
        ("👨\u200d👩\u200d👧.png", None),
        ("album/photo.png", ""),
        ("no-extension", None),
        ("screenshot 2024.01.02", None),
    ],
)
def test_honest_names_and_types_are_accepted(intake, filename, content_type):
    assert intake.admit(PNG, filename=filename, content_type=content_type).format == "png"


def test_nul_padding_after_the_end_is_tolerated_and_dropped(intake):
    result = intake.admit(JPEG + b"\x00" * 100, filename="padded.jpg")
    assert result.original.endswith(b"\xff\xd9")


# ---------------------------------------------------------------- accepted, correctly


def secret_exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make] = "SECRETCAM"
    exif[ExifTags.IFD.GPSInfo] = {1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 7.0)}
    return exif


XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><exif:GPSLatitude>48,51.4N SECRETXMP</exif:GPSLatitude></x:xmpmeta>'
SECRETS = (b"SECRETCAM", b"SECRETXMP", b"SECRETCOM", b"Exif\x00\x00", b"http://ns.adobe.com/xap/1.0/", b"GPSLatitude")


def assert_no_metadata(data: bytes) -> None:
    for secret in SECRETS:
        assert secret not in data, secret
    reopened = Image.open(io.BytesIO(data))
    assert len(reopened.getexif()) == 0
    assert "comment" not in reopened.info and "xmp" not in reopened.info


def rgb_at(im: Image.Image, xy) -> tuple[int, int, int]:
    return im.convert("RGB").getpixel(xy)


def is_red(pixel) -> bool:
    r, g, b = pixel
    return r > 190 and g < 70 and b < 70


def is_blue(pixel) -> bool:
    r, g, b = pixel
    return b > 190 and r < 70 and g < 70


def rotated_jpeg() -> bytes:
    """Stored sideways (64 wide, 32 high) with orientation 6: upright it is 32 wide, 64 high.

    A red block sits at the stored top-left, which upright is the top-right corner.
    """
    im = Image.new("RGB", (64, 32), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 16, 16))
    return encode(im, "JPEG", quality=95, exif=secret_exif(6), xmp=XMP, comment=b"SECRETCOM")


def test_exif_rotated_jpeg_is_stored_upright_without_gps(intake):
    data = rotated_jpeg()
    assert all(secret in data for secret in SECRETS)  # the test input really carries them
    result = intake.admit(data, filename="IMG_0001.JPG", content_type="image/jpeg")

    assert (result.width, result.height, result.format) == (32, 64, "jpeg")
    assert result.content_hash == hashlib.sha256(data).hexdigest()
    for stored in (result.original, result.display):
        assert_no_metadata(stored)
        upright = Image.open(io.BytesIO(stored))
        assert upright.size == (32, 64)
        assert is_red(rgb_at(upright, (28, 3))) and is_blue(rgb_at(upright, (3, 3)))
        assert is_blue(rgb_at(upright, (28, 60)))
    assert result.model_image.mode == "RGB" and result.model_image.size == (32, 64)
    assert is_red(result.model_image.getpixel((28, 3))) and is_blue(result.model_image.getpixel((3, 3)))


def test_unrotated_jpeg_original_is_stripped_losslessly(intake):
    source = photo((96, 64))
    data = encode(source, "JPEG", quality=90, exif=secret_exif(1), xmp=XMP, comment=b"SECRETCOM")
    result = intake.admit(data, filename="photo.jpg")
    assert_no_metadata(result.original)
    assert len(result.original) < len(data)
    # Same entropy-coded data, byte for byte: the pixels decode identically.
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(result.original))), np.asarray(Image.open(io.BytesIO(data))))


def test_jfif_thumbnail_is_dropped(intake):
    data = bytearray(encode(photo(), "JPEG"))
    app0 = data.index(b"\xff\xe0")
    thumb = bytes([2, 1]) + b"\xaa" * 6  # a 2x1 RGB thumbnail
    length = struct.unpack_from(">H", data, app0 + 2)[0]
    body = data[app0 + 4 : app0 + 2 + length - 2] + thumb
    data[app0 : app0 + 2 + length] = b"\xff\xe0" + struct.pack(">H", len(body) + 2) + body
    result = intake.admit(bytes(data))
    assert b"\xaa" * 6 not in result.original
    assert Image.open(io.BytesIO(result.original)).size == (48, 32)


def test_cmyk_jpeg_is_kept_cmyk_and_given_to_models_as_rgb(intake):
    data = encode(Image.new("CMYK", (32, 24), (0, 255, 255, 0)), "JPEG", quality=95)
    result = intake.admit(data, filename="print.jpg")
    assert Image.open(io.BytesIO(result.original)).mode == "CMYK"
    assert result.model_image.mode == "RGB"
    assert is_red(result.model_image.getpixel((16, 12)))
    assert is_red(rgb_at(Image.open(io.BytesIO(result.display)), (16, 12)))


def test_16_bit_grey_png_is_scaled_not_clipped(intake):
    levels = np.full((16, 32), 0x8080, np.uint16)
    levels[:, 16:] = 0x1000
    data = encode(Image.fromarray(levels), "PNG")
    assert data[24] == 16  # the IHDR bit depth: really a 16-bit file
    result = intake.admit(data, filename="scan.png")
    assert result.model_image.mode == "RGB"
    assert result.model_image.getpixel((4, 4)) == (0x80, 0x80, 0x80)
    assert result.model_image.getpixel((20, 4)) == (0x10, 0x10, 0x10)
    assert result.original == data  # nothing to strip: the original is byte-identical


def test_16_bit_rgb_png_made_by_hand(intake):
    row = b"\x00" + struct.pack(">HHH", 0xFFFF, 0x0000, 0x0000) * 4
    result = intake.admit(png_by_hand(4, 3, row * 3, bit_depth=16, colour=2), filename="deep.png")
    assert result.model_image.getpixel((1, 1)) == (255, 0, 0)


def test_palette_png_with_transparency_is_composited_on_white(intake):
    im = Image.new("P", (8, 8), 0)
    im.putpalette([0, 255, 0, 0, 0, 255, 0, 0, 0])
    im.paste(1, (4, 0, 8, 8))
    im.paste(2, (0, 6, 4, 8))
    data = encode(im, "PNG", transparency=bytes([0, 255, 128]))  # green: clear, blue: opaque, black: half
    result = intake.admit(data, filename="logo.png")
    model = result.model_image
    assert model.mode == "RGB"
    assert model.getpixel((1, 1)) == (255, 255, 255)  # not the hidden green
    assert model.getpixel((6, 1)) == (0, 0, 255)
    assert all(120 <= c <= 135 for c in model.getpixel((1, 7)))  # half black over white
    reopened = Image.open(io.BytesIO(result.original))
    assert reopened.mode == "P" and "transparency" in reopened.info  # the original keeps its alpha


@pytest.mark.parametrize("mode", ["1", "L", "LA", "RGBA", "P", "I;16", "RGB"])
def test_every_png_mode_becomes_rgb(intake, mode):
    im = photo((20, 10)).convert("RGBA" if mode in ("LA", "RGBA") else "RGB")
    im = im.convert(mode) if mode != "I;16" else Image.fromarray(np.full((10, 20), 0x4000, np.uint16))
    result = intake.admit(encode(im, "PNG"))
    assert result.model_image.mode == "RGB" and result.model_image.size == (20, 10)


def test_rgba_png_is_composited_on_white(intake):
    im = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    result = intake.admit(encode(im, "PNG"))
    assert result.model_image.getpixel((1, 1)) == (255, 255, 255)


def test_animated_gif_first_frame_for_models_all_frames_kept(intake):
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0, comment=b"SECRETCOM")
    data = out.getvalue()
    assert b"SECRETCOM" in data
    result = intake.admit(data, filename="loop.gif")
    assert (result.format, result.frames, result.width, result.height) == ("gif", 3, 16, 16)
    assert is_red(result.model_image.getpixel((8, 8)))
    assert b"SECRETCOM" not in result.original
    kept = Image.open(io.BytesIO(result.original))
    assert kept.n_frames == 3 and kept.info.get("loop") == 0
    kept.seek(2)
    assert is_blue(rgb_at(kept, (8, 8)))
    assert is_red(rgb_at(Image.open(io.BytesIO(result.display)), (8, 8)))


def test_animated_png_keeps_its_frames(intake):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=100)
    result = intake.admit(data, filename="anim.png")
    assert result.frames == 2 and is_red(result.model_image.getpixel((4, 4)))
    assert Image.open(io.BytesIO(result.original)).n_frames == 2


def test_png_text_and_exif_chunks_are_stripped(intake):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "SECRETCOM")
    info.add_text("XML:com.adobe.xmp", XMP.decode(), zip=True)
    info.add_itxt("Author", "SECRETCAM", zip=True)
    data = encode(photo(), "PNG", pnginfo=info, exif=secret_exif(1))
    assert b"eXIf" in data and b"tEXt" in data
    result = intake.admit(data, filename="meta.png")
    for chunk in (b"tEXt", b"zTXt", b"iTXt", b"eXIf"):
        assert chunk not in result.original
    assert_no_metadata(result.original)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(result.original))), np.asarray(photo()))


def test_exif_rotated_png_is_reencoded_upright_losslessly(intake):
    im = photo((30, 20))
    result = intake.admit(encode(im, "PNG", exif=secret_exif(8)))
    assert (result.width, result.height) == (20, 30)
    upright = Image.open(io.BytesIO(result.original))
    assert_no_metadata(result.original)
    assert np.array_equal(np.asarray(upright), np.asarray(im.transpose(Image.Transpose.ROTATE_90)))


# ---------------------------------------------------------------- display copy and bulk decoding


def test_display_copy_is_bounded_compressed_and_clean():
    intake = ImageIntake(StorageSettings(display_max_side=256, display_quality=70))
    data = encode(photo((1024, 300)), "PNG")
    result = intake.admit(data)
    display = Image.open(io.BytesIO(result.display))
    assert display.format == "JPEG" and result.display_mime == "image/jpeg"
    assert display.size == (256, 75)
    assert len(result.display) < len(data)
    assert_no_metadata(result.display)


def test_display_copy_as_webp():
    result = ImageIntake(StorageSettings(display_format="webp")).admit(JPEG)
    assert Image.open(io.BytesIO(result.display)).format == "WEBP"
    assert result.display_mime == "image/webp"


def test_small_images_are_not_enlarged(intake):
    result = intake.admit(PNG)
    assert Image.open(io.BytesIO(result.display)).size == (48, 32) == result.model_image.size


def test_bulk_decode_drafts_jpeg_to_the_model_size():
    intake = ImageIntake(StorageSettings(display_max_side=300))
    source = photo((2400, 1600))
    data = encode(source, "JPEG", quality=90)
    full = intake.admit(data)
    drafted = intake.admit(data, model_size=224)
    # The true size is reported whatever scale the pixels were decoded at.
    assert (drafted.width, drafted.height) == (full.width, full.height) == (2400, 1600)
    assert min(drafted.model_image.size) == 224 and drafted.model_image.size == (336, 224)
    assert Image.open(io.BytesIO(drafted.display)).size == Image.open(io.BytesIO(full.display)).size == (300, 200)
    assert drafted.original == full.original  # the stored original never depends on the decode scale
    # A draft decode sees the same picture as a full decode, scaled.
    reference = np.asarray(full.model_image.resize(drafted.model_image.size, Image.Resampling.BICUBIC), dtype=float)
    assert np.abs(np.asarray(drafted.model_image, dtype=float) - reference).mean() < 4


def test_bulk_decode_of_a_rotated_jpeg_keeps_a_full_size_upright_original():
    intake = ImageIntake(StorageSettings(display_max_side=300))
    im = Image.new("RGB", (1600, 800), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 400, 400))
    result = intake.admit(encode(im, "JPEG", quality=95, exif=secret_exif(6)), model_size=64)
    assert (result.width, result.height) == (800, 1600)
    original = Image.open(io.BytesIO(result.original))
    assert original.size == (800, 1600) and is_red(rgb_at(original, (780, 20)))
    assert min(result.model_image.size) == 64 and is_red(result.model_image.getpixel((60, 2)))
    assert_no_metadata(result.original)


def test_decode_makes_no_copies(intake):
    decoded = intake.decode(rotated_jpeg(), model_size=16)
    assert type(decoded) is DecodedImage
    assert (decoded.width, decoded.height) == (32, 64) and min(decoded.model_image.size) == 16
