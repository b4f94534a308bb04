"""Duplicate groups a user dismissed (`POST /api/duplicates/{group}/resolve {"dismiss": true}`): not proposed
again. A group is named by its members (storage.duplicates.groups), so one that gains or loses a photo since
is a new group and is proposed again.

Kept beside the gallery (`duplicate_dismissals`), by the sha256 of the user's id (as the erasure log keeps
them), and deleted with the user's other data by `DELETE /api/me`."""

from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa

from storage.erasures import user_digest
from storage.gallery.filters import sql_str
from storage.keys import SmallTable

DISMISSALS_TABLE = "duplicate_dismissals"
_SCHEMA = pa.schema([
    pa.field("user_digest", pa.string(), nullable=False),
    pa.field("group", pa.string(), nullable=False),
    pa.field("dismissed_at", pa.timestamp("ms", tz="UTC"), nullable=False),
])


class Dismissals(SmallTable):
    schema = _SCHEMA

    def __init__(self, uri: str, *, storage_options: dict[str, str] | None = None):
        super().__init__(uri, table=DISMISSALS_TABLE, storage_options=storage_options)

    def add(self, user_id: str, group: str) -> None:
        row = pa.Table.from_pylist([{"user_digest": user_digest(user_id), "group": group,
                                     "dismissed_at": datetime.now(timezone.utc)}], schema=_SCHEMA)
        table = self.table()
        self._retrying()(lambda: table.merge_insert(["user_digest", "group"]).when_not_matched_insert_all().execute(row))

    def of(self, user_id: str) -> set[str]:
        table = self.table()
        table.checkout_latest()
        found = table.search().where(f"user_digest = {sql_str(user_digest(user_id))}").select(["group"]).limit(None)
        return set(found.to_arrow().column("group").to_pylist())

    def forget_user(self, user_id: str) -> None:
        """Every dismissal of the user gone, from every version (old versions compacted away)."""
        table = self.table()
        self._retrying()(lambda: table.delete(f"user_digest = {sql_str(user_digest(user_id))}"))
        self.vacuum()
