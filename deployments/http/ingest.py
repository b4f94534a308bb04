"""Bulk ingestion endpoints of API.md: /api/init/upload (start, list, status, errors, SSE events, cancel).

Thin routes over the ProductService's ingest desk (`deployments.service.ingest`).
"""

from __future__ import annotations

import json
from typing import get_args

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException

from deployments.service import ProductService
from deployments.service.ingest import IngestDesk, UploadPart
from pipelines.spec import OnDuplicate
from storage.errors import InvalidInput, Unavailable

from .deps import caller, service
from .edge import JsonRoute
from .streams import REVOKED_MESSAGE, until_revoked

# Every JSON body read as text only (edge.JsonRoute): a lone surrogate is a 400, never a 500.
router = APIRouter(route_class=JsonRoute)


def _desk(svc: ProductService) -> IngestDesk:
    if svc.ingest is None:
        raise Unavailable("bulk ingestion is not configured on this service", code="ingest_unavailable")
    return svc.ingest


ON_DUPLICATE = get_args(OnDuplicate)


@router.post("/api/init/upload", status_code=202)
async def init_upload(request: Request, idempotency_key: str | None = Header(None, max_length=200),
                      user: str = Depends(caller), svc: ProductService = Depends(service)):
    """Several `files`, or one .zip (as `file` or `files`) -> 202 {job_id, state, ...}. `on_duplicate` (a form
    field: store, skip or ignore) is what the job does with a photo that has a near-duplicate, as for one upload."""
    desk = _desk(svc)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidInput("send multipart form data: several images as `files`, or one .zip", field="files")
    try:
        form = await request.form(max_files=desk.spec.max_files, max_fields=8)
    except HTTPException as exc:
        if exc.status_code == 413:  # the body streamed past its limit: the error map answers 413
            raise
        raise InvalidInput(f"the upload could not be read ({exc.detail}); send at most {desk.spec.max_files} files",
                           field="files") from None
    try:
        on_duplicate = form.get("on_duplicate") or "store"
        if on_duplicate not in ON_DUPLICATE:
            raise InvalidInput(f"on_duplicate must be one of {', '.join(ON_DUPLICATE)}", field="on_duplicate")
        uploads = [UploadPart(u.filename, u.file) for key in ("files", "file") for u in form.getlist(key)
                   if not isinstance(u, str)]
        status, fresh = await desk.start(user, uploads, idempotency_key, on_duplicate)
    finally:
        await form.close()
    return JSONResponse(status, status_code=202 if fresh else 200)


@router.get("/api/init/upload")
async def list_uploads(user: str = Depends(caller), svc: ProductService = Depends(service)):
    """The caller's ingestion jobs, newest first (without their error lists)."""
    return {"items": await _desk(svc).list(user)}


@router.get("/api/init/upload/{job_id}")
async def upload_status(job_id: str, user: str = Depends(caller), svc: ProductService = Depends(service)):
    return await _desk(svc).status(user, job_id)


@router.get("/api/init/upload/{job_id}/errors")
async def upload_errors(job_id: str, offset: int = Query(0, ge=0, le=1_000_000),
                        limit: int = Query(100, ge=1, le=1000), user: str = Depends(caller),
                        svc: ProductService = Depends(service)):
    """Every error entry of the job's current attempt, `limit` at a time from `offset` (a status shows the
    first 100 and `errors_total`): {items: [{name, code, message}], total, next_offset (null at the end)}."""
    return await _desk(svc).errors(user, job_id, offset, limit)


@router.get("/api/init/upload/{job_id}/events")
async def upload_events(request: Request, job_id: str, user: str = Depends(caller),
                        svc: ProductService = Depends(service),
                        last_event_id: str | None = Header(None, alias="Last-Event-ID", max_length=20)):
    """Server-Sent Events: `progress` at every change of the counters or state (its `id` the event's place in
    the job's log), then one `done`. A client reconnecting with `Last-Event-ID` resumes after that event."""
    after = None
    if last_event_id is not None:
        if not last_event_id.isdigit():
            raise InvalidInput("Last-Event-ID is the id of a progress event this stream sent (0, 1, ...)",
                               code="invalid_header", field="Last-Event-ID")
        after = int(last_event_id)
    events = await _desk(svc).events(user, job_id, request.is_disconnected, after)
    return EventSourceResponse(until_revoked(request, events, _revoked_event), ping=15)


def _revoked_event() -> dict:
    return {"event": "error", "data": json.dumps({"error": {"code": "key_revoked", "message": REVOKED_MESSAGE}})}


@router.delete("/api/init/upload/{job_id}", status_code=202)
async def cancel_upload(job_id: str, user: str = Depends(caller), svc: ProductService = Depends(service)):
    """Cancel: a queued job at once, a running one after its current commit (what was written stays)."""
    return JSONResponse(await _desk(svc).cancel(user, job_id), status_code=202)


@router.delete("/api/init/upload/{job_id}/rows")
async def undo_upload(job_id: str, user: str = Depends(caller), svc: ProductService = Depends(service)):
    """Undo a finished job: every photo it stored is deleted (rows, vectors, blobs; the same final deletion as
    DELETE /api/images/{img_id}), nothing else of the caller's, and the job becomes `undone` (the same upload
    again runs it anew) -> {job_id, removed, status}. A queued or running job is 409 `job_active`."""
    _desk(svc)
    return await svc.undo_import(user, job_id)
