"""Bulk ingestion endpoints of shared/API.md (/api/init/upload: start, status, SSE events, cancel), an Ingress mixin.

An upload is checked (sizes, file count, zip bombs) and staged in the blob store under the user's
prefix, then a Ray Data job (pipelines.ingest) runs it. Status comes from the cluster's job ledger,
so any replica answers for any job.
"""

# No `from __future__ import annotations`: Serve pickles the route methods by value, and FastAPI must
# resolve their annotations (Request, headers) at runtime, not from strings (as in ingress.py).

import asyncio
import hashlib
import io
import json
import logging
import re
import zipfile

from fastapi import Header, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException

from storage.errors import InvalidInput, NotFound, PayloadTooLarge, Unavailable

from .http import app

log = logging.getLogger("atelier.ingest_api")
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_MULTIPART_SLACK = 1024 * 1024  # part headers and boundaries on top of the files themselves
_PROGRESS_FIELDS = ("job_id", "state", "total", "done", "skipped_duplicates", "failed", "started_at", "finished_at")


class _Staged:
    """An upload read and fingerprinted, not yet written anywhere."""

    def __init__(self, fingerprint: str, zip_data: bytes | None, files: list[tuple[str, bytes]]):
        self.fingerprint, self.zip_data, self.files = fingerprint, zip_data, files


