"""The plans' limits at the HTTP edge: a request of a limited route class is counted before its body is read.

Over a limit: `429` in the error shape (`rate_limited`, which limit, when it resets) with `Retry-After`.
Every answer of a limited route carries the IETF fields (draft-ietf-httpapi-ratelimit-headers):
`RateLimit-Policy` (each window: quota `q`, window `w` seconds, quota unit `qu`) and `RateLimit` (what
is left `r`, seconds to reset `t`), and under `/v1` also OpenAI's `x-ratelimit-*-requests`, so that
OpenAI's clients pace themselves and retry a 429 after `Retry-After`.
"""

from __future__ import annotations

import json
import logging

from starlette.routing import Match

from deployments.service.limits import Admission, RateLimited, acting_user
from deployments.service.tasks import background

from .gate import error_object, is_openai

log = logging.getLogger("atelier.limits")

# The limited routes by route class (API.md "Limits"); every other route is not counted.
ROUTE_CLASSES: dict[tuple[str, str], str] = {
    ("GET", "/api/search"): "search",
    ("POST", "/api/search/by-image"): "search",
    ("POST", "/api/images"): "upload",
    ("POST", "/api/text"): "text",
    ("POST", "/api/generate/image"): "generate",
    ("POST", "/v1/images/generations"): "generate",
    ("POST", "/api/describe"): "describe",
    ("POST", "/v1/chat/completions"): "chat",
    ("POST", "/v1/embeddings"): "embeddings",
    ("POST", "/v1/moderations"): "text",
    ("POST", "/api/init/upload"): "ingest",
}
# The model role whose GPU seconds a route class mostly spends: its budget's windows are on the answer too.
ROUTE_BUDGETS: dict[str, str] = {"generate": "painter", "describe": "describer", "text": "writer", "chat": "writer"}


def rate_headers(admission: Admission, path: str) -> list[tuple[bytes, bytes]]:
    """The IETF `RateLimit-Policy` and `RateLimit` fields (and OpenAI's under /v1) of an admission."""
    if not admission.windows:
        return []
    policy = ", ".join(f'"{w.name}";q={w.quota};w={w.window_s};qu="{w.unit}"' for w in admission.windows)
    state = ", ".join(f'"{w.name}";r={w.remaining};t={w.reset_s}' for w in admission.windows)
    headers = [(b"ratelimit-policy", policy.encode()), (b"ratelimit", state.encode())]
    requests = [w for w in admission.windows if w.unit == "requests"]
    if is_openai(path) and requests:
        tight = min(requests, key=lambda w: (w.remaining, -w.reset_s))
        headers += [(b"x-ratelimit-limit-requests", str(tight.quota).encode()),
                    (b"x-ratelimit-remaining-requests", str(tight.remaining).encode()),
                    (b"x-ratelimit-reset-requests", f"{tight.reset_s}s".encode())]
    return headers


class PlanGate:
    """ASGI middleware inside the edge (so a refusal has a request id, an access line and its stats) and
    before the route reads the body. `service.limits` counts, and is told of each refusal and each degraded
    count (`PlanLimits.event`: the ingress's metrics)."""

    def __init__(self, app, *, service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        user = (scope.get("state") or {}).get("user") if scope["type"] == "http" else None
        if user is None:
            return await self.app(scope, receive, send)
        acting = acting_user.set(user)  # whose slots the model calls of this request hold
        try:
            await self._limited(scope, receive, send, user)
        finally:
            acting_user.reset(acting)

    async def _limited(self, scope, receive, send, user: str):
        route_class = ROUTE_CLASSES.get((scope.get("method"), scope.get("path")))
        counters = getattr(self.service, "limits", None)
        if route_class is None or counters is None:
            return await self.app(scope, receive, send)
        path = scope["path"]
        try:
            admission = await counters.admit(user, route_class)
        except RateLimited as exc:
            counters.event(exc.admission.plan if exc.admission else None, exc.limit, "refused")
            return await self._refuse(scope, send, exc)
        if admission.degraded:
            counters.event(admission.plan, route_class, "degraded")
        if route_class in ROUTE_BUDGETS:  # what is left of the GPU seconds this request will mostly spend
            admission.windows += await counters.budget_windows(user, f"gpu-{ROUTE_BUDGETS[route_class]}")
        if route_class == "chat":
            admission.windows += await counters.budget_windows(user, "tokens")
        extra = rate_headers(admission, path)

        async def send_with_headers(message):
            if message["type"] == "http.response.start" and extra:
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _refuse(self, scope, send, exc: RateLimited) -> None:
        # The route's template for the edge's stats and access line (Starlette sets it when it routes).
        app = scope.get("app")
        for route in getattr(getattr(app, "router", None), "routes", ()):
            if route.matches(scope)[0] == Match.FULL:
                scope["route"] = route
                break
        body = json.dumps(error_object(429, exc.to_dict(), scope.get("path", ""))).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"retry-after", str(int(exc.retry_after)).encode()),
                   *(rate_headers(exc.admission, scope.get("path", "")) if exc.admission else [])]
        # The body is not read: close the connection rather than drain what the client may still send.
        headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": body})


# -- chat tokens ---------------------------------------------------------------------------------------
_CHARGING: set = set()  # charges of closed streams still being counted (the event loop keeps weak references)


async def afford_tokens(svc, user: str, prompt: str) -> int:
    """Where the caller's plan budgets chat tokens: their prompt's tokens, refused (429 `quota_exceeded`) when
    they no longer fit what is left. 0 where it does not (nothing is counted)."""
    limits = getattr(svc, "limits", None)
    if limits is None or (await limits.plan(user))[1].tokens is None:
        return 0
    tokens = await svc.conversation.count_chat_tokens(prompt) if prompt else 0
    await limits.afford(user, "tokens", max(1, tokens), what="this prompt")
    return tokens


async def charge_tokens(svc, user: str, tokens: int) -> None:
    if getattr(svc, "limits", None) is not None and tokens > 0:
        await svc.limits.charge_tokens(user, tokens)


def charge_stream_later(svc, user: str, prompt_tokens: int, text: list[str], produced: int | None) -> None:
    """Charge a streamed answer's tokens (what it streamed, counted now unless `produced` says) with its prompt's,
    in a task of its own: the stream may be closing because its request was cancelled."""
    if getattr(svc, "limits", None) is None or not (prompt_tokens or text):
        return

    async def charge():
        spent = produced if produced is not None else \
            await svc.conversation.count_chat_tokens("".join(text)) if text else 0
        await charge_tokens(svc, user, prompt_tokens + spent)

    background(charge(), _CHARGING)
