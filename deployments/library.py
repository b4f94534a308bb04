"""Storage as the ingress uses it: intake, blobs and the gallery composed into a user's library.

Reads go straight to LanceDB from the replica; every write goes through the cluster's one
GalleryWriter actor. Blobs are written before the row (the row is what makes an image exist)
and deleted after it.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone
from typing import Any

import numpy as np

from storage.blobs import open_blob_store, store_image, user_prefix
from storage.errors import NotFound
from storage.gallery_writer import gallery_writer
from storage.intake import ImageIntake, IntakeResult
from storage.settings import StorageSettings


class Library:
    def __init__(self, settings: StorageSettings, *, dim: int, embed_model: str):
        from storage.gallery import Gallery

        self.settings = settings
        self.embed_model = embed_model
        self.intake = ImageIntake(settings)
        self.blobs = open_blob_store(settings)
        self.gallery = Gallery.open(settings, dim=dim, embed_model=embed_model)
        # Loads jieba's dictionary and the indexes now, not on a user's first Chinese search.
        self.gallery.warm_up()
        self.writer = gallery_writer(settings, dim, embed_model)

    # -- intake -----------------------------------------------------------------------------------
    async def admit(self, data: bytes, *, filename: str | None = None, content_type: str | None = None,
                    model_size: int | None = None) -> IntakeResult:
        return await asyncio.to_thread(self.intake.admit, data, filename=filename, content_type=content_type,
                                       model_size=model_size)

    async def decode(self, data: bytes, *, filename: str | None = None, content_type: str | None = None,
                     model_size: int | None = None):
        return await asyncio.to_thread(self.intake.decode, data, filename=filename, content_type=content_type,
                                       model_size=model_size)

    # -- reads ------------------------------------------------------------------------------------
    async def find(self, user_id: str, content_hash: str) -> dict | None:
        return await asyncio.to_thread(self.gallery.find_by_hash, user_id, content_hash)

    async def get(self, user_id: str, img_id: str) -> dict:
        return await asyncio.to_thread(self.gallery.get, user_id, img_id)

    async def list(self, user_id: str, limit: int, cursor: str | None) -> tuple[list[dict], str | None]:
        return await asyncio.to_thread(self.gallery.list, user_id, limit=limit, cursor=cursor)

    async def search(self, user_id: str, vector: np.ndarray, k: int, text: str | None = None) -> list[dict]:
        return await asyncio.to_thread(self.gallery.search, user_id, vector, k=k, text=text)

    async def display(self, user_id: str, img_id: str) -> tuple[bytes, str]:
        """The stored display copy of a user's image, and its media type."""
        from storage.blobs import media_type

        row = await self.get(user_id, img_id)
        key = row.get("display_uri") or row["image_uri"]
        return await asyncio.to_thread(self.blobs.get, key), media_type(key)

    # -- writes -----------------------------------------------------------------------------------
    async def store(self, user_id: str, image: IntakeResult, *, source: str, vector: np.ndarray,
                    caption: str | None = None, description: str | None = None,
                    meta: dict[str, Any] | None = None) -> tuple[dict, bool]:
        """Blobs, then the row. Returns (row, created); the same bytes again return the existing row."""
        existing = await self.find(user_id, image.content_hash)
        if existing is not None:
            return existing, False
        keys = await asyncio.to_thread(store_image, self.blobs, user_id, image)
        row = {
            "img_id": uuid.uuid4().hex, "user_id": user_id, "content_hash": image.content_hash,
            "image_uri": keys.original, "display_uri": keys.display, "width": image.width, "height": image.height,
            "created_at": datetime.now(timezone.utc), "source": source, "caption": caption or "",
            "description": description or "", "embed_model": self.embed_model,
            "vector": np.asarray(vector, dtype=np.float32), "meta": meta or {},
        }
        result = await self.writer.upsert.remote([row])
        return result["rows"][0], bool(result["created"][0])

    async def update(self, user_id: str, img_id: str, **fields) -> dict:
        row = await self.writer.update.remote(user_id, img_id, **fields)
        self.gallery.forget(user_id)  # this replica's cached rows of the user hold the old texts
        return row

    async def delete(self, user_id: str, img_id: str) -> None:
        row = await self.writer.delete.remote(user_id, img_id)
        self.gallery.forget(user_id)
        if row is None:
            raise NotFound("no such image")
        # The row is gone first, so no reader can reach a blob that is about to vanish.
        for key in {row.get("image_uri"), row.get("display_uri")} - {None, ""}:
            await asyncio.to_thread(self.blobs.delete, key)

    async def delete_user(self, user_id: str) -> None:
        await self.writer.delete_user.remote(user_id)
        self.gallery.forget(user_id)
        await asyncio.to_thread(self.blobs.delete_prefix, user_prefix(user_id))