class IngestRoutes:
    """POST/GET/DELETE /api/init/upload[/{job_id}[/events]] on the shared app."""

    def ingest_body_limits(self) -> dict[str, int]:
        """The upload route's body limit, for the ingress's streaming body check."""
        ingest = self.spec.ingest
        return {} if ingest is None else {"/api/init/upload": ingest.max_upload_bytes + _MULTIPART_SLACK}

    async def forget_ingest_jobs(self, user: str) -> None:
        """DELETE /api/me: stop the caller's jobs, wait until their drivers have let go, forget them.

        Called before the gallery rows are deleted, so no job writes a row after that.
        """
        import time

        ledger = self._ledger()
        active = [j["job_id"] for j in await ledger.list.remote(user) if j["state"] in ("queued", "running")]
        for job_id in active:
            await ledger.cancel.remote(job_id, user)
        # A driver stops after its current commit; a silent one is declared over after stale_after_s.
        deadline = time.monotonic() + (self.spec.ingest.stale_after_s + 1 if self.spec.ingest else 0)
        while active and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            active = [j["job_id"] for j in await ledger.list.remote(user) if j["state"] in ("queued", "running")]
        await ledger.forget_user.remote(user)

    def _ingest(self):
        if self.spec.ingest is None:
            raise Unavailable("bulk ingestion is not configured on this service", code="ingest_unavailable")
        return self.spec.ingest

    def _ledger(self):
        from pipelines.jobs import ledger

        if getattr(self, "_job_ledger", None) is None:
            self._job_ledger = ledger()
        return self._job_ledger

    async def _job_status(self, user: str, job_id: str) -> dict:
        status = await self._ledger().status.remote(job_id, user) if _JOB_ID.match(job_id) else None
        if status is None:
            raise NotFound("no such ingestion job", code="job_not_found")
        return status

    @app.post("/api/init/upload", status_code=202)
    async def init_upload(self, request: Request, idempotency_key: str | None = Header(None, max_length=200)):
        """Several `files`, or one .zip (as `file` or `files`) -> 202 {job_id, state, ...}."""
        from pipelines.jobs import job_id_for

        user = self._user(request)
        ingest = self._ingest()
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise InvalidInput("send multipart form data: several images as `files`, or one .zip", field="files")
        try:
            form = await request.form(max_files=ingest.max_files, max_fields=8)
        except HTTPException as exc:
            raise InvalidInput(f"the upload could not be read ({exc.detail}); send at most {ingest.max_files} files",
                               field="files") from None
        try:
            uploads = [u for key in ("files", "file") for u in form.getlist(key) if not isinstance(u, str)]
            if not uploads:
                raise InvalidInput("no files in the upload: send images as `files`, or one .zip", field="files")
            staged = await asyncio.to_thread(_read_upload, uploads, ingest)
        finally:
            await form.close()
        basis = f"key:{idempotency_key}" if idempotency_key else staged.fingerprint
        job_id = job_id_for(user, basis)
        ledger = self._ledger()
        known = await ledger.status.remote(job_id, user)
        if known is None or known["state"] in ("failed", "cancelled"):
            spec = await asyncio.to_thread(self._stage, user, job_id, staged, ingest)
        else:  # the same upload again: nothing to stage, the ledger answers with the job it has
            spec = self._spec(user, job_id, staged, ingest, files=[], sources=[], prefix=None)
        opened = await ledger.open.remote(spec.model_dump(), False)
        if opened["action"] == "conflict":
            raise InvalidInput("this Idempotency-Key was used for another upload; use a new key",
                               code="idempotency_conflict", field="Idempotency-Key")
        if opened["action"] in ("created", "restarted"):
            from pipelines.jobs import submit

            try:
                await asyncio.to_thread(submit, spec, opened["submission"])
            except Exception as exc:  # noqa: BLE001 - the job is marked failed, the client may retry
                log.warning("ingestion job %s could not be submitted: %s", job_id, exc)
                await ledger.fail.remote(job_id, f"the job could not be started ({type(exc).__name__})")
                raise Unavailable("the ingestion job could not be started; retry shortly",
                                  code="ingest_unavailable") from None
        status = opened["status"]
        code = 200 if status["state"] == "succeeded" and opened["action"] == "exists" else 202
        return JSONResponse(status, status_code=code)

    def _stage(self, user: str, job_id: str, staged: _Staged, ingest):
        """Put the upload's bytes in the blob store, where the job's tasks (on any node) read them."""
        from storage.blobs import open_blob_store, user_prefix

        blobs = open_blob_store(self.storage_settings)
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
        return self._spec(user, job_id, staged, ingest, files=files, sources=sources, prefix=prefix)

    def _spec(self, user: str, job_id: str, staged: _Staged, ingest, *, files, sources, prefix):
        from pipelines.ingest import absolute_storage
        from pipelines.jobs import JobSpec

        return JobSpec(job_id=job_id, user_id=user, sources=sources, files=files,
                       storage=absolute_storage(self.storage_settings).model_dump(), ingest=ingest,
                       staged_prefix=prefix, fingerprint=staged.fingerprint)

    @app.get("/api/init/upload")
    async def list_uploads(self, request: Request):
        """The caller's ingestion jobs, newest first (without their error lists)."""
        user = self._user(request)
        jobs = await self._ledger().list.remote(user)
        return {"items": [{k: j[k] for k in _PROGRESS_FIELDS} for j in jobs]}

    @app.get("/api/init/upload/{job_id}")
    async def upload_status(self, request: Request, job_id: str):
        return await self._job_status(self._user(request), job_id)

    @app.get("/api/init/upload/{job_id}/events")
    async def upload_events(self, request: Request, job_id: str):
        """Server-Sent Events: `progress` at every change of the counters or state, then one `done`."""
        user = self._user(request)
        await self._job_status(user, job_id)  # 404 before the stream starts
        ledger, poll = self._ledger(), self._ingest().poll_s

        async def events():
            last = None
            while True:
                status = await ledger.status.remote(job_id, user)
                if status is None:  # deleted meanwhile (DELETE /api/me)
                    yield {"event": "done", "data": json.dumps({"job_id": job_id, "state": "deleted"})}
                    return
                progress = {k: status[k] for k in _PROGRESS_FIELDS}
                if progress != last:
                    last = progress
                    yield {"event": "progress", "data": json.dumps(progress)}
                if status["state"] in ("succeeded", "failed", "cancelled"):
                    yield {"event": "done", "data": json.dumps(status)}
                    return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(poll)

        return EventSourceResponse(events(), ping=15)

    @app.delete("/api/init/upload/{job_id}", status_code=202)
    async def cancel_upload(self, request: Request, job_id: str):
        """Cancel: a queued job at once, a running one after its current commit (what was written stays)."""
        user = self._user(request)
        status = await self._ledger().cancel.remote(job_id, user) if _JOB_ID.match(job_id) else None
        if status is None:
            raise NotFound("no such ingestion job", code="job_not_found")
        return JSONResponse(status, status_code=202)


def _read_upload(uploads, ingest) -> _Staged:
    """Read the parts (in a worker thread), refuse what breaks the limits, fingerprint the rest."""
    from pipelines.sources import check_zip

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
        parts.append((upload.filename or f"file-{i + 1}", data))
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
