"""The five model roles as plain Python classes: no Ray, no HTTP, testable alone.

Names resolve on first use: `from models.configs import EmbedderConfig` (or any
config) costs no torch import, which the ingress and the ingestion tasks rely on.
"""

from importlib import import_module

_WHERE = {
    "ModelConfig": "configs", "EmbedderConfig": "configs", "WriterConfig": "configs", "PainterConfig": "configs",
    "DescriberConfig": "configs", "GuardConfig": "configs", "GUARD_CATEGORIES": "configs",
    "GuardInputError": "errors", "Guard": "guard", "ImageGuard": "guard", "Verdict": "guard", "CATEGORIES": "guard",
    "DescriberInputError": "errors", "EmbedderInputError": "errors", "ModelError": "errors",
    "ModelInputError": "errors", "ModelNotFound": "errors", "ModelUnavailable": "errors",
    "PainterInputError": "errors", "WriterInputError": "errors", "MARKER": "configs",
    "ModelRole": "base", "Describer": "describer", "Embedder": "embedder", "Painter": "painter",
    "PaintResult": "painter", "Writer": "writer", "ChatResult": "writer", "Vector": "vector",
    "Operation": "base", "operation": "base",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
