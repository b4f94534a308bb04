"""Ingestion jobs' status where every ingress replica can read it: the job ledger.

Status lives in one detached named actor (`JobLedger`), not in a replica. Drivers report progress
and a heartbeat every few seconds; a job whose driver stops reporting is marked failed (or
cancelled, when that was asked) the next time anyone reads it, so no job stays `running` forever.
What a job is lives in pipelines.spec; who runs it (pipelines.attempt, .run, .submit) stands on this.
"""

from __future__ import annotations

import threading
import time

import ray
from ray.util import metrics

from pipelines.spec import JobStatus
from storage.placement import detached, on_head_node

__all__ = ["COUNTERS", "LEDGER_ACTOR", "TERMINAL", "JobLedger", "LedgerMetrics", "ledger"]

# Versioned like the gallery writer: the ledger is detached and outlives a redeploy (v2: progress log).
LEDGER_ACTOR = "atelier_ingest_jobs_v2"
PROGRESS = ("job_id", "state", "total", "done", "skipped_duplicates", "failed", "started_at", "finished_at")
MAX_PROGRESS_EVENTS = 50_000  # per job; a longer log keeps its last entries (the stream then skips some)
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
COUNTERS = ("total", "done", "skipped_duplicates", "failed")


@ray.remote(num_cpus=0.01, max_restarts=-1, max_task_retries=-1)
class JobLedger:
    """Every ingestion job's record, plus the content hashes each running attempt has claimed.

    Attempts: each driver start of a job is a new attempt; reports from an older attempt (a driver
    thought dead) are refused and told to stop, so two drivers never count into one record.
    """

    def __init__(self, metrics_every_s: float = 2.0):
        self._jobs: dict[str, dict] = {}
        self._claims: dict[tuple[str, int], dict[str, int]] = {}
        self._forgotten: set[str] = set()  # jobs of deleted users: their drivers must not restore them
        self._metrics = LedgerMetrics(self._jobs, metrics_every_s)

    # -- the API and the command line ------------------------------------------------------------
    def open(self, spec: dict, rerun_finished: bool = False) -> dict:
        """Create the job, or find it: {"action": created|restarted|exists|conflict, "status", "submission"}.

        A failed or cancelled job is restarted under the same id (files already stored are skipped);
        a succeeded one only when `rerun_finished` (the command line: a folder may have new files).
        """
        job_id = spec["job_id"]
        self._forgotten.discard(job_id)
        rec = self._jobs.get(job_id)
        if rec is not None:
            self._settle(rec)
            if rec["user_id"] != spec["user_id"] or rec["spec"]["fingerprint"] != spec["fingerprint"]:
                return {"action": "conflict", "status": self._public(rec), "submission": rec["submission"]}
            restart = rec["state"] in ("failed", "cancelled") or (rerun_finished and rec["state"] == "succeeded")
            if not restart:
                return {"action": "exists", "status": self._public(rec), "submission": rec["submission"]}
            self._drop_claims(job_id)
            submission, attempt = rec["submission"] + 1, rec["attempt"]
        else:
            submission, attempt = 1, 0
        now = time.time()
        rec = self._jobs[job_id] = {
            "spec": spec, "user_id": spec["user_id"], "job_id": job_id, "state": "queued", "created_at": now,
            "started_at": None, "finished_at": None, "message": None, "errors": [], "beat": now,
            # Attempts keep counting across restarts, so an old driver can never report into a new run.
            "attempt": attempt,
            "cancel": False, "submission": submission, **{c: 0 for c in COUNTERS},
        }
        self._log(rec)
        return {"action": "created" if submission == 1 else "restarted", "status": self._public(rec),
                "submission": submission}

    def status(self, job_id: str, user_id: str | None = None) -> dict | None:
        """The job's public status; None when absent or another user's (callers answer 404 to both)."""
        rec = self._jobs.get(job_id)
        if rec is None or (user_id is not None and rec["user_id"] != user_id):
            return None
        self._settle(rec)
        return self._public(rec)

    def list(self, user_id: str) -> list[dict]:
        recs = [r for r in self._jobs.values() if r["user_id"] == user_id]
        for rec in recs:
            self._settle(rec)
        return [self._public(r) for r in sorted(recs, key=lambda r: -r["created_at"])]

    def cancel(self, job_id: str, user_id: str) -> dict | None:
        """Ask a job to stop: a queued one is cancelled now, a running one at its driver's next report."""
        rec = self._jobs.get(job_id)
        if rec is None or rec["user_id"] != user_id:
            return None
        self._settle(rec)
        if rec["state"] == "queued":
            self._end(rec, "cancelled")
        elif rec["state"] == "running":
            rec["cancel"] = True
        return self._public(rec)

    def fail(self, job_id: str, message: str) -> None:
        """The job could not be started (staging or submission failed)."""
        rec = self._jobs.get(job_id)
        if rec is not None and rec["state"] not in TERMINAL:
            rec["message"] = message
            self._end(rec, "failed")

    def forget_user(self, user_id: str) -> int:
        doomed = [j for j, r in self._jobs.items() if r["user_id"] == user_id]
        for job_id in doomed:
            self._jobs[job_id]["cancel"] = True
            self._drop_claims(job_id)
            del self._jobs[job_id]
            self._forgotten.add(job_id)
        return len(doomed)

    # -- drivers ----------------------------------------------------------------------------------
    def spec(self, job_id: str) -> dict | None:
        rec = self._jobs.get(job_id)
        return None if rec is None else rec["spec"]

    def begin(self, job_id: str) -> int | None:
        """A driver starts: its attempt number, or None when it must not run (cancelled, gone, or
        another driver is alive and reporting)."""
        rec = self._jobs.get(job_id)
        if rec is None:
            return None
        self._settle(rec)
        if rec["state"] == "cancelled" or rec["state"] == "succeeded":
            return None
        if rec["state"] == "running":
            return None  # a live driver holds it; _settle would have ended a dead one
        self._drop_claims(job_id)
        rec.update(state="running", attempt=rec["attempt"] + 1, started_at=time.time(), finished_at=None,
                   message=None, errors=[], beat=time.time(), cancel=False, **{c: 0 for c in COUNTERS})
        self._claims[(job_id, rec["attempt"])] = {}
        self._log(rec)
        return rec["attempt"]

    def claim(self, job_id: str, attempt: int, pairs: list[tuple[str, int]]) -> dict[str, int]:
        """For each (content hash, entry index): the index that first claimed the hash in this attempt.

        An entry whose hash another entry claimed is a duplicate within the job and is not decoded.
        Claims are idempotent, so a retried read task gets the same answers.
        """
        claims = self._claims.get((job_id, attempt))
        if claims is None:  # attempt over, or ledger restarted: claim nothing, the writer still dedupes
            return {h: i for h, i in pairs}
        return {h: claims.setdefault(h, i) for h, i in pairs}

    def report(self, job_id: str, attempt: int, counters: dict, errors: list[dict]) -> str:
        """Progress and heartbeat of a running attempt: "go" on, "stop" (cancelled, or a newer attempt
        owns the job), or "unknown" (this ledger restarted and lost the record: `restore` it)."""
        rec = self._jobs.get(job_id)
        if rec is None:
            return "stop" if job_id in self._forgotten else "unknown"
        if rec["attempt"] != attempt or rec["state"] != "running":
            return "stop"
        before = tuple(rec[c] for c in COUNTERS)
        self._metrics.rows(rec, counters)
        rec.update({c: int(counters[c]) for c in COUNTERS if c in counters})
        rec["errors"].extend(errors)
        rec["beat"] = time.time()
        if tuple(rec[c] for c in COUNTERS) != before:
            self._log(rec)
        return "stop" if rec["cancel"] else "go"

    def restore(self, spec: dict, attempt: int, started_at: float, counters: dict, errors: list[dict]) -> None:
        """A running driver re-creates its record after a ledger restart (records live in memory)."""
        if spec["job_id"] in self._jobs or spec["job_id"] in self._forgotten:
            return
        now = time.time()
        self._jobs[spec["job_id"]] = {
            "spec": spec, "user_id": spec["user_id"], "job_id": spec["job_id"], "state": "running",
            "created_at": started_at, "started_at": started_at, "finished_at": None, "message": None,
            "errors": list(errors), "beat": now, "attempt": attempt, "cancel": False, "submission": 1,
            **{c: int(counters.get(c, 0)) for c in COUNTERS},
        }
        self._claims.setdefault((spec["job_id"], attempt), {})

    def finish(self, job_id: str, attempt: int, state: str, counters: dict, errors: list[dict],
               message: str | None = None) -> dict | None:
        rec = self._jobs.get(job_id)
        if rec is None or rec["attempt"] != attempt or rec["state"] != "running":
            return None if rec is None else self._public(rec)
        self._metrics.rows(rec, counters)
        rec.update({c: int(counters[c]) for c in COUNTERS if c in counters})
        rec["errors"].extend(errors)
        rec["message"] = message
        self._end(rec, state)
        return self._public(rec)

    # -- internals --------------------------------------------------------------------------------
    def _settle(self, rec: dict) -> None:
        """End a job whose driver went silent: failed, or cancelled when a cancel was pending."""
        ingest = rec["spec"]["ingest"]
        silent = time.time() - rec["beat"]
        if rec["state"] == "queued" and silent > ingest["queue_timeout_s"]:
            rec["message"] = f"the job's driver did not start within {ingest['queue_timeout_s']:g} s; upload again"
            self._end(rec, "failed")
        elif rec["state"] == "running" and silent > ingest["stale_after_s"]:
            if rec["cancel"]:
                self._end(rec, "cancelled")
            else:
                rec["message"] = (f"the job's driver stopped reporting {silent:.0f} s ago (it crashed or was killed); "
                                  "run the same upload or command again: files already stored are skipped")
                self._end(rec, "failed")

    def _end(self, rec: dict, state: str) -> None:
        rec["state"] = state
        rec["finished_at"] = time.time()
        self._drop_claims(rec["job_id"])
        self._log(rec)
        self._metrics.ended(state)

    @staticmethod
    def _log(rec: dict) -> None:
        """One progress entry per change of state or counters: the event stream sends each one."""
        log = rec.setdefault("log", [])
        log.append({k: rec[k] for k in PROGRESS})
        rec["logged"] = rec.get("logged", 0) + 1
        if len(log) > MAX_PROGRESS_EVENTS:
            del log[: len(log) - MAX_PROGRESS_EVENTS]

    def progress(self, job_id: str, user_id: str, since: int) -> dict | None:
        """Progress entries after the `since`-th (counted over the job's life), and the status now;
        None when the job is absent or another user's."""
        rec = self._jobs.get(job_id)
        if rec is None or rec["user_id"] != user_id:
            return None
        self._settle(rec)
        log, logged = rec.get("log", []), rec.get("logged", 0)
        first = logged - len(log)  # entries before this one were trimmed
        return {"events": log[max(0, since - first):], "next": logged, "status": self._public(rec)}

    def _drop_claims(self, job_id: str) -> None:
        for key in [k for k in self._claims if k[0] == job_id]:
            del self._claims[key]

    @staticmethod
    def _public(rec: dict) -> dict:
        return JobStatus(**{k: rec[k] for k in JobStatus.model_fields}).model_dump()


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
        counts = dict.fromkeys(("queued", "running", "succeeded", "failed", "cancelled"), 0)
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


def ledger():
    """The cluster's one JobLedger, created by whoever asks first (detached: it outlives callers)."""
    return detached(JobLedger, LEDGER_ACTOR, **on_head_node()).remote()

