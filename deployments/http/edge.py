"""The HTTP edge every route passes through: request ids, the one error map, body limits and per-route stats.

Only this layer knows HTTP: storage and the service raise `AtelierError`s, the models raise
`ModelError`s, and both are mapped here once. `app.create_app` assembles it with the routers; the
routers read the request's id and the `Edge` through `deps`.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import time
from dataclasses import dataclass, field

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from deployments.config import LATENCY_BOUNDARIES_S
from deployments.service.safety import UNGUARDED

from .auth import KeyRing, UrlSigner
from .gate import error_object, new_request_id

log = logging.getLogger("atelier.http")
access = logging.getLogger("atelier.access")
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_UNTRACKED = ("/healthz", "/readyz", "/metrics")
CLIENT_CLOSED = 499  # the client closed the connection before the answer (nginx's code; never sent)
# A UTF-16 surrogate left in a decoded string is a lone one (a pair decodes to one code point): no
# UTF-8 encoder, tokenizer or database takes it. A body holds one only where it has a surrogate raw
# (ED A0..BF: not UTF-8, kept by surrogatepass) or escaped (\uD800-\uDFFF); both looked for in the bytes
# with a literal first, fast enough for a 12 MB data URI (about 20 ms; a pattern without one took 140).
_SURROGATE = re.compile("[\ud800-\udfff]")
_RAW_SURROGATE = re.compile(rb"\xed[\xa0-\xbf]")
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


def current_request_id() -> str:
    """The id of the request being served."""
    return request_id.get()


@dataclass
class Edge:
    """What the routers share besides the service: who is calling, URL signing, limits, ingress knobs."""

    keys: KeyRing
    signer: UrlSigner
    body_limits: dict[str, int] = field(default_factory=dict)
    default_body_limit: int = 64 * 1024
    max_upload_bytes: int = 10 * 1024 * 1024
    max_search_k: int = 100
    public_url: str | None = None  # the base of absolute URLs (ServiceSettings.public_url); None: the local address

    def limit_for(self, path: str) -> int:
        for prefix, limit in self.body_limits.items():  # longest prefix first
            if path.startswith(prefix):
                return limit
        return self.default_body_limit


def error_response(request: Request, status: int, code: str, message: str, *, headers: dict | None = None,
                   field: str | None = None, extra: dict | None = None) -> JSONResponse:
    """The JSON error answer (API.md "Errors"); under `/v1` in OpenAI's shape as well (`gate.error_object`)."""
    body = {"code": code, "message": message}
    if field:
        body["field"] = field
    body.update(extra or {})
    return JSONResponse(error_object(status, body, request.scope.get("path", "")), status_code=status, headers=headers)


def _retry_after(exc: BaseException, default: float) -> dict:
    return {"Retry-After": str(max(1, int(round(getattr(exc, "retry_after", None) or default))))}


async def typed_error(request: Request, exc: Exception):
    """The one map of both error families (storage/service and models) to HTTP, by their `status`."""
    status = exc.status
    headers = _retry_after(exc, 2) if status in (429, 503) else None
    if status >= 500 and status not in (503, 504):
        log.error("request %s failed: %s", request_id.get(), exc, exc_info=exc)
    extra = exc.extra() if hasattr(exc, "extra") else None  # a refusal's limit, a content policy's categories
    return error_response(request, status, exc.code, exc.message, headers=headers, field=exc.field, extra=extra)


async def validation_error(request: Request, exc: RequestValidationError):
    # One status per kind of mistake (API.md "Errors"): a body that is not JSON, a missing, mistyped,
    # unknown or out-of-range value is the caller's to fix: 400, as every check of our own answers.
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":  # its loc is ("body", <character position>), no field name
        at = [p for p in first.get("loc", ()) if isinstance(p, int)]
        where = f" at character {at[0]}" if at else ""
        return error_response(request, 400, "invalid_json", f"the request body is not valid JSON{where}: "
                                                   f"{(first.get('ctx') or {}).get('error', 'malformed')}",
                              field="body")
    # The field as the caller sent it: `limit`, `messages.0.content`, `idempotency-key` (a header), or
    # `body` when the body as a whole is not what the route takes (a JSON array for an object).
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header"))
    msg = f"{where}: {first.get('msg', 'invalid value')}" if where else first.get("msg", "invalid request")
    return error_response(request, 400, "invalid_request", msg, field=where or "body")


