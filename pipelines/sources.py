"""Where an ingestion job's files come from: folders, .zip archives, object-store prefixes and file lists.

Listing turns sources into entries (a label, a URL, and a zip member); reading fetches an entry's bytes.
Every location is an fsspec URL (`file://`, `s3://`), so a read task on any node reads the same way.
Zips are judged from their central directory before any entry is read (zip bombs), and entry names
are labels only: nothing is ever extracted to a path.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from storage.errors import InvalidInput, NotFound, PayloadTooLarge
from storage.settings import StorageSettings

# Archivers' bookkeeping, not the user's files: macOS resource forks, Finder and Explorer caches.
_NOT_USER_FILES = {"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"}
_BIG_ENTRY = 1024 * 1024  # below this, a high compression ratio is normal (tiny or blank files)


@dataclass(frozen=True, slots=True)
class Entry:
    """One file of a job. `name` is what the user sees in errors; `url` is the file, or the zip holding
    `member`; an entry that fails at listing carries its `code` and `message` and is never read."""

    name: str
    url: str
    member: str | None = None
    size: int = -1
    code: str | None = None
    message: str | None = None

    def row(self) -> dict[str, Any]:
        return asdict(self)


def storage_options(url: str, settings: StorageSettings) -> dict[str, Any]:
    """fsspec options for `url`: object-store sources use the blob settings' endpoint and credentials."""
    if url.startswith(("s3://", "s3a://")):
        options: dict[str, Any] = {"client_kwargs": {"region_name": settings.s3_region}}
        if settings.s3_endpoint_url:
            options["endpoint_url"] = settings.s3_endpoint_url
        if settings.s3_access_key_id:
            options["key"] = settings.s3_access_key_id
            options["secret"] = settings.s3_secret_access_key
        return options
    return {}


def as_url(source: str) -> str:
    """A SOURCE argument as a URL: paths become absolute `file://` URLs, URLs stay as they are."""
    if "://" in source:
        return source
    return Path(source).expanduser().resolve().as_uri()


def filesystem(url: str, settings: StorageSettings):
    """(fsspec filesystem, path inside it) for `url`."""
    from fsspec.core import url_to_fs

    return url_to_fs(url, **storage_options(url, settings))


def _is_user_file(name: str) -> bool:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    # Hidden names are skipped; "." and ".." are not: such an entry is hostile and must show as an error.
    return not any(p in _NOT_USER_FILES or (p.startswith(".") and p not in (".", "..")) for p in parts)


def check_zip(archive: zipfile.ZipFile, limits) -> list[zipfile.ZipInfo]:
    """The archive's file entries, after refusing the whole archive if it could be a zip bomb.

    Only declared sizes are read (the central directory); Python's zipfile never yields more than
    an entry's declared size and checks its CRC, so a lying entry fails on read, bounded.
    """
    infos = archive.infolist()
    if len(infos) > limits.max_entries:
        raise PayloadTooLarge(
            f"the zip lists {len(infos)} entries; the limit is {limits.max_entries}: split it into smaller archives",
            code="zip_too_many_entries", field="file")
    total = sum(i.file_size for i in infos)
    if total > limits.max_total_bytes:
        raise PayloadTooLarge(
            f"the zip would unpack to {total} bytes; the limit is {limits.max_total_bytes}: split it",
            code="zip_too_large", field="file")
    for info in infos:
        if info.file_size > _BIG_ENTRY and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise PayloadTooLarge(
                f"zip entry {info.filename[:200]!r} expands {info.file_size / max(info.compress_size, 1):.0f}-fold; "
                f"the limit is {limits.max_ratio:g} (a zip bomb?): re-create the archive from the photos themselves",
                code="zip_bomb", field="file")
    return [i for i in infos if not i.is_dir() and _is_user_file(i.filename)]


def _zip_entries(url: str, handle: IO[bytes], limits, max_file_bytes: int) -> list[Entry]:
    try:
        with zipfile.ZipFile(handle) as archive:
            infos = check_zip(archive, limits)
    except zipfile.BadZipFile as exc:
        raise InvalidInput(f"{url} is not a readable zip archive ({exc})", code="bad_zip", field="source") from None
    entries = []
    for info in infos:
        if _is_archive(info.filename):
            continue  # a nested archive is ignored, not opened and not counted (API.md)
        problem = _member_problem(info, max_file_bytes)
        entries.append(Entry(name=info.filename, url=url, member=info.filename, size=info.file_size,
                             code=problem and problem[0], message=problem and problem[1]))
    return entries


