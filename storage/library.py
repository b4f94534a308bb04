"""Storage as the product service uses it: intake, blobs and the gallery composed into a user's library.

Reads go straight to LanceDB from this process; every write goes through the gallery's one writer:
the cluster's GalleryWriter actor (`storage.gallery_writer`), or, in a process without Ray (the
in-process test tier), this process's own Gallery. Blobs are written before the row (the row is
what makes an image exist) and deleted after it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

import numpy as np
from cachetools import LRUCache, TTLCache

from storage.blobs import media_type, open_blob_store, store_image, user_prefix
from storage.calls import Calls
from storage.duplicates import groups, near_duplicates, perceptual_hash, threshold
from storage.dismissals import Dismissals
from storage.erasures import ErasureLog
from storage.errors import AtelierError, NotFound
from storage.intake import DecodedImage, ImageIntake, IntakeResult
from storage.rows import new_row
from storage.settings import StorageSettings

log = logging.getLogger("atelier.library")


class Library:
    def __init__(self, settings: StorageSettings, *, dim: int, embed_model: str,
                 writer: Literal["actor", "local"] = "actor"):
        # LanceDB and Ray load when a replica opens its library, not when the service's modules are imported
        # (the in-process tier and the proxy's gate import them without either).
        from storage.gallery import Gallery

        self.settings = settings
        self.embed_model = embed_model
        self.intake = ImageIntake(settings)
        self.blobs = open_blob_store(settings)
        self.gallery = Gallery.open(settings, dim=dim, embed_model=embed_model)
        # Loads jieba's dictionary and the indexes now, not on a user's first Chinese search.
        self.gallery.warm_up()
        from storage.gallery_writer import TableWriter, gallery_writer, local_writes

        if writer == "actor":
            calls = Calls(gallery_writer(settings, (embed_model, dim)), what="gallery writer")
        else:
            calls = Calls(local_writes(settings, self.gallery), threads=True)
        self.writer = TableWriter(calls, (embed_model, dim))
        self._hashes: LRUCache = LRUCache(maxsize=256)  # content hash -> pHash: the check and the row share one
        self.dismissals = Dismissals(settings.lancedb_uri, storage_options=settings.lancedb_storage_options)
        # user -> (table version, groups): the pages of one listing read the gallery once, not once per page.
        self._groups: TTLCache = TTLCache(maxsize=16, ttl=60)
        self._refreshing: set[asyncio.Task] = set()

    # -- intake -----------------------------------------------------------------------------------
    async def admit(self, data: bytes, *, filename: str | None = None, content_type: str | None = None,
                    model_size: int | None = None) -> IntakeResult:
        return await asyncio.to_thread(self.intake.admit, data, filename=filename, content_type=content_type,
                                       model_size=model_size)

    async def decode(self, data: bytes, *, filename: str | None = None, content_type: str | None = None,
                     model_size: int | None = None) -> DecodedImage:
        return await asyncio.to_thread(self.intake.decode, data, filename=filename, content_type=content_type,
                                       model_size=model_size)

    # -- reads ------------------------------------------------------------------------------------
    async def _read(self, fn, *args, **kwargs):
        """A read of the gallery; once more if a purge removed the files of the version it started on."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - only a vanished version is retried; the rest propagate
            if not _version_gone(exc):
                raise
            return await asyncio.to_thread(fn, *args, **kwargs)

    async def usage(self, user_id: str) -> tuple[int, int]:
        """(images, bytes) the user stores: rows of this model's table, and their blobs' bytes (every copy)."""
        images = await self._read(self.gallery.count, user_id)
        prefix = user_prefix(user_id)

        def kept() -> int:  # not an ingestion job's staged upload (its files count once stored)
            return self.blobs.size(prefix) - self.blobs.size(prefix + "ingest/")

        return images, await asyncio.to_thread(kept)

    async def find(self, user_id: str, content_hash: str) -> dict | None:
        return await self._read(self.gallery.find_by_hash, user_id, content_hash)

    async def get(self, user_id: str, img_id: str) -> dict:
        return await self._read(self.gallery.get, user_id, img_id)

    async def owner(self, img_id: str) -> str | None:
        return await self._read(self.gallery.owner_of, img_id)

    async def list(self, user_id: str, limit: int, cursor: str | None) -> tuple[list[dict], str | None]:
        return await self._read(self.gallery.list, user_id, limit=limit, cursor=cursor)

    async def search(self, user_id: str, vector: np.ndarray, k: int, text: str | None = None) -> list[dict]:
        return await self._read(self.gallery.search, user_id, vector, k=k, text=text)

    async def warm(self, user_id: str) -> None:
        """Ready this process's view of the user's gallery for a search (`Gallery.warm`): called while the
        Embedder works on an upload, it takes the vector cache's refresh after other writes off the upload's path."""
        await self._read(self.gallery.warm, user_id)

    async def phash(self, image: DecodedImage) -> str:
        """The image's perceptual hash, computed once for the check and the row."""
        phash = self._hashes.get(image.content_hash)
        if phash is None:
            phash = self._hashes[image.content_hash] = await asyncio.to_thread(perceptual_hash, image.model_image)
        return phash

    async def near_duplicates(self, user_id: str, image: DecodedImage, vector: np.ndarray) -> list[dict]:
        """The user's photos a new one is the same picture or a near shot of (storage/duplicates.py)."""
        phash = await self.phash(image)
        cosine = threshold(self.settings.near_shot_cosine, self.embed_model)

        def near(hits: list[dict]) -> list[dict]:
            return near_duplicates(phash, [h for h in hits if h["content_hash"] != image.content_hash],
                                   hash_bits=self.settings.duplicate_hash_bits, cosine=cosine)

        return near(await self._read(self.gallery.near, user_id, vector, k=self.settings.near_duplicate_candidates,
                                     keep=lambda hit: bool(near([hit]))))

    async def duplicate_groups(self, user_id: str) -> list[dict]:
        """The user's groups of near-duplicates, from the pairs their uploads' checks kept (storage.duplicates.groups),
        reused while the table has not moved on (a listing's later pages); the dismissed ones left out."""
        def read() -> list[dict]:
            version = self.gallery.table.version
            known = self._groups.get(user_id)
            if known is None or known[0] != version:
                pairs = self.gallery.near_pairs(user_id)
                rows = self.gallery.rows_of(user_id, {i for a, b, _, _ in pairs for i in (a, b)})
                known = self._groups[user_id] = (version, groups(rows, pairs) if pairs else [])
            if not known[1]:
                return []
            dismissed = self.dismissals.of(user_id)
            return [g for g in known[1] if g["group"] not in dismissed]

        return await self._read(read)

    async def dismiss(self, user_id: str, group: str) -> None:
        """Never propose this group (these very photos) to the user again."""
        await asyncio.to_thread(self.dismissals.add, user_id, group)

    async def display(self, user_id: str, img_id: str, *, original: bool = False) -> tuple[bytes, str]:
        """The stored display copy of a user's image (or, with `original`, the bytes as they were stored:
        an upload as sent, a generation's PNG), and its media type."""
        row = await self.get(user_id, img_id)
        key = row["image_uri"] if original else (row.get("display_uri") or row["image_uri"])
        try:
            return await asyncio.to_thread(self.blobs.get, key), media_type(key)
        except NotFound:  # the row outlived its blob (a delete in progress): to the caller, the image is gone
            raise NotFound("no such image", code="image_not_found") from None

    # -- writes -----------------------------------------------------------------------------------
    async def store(self, user_id: str, image: IntakeResult, *, source: str, vector: np.ndarray,
                    caption: str | None = None, description: str | None = None,
                    meta: dict[str, Any] | None = None) -> tuple[dict, bool]:
        """Blobs, then the row. Returns (row, created); the same bytes again return the existing row."""
        existing = await self.find(user_id, image.content_hash)
        if existing is not None:
            return existing, False
        keys = await asyncio.to_thread(store_image, self.blobs, user_id, image)
        # Every stored photo keeps its perceptual hash: later photos are told from it as the same picture.
        meta = {**(meta or {}), "phash": (meta or {}).get("phash") or await self.phash(image)}
        row = new_row(user_id=user_id, content_hash=image.content_hash, image_uri=keys.original,
                      display_uri=keys.display, width=image.width, height=image.height, source=source,
                      vector=vector, embed_model=self.embed_model, caption=caption, description=description,
                      meta=meta)
        result = await self.writer.upsert([row])
        if result["created"][0]:
            self._refresh_after_write(user_id, {**result["rows"][0], "vector": vector}, result.get("version"))
        return result["rows"][0], bool(result["created"][0])

    def _refresh_after_write(self, user_id: str, row: dict, version: int | None) -> None:
        """This process's view of the user brought up to the write it just made, after the answer and off the
        next request's path (an upload's near-duplicate check would otherwise start with that refresh): the row
        adopted as written when its commit is the only one since the view (`Gallery.adopt`), else read back. A
        refresh that fails is the next search's to make again."""
        def adopted() -> bool:
            try:
                return self.gallery.adopt(user_id, [row], version)
            except Exception:  # noqa: BLE001 - not adopted, then: the row is read back below
                log.warning("the cached view of a user could not adopt its new row; reading it back", exc_info=True)
                return False

        async def refresh() -> None:
            if not await asyncio.to_thread(adopted):
                await self.warm(user_id)

        task = asyncio.ensure_future(refresh())
        self._refreshing.add(task)
        task.add_done_callback(lambda t: (self._refreshing.discard(t), t.cancelled() or t.exception()))

    async def update(self, user_id: str, img_id: str, **fields) -> dict:
        row = await self.writer.update(user_id, img_id, **fields)
        self.gallery.forget(user_id)  # this process's cached rows of the user hold the old texts
        return row

    async def delete(self, user_id: str, img_id: str) -> None:
        row = await self.writer.delete(user_id, img_id)
        self.gallery.forget(user_id)
        if row is None:
            raise NotFound("no such image", code="image_not_found")
        # The row is gone first, so no reader can reach a blob that is about to vanish.
        await self._drop_blobs(row)

    async def delete_import(self, user_id: str, job_id: str) -> int:
        """Every photo a bulk job stored for the user, rows first, then their blobs; how many went."""
        rows = await self.writer.delete_import(user_id, job_id)
        self.gallery.forget(user_id)
        for row in rows:
            await self._drop_blobs(row)
        return len(rows)

    async def _drop_blobs(self, row: dict) -> None:
        for key in {row.get("image_uri"), row.get("display_uri")} - {None, ""}:
            await asyncio.to_thread(self.blobs.delete, key)

    async def delete_user(self, user_id: str) -> None:
        # Logged first: a restore of an older backup leaves the user out even if this deletion is cut short.
        await asyncio.to_thread(ErasureLog(self.settings.lancedb_uri,
                                           storage_options=self.settings.lancedb_storage_options).record, user_id)
        await self.writer.delete_user(user_id)
        await asyncio.to_thread(self.dismissals.forget_user, user_id)
        self.gallery.forget(user_id)
        await asyncio.to_thread(self.blobs.delete_prefix, user_prefix(user_id))


def _version_gone(exc: BaseException) -> bool:
    """Whether a read failed because the files of its table version were removed under it (a purge)."""
    if isinstance(exc, AtelierError):
        return False
    text = str(exc).lower()
    return any(s in text for s in ("not found", "no such file", "does not exist", "object at location"))
