"""The product service: `ProductService` holds the product's verbs (texts, photos, search, generation,
conversation) over one shared context, with a typed method per product operation.

It runs over the model gateway (`models`: `call(role, op, ...)` over Serve handles, or over the plain
model classes in-process), the storage library, the answer cache (`cache`), the shared ledgers (`state`)
and the ingest desk (`ingest`). No FastAPI here; the HTTP routers call it.
"""

from .context import ChatAnswer, Described, Generated, Policy, SearchAnswer, is_english
from .product import ProductService

__all__ = ["ChatAnswer", "Described", "Generated", "Policy", "ProductService", "SearchAnswer", "is_english"]
