"""The one place gallery writes happen for the whole cluster: a named Ray actor per gallery (every
embedding model's table of it).

Uploads, generation and ingestion all write through it, so two concurrent inserts of the same
(user, content hash) can never both commit (lancedb issue 2463), whichever replica they came from.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import ray

from storage.errors import AtelierError, GalleryUnopenable, InvalidInput
from storage.placement import detached
from storage.settings import StorageSettings

# Part of the actor's name. Raise it when the actor's methods change: the writer is detached and
# outlives a redeploy, and a new caller must not get an old writer that lacks a method it calls.
# During a rolling upgrade the old and new writers may both commit for a while; the table's
# primary key still keeps them from storing one (user, content) twice.
PROTOCOL = 6  # 4: one writer for every embedding model's table of a gallery; copy_rows. 5: delete_import. 6: nearest

# Which of a gallery's tables a call is about: (embedding model id, vector dimension).
Table = tuple[str, int]


class GalleryWrites:
    """Every write of one gallery, in all its embedding models' tables, and the purges its deletes owe;
    one per gallery in a cluster (the GalleryWriter actor below), or in the process itself where no Ray
    runs (the in-process tier). Serialising every model's table in one place is what lets a model
    backfill copy rows while users delete and edit them: a copy and a delete never interleave."""

    def __init__(self, settings: StorageSettings, *opened):
        self.settings = settings
        self._galleries: dict[str, Any] = {}
        self.purger = None
        # Tables open lazily, and the actor's "reads" group runs beside its writes: one opening at a time.
        self._opening = threading.RLock()
        for gallery in opened:
            self._adopt(gallery)

    def _adopt(self, gallery) -> Any:
        # LanceDB loads in the writer actor only: the ingress and the job drivers import this module for its factory.
        from storage.gallery.purge import Purger, PurgeQueue

        if gallery.embed_model in self._galleries:
            return self._galleries[gallery.embed_model]
        self._galleries[gallery.embed_model] = gallery
        if self.purger is None:  # one purger for the gallery: a purge covers every model's table
            self.purger = Purger(gallery, PurgeQueue(gallery.db, gallery.settings.gallery_table),
                                 gallery.settings.purge_within_s)
        return gallery

    def gallery(self, table: Table):
        embed_model, dim = table
        found = self._galleries.get(embed_model)
        if found is None:
            with self._opening:
                found = self._galleries.get(embed_model)
                if found is None:
                    found = self._adopt(_open(self.settings, embed_model, int(dim)))
        if found.dim != int(dim):
            raise InvalidInput(f"{embed_model!r} makes {found.dim}-d vectors, not {dim}-d", field="dim")
        return found

    def existing_hashes(self, table: Table, user_id: str, hashes: list[str]) -> set[str]:
        return self.gallery(table).existing_hashes(user_id, hashes)

    def upsert(self, table: Table, rows: list[dict]) -> Any:
        return self.gallery(table).upsert(rows)

    def nearest(self, table: Table, user_id: str, vectors: list[bytes], k: int) -> list[list[dict]]:
        """For each vector (float32 bytes), the user's k nearest stored rows (img_id, content_hash, score,
        meta.phash): what a bulk job's near-duplicate check compares its photos with."""
        gallery = self.gallery(table)
        return [[{"img_id": h["img_id"], "content_hash": h["content_hash"], "score": h["score"],
                  "meta": {"phash": (h.get("meta") or {}).get("phash")}}
                 for h in gallery.search(user_id, np.frombuffer(v, dtype=np.float32), k=k)] for v in vectors]

    def update(self, table: Table, user_id: str, img_id: str, **fields) -> Any:
        return self.gallery(table).update(user_id, img_id, **fields)

    def delete(self, table: Table, user_id: str, img_id: str) -> Any:
        row = self.gallery(table).delete(user_id, img_id)
        if row is not None:
            self.purger.schedule()
        return row

    def delete_import(self, table: Table, user_id: str, job_id: str) -> list[dict]:
        rows = self.gallery(table).delete_import(user_id, job_id)
        if rows:
            self.purger.schedule()
        return rows

    def delete_user(self, table: Table, user_id: str) -> Any:
        count = self.gallery(table).delete_user(user_id)
        self.purger.schedule()
        return count

    def optimize(self, table: Table) -> Any:
        return self.gallery(table).optimize()

    def copy_rows(self, source: Table, target: Table, rows: list[dict]) -> dict:
        """A model backfill's rows into `target`'s table, each only while its image is still in
        `source`'s, with the texts it has there now (a caption or description edited since the
        backfill read it). Runs between two other writes, never beside one, so an image deleted
        meanwhile is not brought back. Returns {"copied", "already", "gone"} counts."""
        from storage.schema import TEXT_FIELDS  # LanceDB's schema types: in the writer actor only, as above

        current = self.gallery(source).rows_by_img_ids([(r["user_id"], r["img_id"]) for r in rows])
        live = []
        for row in rows:
            now = current.get((row["user_id"], row["img_id"]))
            if now is not None:
                live.append({**row, **{name: now.get(name, "") for name in TEXT_FIELDS}})
        live = self._pairs_judged_again(target, live)
        result = self.gallery(target).upsert(live) if live else {"inserted": 0}
        return {"copied": result["inserted"], "already": len(live) - result["inserted"], "gone": len(rows) - len(live)}

    def _pairs_judged_again(self, target: Table, rows: list[dict]) -> list[dict]:
        """A backfill's rows with their near-duplicate pairs (`meta.near`) found again by the new model: among
        each user's photos already in `target` and the batch's earlier ones, at the new model's near-shot
        threshold (a same picture is told by the hash, whatever the model). The old model's pairs are dropped:
        its cosines are not the new one's."""
        from storage.duplicates import mark_pairs, threshold

        gallery, s = self.gallery(target), self.settings
        by_user: dict[str, list[dict]] = {}
        for row in rows:
            meta = row.get("meta") or {}
            meta = dict(json.loads(meta) if isinstance(meta, str) else meta)
            by_user.setdefault(row["user_id"], []).append({**row, "meta": meta})
        for user, batch in by_user.items():
            hits = [gallery.search(user, np.asarray(r["vector"], np.float32), k=s.near_duplicate_candidates)
                    for r in batch]
            mark_pairs(batch, hits, hash_bits=s.duplicate_hash_bits, cosine=threshold(s.near_shot_cosine, target[0]))
        return [row for batch in by_user.values() for row in batch]

    def purge_status(self) -> dict:
        """Pending purges, how many ran and when the last one ended (Unix seconds)."""
        return self.purger.status() if self.purger is not None else {"pending": 0, "purges": 0}


