"""The OpenAI-compatible surface of API.md: /v1/models, embeddings, image generation and chat.

Thin routes over the same ProductService as the product API, so the official `openai` client
reaches the same four models and stores a generated image exactly as `/api/generate/image` does.
"""

from __future__ import annotations

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
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse

from models.errors import ModelError
from deployments.service import ChatAnswer, ProductService
from deployments.service.models import ROLES
from deployments.service.safety import unguarded
from storage.errors import AtelierError, InvalidInput, NotFound, PayloadTooLarge

from .deps import caller, current_request_id, edge, image_url, public_root, service
from .edge import JsonRoute
from .gate import error_object
from .limits import afford_tokens, charge_stream_later, charge_tokens
from .streams import REVOKED_MESSAGE, until_revoked

log = logging.getLogger("atelier.openai")
# Every JSON body read as text only (edge.JsonRoute): a lone surrogate is a 400, never a 500.
router = APIRouter(route_class=JsonRoute)
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


# -- models -----------------------------------------------------------------------------------------
@router.get("/v1/models")
async def openai_models(user: str = Depends(caller), svc: ProductService = Depends(service)):
    return {"object": "list", "data": [_model_card(await svc.model_info(role)) for role in svc.ctx.models.roles]}


@router.get("/v1/models/{model:path}")
async def openai_model(model: str, user: str = Depends(caller), svc: ProductService = Depends(service)):
    return _model_card(await svc.conversation.served_model(model, *svc.ctx.models.roles))


# -- embeddings -------------------------------------------------------------------------------------
@router.post("/v1/embeddings")
async def openai_embeddings(body: EmbeddingsRequest, user: str = Depends(caller),
                            svc: ProductService = Depends(service)):
    info = await svc.conversation.served_model(body.model, "embedder")
    _check_embedding_input(body.input, info.get("limits") or {})
    counts, vecs = await svc.texts.embed(_embedding_texts(body.input), dimensions=body.dimensions, user=user)
    data = [{"object": "embedding", "index": i, "embedding": _encode_vector(v, body.encoding_format)}
            for i, v in enumerate(vecs)]
    tokens = int(sum(counts))
    return {"object": "list", "data": data, "model": info["name"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}, "random_weights": info["random_weights"]}


# -- images -----------------------------------------------------------------------------------------
@router.post("/v1/images/generations")
async def openai_images(request: Request, body: ImagesRequest, user: str = Depends(caller),
                        svc: ProductService = Depends(service)):
    await svc.conversation.served_model(body.model, "painter")
    size = await svc.generation.check(body.prompt, None if body.size in (None, "auto") else body.size, body.steps,
                                      body.seed, field="prompt")
    keep = body.response_format == "url"
    generated = await svc.generation.paint(user, body.prompt, size=size, steps=body.steps, seed=body.seed, enhance=body.enhance,
                                keep=keep, n=body.n, request_id=current_request_id())
    data = []
    for g in generated:
        item: dict[str, Any] = {"revised_prompt": g.used, "seed": g.painted["seed"]}
        if keep:
            item["url"] = image_url(request, user, g.row["img_id"])  # absolute, as OpenAI's are
        else:
            item["b64_json"] = base64.b64encode(g.painted["png"]).decode()
        data.append(item)
    writer_random = body.enhance and await svc.generation.writer_random()
    return {"created": int(time.time()), "data": data, "size": generated[0].painted["size"],
            "degraded": generated[0].degraded or unguarded(),
            "random_weights": bool(any(g.painted["random_weights"] for g in generated) or writer_random)}


