"""The OpenAI-compatible surface of shared/API.md: /v1/models, embeddings, image generation and chat.

A mixin of the Ingress: its routes sit on the shared app and use the Ingress's handles, auth, signer
and storage, so the official `openai` client reaches the same four models as the product API.
"""

# No `from __future__ import annotations`: Serve pickles the route methods by value, and FastAPI must
# resolve their annotations (Request, bodies) at runtime, not from strings (as in ingress.py).

import asyncio
import base64
import binascii
import json
import logging
import re
import time
from typing import Annotated, Any, AsyncIterator, Literal
from urllib.parse import parse_qs, urlsplit

import numpy as np
from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse

from storage.errors import AtelierError, InvalidInput, NotFound, PayloadTooLarge, Unavailable

from .http import app, current_request_id, settle

log = logging.getLogger("atelier.openai")

ROLES = ("embedder", "writer", "describer", "painter")
_STARTED = int(time.time())
_DATA_URI = re.compile(r"^data:(?P<mime>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<payload>.*)$", re.S)
_DATA_URI_TYPES = {"image/png": "image/png", "image/jpeg": "image/jpeg", "image/jpg": "image/jpeg",
                   "image/gif": "image/gif"}
_OWN_FILE = re.compile(r"^/api/images/(?P<img_id>[A-Za-z0-9_-]{1,64})/file$")
# Vision processors resize to a few hundred pixels; a bounded copy keeps the object sent to the
# Describer small whatever the client uploaded.
_VISION_SIDE = 1024


class _OpenAIBody(BaseModel):
    # OpenAI clients send fields we have no use for (user, metadata, penalties...); ignoring them keeps
    # those clients working unchanged. Fields we cannot honour are declared and refused explicitly.
    model_config = ConfigDict(extra="ignore", protected_namespaces=())


class EmbeddingsRequest(_OpenAIBody):
    model: str | None = None
    # Token-id arrays parse so that they can be refused with a message instead of a schema error.
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)


class ImagesRequest(_OpenAIBody):
    model: str | None = None
    prompt: str = Field(..., min_length=1, max_length=4000)
    n: int = Field(1, ge=1, le=4)
    size: str | None = Field(None, description="'WxH' or a preset name; 'auto' or nothing is the default size.")
    response_format: Literal["b64_json", "url"] = "url"
    # Extensions beyond OpenAI's fields (the client passes them through extra_body).
    seed: int | None = Field(None, ge=0, lt=2**63, description="Seed of the first image; image i uses seed + i.")
    steps: int | None = Field(None, ge=1, le=50)
    enhance: bool = Field(False, description="Let the Writer enrich the prompt first (as DALL-E 3 does).")


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImageUrl(BaseModel):
    url: str = Field(..., min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessageIn(_OpenAIBody):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content if isinstance(p, TextPart))


class StreamOptions(_OpenAIBody):
    include_usage: bool = False


class ChatRequest(_OpenAIBody):
    model: str | None = None
    messages: list[ChatMessageIn] = Field(..., min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, lt=2**63)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Declared only to be refused when used: silently ignoring them would change the answer's meaning.
    n: int = 1
    stop: str | list[str] | None = None
    tools: list[Any] | None = None
    logprobs: bool | None = None
    response_format: dict[str, Any] | None = None

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def refuse_unsupported(self) -> None:
        if self.n != 1:
            raise InvalidInput(f"n={self.n}: one choice per request is served; send n=1 or leave it out", field="n")
        if self.stop:
            raise InvalidInput("stop sequences are not supported; leave stop out", field="stop")
        if self.tools:
            raise InvalidInput("tool calling is not supported; leave tools out", field="tools")
        if self.logprobs:
            raise InvalidInput("logprobs are not supported; leave logprobs out", field="logprobs")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise InvalidInput("only response_format {\"type\": \"text\"} is supported", field="response_format")


