"""Bulk ingestion as a product operation: check and stage an upload, start its job, read, follow and cancel it.

An upload is checked (sizes, file count, zip bombs) and staged in the blob store under the user's
prefix, then a Ray Data job (`pipelines.ingest`) runs it. Status comes from the cluster's job
ledger (`pipelines.jobs`), so any replica answers for any job.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import re
import time
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import AsyncIterator, BinaryIO

from models.errors import ModelError
from pipelines.config import IngestSpec
from pipelines.job_records import NAME_CHARS, cut
from pipelines.sources import check_zip
from pipelines.spec import JobSpec, absolute_storage, job_id_for
from storage.blobs import open_blob_store, user_prefix
from storage.calls import Calls
from storage.errors import AtelierError, Conflict, InvalidInput, NotFound, PayloadTooLarge, Unavailable
from storage.settings import StorageSettings

from .state import PURGE_S
from .tasks import background

# pipelines.jobs, .attempt and .submit import Ray: they are imported where a desk uses them, so the
# in-process app (no cluster and no desk, which imports this module through deployments.assemble) never
# loads Ray.

log = logging.getLogger("atelier.ingest")
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
MULTIPART_SLACK = 1024 * 1024  # part headers and boundaries on top of the files themselves
PROGRESS_FIELDS = ("job_id", "state", "total", "done", "skipped_duplicates", "failed", "near_duplicates", "started_at",
                   "finished_at")
ACTIVE = ("queued", "running")
RESTARTABLE = ("failed", "cancelled", "undone")  # the same upload again runs these anew
SMALL_JOB_CONCURRENCY = 4  # files of a small job in flight at once
RESUME_POLL_S = 3.0  # how often a replica asks the job ledger for jobs to resume
LEDGER_S = 10.0  # a job ledger call's deadline


def upload_body_limit(spec: IngestSpec) -> int:
    """The largest POST /api/init/upload body: the files' limit plus the multipart framing."""
    return spec.max_upload_bytes + MULTIPART_SLACK


def public(status: dict) -> dict:
    """A job's status as the API shows it: the ledger's Unix times as ISO 8601 UTC (API.md's rule)."""
    out = dict(status)
    for name, value in status.items():
        if name.endswith("_at") and isinstance(value, (int, float)):
            out[name] = datetime.fromtimestamp(value, timezone.utc).isoformat(timespec="microseconds")
    return out


@dataclass
class UploadPart:
    """One file of a multipart upload, as the router hands it over (not read yet)."""

    filename: str | None
    file: BinaryIO


class _Staged:
    """An upload read and fingerprinted, not yet written anywhere."""

    def __init__(self, fingerprint: str, zip_data: bytes | None, files: list[tuple[str, bytes]]):
        self.fingerprint, self.zip_data, self.files = fingerprint, zip_data, files
        self.on_duplicate = "store"  # what the job does with a photo that has a near-duplicate

    def choose(self, on_duplicate: str) -> None:
        """The job's `on_duplicate`; a choice other than the default makes the same files another job."""
        self.on_duplicate = on_duplicate
        if on_duplicate != "store":
            self.fingerprint += f"|on_duplicate={on_duplicate}"

    def contents(self) -> tuple[int, int]:
        """(files, bytes) the upload holds: a zip's members (uncompressed), else the files sent."""
        if self.zip_data is None:
            return len(self.files), sum(len(data) for _, data in self.files)
        with zipfile.ZipFile(io.BytesIO(self.zip_data)) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
        return len(members), sum(m.file_size for m in members)


