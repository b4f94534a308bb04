"""The product API of API.md: health, stats, text, generation, the gallery, search and describe.

Thin routes: parse, call the ProductService, shape the answer.
"""

from __future__ import annotations

import base64
from typing import Literal

from fastapi import APIRouter, Depends, File, Form, Header, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from deployments.service import ProductService
from deployments.service.safety import SafetyFilter, unguarded
from pipelines.spec import OnDuplicate
from storage.errors import InvalidInput

from .deps import caller, current_request_id, image_url, record_out, service
from .edge import JsonRoute

# Every JSON body read as text only (edge.JsonRoute): a lone surrogate is a 400, never a 500.
router = APIRouter(route_class=JsonRoute)


class TextRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(..., min_length=1, max_length=4000)
    flag: Literal["prompt_enhancement", "description"] = "prompt_enhancement"


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(..., min_length=1, max_length=2000)
    size: str = "medium"
    seed: int | None = Field(None, ge=0, lt=2**63)
    steps: int | None = Field(None, ge=1, le=50)
    enhance: bool = True
    save_to_gallery: bool = True


class EditRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    caption: str = Field(..., max_length=2000, description="The user's own words about the image; \"\" clears them.")


class ResolveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keep: str | None = Field(None, min_length=1, max_length=64, description="The photo of the group to keep; the "
                             "rest go.")
    dismiss: bool = Field(False, description="Keep every photo and never propose this group again.")


class DescribeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    img_id: str = Field(..., min_length=1, max_length=64)
    instruction: str | None = Field(None, max_length=2000)


# -- health and operations --------------------------------------------------------------------------
@router.get("/healthz")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(svc: ProductService = Depends(service)):
    results = await svc.readiness()
    # A Guard whose policy fails open is not needed to answer (its checks are skipped and said so).
    not_ready = sorted(n for n, ok in results.items() if not ok and (n != "guard" or svc.ctx.guard.required))
    body = {"status": "ready" if not not_ready else "not_ready", "models": results, "not_ready": not_ready}
    return JSONResponse(body, status_code=200 if not not_ready else 503)


# Health answers HEAD too (load balancers and uptime probes send it); the schema lists the GETs only.
for _path, _probe in (("/healthz", healthz), ("/readyz", readyz)):
    router.add_api_route(_path, _probe, methods=["HEAD"], include_in_schema=False)


@router.get("/openapi.json", include_in_schema=False)
async def openapi_schema(request: Request, user: str = Depends(caller)):
    """The OpenAPI schema of every route, for API clients and generators; like every route, it needs a key."""
    return request.app.openapi()


@router.get("/api/stats")
async def stats(user: str = Depends(caller), svc: ProductService = Depends(service)):
    return {"operations": await svc.operation_stats(user)}


@router.get("/api/me/usage")
async def my_usage(user: str = Depends(caller), svc: ProductService = Depends(service)):
    """The caller's plan and each of its limits: quota, used, left, and seconds until it resets."""
    return await svc.usage(user)


@router.delete("/api/me", status_code=204)
async def delete_me(user: str = Depends(caller), svc: ProductService = Depends(service)):
    await svc.delete_user(user)
    return Response(status_code=204)


# -- text and images --------------------------------------------------------------------------------
@router.post("/api/text")
async def text(body: TextRequest, user: str = Depends(caller), svc: ProductService = Depends(service)):
    info = await svc.model_info("writer")
    if body.flag == "prompt_enhancement":
        out, degraded = await svc.texts.enhance(body.text, current_request_id(), user=user)
    else:
        out, degraded = await svc.texts.post_text(body.text, current_request_id())
    return {"text": out, "flag": body.flag, "degraded": degraded or unguarded(), "random_weights": info["random_weights"]}


