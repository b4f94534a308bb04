"""The ingress: the product's HTTP API (shared/API.md), composing the model deployments and storage."""

# No `from __future__ import annotations`: Serve pickles the route methods by value, and FastAPI must
# resolve their annotations (Request, bodies) at runtime, not from strings.


import asyncio
import base64
import hashlib
import json
import logging
import re
from typing import Any, Literal

import numpy as np
from fastapi import File, Form, Header, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from storage.errors import InvalidInput, Unavailable

from .auth import KeyRing, UrlSigner, load_secret
from .cache import AnswerCache
from .config import IngressSpec
from .http import RequestTimeout, app, current_request_id, set_body_limits, settle
from .ingest_api import IngestRoutes
from .openai_api import OpenAIRoutes
from .settings import ServiceSettings
from .state import IDEMPOTENCY_ACTOR, STATS_ACTOR, IdempotencyLedger, StatsLedger, named

log = logging.getLogger("atelier.ingress")
_LATIN = re.compile(r"^[\x00-\x7F\u00C0-\u024F\u2018-\u201F]*$")


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


class DescribeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    img_id: str = Field(..., min_length=1, max_length=64)
    instruction: str | None = Field(None, max_length=2000)


def is_english(text: str) -> bool:
    """Latin-script text goes to CLIP as it is; anything else is translated by the Writer first."""
    return bool(_LATIN.match(text))