class IngestDesk:
    """Start, inspect, follow and cancel a user's ingestion jobs (the job ledger is a Ray actor)."""

    def __init__(self, spec: IngestSpec, storage: StorageSettings, keys: tuple[str, str] | None = None):
        self.spec, self.storage = spec, storage
        self.keys = keys  # (uri, table) of the API key table: a job stops once its user has no key there
        self.safety: dict | None = None  # the content policy a job's photos are flagged by (ProductService.tune)
        self._ledger = None
        self._keep = None  # the service's keep_ingested, for small jobs run here (attach())
        self._room = None  # the service's storage check (attach())
        self._tasks: set[asyncio.Task] = set()
        self._resuming = False

    def attach(self, keep, room=None) -> None:
        """`keep(user, name, data, job_id, seen) -> ("done" | "skipped_duplicates", stored with a near-duplicate)`
        stores one file of a small job;
        `room(user, images, size)` refuses an upload that would take the user past their plan's storage."""
        self._keep, self._room = keep, room

    def _fast(self, staged: "_Staged") -> bool:
        limit = self.spec.fast_path_max_files
        return self._keep is not None and staged.zip_data is None and 0 < len(staged.files) <= limit

    async def _run_small(self, spec: JobSpec, files: list[tuple[str, bytes]]) -> None:
        """A small job in this replica, as one attempt under the job ledger's rules (pipelines.attempt), as a
        Ray Data driver runs: a report per file and a heartbeat between, cancel before the next file starts,
        the same counting and errors. The attempt's calls block on the ledger: they run in threads."""
        from pipelines.attempt import JobAttempt  # Ray: see the top

        job, user = JobAttempt(spec, self.storage), spec.user_id
        if not await asyncio.to_thread(job.begin):
            return
        state, message, seen = "succeeded", None, set()
        # A few files at once: the Embedder batches them, intake decodes run in parallel threads.
        slots = asyncio.Semaphore(SMALL_JOB_CONCURRENCY)

        async def one(name: str, data: bytes) -> None:
            async with slots:
                if job.stop.is_set():
                    return
                errors, outcome, near = [], "failed", False
                try:
                    outcome, near = await self._keep(user, name, data, spec.job_id, seen, spec.on_duplicate)
                except (AtelierError, ModelError) as exc:
                    errors.append({"name": name, "code": exc.code, "message": exc.message})
                await asyncio.to_thread(job.add, done=int(outcome == "done"),
                                        skipped=int(outcome == "skipped_duplicates"), errors=errors, near=int(near))

        try:
            await asyncio.to_thread(job.add, total=len(files))
            await asyncio.gather(*(one(name, data) for name, data in files))
            if job.stop.is_set() and job.handled() < len(files):
                state = "cancelled"
        except Exception as exc:  # noqa: BLE001 - the job fails as a whole; the same upload again resumes it
            log.exception("small ingestion job %s failed", spec.job_id)
            state, message = "failed", f"the job failed ({type(exc).__name__}); upload again to resume"
        finally:
            await asyncio.to_thread(job.finish, state, message)

    def start_resuming(self) -> None:
        """Start (once, on this replica's event loop) the loop that resubmits the jobs a restarted job ledger
        found without their driver (the head node lost): any replica may take one, each is handed out once."""
        if not self._resuming:
            self._resuming = True
            background(self._resume_forever(), self._tasks)

    async def _resume_forever(self) -> None:
        from pipelines.spec import JobSpec
        from pipelines.submit import submit  # Ray: see the top

        while True:
            await asyncio.sleep(RESUME_POLL_S)
            try:
                taken = await self.ledger().within(30).take_resumes()
            except Exception as exc:  # noqa: BLE001 - the ledger restarting: asked again at the next round
                log.debug("no resumable jobs asked (%s: %s)", type(exc).__name__, exc)
                continue
            for spec, submission in taken:
                job_id = spec["job_id"]
                try:
                    await asyncio.to_thread(submit, JobSpec.model_validate(spec), submission)
                    log.info("ingestion job %s resumed (submission %d)", job_id, submission)
                except Exception as exc:  # noqa: BLE001 - the job fails with its reason; the user may upload again
                    log.warning("ingestion job %s could not be resumed: %s", job_id, exc)
                    try:
                        await self.ledger().fail(job_id, f"the job could not be resumed ({type(exc).__name__}); "
                                                                "upload again to resume")
                    except Exception:  # noqa: BLE001 - unanswered: the job fails at its queue timeout instead
                        log.warning("ingestion job %s: its failure could not be recorded", job_id)

    def ledger(self):
        if self._ledger is None:
            from pipelines.jobs import ledger  # Ray: see the top

            # Asked with a deadline: on a head node that is gone the ledger answers nothing until the head is
            # back, and a caller is told to retry (503) instead of waiting out the route's deadline.
            self._ledger = Calls(ledger(absolute_storage(self.storage).model_dump()), what="job ledger",
                                 timeout_s=LEDGER_S)
        return self._ledger

    async def start(self, user: str, uploads: list[UploadPart], idempotency_key: str | None,
                    on_duplicate: str = "store") -> tuple[dict, bool]:
        """Several files, or one .zip -> (status, fresh): fresh is False when the same upload already succeeded.
        `on_duplicate` is what the job does with a photo that has a near-duplicate, as for one upload; the same
        files with another choice are another job."""
        from pipelines.submit import submit  # Ray: see the top

        if not uploads:
            raise InvalidInput("no files in the upload: send images as `files`, or one .zip", field="files")
        staged = await asyncio.to_thread(_read_upload, uploads, self.spec)
        staged.choose(on_duplicate)
        basis = f"key:{idempotency_key}" if idempotency_key else staged.fingerprint
        job_id = job_id_for(user, basis)
        ledger = self.ledger()
        known = await ledger.status(job_id, user)
        if known is None or known["state"] in RESTARTABLE:
            if self._room is not None:  # the whole upload must fit the plan's storage: nothing staged otherwise
                await self._room(user, *await asyncio.to_thread(staged.contents))
            spec = await asyncio.to_thread(self._stage, user, job_id, staged)
        else:  # the same upload again: nothing to stage, the ledger answers with the job it has
            spec = self._job_spec(user, job_id, staged, files=[], sources=[], prefix=None)
        opened = await ledger.open(spec.model_dump(), False)
        if opened["action"] == "conflict":
            raise InvalidInput("this Idempotency-Key was used for another upload; use a new key",
                               code="idempotency_conflict", field="Idempotency-Key")
        if opened["action"] in ("created", "restarted") and self._fast(staged):
            # A few files: stored here through the running Embedder, as single uploads are, instead
            # of a Ray Data pipeline that first starts a driver, tasks and a model of its own.
            background(self._run_small(spec, staged.files), self._tasks)
        elif opened["action"] in ("created", "restarted") or (
                opened["action"] == "exists" and opened["status"]["state"] == "queued" and not self._fast(staged)):
            # (A job found queued: its first request may have lost its answer before the submission. The
            # submission id is the same, so a driver that exists already is not started twice; one that runs
            # already holds the job and the other's `begin` is refused.)
            try:
                await asyncio.to_thread(submit, spec, opened["submission"])
            except Exception as exc:  # noqa: BLE001 - the job is marked failed, the client may retry
                log.warning("ingestion job %s could not be submitted: %s", job_id, exc)
                await ledger.fail(job_id, f"the job could not be started ({type(exc).__name__})")
                raise Unavailable("the ingestion job could not be started; retry shortly",
                                  code="ingest_unavailable") from None
        status = opened["status"]
        return public(status), not (status["state"] == "succeeded" and opened["action"] == "exists")

    def _stage(self, user: str, job_id: str, staged: _Staged) -> JobSpec:
        """Put the upload's bytes in the blob store, where the job's tasks (on any node) read them."""
        blobs = open_blob_store(self.storage)
        # Under the user's prefix, so deleting the user (DELETE /api/me) removes leftovers too.
        prefix = f"{user_prefix(user)}ingest/{job_id}/"
        files, sources = [], []
        if staged.zip_data is not None:
            key = prefix + "upload.zip"
            blobs.put(key, staged.zip_data, "application/zip")
            sources.append(blobs.uri(key))
        for i, (name, data) in enumerate(staged.files):
            key = f"{prefix}{i:06d}"
            blobs.put(key, data, "application/octet-stream")
            files.append({"name": name, "url": blobs.uri(key)})
        return self._job_spec(user, job_id, staged, files=files, sources=sources, prefix=prefix)

    def _job_spec(self, user: str, job_id: str, staged: _Staged, *, files, sources, prefix) -> JobSpec:
        return JobSpec(job_id=job_id, user_id=user, sources=sources, files=files,
                       storage=absolute_storage(self.storage).model_dump(), ingest=self.spec,
                       staged_prefix=prefix, fingerprint=staged.fingerprint, safety=self.safety,
                       on_duplicate=staged.on_duplicate,
                       **({"keys_uri": _absolute(self.keys[0]), "keys_table": self.keys[1]} if self.keys else {}))

    async def status(self, user: str, job_id: str) -> dict:
        status = await self.ledger().status(job_id, user) if _JOB_ID.match(job_id) else None
        if status is None:
            raise NotFound("no such ingestion job", code="job_not_found")
        return public(status)

    async def errors(self, user: str, job_id: str, offset: int, limit: int) -> dict:
        page = await self.ledger().errors(job_id, user, offset, limit) if _JOB_ID.match(job_id) else None
        if page is None:
            raise NotFound("no such ingestion job", code="job_not_found")
        return page

    async def list(self, user: str) -> list[dict]:
        """The user's jobs, newest first, without their error lists."""
        return [public({k: j[k] for k in PROGRESS_FIELDS}) for j in await self.ledger().list(user)]

    async def cancel(self, user: str, job_id: str) -> dict:
        """A queued job at once, a running one after its current commit (what was written stays)."""
        status = await self.ledger().cancel(job_id, user) if _JOB_ID.match(job_id) else None
        if status is None:
            raise NotFound("no such ingestion job", code="job_not_found")
        return public(status)

    async def undo(self, user: str, job_id: str, delete_import) -> dict:
        """Delete every photo a finished job stored (`delete_import(user, job_id)` -> how many, the library's)
        and mark it `undone`. A queued or running job is refused: cancel it first, or wait for its end."""
        status = await self.status(user, job_id)
        if status["state"] in ACTIVE:
            raise Conflict(f"the job is {status['state']}: cancel it (DELETE /api/init/upload/{job_id}) or wait "
                           "for its end, then undo it", code="job_active")
        removed = await delete_import(user, job_id)
        status = await self.ledger().undone(job_id, user, removed)
        if status is None:  # deleted meanwhile (DELETE /api/me)
            raise NotFound("no such ingestion job", code="job_not_found")
        return {"job_id": job_id, "removed": removed, "status": public(status)}

    async def events(self, user: str, job_id: str, disconnected, after: int | None = None) -> AsyncIterator[dict]:
        """One `progress` event per change of the job's counters or state (the ledger logs each one,
        so none is lost between two reads of the stream), then one `done` (SSE events as dicts).

        Each `progress` event's `id` is its place in the job's log (0, 1, ...): a client that reconnects
        with `Last-Event-ID: n` (`after=n`) gets the events after the n-th, not the whole log again. `done`
        has no id, so a reconnect after it gets `done` again."""
        await self.status(user, job_id)  # 404 before the stream starts
        ledger, poll = self.ledger(), self.spec.poll_s

        async def stream():
            seen = 0 if after is None else after + 1
            while True:
                got = await ledger.progress(job_id, user, seen)
                if got is None:  # deleted meanwhile (DELETE /api/me)
                    yield {"event": "done", "data": json.dumps({"job_id": job_id, "state": "deleted"})}
                    return
                first = got["next"] - len(got["events"])  # the place of the first entry in the job's log
                for i, entry in enumerate(got["events"]):
                    yield {"event": "progress", "id": str(first + i), "data": json.dumps(public(entry))}
                seen = got["next"]
                if got["status"]["state"] not in ACTIVE:
                    yield {"event": "done", "data": json.dumps(public(got["status"]))}
                    return
                if await disconnected():
                    return
                await asyncio.sleep(poll)

        return stream()

    async def forget_user(self, user: str) -> None:
        """DELETE /api/me: stop the user's jobs, wait until their drivers have let go, forget them.

        Called before the gallery rows are deleted, so no job writes a row after that.
        """
        ledger = self.ledger()
        active = [j["job_id"] for j in await ledger.list(user) if j["state"] in ACTIVE]
        for job_id in active:
            await ledger.cancel(job_id, user)
        # A driver stops after its current commit; a silent one is declared over after stale_after_s.
        deadline = time.monotonic() + self.spec.stale_after_s + 1
        while active and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            active = [j["job_id"] for j in await ledger.list(user) if j["state"] in ACTIVE]
        await ledger.within(PURGE_S).forget_user(user)


