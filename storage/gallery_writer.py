"""The one place gallery writes happen for the whole cluster: a named Ray actor per gallery table.

Uploads, generation and ingestion all write through it, so two concurrent inserts of the same
(user, content hash) can never both commit (lancedb issue 2463), whichever replica they came from.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import ray

from storage.settings import StorageSettings

NAMESPACE = "atelier"
# Part of the actor's name. Raise it when the actor's methods change: the writer is detached and
# outlives a redeploy, and a new caller must not get an old writer that lacks a method it calls.
# During a rolling upgrade the old and new writers may both commit for a while; the table's
# primary key still keeps them from storing one (user, content) twice.
PROTOCOL = 3  # 3: purge_status, and deletes schedule purges


class GalleryWrites:
    """Every write of one gallery, and the purges its deletes owe; one per gallery in a cluster (the
    GalleryWriter actor below), or in the process itself where no Ray runs (the in-process tier)."""

    def __init__(self, gallery):
        from storage.gallery.purge import Purger, PurgeQueue

        self.gallery = gallery
        self.purger = Purger(gallery, PurgeQueue(gallery.db, gallery.settings.gallery_table),
                             gallery.settings.purge_within_s)

    def existing_hashes(self, user_id: str, hashes: list[str]) -> set[str]:
        return self.gallery.existing_hashes(user_id, hashes)

    def upsert(self, rows: list[dict]) -> Any:
        return self.gallery.upsert(rows)

    def update(self, user_id: str, img_id: str, **fields) -> Any:
        return self.gallery.update(user_id, img_id, **fields)

    def delete(self, user_id: str, img_id: str) -> Any:
        row = self.gallery.delete(user_id, img_id)
        if row is not None:
            self.purger.schedule()
        return row

    def delete_user(self, user_id: str) -> Any:
        count = self.gallery.delete_user(user_id)
        self.purger.schedule()
        return count

    def optimize(self) -> Any:
        return self.gallery.optimize()

    def purge_status(self) -> dict:
        """Pending purges, how many ran and when the last one ended (Unix seconds)."""
        return self.purger.status()


WRITER_NUM_CPUS = 0.05


@ray.remote(num_cpus=WRITER_NUM_CPUS, max_restarts=-1, max_task_retries=3, max_concurrency=1, concurrency_groups={"reads": 2})
class GalleryWriter(GalleryWrites):
    """Serialises every write of one gallery (one LanceDB URI and embedding model) for the whole cluster.

    Writes run one at a time; the few reads callers without a gallery of their own need (ingestion's
    read tasks: which hashes a user already has) run beside them in the "reads" group, so they never
    wait behind a commit and those callers never import LanceDB. Purges run in a thread of their own.
    """

    def __init__(self, settings: dict, dim: int, embed_model: str):
        from storage.gallery import Gallery

        super().__init__(Gallery.open(StorageSettings(**settings), dim=dim, embed_model=embed_model))

    @ray.method(concurrency_group="reads")
    def existing_hashes(self, user_id: str, hashes: list[str]) -> set[str]:
        return self.gallery.existing_hashes(user_id, hashes)

    @ray.method(concurrency_group="reads")
    def purge_status(self) -> dict:
        return self.purger.status()


def writer_name(settings: StorageSettings, embed_model: str) -> str:
    uri = settings.lancedb_uri
    # One folder, one name: "data/lancedb" and its absolute path must not get two writers.
    uri = uri if "://" in uri else str(Path(uri).resolve())
    key = f"{uri}|{settings.gallery_table}|{embed_model}"
    return f"gallery_writer_v{PROTOCOL}_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def gallery_writer(settings: StorageSettings, dim: int, embed_model: str):
    """The cluster's writer for this gallery, created by whoever asks first (detached: it outlives callers)."""
    placement = {"label_selector": settings.writer_label_selector} if settings.writer_label_selector else {}
    return GalleryWriter.options(
        name=writer_name(settings, embed_model), namespace=NAMESPACE, get_if_exists=True, lifetime="detached",
        **placement,
    ).remote(settings.model_dump(), dim, embed_model)
