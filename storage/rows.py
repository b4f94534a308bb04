"""The gallery's row factory: a new row as every writer builds it (an upload, a generated image, an
ingested file). It lives apart from `storage.schema` because ingestion's read tasks and driver import
it, and the schema module imports LanceDB (3.5 s per process); the gallery validates the row against
the schema on upsert."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

import numpy as np


def new_row(*, user_id: str, content_hash: str, image_uri: str, display_uri: str, width: int, height: int,
            source: str, vector: Any, embed_model: str, caption: str | None = None, description: str | None = None,
            meta: dict[str, Any] | None = None, created_at: datetime | None = None) -> dict[str, Any]:
    """A new gallery row as every writer builds it (an upload, a generated image, an ingested file);
    the gallery validates it on upsert and derives `search_text` and `dedup_key`."""
    return {
        "img_id": uuid.uuid4().hex, "user_id": user_id, "content_hash": content_hash, "image_uri": image_uri,
        "display_uri": display_uri, "width": width, "height": height,
        "created_at": created_at or datetime.now(timezone.utc), "source": source, "caption": caption or "",
        "description": description or "", "embed_model": embed_model,
        "vector": np.asarray(vector, dtype=np.float32), "meta": meta or {},
    }