class OpenAIRoutes:
    """Routes of the OpenAI surface. The Ingress supplies the four handles, `_user`, `_model_info`,
    `_deadline`, `_enhanced`, `_text_vector`, `signer`, `spec`, `storage_settings` and `library()`."""

    # -- models -----------------------------------------------------------------------------------
    @app.get("/v1/models")
    async def openai_models(self, request: Request):
        self._user(request)
        return {"object": "list", "data": [_model_card(await self._model_info(role)) for role in ROLES]}

    @app.get("/v1/models/{model:path}")
    async def openai_model(self, request: Request, model: str):
        self._user(request)
        return _model_card(await self._served_model(model, *ROLES))

    async def _served_model(self, requested: str | None, *roles: str) -> dict:
        """The info of the role a request's `model` names (its id or the role's name); None means the first role."""
        infos = [await self._model_info(role) for role in roles]
        if requested is None:
            return infos[0]
        for role, info in zip(roles, infos):
            if requested in (info["model_id"], role):
                return info
        names = ", ".join(repr(info["model_id"]) for info in infos)
        raise NotFound(f"model {requested!r} is not served here; use {names} or leave model out (GET /v1/models "
                       "lists them)", code="model_not_found", field="model")

    # -- embeddings -------------------------------------------------------------------------------
    @app.post("/v1/embeddings")
    async def openai_embeddings(self, request: Request, body: EmbeddingsRequest):
        self._user(request)
        info = await self._served_model(body.model, "embedder")
        texts = _embedding_texts(body.input)
        if body.dimensions is not None:
            dim = await settle(self.embedder.dim.remote())
            if body.dimensions != dim:
                raise InvalidInput(f"dimensions={body.dimensions}: this model's vectors have {dim}; leave it out or "
                                   f"send {dim}", field="dimensions")

        async def embed() -> tuple[list[int], np.ndarray]:
            # Counting first also refuses an oversized list before any forward pass.
            counts = await settle(self.embedder.count_tokens.remote(texts))
            if len(texts) == 1:  # batched with concurrent callers and cached, like a search text
                return counts, np.asarray([await self._text_vector(texts[0])])
            return counts, await settle(self.embedder.embed_texts.remote(texts))

        counts, vecs = await self._deadline(embed(), self.spec.timeouts.search_s, "embedding")
        data = [{"object": "embedding", "index": i, "embedding": _encode_vector(v, body.encoding_format)}
                for i, v in enumerate(vecs)]
        tokens = int(sum(counts))
        return {"object": "list", "data": data, "model": info["model_id"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}, "random_weights": info["random_weights"]}

    # -- images -----------------------------------------------------------------------------------
    @app.post("/v1/images/generations")
    async def openai_images(self, request: Request, body: ImagesRequest):
        user = self._user(request)
        await self._served_model(body.model, "painter")
        size = None if body.size in (None, "auto") else body.size
        # Bad sizes and steps are refused before the Writer or the Painter does any work.
        size = await settle(self.painter.check.remote(body.prompt, size, body.steps, None, body.seed))
        return await self._deadline(self._openai_paint(request, user, body, size), self.spec.timeouts.generate_s,
                                    "image generation")

    async def _openai_paint(self, request: Request, user: str, body: ImagesRequest, size: str) -> dict:
        used, degraded = (await self._enhanced(body.prompt, body.seed)) if body.enhance else (body.prompt, False)
        seeds = [None if body.seed is None else (body.seed + i) % 2**63 for i in range(body.n)]
        painted = await asyncio.gather(
            *(settle(self.painter.paint.remote(used, size=size, steps=body.steps, seed=seed)) for seed in seeds)
        )
        data = []
        for image in painted:
            item: dict[str, Any] = {"revised_prompt": used, "seed": image["seed"]}
            if body.response_format == "b64_json":
                item["b64_json"] = base64.b64encode(image["png"]).decode()
            else:
                item["url"] = await self._generated_url(request, user, body.prompt, used, image)
            data.append(item)
        writer_random = body.enhance and (await self._model_info("writer"))["random_weights"]
        return {"created": int(time.time()), "data": data, "size": painted[0]["size"], "degraded": degraded,
                "random_weights": bool(any(p["random_weights"] for p in painted) or writer_random)}

    async def _generated_url(self, request: Request, user: str, original: str, used: str, image: dict) -> str:
        """Store one painted image in the caller's gallery (embedded, with its prompts) and sign its URL."""
        lib = await self.library()
        admitted = await lib.admit(image["png"], content_type="image/png")
        vector = await settle(self.embedder.embed_image.remote(admitted.model_image))
        row, _ = await lib.store(user, admitted, source="generated", vector=vector, caption=original,
                                 meta={"prompt_original": original, "prompt_used": used, "seed": image["seed"],
                                       "size": image["size"], "model": image["model_id"], "steps": image["steps"]})
        # Absolute, as OpenAI's are: clients download `url` without knowing our base URL.
        return f"{request.url.scheme}://{request.url.netloc}{self._url(request, user, row['img_id'])}"

    # -- chat -------------------------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    async def openai_chat(self, request: Request, body: ChatRequest):
        user = self._user(request)
        body.refuse_unsupported()
        await self._served_model(body.model, "writer", "describer")
        images = []
        for i, m in enumerate(body.messages):
            for j, part in enumerate([] if isinstance(m.content, str) else m.content):
                if isinstance(part, ImagePart):
                    where = f"messages[{i}].content[{j}].image_url"
                    if m.role != "user":
                        raise InvalidInput("images are accepted in user messages only", field=where)
                    images.append((where, part.image_url.url))
        if images:
            return await self._vision_chat(request, user, body, images)
        return await self._text_chat(body)

    async def _text_chat(self, body: ChatRequest):
        info = await self._model_info("writer")
        # The Writer's chat template knows system/user/assistant; OpenAI's newer "developer" is its system.
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
        params = dict(max_new_tokens=body.max_new_tokens, temperature=body.temperature, top_p=body.top_p,
                      seed=body.seed)
        if not body.stream:
            result = await self._deadline(settle(self.writer.chat.remote(messages, **params)),
                                          self.spec.timeouts.chat_s, "the writer")
            return _completion(info, result.text, result.finish_reason, result.prompt_tokens, result.completion_tokens)
        deadline = time.monotonic() + self.spec.timeouts.chat_s
        pieces = self.writer.options(stream=True).chat_stream.remote(messages, **params)
        try:
            # The first piece is awaited before answering, so bad input is a JSON 4xx and not a broken stream.
            first = await self._deadline(settle(_next(pieces)), self.spec.timeouts.chat_s, "the writer")
        except BaseException:
            pieces.cancel()
            raise
        return _sse(self._writer_events(info, first, pieces, body.max_new_tokens, deadline))

    async def _writer_events(self, info: dict, first: str | None, pieces, max_new: int | None,
                             deadline: float) -> AsyncIterator[dict]:
        chunk = _Chunks(info)
        text = []
        try:
            yield chunk.delta({"role": "assistant", "content": ""})
            piece = first
            while piece is not None:
                text.append(piece)
                yield chunk.delta({"content": piece})
                piece = await asyncio.wait_for(settle(_next(pieces)), timeout=max(0.0, deadline - time.monotonic()))
            # Streams carry no token ids; re-tokenising the text tells whether the length limit ended it.
            produced = await settle(self.writer.count_tokens.remote("".join(text))) if text else 0
            yield chunk.delta({}, finish="length" if max_new is not None and produced >= max_new else "stop")
            yield {"data": "[DONE]"}
        except (asyncio.TimeoutError, TimeoutError):
            yield _error_event("timeout", "the writer took longer than its deadline")
        except AtelierError as exc:
            yield _error_event(getattr(exc, "code", "error"), getattr(exc, "message", str(exc)))
        except Exception:  # noqa: BLE001 - the status line is gone; the client still gets a JSON error
            log.exception("request %s: chat stream failed", current_request_id())
            yield _error_event("internal_error", f"an internal error occurred (request id {current_request_id()})")
        finally:
            pieces.cancel()

    async def _vision_chat(self, request: Request, user: str, body: ChatRequest, images: list[tuple[str, str]]):
        if len(images) > 1:
            raise InvalidInput(f"{len(images)} images were sent; the vision model reads one image per conversation",
                               field=images[1][0])
        where, url = images[0]
        image = await self._vision_image(request, user, url, where)
        # The question is the latest user text; the Describer sees only the image and that question.
        questions = [m.text().strip() for m in body.messages if m.role == "user" and m.text().strip()]
        info = await self._model_info("describer")

        async def ask():
            try:
                return await settle(self.describer.answer.remote(image, questions[-1] if questions else None,
                                                                 max_new_tokens=body.max_new_tokens, seed=body.seed))
            except AtelierError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failing vision model is a 503, as on /api/describe
                log.warning("request %s: describer failed (%s)", current_request_id(), exc)
                raise Unavailable("the vision model cannot answer right now; retry shortly",
                                  code="describer_unavailable", retry_after=self.spec.retry_after_s) from None

        answer = await self._deadline(ask(), self.spec.timeouts.describe_s, "the describer")
        if not body.stream:
            return _completion(info, answer.text, answer.finish_reason, answer.prompt_tokens, answer.completion_tokens)

        async def events():
            chunk = _Chunks(info)
            yield chunk.delta({"role": "assistant", "content": ""})
            if answer.text:
                yield chunk.delta({"content": answer.text})
            yield chunk.delta({}, finish=answer.finish_reason)
            yield {"data": "[DONE]"}

        return _sse(events())

    async def _vision_image(self, request: Request, user: str, url: str, where: str):
        """The RGB image an image_url part names: a data: URI, or an image of the caller's own gallery."""
        from storage.intake import ImageIntake

        limit = self.storage_settings.max_upload_bytes
        if url[:5].lower() == "data:":
            data, mime = _data_uri(url, limit, where)
        else:
            data, mime = await self._own_image(request, user, url, where), None
        try:
            # Judged by its bytes (and the declared type must agree), like any upload.
            decoded = await asyncio.to_thread(ImageIntake(self.storage_settings).decode, data, content_type=mime,
                                              model_size=_VISION_SIDE)
        except AtelierError as exc:
            exc.field = where
            raise
        return decoded.model_image

    async def _own_image(self, request: Request, user: str, url: str, where: str) -> bytes:
        """Bytes of an image URL this service issued to this caller; any other URL is refused, never fetched."""
        parts = urlsplit(url)
        hosts = {request.headers.get("host"), request.headers.get("x-forwarded-host")} - {None}
        root = request.scope.get("root_path", "")
        path = parts.path[len(root):] if root and parts.path.startswith(root) else parts.path
        match = _OWN_FILE.match(path)
        sig = parse_qs(parts.query).get("sig", [None])[0]
        if (parts.scheme not in ("", "http", "https") or (parts.netloc and parts.netloc not in hosts)
                or not match or not sig):
            raise InvalidInput("image_url must be a data: URI (data:image/png;base64,...) or an image URL from this "
                               "service's gallery; other URLs are never fetched", code="url_not_allowed", field=where)
        if self.signer.verify(sig, match["img_id"]) != user:
            raise NotFound("no such image", field=where)  # another user's link: no existence oracle
        data, _ = await (await self.library()).display(user, match["img_id"])
        return data