async def http_error(request: Request, exc: StarletteHTTPException):
    codes = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 401: "unauthorized"}
    return error_response(request, exc.status_code, getattr(exc, "code", None) or codes.get(exc.status_code, "http_error"),
                          str(exc.detail), field=getattr(exc, "field", None))


async def client_closed(request: Request, exc: ClientDisconnect):
    # Nobody reads this answer; its status is what logs, stats and metrics record.
    return Response(status_code=CLIENT_CLOSED)


async def bug(request: Request, exc: Exception):
    log.error("request %s hit a bug", request_id.get(), exc_info=exc)
    return error_response(request, 500, "internal_error", f"an internal error occurred (request id {request_id.get()})")


class EdgeMiddleware:
    """Request ids for logs, body-size limits enforced while the body streams in, and per-route stats."""

    def __init__(self, asgi, *, service, edge: Edge, serve_metrics: bool, echo_request_id: bool,
                 served_by: dict[str, str] | None = None):
        self.asgi, self.service, self.edge = asgi, service, edge
        self._serve_metrics, self._echo = serve_metrics, echo_request_id
        self._metrics = None
        self._served_by = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (served_by or {}).items()]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.asgi(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        rid = headers.get("x-request-id") or new_request_id()  # the gate in front kept or made a safe one
        token = request_id.set(rid)
        unguarded = []  # checks the Guard model skipped (down, and the policy fails open): said on the answer
        guard_token = UNGUARDED.set(unguarded)
        # Who answered, only to a caller the gate in front authenticated (never to a stranger).
        served_by = self._served_by if (scope.get("state") or {}).get("user") is not None else []
        limit = self.edge.limit_for(scope.get("path", ""))
        started = time.perf_counter()
        status = {"code": 500, "sent": False}

        async def send_with_id(message):
            # In a cluster Serve's proxy puts the request id on the request (echoing the client's) and
            # on the response; this layer adopts it for logs and stats and adds no second header.
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
                extra = [*served_by, *([(b"x-request-id", rid.encode("latin-1"))] if self._echo else []),
                         *([(b"x-atelier-safety", b"degraded")] if unguarded else [])]
                if extra:
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            declared = headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > limit:
                return await self._too_large(send_with_id, limit, scope.get("path", ""))
            received = 0

            async def counted_receive():
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise _BodyTooLarge(limit)
                return message

            try:
                await self.asgi(scope, counted_receive, send_with_id)
            except _BodyTooLarge:
                if not status["sent"]:
                    await self._too_large(send_with_id, limit, scope.get("path", ""))
            except Exception as exc:  # noqa: BLE001 - a bug: answered here, while the request id is still set
                if status["sent"]:
                    raise
                await (await bug(Request(scope), exc))(scope, receive, send_with_id)
            except (asyncio.CancelledError, ClientDisconnect):
                # The client went away (Serve cancels the request): nginx's 499, not a server error.
                if not status["sent"]:
                    status["code"] = CLIENT_CLOSED
                raise
        finally:
            self._record(scope, status["code"], time.perf_counter() - started)
            request_id.reset(token)
            UNGUARDED.reset(guard_token)

    async def _too_large(self, send, limit: int, path: str):
        body = json.dumps(error_object(413, {"code": "too_large",
                                             "message": f"the request body is over the limit of {limit} bytes"},
                                       path)).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def _record(self, scope, code: int, seconds: float) -> None:
        route = scope.get("route")
        path = getattr(route, "path", None)
        if path in _UNTRACKED:
            return
        # One access line per request, fields for log search (the request id and Serve's route come
        # from Serve's log context); the route template, never the path, so no id or user is in it.
        access.info("%s %s %d %.1fms", scope.get("method"), path or "(no route)", code, seconds * 1000,
                    extra={"method": scope.get("method"), "route_template": path, "status": code,
                           "latency_ms": round(seconds * 1000, 1)})
        if path is None or scope.get("method") not in (getattr(route, "methods", None) or ()):
            return  # no such route, or not with this method (a 404 or 405): not an operation of the service
        op = f"{scope['method']} {path}"
        if self._serve_metrics:
            try:
                if self._metrics is None:
                    # Only inside a Serve replica: the in-process tier and the proxy's gate never load Ray's Serve.
                    from ray.serve import metrics

                    self._metrics = (
                        metrics.Counter("atelier_http_requests", description="HTTP requests by route and status code",
                                        tag_keys=("route", "status")),
                        metrics.Histogram("atelier_http_latency_s", description="HTTP latency by route, seconds",
                                          boundaries=LATENCY_BOUNDARIES_S, tag_keys=("route",)),
                    )
                # Tagged by route template (never by user or id) so cardinality stays bounded.
                self._metrics[0].inc(tags={"route": op, "status": str(code)})
                self._metrics[1].observe(seconds, tags={"route": op})
            except Exception:  # noqa: BLE001 - metrics must never fail a request
                pass
        user = (scope.get("state") or {}).get("user")  # the gate's; a signed image file's GET has none
        if user is not None:  # each user's own stats (/api/stats)
            self.service.record(user, op, seconds, code)


class _BodyTooLarge(HTTPException):
    """Raised from `receive` when a body streams past its limit. An HTTPException so that FastAPI's
    body parsing re-raises it (it turns any other error into a 400) and the error map answers 413."""

    def __init__(self, limit: int):
        super().__init__(413, f"the request body is over the limit of {limit} bytes")


class BadText(HTTPException):
    """A JSON body that is not text: invalid UTF-8, or a lone surrogate (`"\\ud800"`, escaped or as raw
    bytes). Raised while the body is read; an HTTPException so that FastAPI's body parsing re-raises it."""

    code = "invalid_text"

    def __init__(self, message: str, field: str):
        super().__init__(400, message)
        self.field = field


class _JsonRequest(Request):
    async def json(self):
        if not hasattr(self, "_json"):
            body = await self.body()
            try:  # UTF-8 (RFC 8259); surrogatepass so that a raw lone surrogate is found and named below
                text = body.decode("utf-8-sig", "surrogatepass")
            except UnicodeDecodeError as exc:
                raise BadText(f"the request body is not UTF-8 (byte {exc.start}); send JSON as UTF-8", "body") from None
            value = json.loads(text)
            maybe = ((b"\xed" in body and _RAW_SURROGATE.search(body)) or
                     (b"\\u" in body and _ESCAPED_SURROGATE.search(body)))
            where = _lone_surrogate(value) if maybe else None
            if where is not None:
                raise BadText(f"{where} holds a lone UTF-16 surrogate, which is not text; send characters as UTF-8 "
                              "or as an escaped surrogate pair", where)
            self._json = value
        return self._json


def _lone_surrogate(value) -> str | None:
    """Where in a decoded JSON value a string (or key) holds a lone surrogate, like `messages[0].content`."""
    todo = [("", value)]
    while todo:
        at, v = todo.pop()
        if isinstance(v, str):
            if _SURROGATE.search(v):
                return at or "body"
        elif isinstance(v, dict):
            for k, item in v.items():
                name = k.encode("utf-8", "backslashreplace").decode()  # an answer can only name it escaped
                where = f"{at}.{name}" if at else name
                if _SURROGATE.search(k):
                    return where
                todo.append((where, item))
        elif isinstance(v, list):
            todo.extend((f"{at}[{i}]", item) for i, item in enumerate(v))
    return None


class JsonRoute(APIRoute):
    """Every route's JSON body is read by `_JsonRequest`: one that is not text is a 400 naming the field,
    on every route, before a model, a tokenizer or the storage meets it (issue 28)."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def read_text_only(request: Request):
            return await handler(_JsonRequest(request.scope, request.receive, request._send))

        return read_text_only
