"""The four model roles as plain Python classes: no Ray, no HTTP, testable alone."""

from .base import ModelConfig, ModelRole
from .describer import Describer, DescriberConfig
from .embedder import Embedder, EmbedderConfig
from .errors import (DescriberInputError, EmbedderInputError, ModelNotFound, ModelUnavailable, PainterInputError,
                     WriterInputError)
from .painter import Painter, PainterConfig, PaintResult
from .writer import ChatResult, Writer, WriterConfig

__all__ = [
    "ChatResult", "Describer", "DescriberConfig", "DescriberInputError", "Embedder", "EmbedderConfig",
    "EmbedderInputError", "ModelConfig", "ModelNotFound", "ModelRole", "ModelUnavailable", "PaintResult", "Painter",
    "PainterConfig", "PainterInputError", "Writer", "WriterConfig", "WriterInputError",
]