def _open(settings: StorageSettings, embed_model: str, dim: int):
    """A model's table of the gallery; one that cannot be opened (another schema, storage unreachable)
    is a GalleryUnopenable naming why, which a job reports as its reason."""
    from storage.gallery import Gallery  # LanceDB: in the writer actor only, as above

    try:
        return Gallery.open(settings, dim=dim, embed_model=embed_model)
    except AtelierError:
        raise
    except Exception as exc:  # noqa: BLE001 - said once, in our words, with the cause's first line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise GalleryUnopenable(f"the gallery could not be opened ({first})") from exc


_LOCAL: dict[str, GalleryWrites] = {}
_LOCAL_GUARD = threading.Lock()


def local_writes(settings: StorageSettings, gallery=None) -> GalleryWrites:
    """This process's writer of the gallery, where no Ray runs: one per gallery, like the actor."""
    with _LOCAL_GUARD:
        writes = _LOCAL.setdefault(writer_name(settings), GalleryWrites(settings))
        if gallery is not None:
            writes._adopt(gallery)
        return writes


WRITER_NUM_CPUS = 0.05


@ray.remote(num_cpus=WRITER_NUM_CPUS, max_restarts=-1, max_task_retries=3, max_concurrency=1, concurrency_groups={"reads": 2})
class GalleryWriter(GalleryWrites):
    """Serialises every write of one gallery (one LanceDB URI and table name, every embedding model's
    table of it) for the whole cluster.

    Writes run one at a time; the few reads callers without a gallery of their own need (ingestion's
    read tasks: which hashes a user already has) run beside them in the "reads" group, so they never
    wait behind a commit and those callers never import LanceDB. Purges run in a thread of their own.
    """

    def __init__(self, settings: dict, table: Table | None = None):
        super().__init__(StorageSettings(**settings))
        if table is not None:  # the table its creator writes: opened now, so a writer that cannot open it dies
            self.gallery(table)

    @ray.method(concurrency_group="reads")
    def existing_hashes(self, table: Table, user_id: str, hashes: list[str]) -> set[str]:
        return self.gallery(table).existing_hashes(user_id, hashes)

    @ray.method(concurrency_group="reads")
    def nearest(self, table: Table, user_id: str, vectors: list[bytes], k: int) -> list[list[dict]]:
        return GalleryWrites.nearest(self, table, user_id, vectors, k)

    @ray.method(concurrency_group="reads")
    def purge_status(self) -> dict:
        return GalleryWrites.purge_status(self)


def writer_name(settings: StorageSettings) -> str:
    uri = settings.lancedb_uri
    # One folder, one name: "data/lancedb" and its absolute path must not get two writers.
    uri = uri if "://" in uri else str(Path(uri).resolve())
    key = f"{uri}|{settings.gallery_table}"
    return f"gallery_writer_v{PROTOCOL}_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def gallery_writer(settings: StorageSettings, table: Table | None = None):
    """The cluster's writer for this gallery, created by whoever asks first (detached: it outlives callers);
    the one who creates it has `table` opened first (and learns at once if it cannot be)."""
    placement = {"label_selector": settings.writer_label_selector} if settings.writer_label_selector else {}
    return detached(GalleryWriter, writer_name(settings), **placement).remote(settings.model_dump(), table)


class TableWriter:
    """One model's table of the gallery writer, with the writer's calls minus the table argument:
    what a Library or an ingestion job writes through."""

    def __init__(self, writer, table: Table):
        self.writer = writer  # a storage.calls.Calls of the actor, or of an in-process GalleryWrites
        self.table = (table[0], int(table[1]))

    def __getattr__(self, name: str):
        method = getattr(self.writer, name)
        return lambda *args, **kwargs: method(self.table, *args, **kwargs)