@router.post("/api/generate/image")
async def generate_image(request: Request, body: GenerateRequest,
                         idempotency_key: str | None = Header(None, max_length=200),
                         user: str = Depends(caller), svc: ProductService = Depends(service)):
    size = await svc.generation.check(body.text, body.size, body.steps, body.seed)

    async def work() -> dict:
        [g] = await svc.generation.paint(user, body.text, size=size, steps=body.steps, seed=body.seed, enhance=body.enhance,
                              keep=body.save_to_gallery, request_id=current_request_id())
        p = g.painted
        return {
            "image_url": (image_url(request, user, g.row["img_id"]) if g.row is not None
                          else "data:image/png;base64," + base64.b64encode(p["png"]).decode()),
            "img_id": g.row["img_id"] if g.row is not None else None,
            "generation_time": p["timings"]["total_s"], "size": p["size"],
            "prompt": {"original": g.original, "used": g.used}, "seed": p["seed"],
            "degraded": g.degraded or unguarded(), "safety": g.safety,
            "random_weights": bool(p["random_weights"] or (body.enhance and await svc.generation.writer_random())),
        }

    answer = await svc.idempotent(user, idempotency_key, body.model_dump_json(), work)
    if answer.get("img_id"):  # a replayed answer's link to the kept image is signed again: it may be a day old
        answer = {**answer, "image_url": image_url(request, user, answer["img_id"])}
    return answer


# -- gallery ----------------------------------------------------------------------------------------
@router.post("/api/images", status_code=201)
async def upload_image(request: Request, file: UploadFile = File(...), caption: str | None = Form(None),
                       on_duplicate: OnDuplicate = Form("store"),
                       user: str = Depends(caller), svc: ProductService = Depends(service)):
    """One photo -> 201 and its record (200 and the stored one for the same bytes again). `near_duplicates`: the
    caller's photos it is the same picture or a near shot of; with `on_duplicate=skip` such a photo is not kept
    (200 and the closest one's record); `on_duplicate=ignore` does not compare (`near_duplicates` null)."""
    if caption is not None and len(caption) > 2000:
        raise InvalidInput("caption has more than 2000 characters", field="caption")
    row, created, caption_change, near = await svc.photos.keep_upload(
        user, await file.read(), filename=file.filename, content_type=file.content_type, caption=caption,
        on_duplicate=on_duplicate)
    out = record_out(request, user, row)
    if caption_change is not None:  # the same bytes again, with a caption: what became of it (API.md)
        out["caption_change"] = caption_change
    out["near_duplicates"] = near
    return JSONResponse(out, status_code=201 if created else 200)


@router.get("/api/images")
async def list_images(request: Request, limit: int = Query(20, ge=1, le=100),
                      cursor: str | None = Query(None, max_length=500), safety: SafetyFilter = Query("any"),
                      user: str = Depends(caller), svc: ProductService = Depends(service)):
    rows, next_cursor = await svc.photos.list_images(user, limit, cursor, safety)
    return {"items": [record_out(request, user, r) for r in rows], "next_cursor": next_cursor}


@router.get("/api/duplicates")
async def list_duplicates(request: Request, limit: int = Query(20, ge=1, le=100),
                          cursor: str | None = Query(None, max_length=20), user: str = Depends(caller),
                          svc: ProductService = Depends(service)):
    """The caller's groups of near-duplicate photos (the pairs their uploads' checks found), largest first, each
    with its photos oldest first, the pairs and their reasons, and a suggested keeper and why."""
    if cursor is not None and not cursor.isdigit():
        raise InvalidInput("cursor is not one this route gave", code="invalid_cursor", field="cursor")
    start = int(cursor or 0)
    found = await svc.photos.duplicates(user)
    page = found[start:start + limit]
    return {"groups": [{**g, "members": [record_out(request, user, r) for r in g["members"]]} for g in page],
            "next_cursor": str(start + limit) if start + limit < len(found) else None}


@router.post("/api/duplicates/{group}/resolve")
async def resolve_duplicates(group: str, body: ResolveRequest, user: str = Depends(caller),
                             svc: ProductService = Depends(service)):
    """Keep one photo of a group and delete the others (finally, as `DELETE /api/images/{img_id}` does), or
    dismiss the group: it is not proposed again (until it gains or loses a photo)."""
    if (body.keep is None) == (not body.dismiss):
        raise InvalidInput("send either keep (an img_id of the group) or dismiss: true", field="keep")
    return await svc.photos.resolve_duplicates(user, group, body.keep, dismiss=body.dismiss)


@router.get("/api/images/{img_id}")
async def get_image(request: Request, img_id: str, user: str = Depends(caller),
                    svc: ProductService = Depends(service)):
    return record_out(request, user, await svc.photos.get_image(user, img_id))


@router.patch("/api/images/{img_id}")
async def edit_image(request: Request, img_id: str, body: EditRequest, user: str = Depends(caller),
                     svc: ProductService = Depends(service)):
    """Edit the caller's own texts of one of their images: the caption (the model's texts are not the user's)."""
    return record_out(request, user, await svc.photos.edit(user, img_id, caption=body.caption))


