"""The product's typed errors: every layer raises these, and the ingress maps them to HTTP once."""

from __future__ import annotations


class AtelierError(Exception):
    """Base of every error a caller may see.

    `code` is the snake_case string of the JSON error shape, `status` the HTTP status the
    ingress answers with; inner layers never import HTTP, they only pick a subclass.
    """

    code: str = "internal_error"
    status: int = 500

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code

    def extra(self) -> dict:
        """Fields of the error object beyond code, message and field (a refusal's limit, categories...)."""
        return {}

    def to_dict(self) -> dict:
        body = {"code": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        return {**body, **self.extra()}


class InvalidInput(AtelierError):
    """A caller's mistake in a field's value (400)."""

    code = "invalid_input"
    status = 400


class NotFound(AtelierError):
    """Absent, or belongs to someone else: both answer 404 so ids leak nothing."""

    code = "not_found"
    status = 404


class Conflict(AtelierError):
    """The request cannot apply to the resource in its present state (409): a job still running, say."""

    code = "conflict"
    status = 409


class PayloadTooLarge(AtelierError):
    code = "too_large"
    status = 413


class UnsupportedMedia(AtelierError):
    """Not an allowed image, judged by its bytes (415)."""

    code = "unsupported_media_type"
    status = 415


class Unavailable(AtelierError):
    """A dependency cannot serve right now; callers may retry after `retry_after` seconds."""

    code = "unavailable"
    status = 503

    def __init__(self, message: str, *, code: str | None = None, retry_after: float = 1.0):
        super().__init__(message, code=code)
        self.retry_after = retry_after


class GalleryUnopenable(AtelierError):
    """A gallery table that cannot be opened (another schema at its name, storage unreachable): retrying
    will not help; an operator must look (500)."""

    code = "gallery_unopenable"
    status = 500
