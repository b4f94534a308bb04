"""Listing and reading an ingestion job's sources: folders, zips (bomb checks first), limits."""

from __future__ import annotations

import io
import zipfile

import pytest
from PIL import Image

from deployments.config import ZipLimits
from pipelines.stages import square_pixels
from pipelines.sources import EntryReader, check_zip, list_sources
from storage.errors import NotFound, PayloadTooLarge
from storage.settings import StorageSettings

from tests.support.sample_photos import jpeg

LIMITS = ZipLimits()


def settings(**kw) -> StorageSettings:
    return StorageSettings(lancedb_uri="unused", blob_root="unused", **kw)


def make_zip(members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_a_folder_lists_every_user_file_and_skips_archiver_bookkeeping(tmp_path):
    (tmp_path / "trip" / "day1").mkdir(parents=True)
    (tmp_path / "trip" / "day1" / "a.jpg").write_bytes(jpeg(1))
    (tmp_path / "trip" / "b.txt").write_text("not a photo, still listed: it becomes an error entry")
    (tmp_path / "trip" / ".DS_Store").write_bytes(b"x")
    (tmp_path / "trip" / "__MACOSX").mkdir()
    (tmp_path / "trip" / "__MACOSX" / "._a.jpg").write_bytes(b"x")
    (tmp_path / "trip" / "big.jpg").write_bytes(b"\xff" * 20_000)
    entries = list_sources([str(tmp_path / "trip")], settings(max_upload_bytes=10_000), LIMITS, max_files=100)
    by_name = {e.name: e for e in entries}
    assert sorted(by_name) == ["b.txt", "big.jpg", "day1/a.jpg"]
    assert by_name["big.jpg"].code == "file_too_large" and by_name["day1/a.jpg"].code is None
    assert by_name["day1/a.jpg"].url.startswith("file:///")


def test_a_missing_source_or_too_many_files_refuses_the_job(tmp_path):
    with pytest.raises(NotFound):
        list_sources([str(tmp_path / "nope")], settings(), LIMITS, max_files=10)
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(jpeg(i))
    with pytest.raises(PayloadTooLarge) as info:
        list_sources([str(tmp_path)], settings(), LIMITS, max_files=2)
    assert info.value.code == "too_many_files"


def test_zip_entries_are_labels_never_paths_and_read_from_the_archive(tmp_path):
    photos = {"holiday/one.jpg": jpeg(1), "../../etc/evil.jpg": jpeg(2), "__MACOSX/holiday/._one.jpg": b"rsrc",
              "inner.zip": make_zip({"x.jpg": jpeg(3)}), "holiday/": b""}
    path = tmp_path / "upload.zip"
    path.write_bytes(make_zip(photos))
    entries = list_sources([str(path)], settings(), LIMITS, max_files=100)
    # A nested archive is ignored (API.md: not opened, not counted); hostile names stay labels.
    assert sorted(e.name for e in entries) == ["../../etc/evil.jpg", "holiday/one.jpg"]
    with EntryReader(settings()) as reader:
        for e in entries:
            assert reader.read({"url": e.url, "member": e.member}) == photos[e.name]
    assert not (tmp_path.parent / "etc").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["upload.zip"]


@pytest.mark.parametrize("limits, members, code", [
    (ZipLimits(max_ratio=100), {"zeros.jpg": b"\0" * (8 << 20)}, "zip_bomb"),
    (ZipLimits(max_entries=3), {f"{i}.jpg": b"x" for i in range(4)}, "zip_too_many_entries"),
    (ZipLimits(max_total_bytes=1000), {"a.jpg": b"a" * 600, "b.jpg": b"b" * 600}, "zip_too_large"),
])
def test_zip_bombs_are_refused_from_the_directory_alone(limits, members, code):
    with zipfile.ZipFile(io.BytesIO(make_zip(members))) as archive:
        with pytest.raises(PayloadTooLarge) as info:
            check_zip(archive, limits)
    assert info.value.code == code


def test_an_oversized_zip_entry_is_an_error_entry_not_read(tmp_path):
    path = tmp_path / "u.zip"
    path.write_bytes(make_zip({"small.jpg": jpeg(1), "large.jpg": bytes(range(256)) * 40}, zipfile.ZIP_STORED))
    entries = {e.name: e for e in list_sources([str(path)], settings(max_upload_bytes=5000), LIMITS, max_files=10)}
    assert entries["large.jpg"].code == "file_too_large" and entries["small.jpg"].code is None
    with EntryReader(settings(max_upload_bytes=5000)) as reader, pytest.raises(PayloadTooLarge):
        reader.read({"url": entries["large.jpg"].url, "member": "large.jpg"})


def test_square_pixels_is_the_centre_square_at_the_model_side():
    im = Image.new("RGB", (90, 40), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 20, 40))  # a blue band on the left edge is cropped away
    out = square_pixels(im, 32)
    assert len(out) == 32 * 32 * 3
    assert Image.frombytes("RGB", (32, 32), out).getpixel((0, 16))[0] > 200
    assert len(square_pixels(Image.new("RGB", (10, 12)), 32)) == 32 * 32 * 3  # small images are enlarged


def test_square_pixels_without_crop_keeps_the_whole_picture():
    """SigLIP and Chinese-CLIP see the whole picture squeezed to the square: the left band stays."""
    im = Image.new("RGB", (90, 40), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 20, 40))
    square = Image.frombytes("RGB", (32, 32), square_pixels(im, 32, crop=False))
    assert square.getpixel((1, 16))[2] > 200 and square.getpixel((30, 16))[0] > 200


def test_which_families_crop(tiny_kit):
    from models import EmbedderConfig
    from pipelines.config import embedder_geometry

    crops = {name: embedder_geometry(EmbedderConfig(model=str(tiny_kit / name)))[2]
             for name in ("embedder", "embedder_chinese_clip", "embedder_clip")}
    assert crops == {"embedder": False, "embedder_chinese_clip": False, "embedder_clip": True}
