"""The erasure log: which users asked for their data to be deleted (`DELETE /api/me`), so that a restore of a
backup taken before it does not bring them back (storage/backup.py).

A user is logged by the sha256 of their id (a digest, not the name): enough to recognise them in a backup's
rows (`user_id`) and blobs (`u/<digest[:32]>/`, `i/<digest[:32]>/`), and nothing more is kept of them. The log
lives beside the gallery (`atelier_erasures` in the gallery's LanceDB), goes into every backup, and is only ever
appended to: an operator who restores an erased user on purpose says so by name (`restore --restore-erased`).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

import pyarrow as pa

from storage.gallery.filters import sql_str
from storage.keys import SmallTable

ERASURES_TABLE = "atelier_erasures"
ERASURE_SCHEMA = pa.schema([
    pa.field("user_digest", pa.string(), nullable=False),
    pa.field("erased_at", pa.timestamp("ms", tz="UTC"), nullable=False),
])


def user_digest(user_id: str) -> str:
    return hashlib.sha256(user_id.encode("utf-8")).hexdigest()


class ErasureLog(SmallTable):
    schema = ERASURE_SCHEMA

    def __init__(self, uri: str, *, storage_options: dict[str, str] | None = None):
        super().__init__(uri, table=ERASURES_TABLE, storage_options=storage_options)

    def record(self, user_id: str) -> None:
        """Log the erasure of `user_id` (once: a second deletion of the same user adds nothing)."""
        digest = user_digest(user_id)
        row = pa.Table.from_pylist([{"user_digest": digest, "erased_at": datetime.now(timezone.utc)}],
                                   schema=ERASURE_SCHEMA)
        table = self.table()
        self._retrying()(lambda: table.merge_insert("user_digest").when_not_matched_insert_all().execute(row))

    def digests(self) -> set[str]:
        table = self.table()
        table.checkout_latest()
        return set(table.to_arrow().column("user_digest").to_pylist())

    def forget(self, user_id: str) -> None:
        """An operator's decision to let the user back (after `restore --restore-erased`)."""
        table = self.table()
        self._retrying()(lambda: table.delete(f"user_digest = {sql_str(user_digest(user_id))}"))
