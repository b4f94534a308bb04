"""The HTTP edge shared by every route: the FastAPI app, the one error map, request ids, body limits, stats.

Only this layer knows HTTP; inner layers raise typed `AtelierError`s and this maps them once.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
import uuid

import ray
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from storage.errors import AtelierError, Unavailable

from .state import STATS_ACTOR

log = logging.getLogger("atelier.http")
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")



def current_request_id() -> str:
    """The id of the request being served (module function, so route code never captures the ContextVar)."""
    return request_id.get()


app = FastAPI(
    title="atelier",
    version="0.1.0",
    description="Gallery search, prompt enhancement, FLUX generation and photo descriptions, served by Ray Serve.",
)


def set_body_limits(limits: dict[str, int], default: int) -> None:
    """Body limits by path prefix (longest first) for this process's EdgeMiddleware.

    Call this, never assign `app.state` in a deployment: Serve pickles the deployment class by
    value, so the `app` its methods see is a copy, not the app whose middleware checks bodies.
    This function travels by reference and so reaches the real one.
    """
    app.state.body_limits = dict(sorted(limits.items(), key=lambda kv: -len(kv[0])))
    app.state.default_body_limit = default


class RequestTimeout(AtelierError):
    code = "timeout"
    status = 504


def error_response(status: int, code: str, message: str, *, headers: dict | None = None,
                   field: str | None = None) -> JSONResponse:
    body = {"code": code, "message": message}
    if field:
        body["field"] = field
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _retry_after(exc: BaseException, default: float) -> dict:
    return {"Retry-After": str(max(1, int(round(getattr(exc, "retry_after", None) or default))))}


@app.exception_handler(AtelierError)
async def _atelier_error(request: Request, exc: AtelierError):
    headers = _retry_after(exc, 2) if isinstance(exc, Unavailable) or exc.status in (429, 503) else None
    if exc.status >= 500 and not isinstance(exc, Unavailable) and exc.status != 504:
        log.error("request %s failed: %s", request_id.get(), exc, exc_info=exc)
    return error_response(exc.status, exc.code, exc.message, headers=headers, field=exc.field)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError):
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
    msg = f"{where}: {first.get('msg', 'invalid value')}" if where else first.get("msg", "invalid request")
    return error_response(422, "invalid_request", msg, field=where or None)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException):
    codes = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 401: "unauthorized"}
    return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))


class Overloaded(Unavailable):
    code = "overloaded"


async def settle(response, *, retry_after: float = 2.0):
    """Await a deployment call, turning Serve's capacity errors into our typed 503s.

    Serve installs its own plain-text handlers for BackPressureError and DeploymentUnavailableError
    on the ingress app (overriding any of ours), so they must become AtelierErrors before they
    leave the route.
    """
    from ray.exceptions import ActorDiedError, ActorUnavailableError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    try:
        return await response
    except BackPressureError as exc:
        raise Overloaded("the service is at capacity; retry shortly",
                         retry_after=exc.retry_after_s or retry_after) from None
    except (DeploymentUnavailableError, ActorDiedError, ActorUnavailableError) as exc:
        raise Unavailable(f"a model is restarting; retry shortly ({type(exc).__name__})",
                          retry_after=retry_after) from None
    except asyncio.TimeoutError:
        raise RequestTimeout("a model took longer than the request's deadline") from None


@app.exception_handler(Exception)
async def _bug(request: Request, exc: Exception):
    log.error("request %s hit a bug", request_id.get(), exc_info=exc)
    return error_response(500, "internal_error", f"an internal error occurred (request id {request_id.get()})")


class EdgeMiddleware:
    """Request ids for logs, body-size limits enforced while the body streams in, and per-route stats."""

    def __init__(self, asgi):
        self.asgi = asgi
        self._stats = None
        self._metrics = None

    @staticmethod
    def limit_for(path: str) -> int:
        # Set by the ingress from its config: {path prefix: bytes}, longest prefix first.
        for prefix, limit in getattr(app.state, "body_limits", {}).items():
            if path.startswith(prefix):
                return limit
        return getattr(app.state, "default_body_limit", 1 << 20)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.asgi(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        rid = headers.get("x-request-id", "")[:128] or uuid.uuid4().hex
        token = request_id.set(rid)
        limit = self.limit_for(scope.get("path", ""))
        started = time.perf_counter()
        status = {"code": 500, "sent": False}

        async def send_with_id(message):
            # Serve's proxy puts the request id on the request (echoing the client's) and on the
            # response; this layer adopts it for logs and stats and never adds a second header.
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
            await send(message)

        try:
            declared = headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > limit:
                return await self._too_large(send_with_id, limit)
            received = 0

            async def counted_receive():
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise _BodyTooLarge()
                return message

            try:
                await self.asgi(scope, counted_receive, send_with_id)
            except _BodyTooLarge:
                if not status["sent"]:
                    await self._too_large(send_with_id, limit)
        finally:
            self._record(scope, status["code"], time.perf_counter() - started)
            request_id.reset(token)

    async def _too_large(self, send, limit: int):
        body = json.dumps({"error": {"code": "too_large",
                                     "message": f"the request body is over the limit of {limit} bytes"}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def _record(self, scope, code: int, seconds: float) -> None:
        route = scope.get("route")
        path = getattr(route, "path", None)
        if path is None or path in ("/healthz", "/readyz", "/metrics"):
            return
        op = f"{scope['method']} {path}"
        try:
            if self._metrics is None:
                from ray.serve import metrics

                from .shell import LATENCY_BOUNDARIES_S

                self._metrics = (
                    metrics.Counter("atelier_http_requests", description="HTTP requests by route and status class",
                                    tag_keys=("route", "status")),
                    metrics.Histogram("atelier_http_latency_s", description="HTTP latency by route, seconds",
                                      boundaries=LATENCY_BOUNDARIES_S, tag_keys=("route",)),
                )
            # Tagged by route template (never by user or id) so cardinality stays bounded.
            self._metrics[0].inc(tags={"route": op, "status": f"{code // 100}xx"})
            self._metrics[1].observe(seconds, tags={"route": op})
        except Exception:  # noqa: BLE001 - metrics must never fail a request
            pass
        try:
            if self._stats is None:
                self._stats = ray.get_actor(STATS_ACTOR, namespace="atelier")
            # Fire and forget: stats must never slow or fail a request.
            self._stats.record.remote(op, seconds, code < 500)
        except Exception:  # noqa: BLE001 - the ledger restarting must not break serving
            self._stats = None


class _BodyTooLarge(Exception):
    pass


app.add_middleware(EdgeMiddleware)
