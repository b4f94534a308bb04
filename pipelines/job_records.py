"""What the job ledger keeps of a job, and where: the bounds of a record in memory (names and messages cut, the
first error entries, the progress log's tail) and its copy on disk beside the gallery (`JobDisk`, over
storage.ledgers.JobStore), so a restart of the ledger's actor, of the head node or of the whole cluster loses no
job: a restarted ledger reads every record back and knows which jobs were running.

Bounded: a job with thousands of failed files with long names keeps `SHOWN_ERRORS` entries in its record (the
status answer), every entry of its attempt on disk (paged: GET /api/init/upload/{id}/errors) with each name cut to
`NAME_CHARS`; its progress log keeps `MAX_PROGRESS_EVENTS` entries in memory and `KEPT_EVENTS` on disk; a
finished job is removed from both after its spec's `retention_s`.
"""

from __future__ import annotations

import logging
import time

from storage.errors import Unavailable
from storage.settings import SECRET_FIELDS

log = logging.getLogger("atelier.ingest")

SHOWN_ERRORS = 100  # error entries a job's status carries; `errors_total` counts them all
NAME_CHARS = 256  # a file name in an error entry, cut (a zip may name a member with thousands of characters)
MESSAGE_CHARS = 500
MAX_PROGRESS_EVENTS = 2_000  # in memory per job; a longer log keeps its last entries (the stream then skips some)
KEPT_EVENTS = 50  # of the log, on disk
SAVE_EVERY_S = 5.0  # a running job's progress on disk at most this stale (a change of state is saved at once)
_MEMORY_ONLY = ("beat", "log", "dirty", "saved_at")
# Never on disk: the S3 keys, and LanceDB's storage options (they may hold credentials); a job read back takes both
# from the environment of the node that runs it.
_UNSTORED = (*SECRET_FIELDS, "lancedb_storage_options")


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def entry(error: dict) -> dict:
    """An error entry as the ledger keeps it: name and message cut to their bounds."""
    return {"name": cut(str(error.get("name", "")), NAME_CHARS), "code": str(error.get("code", "")),
            "message": cut(str(error.get("message", "")), MESSAGE_CHARS)}


def stored(rec: dict) -> dict:
    """The record as it is written: no secrets in its spec, the log's tail only, nothing that lives in memory."""
    out = {k: v for k, v in rec.items() if k not in _MEMORY_ONLY}
    spec = dict(rec["spec"])
    spec["storage"] = {k: v for k, v in (spec.get("storage") or {}).items() if k not in _UNSTORED}
    out["spec"] = spec
    out["log_tail"] = rec.get("log", [])[-KEPT_EVENTS:]
    return out


def revived(row: dict, now: float) -> dict:
    """A record read back: its drivers get `stale_after_s` from now to report before the ledger acts."""
    rec = {k: v for k, v in row.items() if k != "log_tail"}
    rec["log"] = row.get("log_tail", [])
    rec.setdefault("near_duplicates", 0)  # a record written before the counter was
    rec.update(beat=now, saved_at=now, dirty=False, recovered=rec["state"] in ("queued", "running"))
    return rec


class JobDisk:
    """The ledger's records at the gallery's storage (`storage`: StorageSettings values; none: memory only).

    Writes that fail are logged and the record stays dirty: the next change or sweep writes it again; the
    ledger answers from memory meanwhile (a job is never refused because its record could not be saved)."""

    def __init__(self, storage: dict | None):
        self.store = None
        if storage:
            from storage.ledgers import JobStore

            self.store = JobStore.at(storage)

    def load(self) -> list[dict]:
        if self.store is None:
            return []
        try:
            return self.store.load()
        except Exception as exc:  # noqa: BLE001 - a ledger that cannot read its records still serves new jobs
            log.error("the job ledger could not read its records (%s: %s); starting empty", type(exc).__name__, exc)
            return []

    def save(self, rec: dict, *, now: float | None = None, force: bool = True) -> None:
        """Write the record when forced (a change of state) or when its last write is `SAVE_EVERY_S` old."""
        rec["dirty"] = True
        now = now or time.time()
        if self.store is None or (not force and now - rec.get("saved_at", 0.0) < SAVE_EVERY_S):
            return
        if self._try("save job", self.store.put, stored(rec)):
            rec.update(dirty=False, saved_at=now)

    def add_errors(self, rec: dict, first: int, errors: list[dict]) -> None:
        if self.store is not None and errors:
            self._try("save errors of job", self.store.add_errors, rec["job_id"], rec["user_id"], first, errors)

    def clear_errors(self, job_id: str) -> None:
        if self.store is not None:
            self._try("clear errors of job", self.store.clear_errors, job_id)

    def error_page(self, rec: dict, offset: int, limit: int) -> list[dict]:
        """Entries `offset`..`offset + limit` of the job's current attempt: from disk; without a store (or past
        what it holds) what the record keeps."""
        if self.store is None:
            return rec["errors"][offset: offset + limit]
        try:
            return self.store.error_page(rec["job_id"], offset, limit)
        except Exception as exc:  # noqa: BLE001 - the table unreadable for now: the caller may retry
            log.warning("job ledger: could not read errors (%s: %s)", type(exc).__name__, exc)
            raise Unavailable("the job's error entries cannot be read right now; retry shortly", retry_after=2) from None

    def delete(self, job_ids: list[str]) -> None:
        if self.store is not None and job_ids:
            self._try("delete jobs", self.store.delete, job_ids)

    def forget_user(self, user_id: str) -> None:
        if self.store is None:
            return
        try:
            self.store.forget_user(user_id)
        except Exception as exc:  # noqa: BLE001 - DELETE /api/me must not answer 204 with the records kept
            log.warning("job ledger: could not remove a user's records (%s: %s)", type(exc).__name__, exc)
            raise Unavailable("the user's job records could not be removed yet; retry shortly", retry_after=5) from None

    @staticmethod
    def _try(what: str, fn, *args) -> bool:
        try:
            fn(*args)
            return True
        except Exception as exc:  # noqa: BLE001 - see the class: memory goes on, the next write retries
            log.warning("job ledger: could not %s (%s: %s); kept in memory", what, type(exc).__name__, exc)
            return False