_ARCHIVES = (".zip", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".7z", ".rar", ".zst")


def _is_archive(name: str) -> bool:
    return name.lower().endswith(_ARCHIVES)


def _member_problem(info: zipfile.ZipInfo, max_file_bytes: int) -> tuple[str, str] | None:
    if info.flag_bits & 0x1:
        return "encrypted_entry", "the zip entry is encrypted: add it to the archive without a password"
    if info.file_size > max_file_bytes:
        return "file_too_large", (f"the file is {info.file_size} bytes, over the limit of {max_file_bytes}: "
                                  "compress or scale it down")
    return None


def list_sources(sources: Iterable[str], settings: StorageSettings, limits, *, max_files: int) -> list[Entry]:
    """Every file of every source, sorted by name within a source. A source that cannot be listed
    (missing, not a zip it claims to be, a zip bomb) raises: the job cannot know what it would skip."""
    entries: list[Entry] = []
    for source in sources:
        entries.extend(_list_one(as_url(source), settings, limits))
        if len(entries) > max_files:
            raise PayloadTooLarge(f"the sources hold more than {max_files} files; ingest them in several jobs",
                                  code="too_many_files", field="source")
    return entries


def _list_one(url: str, settings: StorageSettings, limits) -> list[Entry]:
    fs, path = filesystem(url, settings)
    limit = settings.max_upload_bytes
    if not fs.exists(path):
        raise NotFound(f"source {url} does not exist", code="source_not_found")
    if fs.isdir(path):
        found = []
        for file_path, info in sorted(fs.find(path, detail=True).items()):
            rel = file_path[len(path.rstrip("/")) + 1:] if file_path.startswith(path.rstrip("/") + "/") else file_path
            if info.get("type", "file") != "file" or not _is_user_file(rel):
                continue
            size = int(info.get("size") or 0)
            file_url = _join(url, rel)
            if size > limit:
                found.append(Entry(rel, file_url, size=size, code="file_too_large",
                                   message=f"the file is {size} bytes, over the limit of {limit}: compress or scale it down"))
            else:
                found.append(Entry(rel, file_url, size=size))
        return found
    with fs.open(path, "rb") as handle:
        head = handle.read(4)
        if head in (b"PK\x03\x04", b"PK\x05\x06"):
            handle.seek(0)
            return _zip_entries(url, handle, limits, limit)
    size = int(fs.size(path) or 0)
    name = PurePosixPath(path).name
    if size > limit:
        return [Entry(name, url, size=size, code="file_too_large",
                      message=f"the file is {size} bytes, over the limit of {limit}: compress or scale it down")]
    return [Entry(name, url, size=size)]


def _join(url: str, rel: str) -> str:
    if url.startswith("file://"):
        return (Path(url[len("file://"):]) / rel).as_uri()
    return url.rstrip("/") + "/" + rel


class EntryReader:
    """Reads entries' bytes for one read task: each zip is opened once per batch, never extracted."""

    def __init__(self, settings: StorageSettings):
        self.settings = settings
        self._zips: dict[str, tuple[Any, zipfile.ZipFile]] = {}

    def read(self, entry: dict) -> bytes:
        limit = self.settings.max_upload_bytes
        if not entry.get("member"):
            fs, path = filesystem(entry["url"], self.settings)
            with fs.open(path, "rb") as handle:
                data = handle.read(limit + 1)
        else:
            archive = self._zip(entry["url"])
            info = archive.getinfo(entry["member"])
            problem = _member_problem(info, limit)
            if problem:
                raise PayloadTooLarge(problem[1], code=problem[0], field="file")
            with archive.open(info) as handle:
                data = handle.read(limit + 1)
        if len(data) > limit:
            raise PayloadTooLarge(f"the file is over the limit of {limit} bytes: compress or scale it down",
                                  code="file_too_large", field="file")
        return data

    def _zip(self, url: str) -> zipfile.ZipFile:
        if url not in self._zips:
            fs, path = filesystem(url, self.settings)
            handle = fs.open(path, "rb")
            self._zips[url] = (handle, zipfile.ZipFile(handle))
        return self._zips[url][1]

    def close(self) -> None:
        for handle, archive in self._zips.values():
            archive.close()
            handle.close()
        self._zips.clear()

    def __enter__(self) -> "EntryReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

