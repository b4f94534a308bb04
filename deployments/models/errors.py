"""Typed errors of the model roles; the ingress maps them to HTTP through their `status`."""

from __future__ import annotations

from storage.errors import AtelierError, InvalidInput, Unavailable


class ModelNotFound(AtelierError):
    """A role's checkpoint could not be found or loaded; the service cannot start that role."""

    code = "model_not_found"
    status = 503


class ModelUnavailable(Unavailable):
    """A role is loaded but cannot answer now (not loaded yet, broken, or produced nothing usable)."""

    code = "model_unavailable"


class EmbedderInputError(InvalidInput):
    code = "invalid_embedder_input"


class WriterInputError(InvalidInput):
    code = "invalid_writer_input"


class PainterInputError(InvalidInput):
    code = "invalid_painter_input"


class DescriberInputError(InvalidInput):
    code = "invalid_describer_input"
