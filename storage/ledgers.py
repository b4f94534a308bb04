"""Durable records of the service's ledgers (issue 31): what must outlive the ledger's actor, the head node and
the whole cluster, in small LanceDB tables beside the gallery (the embedded default needs nothing new, and on an
object store they outlive every node):

- the idempotency records (`IdempotencyStore`), written through on each finished request and read back on a
  miss, so a retry after any restart gets the first answer;
- the ingestion jobs (`JobStore`): each job's record (spec without secrets, state, counters, the first errors,
  the progress log's tail) and, in a second table, every error entry of its attempt, paged from there;
- each user's per-operation stats (`StatsStore`), one row per user.

Each table is removed row by row with its user (every version of it: `SmallTable.vacuum`).

A record holds the answer, never an image's bytes: a kept image is its id (the answer's URL is signed again when
it is replayed), and an image that was not kept is put in the blob store under the user's own idempotency
prefix, removed with the user and when the record expires.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
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


def _settings(storage: dict):
    """StorageSettings from a ledger's storage values; the secrets (S3 keys) they leave out come from the
    environment of the process that opens the store."""
    from storage.settings import StorageSettings

    return StorageSettings(**storage)


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

    @classmethod
    def at(cls, storage: dict) -> "IdempotencyStore":
        """The store of the gallery at `storage` (StorageSettings values), its images in that gallery's blobs."""
        from storage.blobs import open_blob_store

        settings = _settings(storage)
        return cls(settings.lancedb_uri, open_blob_store(settings), storage_options=settings.lancedb_storage_options)

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
        self.vacuum(purge=True)
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
        self.vacuum()
        for row in gone:
            self.blobs.delete_prefix(f"{idempotency_prefix(row['user_id'])}{row['record_id']}/")
        return len(gone)

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


JOB_SCHEMA = pa.schema([
    pa.field("job_id", pa.string(), nullable=False),
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("state", pa.string(), nullable=False),
    pa.field("finished_at", pa.float64()),
    pa.field("record", pa.string(), nullable=False),
])
ERROR_SCHEMA = pa.schema([
    pa.field("job_id", pa.string(), nullable=False),
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("seq", pa.int64(), nullable=False),
    pa.field("name", pa.string(), nullable=False),
    pa.field("code", pa.string(), nullable=False),
    pa.field("message", pa.string(), nullable=False),
])


class _Errors(SmallTable):
    schema = ERROR_SCHEMA


