"""The product service: one plain async class (`ProductService`) with a typed method per product operation.

It runs over a model gateway (`models`: Serve handles, or the plain model classes in-process), the
storage library, the answer cache (`cache`), the shared ledgers (`state`) and the ingest desk
(`ingest`). No FastAPI here; the HTTP routers call it.
"""

from .product import ChatAnswer, Described, Generated, Policy, ProductService, SearchAnswer, is_english

__all__ = ["ChatAnswer", "Described", "Generated", "Policy", "ProductService", "SearchAnswer", "is_english"]
