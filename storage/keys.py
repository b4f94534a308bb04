"""API keys: one small LanceDB table of sha256 digests beside the gallery, read by every proxy and replica.

The table (`api_keys` in the gallery's database by default) is the one place keys live, so a key added
or revoked with `python -m deployments.keys` counts on every node without a restart. A key is shown
once when it is made; the table keeps only its digest, the user it belongs to, a short public id
(for `list` and `revoke`) and when it was made.

Readers (`KeyRing` in deployments.http.auth) keep the table in memory and ask Lance for its latest
version on each lookup: a directory listing for a local folder (tens of microseconds), one LIST
request for an object store. A new version is read in full; the table holds a few rows per user.
Writers commit with Lance's optimistic concurrency, retried on conflict, so concurrent adds all land.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime, timedelta, timezone
from typing import Any

import pyarrow as pa
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from storage.errors import InvalidInput, NotFound
from storage.gallery.filters import sql_str
from storage.gallery.commits import is_commit_conflict
from storage.schema import check_user_id

KEY_PREFIX = "atl_"
_KEY_ID = re.compile(r"[0-9a-f]{12}")

SCHEMA = pa.schema([
    pa.field("key_id", pa.string(), nullable=False),
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("sha256", pa.string(), nullable=False),
    pa.field("created_at", pa.timestamp("ms", tz="UTC"), nullable=False),
])


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _conflict(exc: BaseException) -> bool:
    """The gallery's commit conflicts, and two processes racing to make the table."""
    text = str(exc).lower()
    return is_commit_conflict(exc) or "already exists" in text or "was not found" in text


class SmallTable:
    """A small LanceDB table beside the gallery that every proxy and replica reads (`schema` and its name):
    made empty on first use, written with Lance's optimistic concurrency and retried on conflict."""

    schema: pa.Schema

    def __init__(self, uri: str, *, table: str, storage_options: dict[str, str] | None = None):
        self.uri = uri
        self.table_name = table
        self.storage_options = dict(storage_options or {})
        self._db = None
        self._table = None

    @property
    def remote(self) -> bool:
        """Whether the table is in an object store (a version check is then a network round trip)."""
        return "://" in self.uri and not self.uri.startswith("file://")

    def _retrying(self) -> Retrying:
        return Retrying(retry=retry_if_exception(_conflict), stop=stop_after_attempt(8),
                        wait=wait_random_exponential(multiplier=0.02, max=1.0), reraise=True)

    def table(self):
        """The LanceDB table, made empty on first use (two processes racing to make it both end with it)."""
        if self._table is None:
            import lancedb

            if self._db is None:
                self._db = lancedb.connect(self.uri, storage_options=self.storage_options or None)
            db = self._db

            def open_or_create():
                if self.table_name in db.table_names():
                    return db.open_table(self.table_name)
                return db.create_table(self.table_name, schema=self.schema, exist_ok=True)

            self._table = self._retrying()(open_or_create)
        return self._table

    def dataset(self):
        """The table as a Lance dataset, for readers' cheap `latest_version` checks."""
        return self.table().to_lance()

    def vacuum(self, purge: bool = False) -> None:
        """Deleted rows physically gone: fragments rewritten without them, older versions removed (a privacy
        purge reaches every version; a table written often keeps few). With `purge` the latest version is then
        written once more as it is (a restore of itself), so that no kept version is the delete: a delete's
        transaction record holds its predicate (a user's id). For the ledgers' tables, each written by one actor
        (a restore over a version another writer just committed would drop that commit)."""
        table = self.table()
        self._retrying()(lambda: table.to_lance().optimize.compact_files(materialize_deletions=True,
                                                                          materialize_deletions_threshold=0.0))

        def again() -> None:
            table.checkout_latest()
            table.to_lance().restore()

        if purge:
            self._retrying()(again)
        table.checkout_latest()
        table.cleanup_old_versions(older_than=timedelta(0))


