"""The gate: what every request passes before any of our code, or Serve's, does work for it.

One pure ASGI middleware, placed twice: in Serve's HTTP proxy (`deployments.http.proxy`), so that a
stranger's request is answered there before the proxy reads its body or forwards it, and in front of
the ingress app (`create_app`), so that the app holds the same rules wherever it runs. It

- keeps a client's `X-Request-ID` only when it is one short safe token, else replaces it with a
  fresh id, before Serve's proxy or any logger sees it (no forged log lines, no megabyte ids);
- drops the headers that steer Serve itself (request timeout, disconnect handling, multiplexed
  model and session routing): they are operator knobs, not a client's;
- authenticates every route but health, metrics and signed image files from the headers alone:
  a missing, malformed or unknown key is a `401` before one byte of the body is read, and a
  request with more than one `Authorization` header is a `400`;
- in the proxy, turns the proxy's own plain-text error answers into the JSON error shape.

Only the standard library and our key ring: the proxy imports this module.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Callable

from storage.errors import AtelierError

from .auth import BadHeader, KeyRing

REQUEST_ID_HEADER = b"x-request-id"
# A client's id is kept only when it is one token like these: short, and nothing a log parser could
# mistake for structure (no spaces, quotes, control or non-ASCII bytes).
SAFE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")
# Headers Serve's proxy reads to steer a request (ray.serve._private.constants); compared with
# '-' and '_' treated alike, as Serve does for the session header.
SERVE_CONTROL_HEADERS = frozenset({
    "x_request_timeout_seconds", "x_request_disconnect_disabled", "serve_multiplexed_model_id", "x_session_id",
})
_PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/-/healthz", "/-/routes"})
_IMAGE_FILE = re.compile(r"/api/images/[^/]+/file")
_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                 408: "timeout", 413: "too_large", 429: "too_many_requests", 500: "internal_error",
                 502: "bad_gateway", 503: "unavailable", 504: "timeout"}
# OpenAI's error `type` by status (every other 4xx is an `invalid_request_error`, a 5xx a `server_error`).
_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


LOST_REPLICA = "the replica that took this request was lost (it or its node stopped); retry: another replica takes it"


def new_request_id() -> str:
    return uuid.uuid4().hex


def needs_key(method: str, path: str, query: bytes) -> bool:
    """Whether a request must carry a valid key before anything else happens (API.md's auth rule)."""
    if method in ("GET", "HEAD"):
        if path in _PUBLIC_PATHS or path == "/" or path.startswith("/console/"):
            return False  # the web console's page and files (deployments/http/console): no user data in them
        if _IMAGE_FILE.fullmatch(path) and any(p.startswith(b"sig=") for p in query.split(b"&")):
            return False  # the route checks the signature; without one it needs the key like the rest
    return True


def clean_headers(headers: list[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], str]:
    """The headers with one safe `x-request-id` (the client's, or a fresh one) and no Serve controls."""
    ids = [v for k, v in headers if k.lower() == REQUEST_ID_HEADER]
    rid = ids[0].decode("ascii") if len(ids) == 1 and SAFE_REQUEST_ID.fullmatch(ids[0]) else new_request_id()
    kept = [(k, v) for k, v in headers
            if k.lower() != REQUEST_ID_HEADER
            and k.decode("latin-1").lower().replace("-", "_") not in SERVE_CONTROL_HEADERS]
    kept.append((REQUEST_ID_HEADER, rid.encode("ascii")))
    return kept, rid


def is_openai(path: str) -> bool:
    """Whether `path` is on the OpenAI-compatible surface, whose errors also carry OpenAI's fields."""
    return path == "/v1" or path.startswith("/v1/")


def error_object(status: int, error: dict, path: str = "") -> dict:
    """The body of an error answer to `path`: `{"error": {"code", "message"[, "field"]}}`; under `/v1`
    also OpenAI's `type` and `param` (the field, or null), so that OpenAI's clients read it as theirs."""
    if is_openai(path):
        kind = ("server_error" if status >= 500 else
                "insufficient_quota" if error.get("code") == "quota_exceeded" else
                _OPENAI_TYPES.get(status, "invalid_request_error"))
        error = {**error, "type": kind, "param": error.get("field")}
    return {"error": error}


def json_error(status: int, error: dict, rid: str | None, *, extra: list | None = None,
               path: str = "") -> tuple[dict, dict]:
    """The two ASGI messages of a JSON error answer; `error` is `{"code", "message"[, "field"]}`."""
    body = json.dumps(error_object(status, error, path)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *([(REQUEST_ID_HEADER, rid.encode("ascii"))] if rid else []), *(extra or [])]
    return ({"type": "http.response.start", "status": status, "headers": headers},
            {"type": "http.response.body", "body": body})


class Gate:
    """See the module docstring. `keys` is the key ring, or a callable returning it (the proxy opens
    it lazily); `json_errors` rewrites plain-text error answers of the wrapped app (the proxy's);
    `echo_request_id` puts the id on the gate's own answers (off behind a Serve proxy, which adds it);
    `on_refusal(status, code)` is told of each request the gate answers itself (the proxy counts them)."""

    def __init__(self, app, *, keys: KeyRing | Callable[[], KeyRing], json_errors: bool = False,
                 echo_request_id: bool = True, on_refusal: Callable[[int, str], None] | None = None):
        self.app = app
        self._keys = keys
        self._json_errors = json_errors
        self._echo = echo_request_id
        self._on_refusal = on_refusal

    def keys(self) -> KeyRing:
        return self._keys if isinstance(self._keys, KeyRing) else self._keys()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers, rid = clean_headers(list(scope.get("headers") or []))
        scope = {**scope, "headers": headers}
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        if needs_key(scope.get("method", "GET"), path, scope.get("query_string", b"")):
            try:
                auths = [v for k, v in headers if k.lower() == b"authorization"]
                if len(auths) > 1:
                    raise BadHeader("more than one Authorization header; send exactly one", field="authorization")
                user = await self.keys().authenticate(auths[0] if auths else None)
            except AtelierError as exc:
                # Answered from the headers alone: the body is never read, so close the connection
                # rather than drain what the client may still be sending.
                extra = [(b"connection", b"close")]
                if exc.status == 401:
                    extra.append((b"www-authenticate", b'Bearer realm="atelier"'))
                start, body = json_error(exc.status, exc.to_dict(), rid if self._echo else None, extra=extra, path=path)
                if self._on_refusal is not None:
                    self._on_refusal(exc.status, exc.code)
                await send(start)
                return await send(body)
            scope["state"] = {**(scope.get("state") or {}), "user": user}
        if not self._json_errors:
            return await self.app(scope, receive, send)
        started = []

        async def tracked(message):
            if message["type"] == "http.response.start":
                started.append(True)
            await send(message)

        await self.app(scope, receive, self._plain_errors_as_json(tracked, rid, path))
        if not started:
            # Serve's proxy lost the replica and answered nothing (it sends no body for a 500): the
            # server would say a bare 500. Say what happened, and when to come back.
            start, body = json_error(503, {"code": "unavailable", "message": LOST_REPLICA}, rid,
                                     extra=[(b"retry-after", b"1")], path=path)
            try:
                await send(start)
                await send(body)
            except OSError:  # the client left first (Serve's proxy answers a hang-up with nothing too)
                pass

    @staticmethod
    def _plain_errors_as_json(send, rid: str, path: str):
        """A `send` that rewrites plain-text error answers (Serve's proxy: timeouts, back-pressure,
        unknown routes) into `{"error": {...}}`, keeping their status and headers such as Retry-After.

        The app answers every error of its own in JSON (its 500s included), so a plain-text 500 is
        Serve's proxy losing the replica it sent the request to: a replica or its node died (Serve's
        proxy answers 500 for a RayActorError). The request did not fail in the app, and another
        replica takes it once Serve has noticed: that is a 503 with Retry-After, not a server bug."""
        held: dict = {}

        async def wrapped(message):
            if message["type"] == "http.response.start" and message["status"] >= 400:
                ctype = next((v for k, v in message.get("headers", []) if k.lower() == b"content-type"), b"")
                if not ctype.startswith(b"application/json"):
                    held["start"], held["body"] = message, []
                    return
            if "start" in held and message["type"] == "http.response.body":
                held["body"].append(message.get("body", b""))
                if message.get("more_body"):
                    return
                start = held.pop("start")
                status = start["status"]
                text = b"".join(held.pop("body")).decode("utf-8", "replace").strip()[:500]
                if status == 500:
                    status, text = 503, LOST_REPLICA
                keep = [(k, v) for k, v in start.get("headers", [])
                        if k.lower() not in (b"content-type", b"content-length", REQUEST_ID_HEADER)]
                if status in (429, 503) and not any(k.lower() == b"retry-after" for k, _ in keep):
                    keep.append((b"retry-after", b"1"))
                error = {"code": _STATUS_CODES.get(status, "http_error"), "message": text or f"HTTP {status}"}
                new_start, new_body = json_error(status, error, rid, extra=keep, path=path)
                await send(new_start)
                return await send(new_body)
            await send(message)

        return wrapped
