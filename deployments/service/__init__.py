"""The product service: `ProductService` holds the product's verbs (texts, photos, search, generation,
conversation) over one shared context, with a typed method per product operation.

It runs over the model gateway (`models`: `call(role, op, ...)` over Serve handles, or over the plain
model classes in-process), the storage library, the answer cache (`cache`), the shared ledgers (`state`)
and the ingest desk (`ingest`). No FastAPI here; the HTTP routers call it.

The names below load on first use (PEP 562): a model replica imports `deployments.service.models` (its
meter) and `.tasks` only, and must not pay for LanceDB, which the product's storage imports (about a second
of CPU per replica start).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .context import ChatAnswer, Described, Generated, Policy, SearchAnswer, is_english
    from .product import ProductService

_WHERE = {"ChatAnswer": ".context", "Described": ".context", "Generated": ".context", "Policy": ".context",
          "SearchAnswer": ".context", "is_english": ".context", "ProductService": ".product"}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value