def _read_upload(uploads: list[UploadPart], ingest: IngestSpec) -> _Staged:
    """Read the parts (in a worker thread), refuse what breaks the limits, fingerprint the rest."""
    if len(uploads) > ingest.max_files:
        raise PayloadTooLarge(f"the upload holds {len(uploads)} files; the limit is {ingest.max_files}",
                              code="too_many_files", field="files")
    parts, total = [], 0
    for i, upload in enumerate(uploads):
        data = upload.file.read()
        total += len(data)
        if total > ingest.max_upload_bytes:
            raise PayloadTooLarge(f"the upload is over the limit of {ingest.max_upload_bytes} bytes: split it",
                                  code="upload_too_large", field="files")
        # The name as the job keeps it (its spec, its error entries): cut to the ledger's bound.
        parts.append((cut(upload.filename, NAME_CHARS) if upload.filename else f"file-{i + 1}", data))
    if len(parts) == 1 and parts[0][1][:4] in _ZIP_MAGIC:
        data = parts[0][1]
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                members = check_zip(archive, ingest.zip)
        except zipfile.BadZipFile:
            raise InvalidInput("the .zip cannot be read (damaged or not a zip): re-create it", code="bad_zip",
                               field="files") from None
        if len(members) > ingest.max_files:
            raise PayloadTooLarge(f"the zip holds {len(members)} files; the limit is {ingest.max_files}",
                                  code="too_many_files", field="files")
        return _Staged("zip:" + hashlib.sha256(data).hexdigest(), data, [])
    # A zip among several files is not opened: the job lists it as an error entry (not an image).
    manifest = sorted((name, hashlib.sha256(data).hexdigest()) for name, data in parts)
    return _Staged("files:" + hashlib.sha256(json.dumps(manifest).encode()).hexdigest(), None, parts)


def _absolute(uri: str) -> str:
    """A local folder made absolute (a job's driver may run in another folder); an object-store URI as it is."""
    return uri if "://" in uri else str(Path(uri).resolve())
