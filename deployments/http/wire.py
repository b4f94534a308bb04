"""The HTTP proxy's connections, before any request exists: bounded heads, timed-out slow heads, JSON refusals.

Serve's proxy runs uvicorn with httptools, which takes a request line and headers of any size (a 20 MB
header cost the proxy ~0.8 s of CPU before the gate's 401) and waits forever for a head that arrives
a byte at a time. `GuardedHttpTools` is uvicorn's httptools protocol with three limits, in the order
a request meets them:

- a connection, or the next request on a kept-alive one, must finish its head (request line and
  headers) within `header_timeout_s` of its first byte (of the connection, for a first request):
  else `408`;
- the head may be at most `max_head_bytes`: past that, `414` while the request line is still being
  read, `431` once headers are;
- what httptools cannot parse is a `400`.

Each refusal is JSON (`{"error": {"code", "message"}}`) with an `X-Request-ID`, like every other answer,
and closes the connection: a lingering close, during which at most `DISCARD_MAX_BYTES` more are read and
dropped (then reading stops: a sender pushing megabytes waits on its own full buffer, not on our CPU). The limits come from `ServiceSettings` (`ATELIER_MAX_HEAD_BYTES`,
`ATELIER_HEADER_TIMEOUT_S`); `proxy.uvicorn_options()` hands the class to the proxy's uvicorn.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .gate import new_request_id

log = logging.getLogger("atelier.proxy")

LINGER_S = 2.0
# What a refused connection may still send, read and dropped, before the proxy stops reading it: enough for
# any head a real client sends (its refusal arrives whole), while a sender pushing megabytes is left blocked
# on its own full buffer until the close instead of costing the proxy the reading of all of them.
DISCARD_MAX_BYTES = 1 << 20


def refusal(status: int, code: str, message: str) -> bytes:
    """The bytes of a JSON error answer that closes the connection."""
    rid = new_request_id()
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"x-request-id: %s\r\nconnection: close\r\n\r\n" % (status, HTTPStatus(status).phrase.encode(), len(body), rid.encode()))
    return head + body


def guarded(max_head_bytes: int, header_timeout_s: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with these limits (a class: uvicorn.Config takes one as `http`)."""
    # httptools' URL parser keeps offsets in 16 bits: a longer target is unparseable whatever the limit.
    max_url = min(max_head_bytes, 65535)

    class GuardedHttpTools(HttpToolsProtocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._head_timer, self._discarding, self._discarded = None, False, 0
            self._start_head()  # a new connection owes a head from its first moment

        def connection_lost(self, exc) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._discarding:  # refused: what the client still sends is dropped until the close
                self._discarded += len(data)
                if self._discarded > DISCARD_MAX_BYTES and not self.transport.is_closing():
                    self.transport.pause_reading()
                return
            was_in_head = self._in_head
            super().data_received(data)
            if was_in_head or self._in_head:  # a head was read in this chunk (a whole chunk counts: a bound)
                self._head_bytes += len(data)
            if self._in_head and self._head_bytes > max_head_bytes and not self.transport.is_closing():
                self._refuse_malformed(431, "headers_too_large",
                                       f"the request line and headers are over {max_head_bytes} bytes")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if not self._in_head:  # the next request on a kept-alive connection: its head is bounded and timed too
                self._start_head()

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._cancel_head_timer()
            super().on_headers_complete()

        def send_400_response(self, msg: str) -> None:
            self._refuse_malformed(400, "invalid_http", "the request is not valid HTTP/1.1")

        def _start_head(self) -> None:
            self._in_head, self._head_bytes = True, 0
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(header_timeout_s, self._head_timeout)

        def _refuse_malformed(self, status: int, code: str, message: str) -> None:
            """A 414 when the target is what is too long (httptools cannot parse one past 64 KiB either), else
            the answer given."""
            if self._long_url():
                self._refuse(414, "uri_too_long", f"the request target is over {max_url} bytes")
            else:
                self._refuse(status, code, message)

        def _long_url(self) -> bool:
            # httptools reports the URL in pieces as they come, each header only once it is whole.
            return len(getattr(self, "url", b"")) > max_url or \
                (not getattr(self, "headers", None) and len(getattr(self, "url", b"")) >= max_head_bytes // 2)

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self._in_head and not self.transport.is_closing():
                self._refuse(408, "header_timeout", f"the request's headers did not arrive within {header_timeout_s:g} s")

        def _cancel_head_timer(self) -> None:
            timer, self._head_timer = self._head_timer, None
            if timer is not None:
                timer.cancel()

        def _refuse(self, status: int, code: str, message: str) -> None:
            self._cancel_head_timer()
            self._in_head = False
            log.info("refused a connection's request from %s: %d %s", self.client, status, code)
            self.transport.write(refusal(status, code, message))
            # A lingering close: the answer, then our FIN, while what the client is still sending is read and
            # dropped for a moment (up to DISCARD_MAX_BYTES); closing at once with unread bytes would send a
            # reset that can destroy the answer before the client reads it.
            self._discarding = True
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)

    GuardedHttpTools.__name__ = GuardedHttpTools.__qualname__ = "GuardedHttpTools"
    return GuardedHttpTools


__all__ = ["guarded", "refusal"]
