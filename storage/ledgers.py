"""Durable records of the service's ledgers (issue 31): what must outlive the ledger's actor, the head node and
the whole cluster. Today the idempotency records: a small LanceDB table beside the gallery (the embedded default
needs nothing new, and on an object store it outlives every node), written through on each finished request and
read back on a miss, so a retry after any restart gets the first answer.

A record holds the answer, never an image's bytes: a kept image is its id (the answer's URL is signed again when
it is replayed), and an image that was not kept is put in the blob store under the user's own idempotency
prefix, removed with the user and when the record expires.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from datetime import timedelta
from typing import Any

import pyarrow as pa

from storage.gallery.filters import sql_str
from storage.keys import SmallTable
from storage.schema import check_user_id

SCHEMA = pa.schema([
    pa.field("record_id", pa.string(), nullable=False),
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("fingerprint", pa.string(), nullable=False),
    pa.field("answer", pa.string(), nullable=False),
    pa.field("expires_at", pa.float64(), nullable=False),
])
_INLINE_PNG = "data:image/png;base64,"


def record_id(user_id: str, key: str) -> str:
    return hashlib.sha256(f"{user_id}\x00{key}".encode()).hexdigest()[:32]


def idempotency_prefix(user_id: str) -> str:
    """The user's idempotency blobs: beside, not inside, their gallery's prefix (which the storage quota counts)."""
    return f"i/{hashlib.sha256(user_id.encode('utf-8')).hexdigest()[:32]}/"


class IdempotencyStore(SmallTable):
    """`(user, Idempotency-Key) -> (fingerprint, answer)` until it expires, at `uri` (a LanceDB folder or
    object-store URI), with the images of answers that were not kept in `blobs`."""

    schema = SCHEMA

    def __init__(self, uri: str, blobs, *, table: str = "atelier_idempotency",
                 storage_options: dict[str, str] | None = None):
        super().__init__(uri, table=table, storage_options=storage_options)
        self.blobs = blobs

    def get(self, user_id: str, key: str) -> tuple[str, dict] | None:
        """The stored (fingerprint, answer), or None when there is none or it expired."""
        table = self.table()
        table.checkout_latest()
        rows = (table.search().where(f"record_id = {sql_str(record_id(user_id, key))} AND "
                                     f"expires_at > {time.time()!r}").limit(1).to_list())
        if not rows:
            return None
        return rows[0]["fingerprint"], self._inflate(json.loads(rows[0]["answer"]))

    def put(self, user_id: str, key: str, fingerprint: str, answer: dict, ttl_s: float) -> None:
        check_user_id(user_id)
        rid = record_id(user_id, key)
        row = {"record_id": rid, "user_id": user_id, "fingerprint": fingerprint,
               "answer": json.dumps(self._deflate(user_id, rid, answer), ensure_ascii=False),
               "expires_at": time.time() + ttl_s}
        data = pa.Table.from_pylist([row], schema=SCHEMA)
        self._retrying()(lambda: self.table().merge_insert("record_id").when_matched_update_all()
                         .when_not_matched_insert_all().execute(data))

    def forget_user(self, user_id: str) -> None:
        """Every record of the user gone from disk, every version of the table included, and their images."""
        self._retrying()(lambda: self.table().delete(f"user_id = {sql_str(check_user_id(user_id))}"))
        self._vacuum()
        self.blobs.delete_prefix(idempotency_prefix(user_id))

    def expire(self) -> int:
        """Remove the expired records (and their images); returns how many there were."""
        table = self.table()
        table.checkout_latest()
        now = time.time()
        gone = table.search().where(f"expires_at <= {now!r}").select(["user_id", "record_id"]).to_list()
        if not gone:
            return 0
        self._retrying()(lambda: table.delete(f"expires_at <= {now!r}"))
        self._vacuum()
        for row in gone:
            self.blobs.delete_prefix(f"{idempotency_prefix(row['user_id'])}{row['record_id']}/")
        return len(gone)

    def _vacuum(self) -> None:
        """Deleted rows physically gone: fragments rewritten without them, older versions removed."""
        table = self.table()
        self._retrying()(lambda: table.to_lance().optimize.compact_files(materialize_deletions=True,
                                                                          materialize_deletions_threshold=0.0))
        table.checkout_latest()
        table.cleanup_old_versions(older_than=timedelta(0))

    def _deflate(self, user_id: str, rid: str, answer: dict) -> dict:
        """The answer as it is stored: an inline PNG becomes a blob of the user's, its key in the record."""
        url = answer.get("image_url")
        if isinstance(url, str) and url.startswith(_INLINE_PNG):
            key = f"{idempotency_prefix(user_id)}{rid}/image.png"
            self.blobs.put(key, base64.b64decode(url[len(_INLINE_PNG):]), "image/png")
            return {**answer, "image_url": None, "image_blob": key}
        return answer

    def _inflate(self, answer: dict[str, Any]) -> dict:
        key = answer.pop("image_blob", None)
        if key is not None:
            answer["image_url"] = _INLINE_PNG + base64.b64encode(self.blobs.get(key)).decode()
        return answer
