"""Where image bytes live: one small `BlobStore` contract, a local-folder and an S3-compatible backend.

Keys are built here from a hash of the user id and the content hash, so nothing a user sends ever
becomes part of a path; every backend re-validates keys before touching storage.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from storage.errors import InvalidInput, NotFound, Unavailable
from storage.settings import StorageSettings

if TYPE_CHECKING:
    from storage.intake import IntakeResult

_SEGMENT = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}"
_KEY = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT}){{0,15}}")
_HASH = re.compile(r"[0-9a-f]{64}")
_VARIANT = re.compile(r"[a-z][a-z0-9_]{0,31}")
_MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg", "gif": "image/gif", "webp": "image/webp"}


def user_prefix(user_id: str) -> str:
    """The folder of one user's blobs: a hash, so ids with '/', '..' or quotes never reach a path."""
    if not isinstance(user_id, str) or not user_id:
        raise InvalidInput("user_id must be a non-empty string", code="invalid_user_id", field="user_id")
    return f"u/{hashlib.sha256(user_id.encode('utf-8')).hexdigest()[:32]}/"


def blob_key(user_id: str, content_hash: str, variant: str, extension: str) -> str:
    """`u/<user hash>/<hash[:2]>/<hash>/<variant>.<ext>`: content-addressed per user, fanned out
    by the hash's first byte so no folder grows past a few thousand entries."""
    if not isinstance(content_hash, str) or not _HASH.fullmatch(content_hash):
        raise InvalidInput(
            "content_hash must be 64 lowercase hex characters (a sha256)", code="invalid_content_hash", field="content_hash"
        )
    if not _VARIANT.fullmatch(variant) or extension not in _MEDIA_TYPES:
        raise ValueError(f"unknown blob variant {variant!r} or extension {extension!r}")
    return f"{user_prefix(user_id)}{content_hash[:2]}/{content_hash}/{variant}.{extension}"


def media_type(key: str) -> str:
    """The Content-Type to serve a blob with, from the extension we gave its key."""
    return _MEDIA_TYPES.get(key.rsplit(".", 1)[-1], "application/octet-stream")


def check_key(key: str) -> str:
    """Refuse anything that is not a relative key of plain segments (no '..', '/x', '', '.x')."""
    if not isinstance(key, str) or len(key) > 1024 or not _KEY.fullmatch(key):
        # Keys are made by blob_key, so a bad one is our bug, not the caller's input.
        raise ValueError(f"invalid blob key {key!r}")
    return key


def _check_prefix(prefix: str) -> str:
    if not prefix.endswith("/"):
        raise ValueError(f"a blob prefix must end with '/', got {prefix!r}")
    check_key(prefix[:-1])
    return prefix