@serve.deployment(name="Ingress")
@serve.ingress(app)
class Ingress(IngestRoutes, OpenAIRoutes):
    def __init__(self, embedder: DeploymentHandle, writer: DeploymentHandle, describer: DeploymentHandle,
                 painter: DeploymentHandle, spec: dict, storage: dict | None = None):
        from storage.settings import StorageSettings

        self.spec = IngressSpec.model_validate(spec)
        self.embedder, self.writer, self.describer, self.painter = embedder, writer, describer, painter
        self.models = {"embedder": embedder, "writer": writer, "describer": describer, "painter": painter}
        settings = ServiceSettings()
        self.keys = KeyRing.load(settings.keys_file)
        secret = load_secret(settings.url_secret.get_secret_value() if settings.url_secret else None,
                             settings.url_secret_file)
        self.signer = UrlSigner(secret, self.spec.signed_url_ttl_s)
        self.storage_settings = StorageSettings(**(storage or {}))
        self.stats = named(StatsLedger, STATS_ACTOR)
        self.idempotency = named(IdempotencyLedger, IDEMPOTENCY_ACTOR)
        self._info: dict[str, dict] = {}
        self._library = None
        self._library_lock = asyncio.Lock()
        caches = self.spec.caches
        self.cache = AnswerCache(lru_size=caches.lru_size, ttl_s=caches.ttl_s, redis_url=caches.redis_url)
        upload = self.storage_settings.max_upload_bytes + 256 * 1024  # multipart framing on top of the file
        set_body_limits({"/api/images": upload, "/api/search/by-image": upload, "/api/describe": upload,
                         "/v1/chat/completions": 4 * upload, **self.ingest_body_limits()}, default=1 << 20)

    # -- plumbing ---------------------------------------------------------------------------------
    def _user(self, request: Request) -> str:
        return self.keys.user_for(request.headers.get("authorization"))

    async def _model_info(self, role: str) -> dict:
        if role not in self._info:
            self._info[role] = await settle(self.models[role].info.remote())
        return self._info[role]

    async def library(self):
        """Storage composed for this replica, opened once the embedder's dimension is known."""
        if self._library is None:
            async with self._library_lock:  # one Library per replica, however many first requests race
                if self._library is None:
                    from .library import Library

                    info = await self._model_info("embedder")
                    dim = await settle(self.embedder.dim.remote())
                    # Opening warms the gallery (indexes, jieba's dictionary): off the event loop.
                    self._library = await asyncio.to_thread(Library, self.storage_settings, dim=dim,
                                                            embed_model=info["model_id"])
        return self._library

    def _url(self, request: Request, user_id: str, img_id: str) -> str:
        token = self.signer.sign(user_id, img_id)
        root = request.scope.get("root_path", "")
        return f"{root}/api/images/{img_id}/file?sig={token}"

    def _record_out(self, request: Request, user_id: str, row: dict) -> dict:
        out = {k: row.get(k) for k in ("img_id", "width", "height", "content_hash", "caption", "description",
                                       "source")}
        created = row.get("created_at")
        out["created_at"] = created.isoformat() if hasattr(created, "isoformat") else created
        out["image_url"] = self._url(request, user_id, row["img_id"])
        return out

    async def _deadline(self, coro, seconds: float, what: str):
        try:
            return await asyncio.wait_for(coro, timeout=seconds)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"{what} took longer than {seconds:g} s") from None

    async def _english(self, text: str) -> tuple[str, bool]:
        """Search text as CLIP should see it: (english, degraded). A failing Writer degrades, never fails."""
        if is_english(text) or not self.spec.enhance_search:
            return text, False
        try:
            return await self._cached("translate", text, lambda: settle(self.writer.to_english.remote(text)),
                                      timeout=self.spec.timeouts.writer_s), False
        except InvalidInput:
            raise
        except Exception as exc:  # noqa: BLE001 - any Writer trouble means: search with the original text
            log.warning("request %s: writer unavailable for search (%s); using the original text", current_request_id(), exc)
            return text, True

    async def _enhanced(self, text: str, seed: int | None) -> tuple[str, bool]:
        try:
            used = await self._cached("enhance", text, lambda: settle(self.writer.enhance_prompt.remote(text)),
                                      timeout=self.spec.timeouts.writer_s)
            return used, False
        except InvalidInput:
            raise
        except Exception as exc:  # noqa: BLE001 - the original text is the fallback
            log.warning("request %s: prompt enhancement failed (%s); painting the original", current_request_id(), exc)
            return text, True

    async def _cached(self, kind: str, text: str, compute, *, timeout: float):
        """Model answers to text through the two-level cache, keyed by model id + input."""
        info = await self._model_info("writer" if kind in ("enhance", "translate") else "embedder")
        return await self.cache.get_or_compute(AnswerCache.key(kind, info["model_id"], text),
                                               lambda: asyncio.wait_for(compute(), timeout=timeout))

    async def _text_vector(self, text: str) -> np.ndarray:
        return await self._cached("embed_text", text, lambda: settle(self.embedder.embed_text.remote(text)),
                                  timeout=self.spec.timeouts.search_s)

    # -- health and operations ----------------------------------------------------------------------
    @app.get("/healthz")
    async def healthz(self):
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(self):
        async def probe(name, handle):
            try:
                await asyncio.wait_for(handle.ready.remote(), timeout=2.0)
                return name, True
            except Exception:  # noqa: BLE001 - any failure means not ready
                return name, False

        results = dict(await asyncio.gather(*(probe(n, h) for n, h in self.models.items())))
        not_ready = sorted(n for n, ok in results.items() if not ok)
        body = {"status": "ready" if not not_ready else "not_ready", "models": results, "not_ready": not_ready}
        return JSONResponse(body, status_code=200 if not not_ready else 503)

    @app.get("/api/stats")
    async def stats(self, request: Request):
        self._user(request)
        return {"operations": await self.stats.summary.remote()}

    @app.delete("/api/me", status_code=204)
    async def delete_me(self, request: Request):
        user = self._user(request)
        await self.forget_ingest_jobs(user)
        lib = await self.library()
        await lib.delete_user(user)
        await self.idempotency.forget_user.remote(user)
        return Response(status_code=204)

    # -- text and images ------------------------------------------------------------------------------
    @app.post("/api/text")
    async def text(self, request: Request, body: TextRequest):
        self._user(request)
        info = await self._model_info("writer")
        if body.flag == "prompt_enhancement":
            out, degraded = await self._enhanced(body.text, None)
        else:
            try:
                out, degraded = await asyncio.wait_for(settle(self.writer.post_text.remote(body.text)),
                                                       timeout=self.spec.timeouts.writer_s), False
            except InvalidInput:
                raise
            except Exception as exc:  # noqa: BLE001 - the text itself is the fallback, flagged degraded
                log.warning("request %s: post text failed (%s)", current_request_id(), exc)
                out, degraded = body.text, True
        return {"text": out, "flag": body.flag, "degraded": degraded, "random_weights": info["random_weights"]}

    @app.post("/api/generate/image")
    async def generate_image(self, request: Request, body: GenerateRequest,
                             idempotency_key: str | None = Header(None, max_length=200)):
        user = self._user(request)
        # Bad sizes and steps are refused before the Writer or the Painter does any work.
        size = await settle(self.painter.check.remote(body.text, body.size, body.steps, None, body.seed))
        if idempotency_key:
            fingerprint = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
            state = await self.idempotency.begin.remote(user, idempotency_key, fingerprint)
            if state["state"] == "done":
                return state["answer"]
            if state["state"] == "conflict":
                raise InvalidInput("this Idempotency-Key was used with a different request body", code="idempotency_conflict")
            if state["state"] == "running":
                raise Unavailable("the same request is still running; retry shortly", code="in_progress", retry_after=2)
        answer = None
        try:
            answer = await self._deadline(self._generate(request, user, body, size), self.spec.timeouts.generate_s,
                                          "image generation")
            return answer
        finally:
            if idempotency_key:
                await self.idempotency.finish.remote(user, idempotency_key, fingerprint, answer)

    async def _generate(self, request: Request, user: str, body: GenerateRequest, size: str) -> dict:
        used, degraded = (await self._enhanced(body.text, body.seed)) if body.enhance else (body.text, False)
        painted = await settle(self.painter.paint.remote(used, size=size, steps=body.steps, seed=body.seed))
        writer_info = await self._model_info("writer")
        answer: dict[str, Any] = {
            "image_url": None, "img_id": None, "generation_time": painted["timings"]["total_s"],
            "size": painted["size"], "prompt": {"original": body.text, "used": used}, "seed": painted["seed"],
            "degraded": degraded,
            "random_weights": bool(painted["random_weights"] or (body.enhance and writer_info["random_weights"])),
        }
        if body.save_to_gallery:
            lib = await self.library()
            image = await lib.admit(painted["png"], content_type="image/png")
            vector = await settle(self.embedder.embed_image.remote(image.model_image))
            row, _ = await lib.store(user, image, source="generated", vector=vector, caption=body.text,
                                     meta={"prompt_original": body.text, "prompt_used": used, "seed": painted["seed"],
                                           "size": painted["size"], "model": painted["model_id"],
                                           "steps": painted["steps"]})
            answer["img_id"] = row["img_id"]
            answer["image_url"] = self._url(request, user, row["img_id"])
        else:
            answer["image_url"] = "data:image/png;base64," + base64.b64encode(painted["png"]).decode()
        return answer

    # -- gallery ----------------------------------------------------------------------------------------
    async def _read_upload(self, file: UploadFile) -> bytes:
        return await file.read()

    @app.post("/api/images", status_code=201)
    async def upload_image(self, request: Request, file: UploadFile = File(...), caption: str | None = Form(None)):
        user = self._user(request)
        if caption is not None and len(caption) > 2000:
            raise InvalidInput("caption has more than 2000 characters", field="caption")
        lib = await self.library()
        data = await self._read_upload(file)
        image = await lib.admit(data, filename=file.filename, content_type=file.content_type)
        existing = await lib.find(user, image.content_hash)
        if existing is not None:
            return JSONResponse(self._record_out(request, user, existing), status_code=200)
        vector = await settle(self.embedder.embed_image.remote(image.model_image))
        row, created = await lib.store(user, image, source="upload", vector=vector, caption=caption)
        return JSONResponse(self._record_out(request, user, row), status_code=201 if created else 200)

    @app.get("/api/images")
    async def list_images(self, request: Request, limit: int = Query(20, ge=1, le=100),
                          cursor: str | None = Query(None, max_length=500)):
        user = self._user(request)
        lib = await self.library()
        rows, next_cursor = await lib.list(user, limit, cursor)
        return {"items": [self._record_out(request, user, r) for r in rows], "next_cursor": next_cursor}

    @app.get("/api/images/{img_id}")
    async def get_image(self, request: Request, img_id: str):
        user = self._user(request)
        lib = await self.library()
        return self._record_out(request, user, await lib.get(user, img_id))

    @app.delete("/api/images/{img_id}", status_code=204)
    async def delete_image(self, request: Request, img_id: str):
        user = self._user(request)
        lib = await self.library()
        await lib.delete(user, img_id)
        return Response(status_code=204)

    @app.get("/api/images/{img_id}/file")
    async def image_file(self, request: Request, img_id: str, sig: str | None = Query(None, max_length=2000)):
        """The display copy: with a valid signature (an <img> tag), or with the owner's key."""
        if sig is not None:
            user = self.signer.verify(sig, img_id)
        else:
            user = self._user(request)
        lib = await self.library()
        data, mime = await lib.display(user, img_id)
        return Response(data, media_type=mime, headers={"Cache-Control": "private, max-age=300",
                                                        "X-Content-Type-Options": "nosniff"})

    # -- search -----------------------------------------------------------------------------------------
    def _check_k(self, k: int) -> int:
        if not 1 <= k <= self.spec.max_search_k:
            raise InvalidInput(f"k={k} is out of range; use 1..{self.spec.max_search_k}", field="k")
        return k

    async def _results(self, request: Request, user: str, hits: list[dict]) -> list[dict]:
        return [{"img_id": h["img_id"], "image_url": self._url(request, user, h["img_id"]),
                 "score": float(h["score"]), "caption": h.get("caption") or "",
                 "description": h.get("description") or ""} for h in hits]

    @app.get("/api/search")
    async def search(self, request: Request, q: str = Query(..., min_length=1, max_length=1000),
                     k: int = Query(10)):
        user = self._user(request)
        self._check_k(k)
        if not q.strip():
            raise InvalidInput("q is blank; send some words to search for", field="q")

        async def run():
            english, degraded = await self._english(q)
            vector = await self._text_vector(english)
            lib = await self.library()
            hits = await lib.search(user, vector, k, text=q)
            return {"query": {"text": q, "english": english}, "results": await self._results(request, user, hits),
                    "degraded": degraded}

        return await self._deadline(run(), self.spec.timeouts.search_s, "search")

    @app.post("/api/search/by-image")
    async def search_by_image(self, request: Request, file: UploadFile = File(...), k: int = Form(10)):
        user = self._user(request)
        self._check_k(k)
        lib = await self.library()
        decoded = await lib.decode(await self._read_upload(file), filename=file.filename,
                                   content_type=file.content_type)
        vector = await settle(self.embedder.embed_image.remote(decoded.model_image))
        hits = await lib.search(user, vector, k)
        return {"query": {"text": None, "english": None}, "results": await self._results(request, user, hits)}

    # -- describe ---------------------------------------------------------------------------------------
    @app.post("/api/describe")
    async def describe(self, request: Request):
        """multipart `file`, or JSON {"img_id"}: the vision model's description and a Chinese post text."""
        user = self._user(request)
        lib = await self.library()
        img_id = None
        instruction = None
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=4)
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise InvalidInput("send the image as the multipart field `file`", field="file")
            instruction = form.get("instruction") if isinstance(form.get("instruction"), str) else None
            decoded = await lib.decode(await upload.read(), filename=upload.filename,
                                       content_type=upload.content_type)
            image = decoded.model_image
        else:
            try:
                body = DescribeRequest.model_validate(json.loads(await request.body() or b"null"))
            except (ValueError, TypeError) as exc:
                raise InvalidInput('send multipart `file` or JSON {"img_id": "..."}', field="img_id") from exc
            img_id, instruction = body.img_id, body.instruction
            data, _ = await lib.display(user, img_id)
            image = (await lib.decode(data)).model_image

        async def run():
            described = self.describer.describe.remote(image, instruction)
            # Chained: Serve hands the description to the Writer directly, without a trip through here.
            post = self.writer.post_text.remote(described)
            try:
                description = await settle(described)
            except InvalidInput:
                post.cancel()
                raise
            except Exception as exc:  # noqa: BLE001 - a failing vision model is a 503 of this route only
                post.cancel()
                log.warning("request %s: describer failed (%s)", current_request_id(), exc)
                raise Unavailable("the vision model cannot answer right now; retry shortly",
                                  code="describer_unavailable", retry_after=self.spec.retry_after_s) from None
            degraded = False
            try:
                caption_zh = await asyncio.wait_for(settle(post), timeout=self.spec.timeouts.writer_s)
            except Exception as exc:  # noqa: BLE001 - the Writer's input came from us; the description still stands
                log.warning("request %s: post text failed (%s)", current_request_id(), exc)
                caption_zh, degraded = "", True
            return description, caption_zh, degraded

        description, caption_zh, degraded = await self._deadline(run(), self.spec.timeouts.describe_s,
                                                                 "describing the image")
        if img_id is not None:
            await lib.update(user, img_id, description=description, caption=caption_zh)
        info_d, info_w = await self._model_info("describer"), await self._model_info("writer")
        return {"description": description, "caption_zh": caption_zh, "img_id": img_id, "degraded": degraded,
                "random_weights": bool(info_d["random_weights"] or info_w["random_weights"])}
