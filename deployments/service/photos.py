"""The caller's gallery as the service keeps it: uploads checked, embedded and stored; listing,
reading, deleting; images decoded for a model to look at."""

from __future__ import annotations

import asyncio
import hashlib

from cachetools import TTLCache
from PIL import Image

from storage.duplicates import stored_pairs
from storage.errors import InvalidInput, NotFound
from storage.gallery.filters import encode_cursor

from .context import Verbs
from .safety import GuardUnavailable, Screened, shown


class Photos(Verbs):
    async def keep_upload(self, user: str, data: bytes, *, filename: str | None, content_type: str | None,
                          caption: str | None, on_duplicate: str = "store",
                          ) -> tuple[dict, bool, str | None, list[dict] | None]:
        """An uploaded photo checked, embedded and kept: (row, created, caption_change, near_duplicates). The same
        bytes again return the stored row; a caption sent with them replaces the stored one (`"updated"`), or was
        the same already (`"unchanged"`); None when the photo is new or no caption was sent again. A new photo is
        compared with the user's gallery (storage/duplicates.py): `on_duplicate` "store" keeps it whatever was
        found, "skip" keeps none that has a near-duplicate (the closest one is answered, as for the same bytes),
        "ignore" does not compare (near_duplicates None)."""
        lib = await self.library()
        check = on_duplicate != "ignore"
        # The user's vector cache is brought up to date (lib.warm) while the photo is decoded and embedded, so the
        # check after them is one in-memory ranking; its failure is the search's to report.
        warm = asyncio.ensure_future(lib.warm(user)) if check else None
        if warm is not None:
            warm.add_done_callback(lambda t: t.cancelled() or t.exception())
        image = await lib.admit(data, filename=filename, content_type=content_type)
        existing = await lib.find(user, image.content_hash)
        if existing is None:
            await self.room(user, 1, len(data))
            vector, safety = await self._embed_and_screen(user, image, "upload")
            if warm is not None:
                await asyncio.wait([warm])
            near = await (await self.library(vector)).near_duplicates(user, image, vector.values) if check else None
            if near and on_duplicate == "skip":
                self._stored.pop(user, None)  # the room taken above was not used
                return await lib.get(user, near[0]["img_id"]), False, None, near
            row, created = await self.embed_and_store(user, image, source="upload", caption=caption,
                                                      safety=safety, checked=True, vector=vector,
                                                      meta={"near": stored_pairs(near)} if near else None)
            return row, created, None, near
        if caption is None:
            return existing, False, None, []
        if caption == (existing.get("caption") or ""):
            return existing, False, "unchanged", []
        return await self.edit(user, existing["img_id"], caption=caption), False, "updated", []

    STORED_TTL_S = 30.0  # how long a count of what a user stores is reused (counting walks their blobs)

    def __init__(self, ctx):
        super().__init__(ctx)
        # Per user, what they store as last counted, plus what this replica admitted since: a count walks the
        # user's blobs (an S3 listing for a large gallery), too slow for every upload. Other replicas' uploads
        # in the meantime are seen at the next count: the quota may be passed by what they admit in 30 s.
        self._stored: TTLCache = TTLCache(maxsize=4096, ttl=self.STORED_TTL_S)

    async def stored(self, user: str) -> tuple[int, int]:
        """(images, bytes) the user keeps with us: their gallery's rows and their blobs."""
        if user not in self._stored:
            self._stored[user] = list(await (await self.library()).usage(user))
        images, size = self._stored[user]
        return images, size

    async def room(self, user: str, images: int, size: int) -> None:
        """Refuse (429 `quota_exceeded`) what would take the user past their plan's stored images or bytes;
        nothing is written before this passes."""
        limits = self.ctx.limits
        if limits is not None and await limits.limits_storage(user):
            await limits.check_storage(user, await self.stored(user), images, size)
            if user in self._stored:
                self._stored[user][0] += images
                self._stored[user][1] += size

    async def edit(self, user: str, img_id: str, *, caption: str) -> dict:
        """Set the user's own words of one of their images (the caption; never the model's texts), through the
        one gallery writer: every model's table and the full-text index see it."""
        return await (await self.library()).update(user, img_id, caption=caption)

    async def embed_and_store(self, user: str, image, *, source: str, caption: str | None = None,
                               meta: dict | None = None, safety: dict | None = None,
                               checked: bool = False, vector=None) -> tuple[dict, bool]:
        """An admitted image embedded by the Embedder and kept (blobs, then the row): every way an
        image enters a gallery from the service (upload, generation, a small ingestion job) ends here.

        The row keeps the Guard's verdict on the image (`meta.safety`; issue 30), asked here beside the Embedder
        unless the caller asked already (`checked`, as a generation does before it may keep a picture: `safety`
        is then what it found, None if the Guard was not asked or was down; an upload passes its `vector` too).
        A user's own photo is never refused by it: it is flagged, and stays theirs. A file of an ingestion job
        is stored unchecked while the Guard is down, as a bulk job stores it."""
        if not checked:
            vector, safety = await self._embed_and_screen(user, image, source)
        elif vector is None:
            vector = await self.models.call("embedder", "image_vector", image.model_image)
        if safety is not None:
            meta = {**(meta or {}), "safety": safety}
        return await (await self.library(vector)).store(user, image, source=source, vector=vector.values,
                                                        caption=caption, meta=meta)

    async def _embed_and_screen(self, user: str, image, source: str):
        """(vector, the Guard's verdict or None): the Embedder and the Guard asked at once."""
        vector, screened = await asyncio.gather(self.models.call("embedder", "image_vector", image.model_image),
                                                self._screen(user, image, source), return_exceptions=True)
        for outcome in (vector, screened):
            if isinstance(outcome, BaseException):
                raise outcome
        return vector, screened.verdict

    async def _screen(self, user: str, image, source: str) -> Screened:
        try:
            return await self.ctx.guard.check_image(image.model_image, stage=source, user=user, refuse=False)
        except GuardUnavailable:
            if source != "ingest":
                raise
            return Screened(degraded=True)

    async def keep_ingested(self, user: str, name: str, data: bytes, job_id: str,
                            seen: set[str], on_duplicate: str = "store") -> tuple[str, bool]:
        """One file of a small ingestion job: skipped by its hash before any decode when the user (or this
        job) has it, else checked, embedded, compared with the user's gallery and kept like an upload (the
        job's `on_duplicate` as an upload's: "skip" counts a photo with a near-duplicate as a skipped duplicate,
        "ignore" does not compare); returns the counter it adds to, and whether it was stored with a
        near-duplicate."""
        content_hash = hashlib.sha256(data).hexdigest()
        if content_hash in seen:  # claimed by another file of this job (before any await: files run at once)
            return "skipped_duplicates", False
        seen.add(content_hash)
        lib = await self.library()
        if await lib.find(user, content_hash) is not None:
            return "skipped_duplicates", False
        image = await lib.admit(data, filename=name)
        vector, safety = await self._embed_and_screen(user, image, "ingest")
        near = [] if on_duplicate == "ignore" else \
            await (await self.library(vector)).near_duplicates(user, image, vector.values)
        if near and on_duplicate == "skip":
            return "skipped_duplicates", False
        meta = {"ingest_job": job_id, "name": name, **({"near": stored_pairs(near)} if near else {})}
        _, created = await self.embed_and_store(user, image, source="ingest", meta=meta, safety=safety, checked=True,
                                                 vector=vector)
        return ("done", bool(near)) if created else ("skipped_duplicates", False)

    PAGES_PER_FILTERED_LIST = 10  # pages read at most to fill one filtered page; past them, fewer rows + a cursor

    async def list_images(self, user: str, limit: int, cursor: str | None,
                          safety: str = "any") -> tuple[list[dict], str | None]:
        """The user's images newest first; `safety` leaves out (`unflagged`) or keeps only (`flagged`) the images
        the Guard flagged. A filtered page reads the gallery's pages until it has `limit` rows (or has read
        PAGES_PER_FILTERED_LIST of them: then it answers fewer, with the cursor to go on from)."""
        lib = await self.library()
        rows, out = [], cursor
        for _ in range(1 if safety == "any" else self.PAGES_PER_FILTERED_LIST):
            page, out = await lib.list(user, limit, out)
            for i, row in enumerate(page):
                if shown(row, safety):
                    rows.append(row)
                    if len(rows) == limit:
                        rest = i < len(page) - 1 or out is not None
                        return rows, (encode_cursor(row["created_at"], row["img_id"]) if rest else None)
            if out is None:
                break
        return rows, out

    async def get_image(self, user: str, img_id: str) -> dict:
        return await (await self.library()).get(user, img_id)

    async def delete_image(self, user: str, img_id: str) -> None:
        await (await self.library()).delete(user, img_id)
        self._stored.pop(user, None)  # counted again at the next upload

    async def duplicates(self, user: str) -> list[dict]:
        """The user's groups of near-duplicate photos, largest first (storage.duplicates.groups)."""
        return await (await self.library()).duplicate_groups(user)

    async def resolve_duplicates(self, user: str, group: str, keep: str | None, dismiss: bool = False) -> dict:
        """Keep one photo of a group and delete the others, each as finally as one image; or (`dismiss`) keep
        them all and never propose the group again. `group` is the name a listing gave: a group that changed
        since (a photo added or deleted) is not found under it."""
        found = [g for g in await self.duplicates(user) if g["group"] == group]
        if not found:
            raise NotFound("no such duplicate group (it may have changed: list the groups again)",
                           code="group_not_found")
        if dismiss:
            await (await self.library()).dismiss(user, group)
            return {"group": group, "dismissed": True}
        members = [r["img_id"] for r in found[0]["members"]]
        if keep not in members:
            raise InvalidInput("keep must be one of the group's photos", field="keep")
        deleted = sorted(i for i in members if i != keep)
        for img_id in deleted:
            await self.delete_image(user, img_id)
        return {"group": group, "kept": keep, "deleted": deleted}

    async def delete_import(self, user: str, job_id: str) -> int:
        """Every photo the bulk job `job_id` stored for the user, deleted as finally as one image; how many."""
        removed = await (await self.library()).delete_import(user, job_id)
        self._stored.pop(user, None)
        return removed

    async def image_file(self, user: str, img_id: str, *, original: bool = False) -> tuple[bytes, str]:
        """The stored display copy of a user's image (with `original`, the stored original) and its media type."""
        return await (await self.library()).display(user, img_id, original=original)

    async def image_owner(self, img_id: str) -> str | None:
        """Who owns an image (for a signed URL, which does not carry its owner); None if nobody does."""
        return await (await self.library()).owner(img_id)

    async def decode_image(self, data: bytes, *, filename: str | None = None, content_type: str | None = None,
                           model_size: int | None = None) -> Image.Image:
        """Any image a caller sends for a model to look at (checked by its bytes like an upload), never kept."""
        decoded = await (await self.library()).decode(data, filename=filename, content_type=content_type,
                                                      model_size=model_size)
        return decoded.model_image

    async def gallery_image(self, user: str, img_id: str, *, model_size: int | None = None) -> Image.Image:
        """One of the caller's own images, decoded for a model."""
        data, _ = await self.image_file(user, img_id)
        return await self.decode_image(data, model_size=model_size)
