"""Deletion that is final: pending purges kept durably beside the gallery, run when they fall due.

A delete records a purge due within `purge_within_s / 2` in a small LanceDB table next to the
gallery's (`<gallery_table>_purges`: due times only, no user data). The process that writes the
gallery runs a `Purger` thread that calls `GalleryUpkeep.purge()` once a purge is due and then clears it.
The queue outlives the writer: a writer that restarts (its node died, a redeploy) finds the
pending purge and runs it, so no delete stays recoverable from disk longer than the bound.
"""

from __future__ import annotations

import logging
import threading
import time

import pyarrow as pa

log = logging.getLogger("atelier.purge")
_SCHEMA = pa.schema([("due_at", pa.float64())])


class PurgeQueue:
    def __init__(self, db, gallery_table: str):
        name = f"{gallery_table}_purges"
        try:
            self.table = db.open_table(name)
        except ValueError:
            try:
                self.table = db.create_table(name, schema=_SCHEMA)
            except ValueError:  # created meanwhile by another process
                self.table = db.open_table(name)

    def add(self, due_at: float) -> None:
        self.table.add(pa.Table.from_pylist([{"due_at": float(due_at)}], schema=_SCHEMA))

    def next_due(self) -> float | None:
        self.table.checkout_latest()
        due = self.table.to_arrow().column("due_at").to_pylist()
        return min(due) if due else None

    def pending(self) -> int:
        self.table.checkout_latest()
        return self.table.count_rows()

    def clear(self, upto: float) -> None:
        """Forget the purges due by `upto` (one purge covers every delete made before it started)."""
        self.table.delete(f"due_at <= {float(upto)!r}")
        self.table.optimize(cleanup_older_than=None)


class Purger:
    """Runs a gallery's due purges in a daemon thread of the process that writes the gallery."""

    def __init__(self, gallery, queue: PurgeQueue, within_s: float):
        self.gallery, self.queue, self.within_s = gallery, queue, within_s
        self.purges = 0
        self.last_purge_at: float | None = None
        self.last_error: str | None = None
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gallery-purge", daemon=True)
        self._thread.start()

    def schedule(self) -> None:
        """A delete happened: purge within half the bound (the purge itself takes the rest)."""
        self.queue.add(time.time() + self.within_s / 2)
        self._wake.set()

    def status(self) -> dict:
        return {"pending": self.queue.pending(), "purges": self.purges, "last_purge_at": self.last_purge_at,
                "last_error": self.last_error, "within_s": self.within_s}

    def _run(self) -> None:
        poll = max(0.2, min(5.0, self.within_s / 8))
        while True:
            try:
                due = self.queue.next_due()
                now = time.time()
                if due is not None and due <= now:
                    started = time.time()
                    self.gallery.upkeep.purge()
                    self.queue.clear(started)
                    self.purges += 1
                    self.last_purge_at, self.last_error = time.time(), None
                    log.info("purged deleted rows of %s in %.2f s", self.gallery.name, time.time() - started)
                    continue
                wait = poll if due is None else min(poll, max(0.05, due - now))
            except Exception as exc:  # noqa: BLE001 - a failed purge is retried at the next poll
                self.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
                log.warning("purge of %s failed (%s); retrying", self.gallery.name, self.last_error)
                wait = poll
            self._wake.wait(wait)
            self._wake.clear()