class BlobStore(ABC):
    """Bytes by key. `put` is atomic: readers see the old bytes or the new, never a part."""

    @abstractmethod
    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The bytes under `key`; NotFound when absent."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; removing an absent key is not an error (deletes are retried)."""

    @abstractmethod
    def keys(self, prefix: str) -> Iterator[str]:
        """Every key under `prefix` (which ends with '/'), in no particular order."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """Where the blob lives, as a URI (`file://...`, `s3://...`) for records and logs."""

    def size(self, prefix: str) -> int:
        """Bytes stored under `prefix` (a user's folder: what their plan's `stored_bytes` counts)."""
        return sum(len(self.get(key)) for key in self.keys(_check_prefix(prefix)))

    def delete_prefix(self, prefix: str) -> int:
        """Remove every key under `prefix` (a user's folder, say); returns how many were removed."""
        doomed = list(self.keys(_check_prefix(prefix)))
        for key in doomed:
            self.delete(key)
        return len(doomed)


class LocalBlobStore(BlobStore):
    """A folder on a local or shared file system; writes go to a temp file, fsync, then rename."""

    _TEMP = ".tmp-"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = self.root / check_key(key)
        # Defence in depth: a symlink planted inside the root must not lead writes outside it.
        if not path.resolve().is_relative_to(self.root):
            raise ValueError(f"blob key {key!r} resolves outside the store")
        return path

    def put(self, key: str, data: bytes, content_type: str) -> None:
        # A file carries no Content-Type; the key's extension does (see media_type).
        path = self._path(key)
        for attempt in range(3):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd, temp = tempfile.mkstemp(prefix=self._TEMP, dir=path.parent)
            except FileNotFoundError:
                if attempt == 2:  # a concurrent delete keeps pruning the folder we just made
                    raise
                continue
            break
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(f"no blob {key!r}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        # Prune the folders this key emptied, so deleted users leave no trail of empty folders.
        for parent in path.parents:
            if parent == self.root or not parent.is_relative_to(self.root):
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def keys(self, prefix: str) -> Iterator[str]:
        top = self._path(_check_prefix(prefix)[:-1])
        for folder, _, files in os.walk(top):
            for name in files:
                if not name.startswith(self._TEMP):
                    yield Path(folder, name).relative_to(self.root).as_posix()

    def size(self, prefix: str) -> int:
        total = 0
        for key in self.keys(prefix):
            try:
                total += self._path(key).stat().st_size
            except FileNotFoundError:  # deleted while we walked
                pass
        return total

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the folder's entry is on disk too.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on folders; the data itself is already synced
    finally:
        os.close(fd)


class S3BlobStore(BlobStore):
    """An S3-compatible bucket (AWS, MinIO, R2, moto...) through s3fs; a put is one PutObject,
    which S3 makes visible all at once."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        timeout_s: float = 30.0,
    ):
        import s3fs

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            check_key(self.prefix)
        self._fs = s3fs.S3FileSystem(
            key=access_key_id,
            secret=secret_access_key,
            endpoint_url=endpoint_url,
            client_kwargs={"region_name": region},
            config_kwargs={
                "connect_timeout": min(timeout_s, 10.0),
                "read_timeout": timeout_s,
                "retries": {"max_attempts": 3, "mode": "standard"},
            },
            # Another replica may write or delete at any time: never answer from a stale listing.
            use_listings_cache=False,
            skip_instance_cache=True,
            # Blobs are a few MB: one GET each, without the HEAD that s3fs sends to plan ranged reads.
            max_concurrency=1,
        )
        # botocore already retries with backoff; s3fs's own five rounds on top of it would keep a
        # caller waiting many seconds for the 503 of a store that is down.
        self._fs.retries = 2

    def _path(self, key: str) -> str:
        check_key(key)
        return f"{self.bucket}/{self.prefix}/{key}" if self.prefix else f"{self.bucket}/{key}"

    def _key(self, path: str) -> str:
        head = f"{self.bucket}/{self.prefix}/" if self.prefix else f"{self.bucket}/"
        return path[len(head) :]

    def put(self, key: str, data: bytes, content_type: str) -> None:
        with _s3_errors(key, missing="outage"):  # only a missing bucket makes a PUT "not found"
            self._fs.pipe_file(self._path(key), data, ContentType=content_type)

    def get(self, key: str) -> bytes:
        with _s3_errors(key):
            return self._fs.cat_file(self._path(key))

    def exists(self, key: str) -> bool:
        with _s3_errors(key):
            return self._fs.exists(self._path(key))

    def delete(self, key: str) -> None:
        with _s3_errors(key, missing="ok"):
            self._fs.rm_file(self._path(key))

    def keys(self, prefix: str) -> Iterator[str]:
        found: list[str] = []
        with _s3_errors(prefix, missing="ok"):
            found = self._fs.find(self._path(_check_prefix(prefix)[:-1]) + "/")
        for path in found:
            yield self._key(path)

    def size(self, prefix: str) -> int:
        found: dict = {}
        with _s3_errors(prefix, missing="ok"):
            found = self._fs.find(self._path(_check_prefix(prefix)[:-1]) + "/", detail=True)
        return sum(int(info.get("size") or 0) for info in found.values())

    def delete_prefix(self, prefix: str) -> int:
        doomed = [self._path(key) for key in self.keys(prefix)]
        if doomed:
            with _s3_errors(prefix, missing="ok"):
                self._fs.rm(doomed)  # batched DeleteObjects, 1000 keys a request
        return len(doomed)

    def uri(self, key: str) -> str:
        return f"s3://{self._path(key)}"


@contextlib.contextmanager
def _s3_errors(key: str, *, missing: Literal["not_found", "ok", "outage"] = "not_found") -> Iterator[None]:
    """Missing objects become NotFound; transport and server failures become Unavailable (503)."""
    try:
        yield
    except FileNotFoundError as error:
        if missing == "not_found":
            raise NotFound(f"no blob {key!r}") from None
        if missing == "outage":
            raise Unavailable(f"the blob store failed on {key!r}: {error}", code="blob_store_unavailable") from error
    except ValueError:
        raise  # an invalid key: our bug, reported as such
    except Exception as error:
        # s3fs has already retried what is retryable; what reaches here is an outage or a misconfiguration.
        raise Unavailable(f"the blob store failed on {key!r}: {error}", code="blob_store_unavailable") from error


@dataclass(frozen=True, slots=True)
class ImageBlobs:
    """The keys of one stored image's copies."""

    original: str
    display: str


def store_image(store: BlobStore, user_id: str, image: IntakeResult) -> ImageBlobs:
    """Put an admitted image's original and display copies under keys made from its hash.

    Call it before writing the gallery row, which is what makes an image exist. If a put fails,
    nothing is deleted: the same bytes may already back an existing row, a retry rewrites the
    same keys, and deleting the user's prefix removes any leftover.
    """
    from storage.intake import EXTENSION  # Pillow: only where images are stored, not in every blob reader

    keys = ImageBlobs(
        original=blob_key(user_id, image.content_hash, "original", EXTENSION[image.format]),
        display=blob_key(user_id, image.content_hash, "display", EXTENSION[image.display_format]),
    )
    store.put(keys.original, image.original, image.mime)
    store.put(keys.display, image.display, image.display_mime)
    return keys


def open_blob_store(settings: StorageSettings | None = None) -> BlobStore:
    """The backend `settings.blob_backend` names, configured from the same settings."""
    settings = settings or StorageSettings()
    if settings.blob_backend == "local":
        return LocalBlobStore(settings.blob_root)
    if not settings.s3_bucket:
        raise ValueError("blob_backend is 's3' but no bucket is set: set ATELIER_S3_BUCKET")
    return S3BlobStore(
        settings.s3_bucket,
        settings.s3_prefix,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=settings.s3_secret_access_key,
        timeout_s=settings.blob_timeout_s,
    )
