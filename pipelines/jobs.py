"""Ingestion jobs' status where every ingress replica can read it: the job ledger.

Status lives in one detached named actor (`JobLedger`) per gallery, not in a replica, and on disk beside the
gallery (pipelines.job_records): a restart of the actor, of the head node or of the whole cluster loses no job.
Drivers report progress and a heartbeat every few seconds; a job whose driver stops reporting is marked failed
(or cancelled, when that was asked) when anyone reads it or at the ledger's next sweep, so no job stays `running`
forever. A restarted ledger gives the jobs it read back as running the same time to be heard from: a driver that
lived through the restart reports into its record again (found again); a job whose driver is gone is resumed
from what is stored, as a new submission (the ingest skips what it stored already).
What a job is lives in pipelines.spec; who runs it (pipelines.attempt, .run, .submit) stands on this.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time

import ray

from pipelines.job_metrics import TERMINAL, LedgerMetrics
from pipelines.job_records import MAX_PROGRESS_EVENTS, SHOWN_ERRORS, JobDisk, entry, revived
from pipelines.spec import JobStatus
from storage.placement import detached, on_head_node
from storage.settings import SECRET_FIELDS

__all__ = ["COUNTERS", "LEDGER_ACTOR", "TERMINAL", "JobLedger", "LedgerMetrics", "ledger", "ledger_name"]

log = logging.getLogger("atelier.ingest")

# Versioned like the gallery writer: the ledger is detached and outlives a redeploy (v2: progress log; v3: one
# per gallery, its records on disk, errors bounded and paged; v4: undone).
LEDGER_ACTOR = "atelier_ingest_jobs_v5"
PROGRESS = ("job_id", "state", "total", "done", "skipped_duplicates", "failed", "near_duplicates", "started_at",
            "finished_at")
# near_duplicates: of the files done, those stored with a near-duplicate (not an outcome of its own).
COUNTERS = ("total", "done", "skipped_duplicates", "failed", "near_duplicates")
MAX_RESUMES = 3  # a job resumed this often after ledger restarts, and silent again, fails
RETENTION_SWEEP_S = 600.0


class _Records:
    """The ledger's rules over its records (settling silent jobs, resuming lost ones, ending, logging, retention);
    `JobLedger` is the actor's API over them."""

    _jobs: dict[str, dict]
    _claims: dict[tuple[str, int], dict[str, int]]
    _disk: JobDisk
    _metrics: LedgerMetrics
    _swept: float

    def take_resumes(self) -> list[tuple[dict, int]]:
        """The jobs to start again after a ledger restart, as (spec, submission), each handed out once."""
        self.sweep_active()
        taken = [rec for rec in self._jobs.values() if rec.get("resume") and rec["state"] == "queued"]
        for rec in taken:
            rec["resume"] = False
            self._disk.save(rec)
        return [(rec["spec"], rec["submission"]) for rec in taken]

    def sweep_active(self) -> None:
        for rec in list(self._jobs.values()):
            if rec["state"] not in TERMINAL:
                self._settle(rec)

    def sweep(self) -> None:
        """Settle every job nobody reads (silent drivers, jobs to resume), write what is not on disk yet, and
        remove finished jobs past their retention (every `RETENTION_SWEEP_S`)."""
        now = time.time()
        self.sweep_active()
        for rec in list(self._jobs.values()):
            if rec.get("dirty"):
                self._disk.save(rec, now=now, force=False)
        if now - self._swept >= RETENTION_SWEEP_S:
            self._swept = now
            old = [j for j, r in self._jobs.items() if r["state"] in TERMINAL and r["finished_at"]
                   and now - r["finished_at"] > r["spec"]["ingest"].get("retention_s", 30 * 86_400)]
            for job_id in old:
                del self._jobs[job_id]
            self._disk.delete(old)

    # -- internals --------------------------------------------------------------------------------
    def _sweep_forever(self, every_s: float) -> None:
        me = ray.get_runtime_context().current_actor  # through the actor's queue: one method at a time
        while True:
            time.sleep(every_s)
            try:
                ray.get(me.sweep.remote(), timeout=60)
            except Exception:  # noqa: BLE001 - a slow sweep must not end the thread
                pass

    def _mine(self, job_id: str, user_id: str | None) -> dict | None:
        rec = self._jobs.get(job_id)
        if rec is None or (user_id is not None and rec["user_id"] != user_id):
            return None
        self._settle(rec)
        return rec

    def _add_errors(self, rec: dict, errors: list[dict]) -> None:
        """Count the entries, keep the first SHOWN_ERRORS in the record and every one on disk, names cut."""
        if not errors:
            return
        errors = [entry(e) for e in errors]
        self._disk.add_errors(rec, rec["errors_total"], errors)
        rec["errors"].extend(errors[: max(0, SHOWN_ERRORS - len(rec["errors"]))])
        rec["errors_total"] += len(errors)
        rec["dirty"] = True

    def _settle(self, rec: dict) -> None:
        """End a job whose driver went silent: failed, or cancelled when a cancel was pending; one this ledger
        read back as running (it restarted) and whose driver is gone is resumed instead."""
        ingest = rec["spec"]["ingest"]
        silent = time.time() - rec["beat"]
        if rec.get("recovered") and silent > ingest["stale_after_s"]:
            if rec["cancel"]:
                self._end(rec, "cancelled")
            elif rec["resumes"] < MAX_RESUMES and (rec["spec"]["sources"] or rec["spec"]["files"]):
                self._resume(rec)
            else:
                rec["message"] = "the job's driver was lost with the job ledger's restart; upload again to resume"
                self._end(rec, "failed")
        elif rec["state"] == "queued" and silent > ingest["queue_timeout_s"]:
            rec["message"] = f"the job's driver did not start within {ingest['queue_timeout_s']:g} s; upload again"
            self._end(rec, "failed")
        elif rec["state"] == "running" and silent > ingest["stale_after_s"]:
            if rec["cancel"]:
                self._end(rec, "cancelled")
            else:
                rec["message"] = (f"the job's driver stopped reporting {silent:.0f} s ago (it crashed or was killed); "
                                  "run the same upload or command again: files already stored are skipped")
                self._end(rec, "failed")

    def _resume(self, rec: dict) -> None:
        """Queue a new submission of a job whose driver was lost with the ledger (the head node): the stored spec
        again, under a new submission id, started by whoever takes it (`take_resumes`: the service's ingress
        replicas ask every few seconds); files it stored before are skipped, so each is counted once. Nobody
        taking it within the spec's `queue_timeout_s` fails it."""
        self._drop_claims(rec["job_id"])
        rec.update(state="queued", submission=rec["submission"] + 1, resumes=rec["resumes"] + 1, recovered=False,
                   beat=time.time(), resume=True)
        self._log(rec)
        self._disk.save(rec)
        log.info("job %s: its driver is gone since the ledger restarted; to resume (submission %d)",
                 rec["job_id"], rec["submission"])

    def _end(self, rec: dict, state: str) -> None:
        rec.update(state=state, finished_at=time.time(), recovered=False)
        self._drop_claims(rec["job_id"])
        self._log(rec)
        self._disk.save(rec)
        self._metrics.ended(state)

    @staticmethod
    def _log(rec: dict) -> None:
        """One progress entry per change of state or counters: the event stream sends each one."""
        log_ = rec.setdefault("log", [])
        log_.append({k: rec[k] for k in PROGRESS})
        rec["logged"] = rec.get("logged", 0) + 1
        if len(log_) > MAX_PROGRESS_EVENTS:
            del log_[: len(log_) - MAX_PROGRESS_EVENTS]

    def progress(self, job_id: str, user_id: str, since: int) -> dict | None:
        """Progress entries after the `since`-th (counted over the job's life), and the status now;
        None when the job is absent or another user's."""
        rec = self._mine(job_id, user_id)
        if rec is None:
            return None
        log_, logged = rec.get("log", []), rec.get("logged", 0)
        first = logged - len(log_)  # entries before this one were trimmed
        return {"events": log_[max(0, since - first):], "next": logged, "status": self._public(rec)}

    def _drop_claims(self, job_id: str) -> None:
        for key in [k for k in self._claims if k[0] == job_id]:
            del self._claims[key]

    @staticmethod
    def _public(rec: dict) -> dict:
        return JobStatus(**{k: rec[k] for k in JobStatus.model_fields}).model_dump()