@router.delete("/api/images/{img_id}", status_code=204)
async def delete_image(img_id: str, user: str = Depends(caller), svc: ProductService = Depends(service)):
    await svc.photos.delete_image(user, img_id)
    return Response(status_code=204)


@router.get("/api/images/{img_id}/file")
async def image_file(request: Request, img_id: str, sig: str | None = Query(None, max_length=2000),
                     original: bool = Query(False, description="the stored original (a generation's PNG, an upload "
                                                               "as sent) instead of the display copy"),
                     svc: ProductService = Depends(service)):
    """The display copy (or `original=true`: the original): with a valid signature (an <img> tag), or with
    the owner's key."""
    if sig is not None:
        user = request.app.state.edge.signer.verify(sig, img_id, await svc.photos.image_owner(img_id))
    else:
        user = caller(request)
    data, mime = await svc.photos.image_file(user, img_id, original=original)
    return Response(data, media_type=mime, headers={"Cache-Control": "private, max-age=300",
                                                    "X-Content-Type-Options": "nosniff"})


# -- search -----------------------------------------------------------------------------------------
def _check_k(request: Request, k: int) -> int:
    most = request.app.state.edge.max_search_k
    if not 1 <= k <= most:
        raise InvalidInput(f"k={k} is out of range; use 1..{most}", field="k")
    return k


def _results(request: Request, user: str, hits: list[dict]) -> list[dict]:
    return [{"img_id": h["img_id"], "image_url": image_url(request, user, h["img_id"]),
             "score": float(h["score"]), "caption": h.get("caption") or "",
             "description": h.get("description") or "", "post_text": h.get("post_text") or "",
             "safety": (h.get("meta") or {}).get("safety")} for h in hits]


@router.get("/api/search")
async def search(request: Request, q: str = Query(..., min_length=1, max_length=1000), k: int = Query(10),
                 safety: SafetyFilter = Query("any"), user: str = Depends(caller),
                 svc: ProductService = Depends(service)):
    _check_k(request, k)
    if not q.strip():
        raise InvalidInput("q is blank; send some words to search for", field="q")
    found = await svc.search.text(user, q, k, current_request_id(), safety=safety,
                                  most=request.app.state.edge.max_search_k)
    return {"query": {"text": found.text, "embedded": found.embedded, "english": found.english},
            "results": _results(request, user, found.hits), "degraded": found.degraded}


@router.post("/api/search/by-image")
async def search_by_image(request: Request, file: UploadFile = File(...), k: int = Form(10),
                          safety: SafetyFilter = Form("any"), user: str = Depends(caller),
                          svc: ProductService = Depends(service)):
    _check_k(request, k)
    found = await svc.search.by_image(user, await file.read(), k, filename=file.filename,
                                      content_type=file.content_type, safety=safety,
                                      most=request.app.state.edge.max_search_k)
    return {"query": {"text": None, "embedded": None, "english": None}, "results": _results(request, user, found.hits)}


# -- describe ---------------------------------------------------------------------------------------
@router.post("/api/describe")
async def describe(request: Request, user: str = Depends(caller), svc: ProductService = Depends(service)):
    """multipart `file`, or JSON {"img_id"}: the vision model's description and a Chinese post text."""
    img_id = instruction = None
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=4)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise InvalidInput("send the image as the multipart field `file`", field="file")
        instruction = form.get("instruction") if isinstance(form.get("instruction"), str) else None
        image = await svc.photos.decode_image(await upload.read(), filename=upload.filename,
                                       content_type=upload.content_type)
    else:
        try:
            body = DescribeRequest.model_validate(await request.json() if await request.body() else None)
        except (ValueError, TypeError) as exc:
            raise InvalidInput('send multipart `file` or JSON {"img_id": "..."}', field="img_id") from exc
        img_id, instruction = body.img_id, body.instruction
        image = await svc.photos.gallery_image(user, img_id)
    out = await svc.conversation.describe(user, image, img_id=img_id, instruction=instruction, request_id=current_request_id())
    return {"description": out.description, "caption_zh": out.post_text, "img_id": out.img_id,
            "degraded": out.degraded or unguarded(), "random_weights": out.random_weights}
