"""Errors the product service adds to storage's family: capacity and deadlines (both 5xx a client may retry)."""

from __future__ import annotations

from storage.errors import AtelierError, Unavailable

__all__ = ["Overloaded", "RequestTimeout", "Unavailable"]


class Overloaded(Unavailable):
    """A deployment's queue is full (Serve's back-pressure): 503 with Retry-After."""

    code = "overloaded"


class RequestTimeout(AtelierError):
    """A route's deadline passed before the models answered."""

    code = "timeout"
    status = 504