@ray.remote(num_cpus=0.01, max_restarts=-1, max_task_retries=-1)
class JobLedger(_Records):
    """Every ingestion job's record, plus the content hashes each running attempt has claimed.

    Attempts: each driver start of a job is a new attempt; reports from an older attempt (a driver
    thought dead) are refused and told to stop, so two drivers never count into one record.
    """

    def __init__(self, metrics_every_s: float = 2.0, storage: dict | None = None):
        self._disk = JobDisk(storage)
        now = time.time()
        self._jobs: dict[str, dict] = {r["job_id"]: revived(r, now) for r in self._disk.load()}
        self._claims: dict[tuple[str, int], dict[str, int]] = {}
        self._forgotten: set[str] = set()  # jobs of deleted users: their drivers must not restore them
        self._metrics = LedgerMetrics(self._jobs, metrics_every_s)
        self._swept = 0.0
        if self._jobs:
            log.info("job ledger: %d jobs read back, %d of them running or queued", len(self._jobs),
                     sum(1 for r in self._jobs.values() if r.get("recovered")))
        threading.Thread(target=self._sweep_forever, args=(metrics_every_s,), daemon=True,
                         name="ledger-sweep").start()

    # -- the API and the command line ------------------------------------------------------------
    def open(self, spec: dict, rerun_finished: bool = False) -> dict:
        """Create the job, or find it: {"action": created|restarted|exists|conflict, "status", "submission"}.

        A failed, cancelled or undone job is restarted under the same id (files already stored are skipped);
        a succeeded one only when `rerun_finished` (the command line: a folder may have new files).
        """
        job_id = spec["job_id"]
        self._forgotten.discard(job_id)
        rec = self._jobs.get(job_id)
        if rec is not None:
            self._settle(rec)
            if rec["user_id"] != spec["user_id"] or rec["spec"]["fingerprint"] != spec["fingerprint"]:
                return {"action": "conflict", "status": self._public(rec), "submission": rec["submission"]}
            restart = rec["state"] in ("failed", "cancelled", "undone") or (rerun_finished and rec["state"] == "succeeded")
            if not restart:
                return {"action": "exists", "status": self._public(rec), "submission": rec["submission"]}
            self._drop_claims(job_id)
            submission, attempt = rec["submission"] + 1, rec["attempt"]
        else:
            submission, attempt = 1, 0
        now = time.time()
        rec = self._jobs[job_id] = {
            "spec": spec, "user_id": spec["user_id"], "job_id": job_id, "state": "queued", "created_at": now,
            "started_at": None, "finished_at": None, "message": None, "errors": [], "errors_total": 0, "beat": now,
            # Attempts keep counting across restarts, so an old driver can never report into a new run.
            "attempt": attempt, "resumes": 0,
            "cancel": False, "submission": submission, **{c: 0 for c in COUNTERS},
        }
        self._log(rec)
        self._disk.save(rec)  # on disk before the client hears of the job
        return {"action": "created" if submission == 1 else "restarted", "status": self._public(rec),
                "submission": submission}

    def status(self, job_id: str, user_id: str | None = None) -> dict | None:
        """The job's public status; None when absent or another user's (callers answer 404 to both)."""
        rec = self._mine(job_id, user_id)
        return None if rec is None else self._public(rec)

    def errors(self, job_id: str, user_id: str, offset: int, limit: int) -> dict | None:
        """A page of the error entries of the job's current attempt: {"items", "total", "next_offset"}."""
        rec = self._mine(job_id, user_id)
        if rec is None:
            return None
        items = self._disk.error_page(rec, offset, limit)
        after = offset + len(items)
        return {"items": items, "total": rec["errors_total"],
                "next_offset": after if items and after < rec["errors_total"] else None}

    def list(self, user_id: str) -> list[dict]:
        recs = [r for r in self._jobs.values() if r["user_id"] == user_id]
        for rec in recs:
            self._settle(rec)
        return [self._public(r) for r in sorted(recs, key=lambda r: -r["created_at"])]

    def cancel(self, job_id: str, user_id: str) -> dict | None:
        """Ask a job to stop: a queued one is cancelled now, a running one at its driver's next report."""
        rec = self._mine(job_id, user_id)
        if rec is None:
            return None
        if rec["state"] == "queued":
            self._end(rec, "cancelled")
        elif rec["state"] == "running":
            rec["cancel"] = True
            self._disk.save(rec)
        return self._public(rec)

    def undone(self, job_id: str, user_id: str, removed: int) -> dict | None:
        """The photos a finished job stored were deleted (DELETE /api/init/upload/{id}/rows): its record says so,
        and the same upload again runs it anew. None when absent or another user's; an active job is left as
        it is (its status says why: the caller refuses)."""
        rec = self._mine(job_id, user_id)
        if rec is None or rec["state"] not in TERMINAL:
            return None if rec is None else self._public(rec)
        rec.update(state="undone", message=f"undone: the {removed} photos this job had stored were deleted")
        self._log(rec)
        self._disk.save(rec)
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
        self._disk.forget_user(user_id)  # every record and error entry of the user's, every version
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
                   message=None, errors=[], errors_total=0, beat=time.time(), cancel=False, recovered=False,
                   **{c: 0 for c in COUNTERS})
        self._claims[(job_id, rec["attempt"])] = {}
        self._log(rec)
        self._disk.clear_errors(job_id)
        self._disk.save(rec)
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
        rec["recovered"] = False  # a driver that lived through a ledger restart: found again
        before = tuple(rec[c] for c in COUNTERS)
        self._metrics.rows(rec, counters)
        rec.update({c: int(counters[c]) for c in COUNTERS if c in counters})
        self._add_errors(rec, errors)
        rec["beat"] = time.time()
        if tuple(rec[c] for c in COUNTERS) != before:
            self._log(rec)
            self._disk.save(rec, now=rec["beat"], force=False)
        return "stop" if rec["cancel"] else "go"

    def restore(self, spec: dict, attempt: int, started_at: float, counters: dict, errors: list[dict]) -> None:
        """A running driver re-creates its record after a ledger restart that lost it (its store unreadable)."""
        if spec["job_id"] in self._jobs or spec["job_id"] in self._forgotten:
            return
        now = time.time()
        rec = self._jobs[spec["job_id"]] = {
            "spec": spec, "user_id": spec["user_id"], "job_id": spec["job_id"], "state": "running",
            "created_at": started_at, "started_at": started_at, "finished_at": None, "message": None,
            "errors": [], "errors_total": 0, "beat": now, "attempt": attempt, "cancel": False, "submission": 1,
            "resumes": 0, **{c: int(counters.get(c, 0)) for c in COUNTERS},
        }
        self._claims.setdefault((spec["job_id"], attempt), {})
        self._add_errors(rec, errors)
        self._disk.save(rec)

    def finish(self, job_id: str, attempt: int, state: str, counters: dict, errors: list[dict],
               message: str | None = None) -> dict | None:
        rec = self._jobs.get(job_id)
        if rec is None or rec["attempt"] != attempt or rec["state"] != "running":
            return None if rec is None else self._public(rec)
        self._metrics.rows(rec, counters)
        rec.update({c: int(counters[c]) for c in COUNTERS if c in counters})
        self._add_errors(rec, errors)
        rec["message"] = message
        self._end(rec, state)
        return self._public(rec)

def ledger_name(storage: dict) -> str:
    """The ledger of the gallery at `storage` (StorageSettings values): one per LanceDB location."""
    return f"{LEDGER_ACTOR}_{hashlib.sha256(storage['lancedb_uri'].encode()).hexdigest()[:12]}"


def ledger(storage: dict):
    """The gallery's one JobLedger, created by whoever asks first (detached: it outlives callers); its records
    on disk at `storage` (StorageSettings values; secrets, when not given, from the environment)."""
    storage = {k: v for k, v in storage.items() if k not in SECRET_FIELDS}  # never in an actor's arguments
    return detached(JobLedger, ledger_name(storage), **on_head_node()).remote(storage=storage)