class JobStore(SmallTable):
    """The job ledger's records at `uri`: `atelier_jobs` (one row per job, its record as JSON) and
    `atelier_jobs_errors` (one row per error entry of the job's current attempt, numbered from 0)."""

    schema = JOB_SCHEMA
    TIDY_EVERY = 200  # writes between two compactions (each write is a table version)

    def __init__(self, uri: str, *, table: str = "atelier_jobs", storage_options: dict[str, str] | None = None):
        super().__init__(uri, table=table, storage_options=storage_options)
        self.errors = _Errors(uri, table=f"{table}_errors", storage_options=storage_options)
        self._writes = 0

    @classmethod
    def at(cls, storage: dict) -> "JobStore":
        """The job records of the gallery at `storage` (StorageSettings values)."""
        settings = _settings(storage)
        return cls(settings.lancedb_uri, storage_options=settings.lancedb_storage_options)

    def load(self) -> list[dict]:
        """Every stored job's record."""
        table = self.table()
        table.checkout_latest()
        return [json.loads(r["record"]) for r in table.search().select(["record"]).limit(None).to_list()]

    def put(self, record: dict) -> None:
        row = {"job_id": record["job_id"], "user_id": check_user_id(record["user_id"]), "state": record["state"],
               "finished_at": record.get("finished_at"), "record": json.dumps(record, ensure_ascii=False)}
        data = pa.Table.from_pylist([row], schema=JOB_SCHEMA)
        self._retrying()(lambda: self.table().merge_insert("job_id").when_matched_update_all()
                         .when_not_matched_insert_all().execute(data))
        self._tidy()

    def add_errors(self, job_id: str, user_id: str, first: int, errors: list[dict]) -> None:
        """Append an attempt's error entries `first`, `first + 1`... (a retried append replaces, never doubles)."""
        if not errors:
            return
        rows = [{"job_id": job_id, "user_id": user_id, "seq": first + i, "name": e["name"], "code": e["code"],
                 "message": e["message"]} for i, e in enumerate(errors)]
        data = pa.Table.from_pylist(rows, schema=ERROR_SCHEMA)
        table = self.errors.table()
        where = f"job_id = {sql_str(job_id)} AND seq >= {first}"
        self._retrying()(lambda: table.delete(where))
        self._retrying()(lambda: table.add(data))
        self._tidy()

    def error_page(self, job_id: str, offset: int, limit: int) -> list[dict]:
        table = self.errors.table()
        table.checkout_latest()
        rows = (table.search().where(f"job_id = {sql_str(job_id)} AND seq >= {int(offset)} AND "
                                     f"seq < {int(offset) + int(limit)}")
                .select(["seq", "name", "code", "message"]).limit(None).to_list())
        return [{k: r[k] for k in ("name", "code", "message")} for r in sorted(rows, key=lambda r: r["seq"])]

    def clear_errors(self, job_id: str) -> None:
        """A new attempt starts counting its errors from nothing."""
        self._retrying()(lambda: self.errors.table().delete(f"job_id = {sql_str(job_id)}"))

    def delete(self, job_ids: list[str]) -> None:
        """Jobs past their retention: gone from both tables, every version."""
        if not job_ids:
            return
        where = "job_id IN (" + ", ".join(sql_str(j) for j in job_ids) + ")"
        self._retrying()(lambda: self.table().delete(where))
        self._retrying()(lambda: self.errors.table().delete(where))
        self.vacuum()
        self.errors.vacuum()

    def forget_user(self, user_id: str) -> None:
        where = f"user_id = {sql_str(check_user_id(user_id))}"
        self._retrying()(lambda: self.table().delete(where))
        self._retrying()(lambda: self.errors.table().delete(where))
        self.vacuum(purge=True)
        self.errors.vacuum(purge=True)

    def _tidy(self) -> None:
        self._writes += 1
        if self._writes % self.TIDY_EVERY == 0:
            self.vacuum()
            self.errors.vacuum()


STATS_SCHEMA = pa.schema([
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("ops", pa.string(), nullable=False),
])


class StatsStore(SmallTable):
    """Each user's per-operation stats (`deployments.service.state.StatsLedger`'s, as JSON), one row per user."""

    schema = STATS_SCHEMA
    TIDY_EVERY = 100

    def __init__(self, uri: str, *, table: str = "atelier_stats", storage_options: dict[str, str] | None = None):
        super().__init__(uri, table=table, storage_options=storage_options)
        self._writes = 0

    @classmethod
    def at(cls, storage: dict) -> "StatsStore":
        """The per-user stats of the gallery at `storage` (StorageSettings values)."""
        settings = _settings(storage)
        return cls(settings.lancedb_uri, storage_options=settings.lancedb_storage_options)

    def get(self, user_id: str) -> dict | None:
        table = self.table()
        table.checkout_latest()
        rows = table.search().where(f"user_id = {sql_str(user_id)}").limit(1).to_list()
        return json.loads(rows[0]["ops"]) if rows else None

    def put_many(self, users: dict[str, dict]) -> None:
        if not users:
            return
        data = pa.Table.from_pylist([{"user_id": check_user_id(u), "ops": json.dumps(ops)} for u, ops in users.items()],
                                    schema=STATS_SCHEMA)
        self._retrying()(lambda: self.table().merge_insert("user_id").when_matched_update_all()
                         .when_not_matched_insert_all().execute(data))
        self._writes += 1
        if self._writes % self.TIDY_EVERY == 0:
            self.vacuum()

    def forget_user(self, user_id: str) -> None:
        self._retrying()(lambda: self.table().delete(f"user_id = {sql_str(check_user_id(user_id))}"))
        self.vacuum(purge=True)
