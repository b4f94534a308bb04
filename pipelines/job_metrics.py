"""The job ledger's metrics for Prometheus (pipelines.jobs.JobLedger reports through `LedgerMetrics`)."""

from __future__ import annotations

import threading
import time

from ray.util import metrics

TERMINAL = frozenset({"succeeded", "failed", "cancelled", "undone"})


class LedgerMetrics:
    """The ledger's view for Prometheus (`ray_` prefixed when Ray exports them):

    - `atelier_ingest_rows{outcome}`: files handled (done, skipped_duplicates, failed), counted from
      drivers' reports, so `rate()` is the cluster's ingestion rows/s;
    - `atelier_ingest_jobs_ended{state}`: jobs that ended succeeded, failed or cancelled;
    - `atelier_ingest_jobs{state}`: the jobs the ledger holds, by state, and
      `atelier_ingest_stale_jobs`: running jobs whose driver has not reported for `stale_after_s`
      (not yet settled as failed: nobody read them), both refreshed every `every_s` by a thread.
    Outside a Ray worker (no metrics agent) every method does nothing.
    """

    def __init__(self, jobs: dict[str, dict], every_s: float):
        self._jobs = jobs
        try:
            self._rows = metrics.Counter("atelier_ingest_rows", description="ingestion files handled, by outcome",
                                         tag_keys=("outcome",))
            self._ended = metrics.Counter("atelier_ingest_jobs_ended", description="ingestion jobs ended, by state",
                                          tag_keys=("state",))
            self._states = metrics.Gauge("atelier_ingest_jobs", description="ingestion jobs known, by state",
                                         tag_keys=("state",))
            self._stale = metrics.Gauge("atelier_ingest_stale_jobs",
                                        description="running ingestion jobs whose driver stopped reporting")
            # Every series from zero, so the first increment after a (re)start shows in rate() and
            # increase() (and the job-failure alert fires on the first failure). `inc` refuses 0.
            for outcome in ("done", "skipped_duplicates", "failed"):
                self._rows._record(0, tags={"outcome": outcome})
            for state in sorted(TERMINAL):
                self._ended._record(0, tags={"state": state})
        except Exception:  # noqa: BLE001 - no Ray worker here (a plain instance in a unit test)
            self._rows = None
            return
        threading.Thread(target=self._refresh_forever, args=(every_s,), daemon=True,
                         name="ledger-metrics").start()

    def rows(self, rec: dict, counters: dict) -> None:
        if self._rows is None:
            return
        for outcome in ("done", "skipped_duplicates", "failed"):
            delta = int(counters.get(outcome, rec[outcome])) - int(rec[outcome])
            if delta > 0:
                self._rows.inc(delta, tags={"outcome": outcome})

    def ended(self, state: str) -> None:
        if self._rows is not None:
            self._ended.inc(tags={"state": state})
        self.refresh()

    def refresh(self) -> None:
        if self._rows is None:
            return
        now = time.time()
        counts = dict.fromkeys(("queued", "running", *sorted(TERMINAL)), 0)
        stale = 0
        for rec in list(self._jobs.values()):  # a snapshot: the actor's thread may change the dict
            counts[rec["state"]] = counts.get(rec["state"], 0) + 1
            if rec["state"] == "running" and now - rec["beat"] > rec["spec"]["ingest"]["stale_after_s"]:
                stale += 1
        for state, n in counts.items():
            self._states.set(n, tags={"state": state})
        self._stale.set(stale)

    def _refresh_forever(self, every_s: float) -> None:
        while True:
            time.sleep(every_s)
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - a metrics hiccup must not end the thread
                pass
