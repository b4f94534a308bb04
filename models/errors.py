"""Typed errors of the model roles: their own family (no storage, no HTTP); the edge maps them by `status`."""

from __future__ import annotations


class ModelError(Exception):
    """Base of every error a model role raises on purpose.

    `code` is the snake_case string of the JSON error shape and `status` the HTTP status the edge
    answers with; this layer never imports HTTP, it only picks a subclass.
    """

    code: str = "model_error"
    status: int = 500
    retry_after: float | None = None

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code


class ModelInputError(ModelError):
    """A caller's value the model cannot take (400), e.g. a prompt over its length limit."""

    code = "invalid_model_input"
    status = 400


class ModelNotFound(ModelError):
    """A role's checkpoint could not be found or loaded; the service cannot start that role."""

    code = "model_load_failed"
    status = 503


class ModelUnavailable(ModelError):
    """A role is loaded but cannot answer now (not loaded yet, broken, or produced nothing usable)."""

    code = "model_unavailable"
    status = 503
    retry_after = 1.0


class Cancelled(ModelError):
    """The caller went away or cancelled: the model stopped at its next step or token (nginx's 499)."""

    code = "cancelled"
    status = 499


class EmbedderInputError(ModelInputError):
    code = "invalid_embedder_input"


class WriterInputError(ModelInputError):
    code = "invalid_writer_input"


class PainterInputError(ModelInputError):
    code = "invalid_painter_input"


class DescriberInputError(ModelInputError):
    code = "invalid_describer_input"


class GuardInputError(ModelInputError):
    code = "invalid_guard_input"
