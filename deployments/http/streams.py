"""Open streams end when their key is revoked (issue 28 C).

The gate checks a key once, when a request arrives; a Server-Sent Events stream (a chat answer, a
job's progress) can stay open for minutes after that. `until_revoked` wraps a stream's events: every
`every_s` seconds, and while it waits for the next event, it asks the key ring whether the request's
key is still valid (the ring follows the cluster's key table, so a `python -m deployments.keys revoke`
anywhere counts). Once it is not, the stream sends one error event and ends; the events it wrapped are
closed, so what produced them stops too (a chat stream cancels its generation on the Writer's replica).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from fastapi import Request

from .auth import Unauthorized
from .deps import current_request_id, edge

log = logging.getLogger("atelier.http")

REVOKED_MESSAGE = "the API key of this stream was revoked"


async def until_revoked(request: Request, events: AsyncIterator[dict], revoked: Callable[[], dict],
                        every_s: float = 1.0) -> AsyncIterator[dict]:
    """`events` as they come, until the request's key stops being valid: then `revoked()` (the stream's own
    error event) and the end. The key is checked at most once per `every_s`, and at least that often."""
    keys = edge(request).keys
    authorization = request.headers.get("authorization")

    async def still_valid() -> bool:
        try:
            await keys.authenticate(authorization)
        except Unauthorized:
            return False
        return True

    source = aiter(events)
    pending: asyncio.Future | None = None
    checked = time.monotonic()
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(source))
            done, _ = await asyncio.wait({pending}, timeout=every_s)
            if not done or time.monotonic() - checked >= every_s:
                checked = time.monotonic()
                if not await still_valid():
                    log.info("request %s: %s; the stream ends", current_request_id(), REVOKED_MESSAGE)
                    yield revoked()
                    return
            if not done:
                continue
            finished, pending = pending, None
            try:
                event = finished.result()
            except StopAsyncIteration:
                return
            yield event
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        close = getattr(source, "aclose", None)
        if close is not None:
            await close()