# -- chat -------------------------------------------------------------------------------------------
@router.post("/v1/chat/completions")
async def openai_chat(request: Request, body: ChatRequest, user: str = Depends(caller),
                      svc: ProductService = Depends(service)):
    body.refuse_unsupported()
    await svc.conversation.served_model(body.model, "writer", "describer")
    images = []
    for i, m in enumerate(body.messages):
        for j, part in enumerate([] if isinstance(m.content, str) else m.content):
            if isinstance(part, ImagePart):
                where = f"messages[{i}].content[{j}].image_url"
                if m.role != "user":
                    raise InvalidInput("images are accepted in user messages only", field=where)
                images.append((where, part.image_url.url))
    await _check_answer_length(svc, body, "describer" if images else "writer")
    params = dict(max_new_tokens=body.max_new_tokens, seed=body.seed)
    if images:
        if len(images) > 1:
            raise InvalidInput(f"{len(images)} images were sent; the vision model reads one image per conversation",
                               field=images[1][0])
        where, url = images[0]
        image = await _vision_image(request, user, svc, url, where)
        # The question is the latest user text; the Describer sees only the image and that question.
        questions = [m.text().strip() for m in body.messages if m.role == "user" and m.text().strip()]
        question = questions[-1] if questions else None
        await afford_tokens(svc, user, question or "")
        answer = await svc.conversation.vision_answer(image, question, request_id=current_request_id(), **params)
        await charge_tokens(svc, user, answer.result.prompt_tokens + answer.result.completion_tokens)
        if not body.stream:
            return _completion_of(answer)
        return _sse(until_revoked(request, _vision_events(answer), _revoked_event))
    # The Writer's chat template knows system/user/assistant; OpenAI's newer "developer" is its system.
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    prompt_tokens = await afford_tokens(svc, user, "\n".join(m["content"] for m in messages))
    answer = await svc.conversation.chat(messages, stream=body.stream, temperature=body.temperature, top_p=body.top_p, **params)
    if not body.stream:
        await charge_tokens(svc, user, answer.result.prompt_tokens + answer.result.completion_tokens)
        return _completion_of(answer)
    return _sse(until_revoked(request, _writer_events(svc, answer, user=user, prompt_tokens=prompt_tokens),
                              _revoked_event))


async def _check_answer_length(svc: ProductService, body: ChatRequest, role: str) -> None:
    """Refuse an answer length over the model's limit here, in the ingress, naming the field the caller
    sent: no round trip, and no model replica logs the caller's mistake (issue 28)."""
    asked = body.max_new_tokens
    limit = ((await svc.model_info(role)).get("limits") or {}).get("max_new_tokens")
    if asked is not None and limit is not None and asked > limit:
        field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        raise InvalidInput(f"{field}={asked} is over the {role}'s limit; use 1..{limit}",
                           code=f"invalid_{role}_input", field=field)


def _completion_of(answer: ChatAnswer) -> dict:
    r = answer.result
    return _completion(answer.info, r.text, r.finish_reason, r.prompt_tokens, r.completion_tokens)


async def _writer_events(svc: ProductService, answer: ChatAnswer, *, user: str,
                         prompt_tokens: int) -> AsyncIterator[dict]:
    """A streamed answer's events; the tokens it streamed (to its end, or to where the client left) are charged
    to the caller's plan, with the prompt's."""
    chunk = _Chunks(answer.info)
    pieces, max_new = answer.stream, answer.max_new_tokens
    text = []
    produced, checked = None, 0
    try:
        yield chunk.delta({"role": "assistant", "content": ""})
        piece = answer.first
        while piece is not None:
            # Checked before it is sent, with what came before it (a listed term may span pieces; the Guard reads
            # it every few hundred characters and at its end): a refused answer ends here with an error event.
            checked = await svc.ctx.guard.check_growing("".join(text) + piece, checked, stage="answer")
            text.append(piece)
            yield chunk.delta({"content": piece})
            piece = await asyncio.wait_for(pieces.next(), timeout=max(0.0, answer.deadline - time.monotonic()))
        await svc.ctx.guard.check_growing("".join(text), checked, stage="answer", final=True)
        # Streams carry no token ids; re-tokenising the text tells whether the length limit ended it.
        produced = await svc.conversation.count_chat_tokens("".join(text)) if text else 0
        yield chunk.delta({}, finish="length" if max_new is not None and produced >= max_new else "stop")
        yield {"data": "[DONE]"}
    except (asyncio.TimeoutError, TimeoutError):
        yield _error_event("timeout", "the writer took longer than its deadline", 504)
    except (AtelierError, ModelError) as exc:
        yield _error_event(getattr(exc, "code", "error"), getattr(exc, "message", str(exc)), getattr(exc, "status", 500))
    except Exception:  # noqa: BLE001 - the status line is gone; the client still gets a JSON error
        log.exception("request %s: chat stream failed", current_request_id())
        yield _error_event("internal_error", f"an internal error occurred (request id {current_request_id()})")
    finally:
        pieces.cancel()
        charge_stream_later(svc, user, prompt_tokens, text, produced)


async def _vision_events(answer: ChatAnswer) -> AsyncIterator[dict]:
    chunk = _Chunks(answer.info)
    yield chunk.delta({"role": "assistant", "content": ""})
    if answer.result.text:
        yield chunk.delta({"content": answer.result.text})
    yield chunk.delta({}, finish=answer.result.finish_reason)
    yield {"data": "[DONE]"}