class _Chunks:
    """chat.completion.chunk events of one streamed answer, all under one id."""

    def __init__(self, info: dict):
        self.info, self.id, self.created = info, _completion_id(), int(time.time())

    def delta(self, delta: dict, *, finish: str | None = None) -> dict:
        return {"data": _json({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.info["model_id"], "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            "random_weights": self.info["random_weights"],
        })}


def _model_card(info: dict) -> dict:
    return {"id": info["model_id"], "object": "model", "created": _STARTED, "owned_by": "atelier",
            "role": info["role"], "random_weights": info["random_weights"]}


def _embedding_texts(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not value:
        raise InvalidInput("input is an empty list; send a string or a list of strings", field="input")
    if not all(isinstance(v, str) for v in value):
        raise InvalidInput("input holds token ids; this server embeds text: send a string or a list of strings",
                           field="input")
    return value


def _encode_vector(vector: np.ndarray, encoding: str):
    if encoding == "base64":
        # OpenAI's wire format: little-endian float32 bytes, base64; the official client decodes it so.
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return np.asarray(vector, dtype=np.float32).tolist()


def _data_uri(url: str, limit: int, where: str) -> tuple[bytes, str]:
    match = _DATA_URI.match(url)
    if not match or "base64" not in [p.strip().lower() for p in match["params"].split(";")]:
        raise InvalidInput("image_url is not a base64 data URI; send data:image/png;base64,<bytes>", field=where)
    mime = _DATA_URI_TYPES.get(match["mime"].strip().lower())
    if mime is None:
        raise InvalidInput(f"data URI type {match['mime']!r} is not allowed; send image/png, image/jpeg or image/gif",
                           code="not_an_allowed_image", field=where)
    payload = re.sub(r"\s+", "", match["payload"])
    if len(payload) // 4 * 3 > limit + 3:  # refuse before decoding what would be too large anyway
        raise PayloadTooLarge(f"the image is over the limit of {limit} bytes: compress or scale it down",
                              code="file_too_large", field=where)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("the data URI's base64 payload is malformed", field=where) from None
    return data, mime


def _completion(info: dict, text: str, finish: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "id": _completion_id(), "object": "chat.completion", "created": int(time.time()), "model": info["model_id"],
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                     "logprobs": None, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
        "random_weights": info["random_weights"],
    }


def _completion_id() -> str:
    return "chatcmpl-" + current_request_id()


def _json(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _error_event(code: str, message: str) -> dict:
    # The official client raises APIError on a data line that carries an "error" object.
    return {"data": _json({"error": {"code": code, "message": message}})}


def _sse(events) -> EventSourceResponse:
    # "\n" line ends, as OpenAI's own servers send; a comment ping keeps idle proxies from closing the stream.
    return EventSourceResponse(events, sep="\n", ping=15)


async def _next(pieces) -> str | None:
    try:
        return await pieces.__anext__()
    except StopAsyncIteration:
        return None