class KeyStore(SmallTable):
    """The key table at `uri` (a LanceDB folder or object-store URI)."""

    schema = SCHEMA

    def __init__(self, uri: str, *, table: str = "api_keys", storage_options: dict[str, str] | None = None):
        super().__init__(uri, table=table, storage_options=storage_options)

    # -- writes -----------------------------------------------------------------------------------
    def add(self, user_id: str) -> tuple[str, str]:
        """A new key for `user_id`: returns `(key_id, key)`; the key is not kept and cannot be shown again."""
        user_id = _user(user_id)
        key_id = secrets.token_hex(6)
        key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        row = {"key_id": key_id, "user_id": user_id, "sha256": digest(key),
               "created_at": datetime.now(timezone.utc)}
        table = self.table()
        self._retrying()(lambda: table.add(pa.Table.from_pylist([row], schema=SCHEMA)))
        return key_id, key

    def revoke(self, user_id: str, key_id: str | None = None) -> int:
        """Remove one of the user's keys (or all with `key_id=None`); returns how many went.
        `NotFound` when there was none."""
        user_id = _user(user_id)
        where = f"user_id = {sql_str(user_id)}"
        if key_id is not None:
            if not _KEY_ID.fullmatch(key_id or ""):
                raise InvalidInput("a key id is 12 hex digits, as `list` shows it", code="invalid_key_id",
                                   field="key")
            where += f" AND key_id = {sql_str(key_id)}"
        table = self.table()
        before = table.count_rows(where)
        if before == 0:
            raise NotFound(f"user {user_id!r} has no such key" if key_id else f"user {user_id!r} has no keys",
                           code="key_not_found")
        self._retrying()(lambda: table.delete(where))
        return before

    # -- reads ------------------------------------------------------------------------------------
    def has_keys(self, user_id: str) -> bool:
        """Whether the user has a key (the table's latest version)."""
        table = self.table()
        table.checkout_latest()
        return table.count_rows(f"user_id = {sql_str(_user(user_id))}") > 0

    def list(self, user_id: str | None = None) -> list[dict[str, Any]]:
        """Every key (or one user's): id, user and creation time; never the digest."""
        table = self.table()
        table.checkout_latest()
        rows = table.to_arrow().select(["key_id", "user_id", "created_at"]).to_pylist()
        if user_id is not None:
            rows = [r for r in rows if r["user_id"] == user_id]
        return sorted(rows, key=lambda r: (r["user_id"], r["created_at"], r["key_id"]))

    @staticmethod
    def read(dataset) -> dict[str, str]:
        """digest -> user id of one version of the table (a `dataset()` or one of its checkouts)."""
        table = dataset.to_table(columns=["sha256", "user_id"])
        return dict(zip(table.column("sha256").to_pylist(), table.column("user_id").to_pylist()))


def _user(user_id: str) -> str:
    try:
        return check_user_id(user_id)
    except ValueError as exc:
        raise InvalidInput(str(exc), code="invalid_user_id", field="user") from None


PLAN_SCHEMA = pa.schema([
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("plan", pa.string(), nullable=False),
    pa.field("updated_at", pa.timestamp("ms", tz="UTC"), nullable=False),
])
_PLAN_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


class PlanStore(SmallTable):
    """Which plan each user is on (`user_plans` beside the key table): a user without a row is on `default`.
    Read like the keys (deployments.http.auth.PlanBook follows its latest version), so a change counts
    from the next request on every node."""

    schema = PLAN_SCHEMA

    def __init__(self, uri: str, *, table: str = "user_plans", storage_options: dict[str, str] | None = None):
        super().__init__(uri, table=table, storage_options=storage_options)

    def assign(self, user_id: str, plan: str) -> None:
        """Put `user_id` on `plan` (`default` removes the user's row)."""
        user_id = _user(user_id)
        if not _PLAN_NAME.fullmatch(plan or ""):
            raise InvalidInput("a plan name is 1-32 of a-z, 0-9, '_' and '-', starting with a letter or digit",
                               code="invalid_plan", field="plan")
        table = self.table()
        where = f"user_id = {sql_str(user_id)}"
        if plan == "default":
            self._retrying()(lambda: table.delete(where))
            return
        row = pa.Table.from_pylist([{"user_id": user_id, "plan": plan, "updated_at": datetime.now(timezone.utc)}],
                                   schema=PLAN_SCHEMA)
        self._retrying()(lambda: table.merge_insert("user_id").when_matched_update_all()
                         .when_not_matched_insert_all().execute(row))

    def list(self) -> dict[str, str]:
        """user id -> plan, of every user not on `default`."""
        table = self.table()
        table.checkout_latest()
        return self.read(table.to_lance())

    @staticmethod
    def read(dataset) -> dict[str, str]:
        """user id -> plan of one version of the table."""
        table = dataset.to_table(columns=["user_id", "plan"])
        return dict(zip(table.column("user_id").to_pylist(), table.column("plan").to_pylist()))