async def _vision_image(request: Request, user: str, svc: ProductService, url: str, where: str):
    """The RGB image an image_url part names: a data: URI, or an image of the caller's own gallery."""
    limit = edge(request).max_upload_bytes
    if url[:5].lower() == "data:":
        # Up to 13 MB of base64: decoded in a worker thread, so the event loop keeps answering others.
        data, mime = await asyncio.to_thread(_data_uri, url, limit, where)
    else:
        data, mime = await _own_image(request, user, svc, url, where), None
    try:
        # Judged by its bytes (and the declared type must agree), like any upload.
        return await svc.photos.decode_image(data, content_type=mime, model_size=_VISION_SIDE)
    except AtelierError as exc:
        exc.field = where
        raise


async def _own_image(request: Request, user: str, svc: ProductService, url: str, where: str) -> bytes:
    """Bytes of an image URL this service issued to this caller; any other URL is refused, never fetched."""
    parts = urlsplit(url)
    # Where we issue image URLs (the public URL, else the local address), or the host the client names.
    hosts = {urlsplit(public_root(request)).netloc, request.headers.get("host"),
             request.headers.get("x-forwarded-host")} - {None}
    root = request.scope.get("root_path", "")
    path = parts.path[len(root):] if root and parts.path.startswith(root) else parts.path
    match = _OWN_FILE.match(path)
    sig = parse_qs(parts.query).get("sig", [None])[0]
    if (parts.scheme not in ("", "http", "https") or (parts.netloc and parts.netloc not in hosts)
            or not match or not sig):
        raise InvalidInput("image_url must be a data: URI (data:image/png;base64,...) or an image URL from this "
                           "service's gallery; other URLs are never fetched", code="url_not_allowed", field=where)
    try:
        edge(request).signer.verify(sig, match["img_id"], user)
    except NotFound:
        raise NotFound("no such image", code="image_not_found", field=where) from None  # no existence oracle
    data, _ = await svc.photos.image_file(user, match["img_id"])
    return data


class _Chunks:
    """chat.completion.chunk events of one streamed answer, all under one id."""

    def __init__(self, info: dict):
        self.info, self.id, self.created = info, _completion_id(), int(time.time())

    def delta(self, delta: dict, *, finish: str | None = None) -> dict:
        return {"data": _json({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.info["name"], "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            "random_weights": self.info["random_weights"],
        })}


def _model_card(info: dict) -> dict:
    return {"id": info["name"], "object": "model", "created": _STARTED, "owned_by": "atelier",
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


def _check_embedding_input(value, limits: dict) -> None:
    """Refuse here, in the ingress, what the Embedder would refuse, naming `input` as the caller sent it:
    a mistake costs no round trip, and no Embedder replica logs it (issue 28). The code is the Embedder's own
    (`invalid_embedder_input`), as when the replica refused it."""
    if not isinstance(value, list):
        value = [value]
    elif len(value) > limits.get("max_batch", len(value)):
        raise InvalidInput(f"input has {len(value)} items; the limit is {limits['max_batch']}: split it",
                           code="invalid_embedder_input", field="input")
    for i, text in enumerate(value):
        if not isinstance(text, str):
            continue  # token ids: _embedding_texts says why they are refused
        at = "input" if len(value) == 1 else f"input[{i}]"
        if not text.strip():
            raise InvalidInput(f"{at} is empty; send at least one non-blank character",
                               code="invalid_embedder_input", field="input")
        if len(text) > limits.get("max_text_chars", len(text)):
            raise InvalidInput(f"{at} has {len(text)} characters; the limit is {limits['max_text_chars']}",
                               code="invalid_embedder_input", field="input")


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
    payload = "".join(match["payload"].split())  # str.split, not a regex: 15 ms instead of 270 on 13 MB
    if len(payload) // 4 * 3 > limit + 3:  # refuse before decoding what would be too large anyway
        raise PayloadTooLarge(f"the image is over the limit of {limit} bytes: compress or scale it down",
                              code="file_too_large", field=where)
    try:
        data = binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("the data URI's base64 payload is malformed", field=where) from None
    return data, mime


def _completion(info: dict, text: str, finish: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "id": _completion_id(), "object": "chat.completion", "created": int(time.time()), "model": info["name"],
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


def _error_event(code: str, message: str, status: int = 500) -> dict:
    # The official client raises APIError on a data line that carries an "error" object; `status` is
    # the one the error would have had before the stream began (it picks OpenAI's error type).
    return {"data": _json(error_object(status, {"code": code, "message": message}, "/v1/chat/completions"))}


def _revoked_event() -> dict:
    return _error_event("key_revoked", REVOKED_MESSAGE, 401)


def _sse(events) -> EventSourceResponse:
    # "\n" line ends, as OpenAI's own servers send; a comment ping keeps idle proxies from closing the stream.
    return EventSourceResponse(events, sep="\n", ping=15)

