"""The gallery row, declared once: every read and write of the gallery table goes through this model."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Literal

import pyarrow as pa
from lancedb.pydantic import LanceModel, Vector
from pydantic import Field, create_model

Source = Literal["upload", "generated", "ingest"]


class GalleryFields(LanceModel):
    """Columns every gallery table has; `vector` is added per embedding model (its dimension varies)."""

    img_id: str = Field(description="Opaque id, 32 hex characters, made by us.")
    user_id: str = Field(description="Owner; every read filters on it.")
    content_hash: str = Field(description="sha256 of the original upload's bytes; unique per user.")
    image_uri: str = Field(description="Blob key of the stored original.")
    display_uri: str = Field(description="Blob key of the display copy.")
    width: int
    height: int
    created_at: datetime = Field(description="UTC time the row was written.")
    source: str = Field(description="upload | generated | ingest")
    caption: str = Field(description="The user's caption, or the Chinese post text made for it.")
    description: str = Field(description="What the vision model said about the image.")
    search_text: str = Field(description="caption + description, the full-text index's input.")
    embed_model: str = Field(description="Id of the embedding model that made `vector`.")
    meta: str = Field(description="JSON of extra facts (generation prompt, seed, size, model).")


@lru_cache(maxsize=16)
def gallery_row(dim: int) -> type[LanceModel]:
    """The row model for vectors of `dim` float32 values."""
    return create_model(f"GalleryRow{dim}", __base__=GalleryFields, vector=(Vector(dim), ...))


def arrow_schema(dim: int) -> pa.Schema:
    return gallery_row(dim).to_arrow_schema()


COLUMNS = [name for name in GalleryFields.model_fields]
