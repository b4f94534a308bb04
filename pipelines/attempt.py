"""One attempt at an ingestion job under the job ledger's rules, whoever runs it: the Ray Data driver
(pipelines.run) or, for a few uploaded files, the service's replica (deployments.service.ingest).

The protocol: `begin` takes a new attempt number from the ledger (none: the job must not run now) and
starts the heartbeat, a report every `heartbeat_s`; `add` counts files and reports them (progress); a
report answered "stop" (cancelled, or a newer attempt owns the job) sets `stop`, one answered "unknown"
(the ledger restarted and lost the record) restores the record; `finish` ends the heartbeat, removes the
staged upload unless the job failed, and records the end. The read tasks (pipelines.stages) claim
content hashes under this attempt's `number`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import ray

from pipelines.jobs import COUNTERS, ledger
from pipelines.spec import JobSpec
from storage.blobs import open_blob_store
from storage.settings import StorageSettings

log = logging.getLogger("atelier.ingest")


class JobAttempt:
    """Counters, error entries and reports of one attempt; thread-safe (a heartbeat thread reports too)."""

    def __init__(self, spec: JobSpec, settings: StorageSettings):
        self.spec = spec
        self.settings = settings  # where the staged upload is removed
        self.ledger = ledger(settings.model_dump())
        self.number: int | None = 0
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.errors: list[dict] = []  # all of the attempt's error entries (a restored record gets them)
        self._pending: list[dict] = []  # those not reported yet
        self._lock = threading.Lock()
        self.stop = threading.Event()
        self._over = threading.Event()
        self._beat: threading.Thread | None = None
        self.started = time.time()
        self._revoked = False
        self._keys = None  # the key table, opened at the first check (a job started through the API only)

    def begin(self, on_beat: Callable[[], None] | None = None) -> bool:
        """Take an attempt and start the heartbeat (which calls `on_beat` first, each time); False when the
        job must not run now (cancelled, finished, another driver runs it, or its user's keys are revoked)."""
        self.cancel_if_revoked()  # a queued job is cancelled at once: begin() then answers None
        self.number = ray.get(self.ledger.begin.remote(self.spec.job_id))
        if self.number is None:
            return False
        self._beat = threading.Thread(target=self._heartbeat, args=(on_beat,), name="ingest-heartbeat", daemon=True)
        self._beat.start()
        return True

    def status(self) -> dict | None:
        return ray.get(self.ledger.status.remote(self.spec.job_id))

    def add(self, *, total: int | None = None, done: int = 0, skipped: int = 0, errors: list[dict] = (),
            near: int = 0) -> None:
        """Count files (`total`: how many the job has; `near`: stored with a near-duplicate) and report the
        counters at once."""
        with self._lock:
            if total is not None:
                self.counters["total"] = total
            self.counters["near_duplicates"] += near
            self.counters["done"] += done
            self.counters["skipped_duplicates"] += skipped
            self.counters["failed"] += len(errors)
            self.errors += errors
            self._pending += errors
            sent = self._send()  # in the same hold: one report per call, in the order they count
        self._answer(*sent)

    def handled(self) -> int:
        """Files counted so far as done, skipped or failed."""
        with self._lock:
            return self.counters["done"] + self.counters["skipped_duplicates"] + self.counters["failed"]

    def report(self) -> None:
        with self._lock:
            sent = self._send()
        self._answer(*sent)

    def end_heartbeat(self) -> None:
        self._over.set()
        if self._beat is not None:
            self._beat.join(timeout=5)

    def finish(self, state: str, message: str | None = None) -> dict | None:
        """End the attempt: its final state, counters, unreported errors and message; the job's final status."""
        self.end_heartbeat()
        if state != "failed" and self.spec.staged_prefix:
            # Before the job reads as ended: an upload retried after that re-stages the same keys.
            open_blob_store(self.settings).delete_prefix(self.spec.staged_prefix)
        with self._lock:
            counters, errors, self._pending = dict(self.counters), self._pending, []
        return ray.get(self.ledger.finish.remote(self.spec.job_id, self.number, state, counters, errors, message))

    def _heartbeat(self, on_beat: Callable[[], None] | None) -> None:
        while not self._over.wait(self.spec.ingest.heartbeat_s):
            if on_beat is not None:
                on_beat()
            self.cancel_if_revoked()  # the report just after answers "stop"
            self.report()

    def cancel_if_revoked(self) -> None:
        """A job started through the API stops once its user has no key left (every one revoked): it asks
        the ledger to cancel it, as the user's own DELETE would. A key table that cannot be read cancels
        nothing (the next beat asks again)."""
        if self.spec.keys_uri is None or self._revoked:
            return
        # LanceDB only in a job that has a key table to read (and only then): `python -m pipelines.ingest`
        # stays light to import (tests/unit/test_layers.py).
        from storage.keys import KeyStore

        try:
            if self._keys is None:
                self._keys = KeyStore(self.spec.keys_uri, table=self.spec.keys_table,
                                      storage_options=self.settings.lancedb_storage_options)
            if self._keys.has_keys(self.spec.user_id):
                return
        except Exception:  # noqa: BLE001 - a store hiccup must not stop a job
            log.warning("job %s: the API key table could not be read", self.spec.job_id, exc_info=True)
            return
        self._revoked = True
        log.info("job %s: user %s has no API key left (revoked): cancelling the job", self.spec.job_id,
                 self.spec.user_id)
        ray.get(self.ledger.cancel.remote(self.spec.job_id, self.spec.user_id))

    def _send(self) -> tuple[ray.ObjectRef, dict]:
        """The report of the counters now and the errors not reported yet (called holding the lock)."""
        counters, errors, self._pending = dict(self.counters), self._pending, []
        return self.ledger.report.remote(self.spec.job_id, self.number, counters, errors), counters

    def _answer(self, ref: ray.ObjectRef, counters: dict) -> None:
        try:
            answer = ray.get(ref, timeout=30)
        except Exception:  # noqa: BLE001 - the ledger restarting must not stop the job; the next beat retries
            log.warning("job %s: the job ledger did not answer a report", self.spec.job_id, exc_info=True)
            return
        if answer == "stop":
            self.stop.set()
        elif answer == "unknown":
            with self._lock:
                errors = list(self.errors)
            ray.get(self.ledger.restore.remote(self.spec.model_dump(), self.number, self.started, counters, errors))
