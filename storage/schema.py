"""The gallery row, declared once: every read and write of a gallery table goes through this model."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
from lancedb.pydantic import LanceModel, Vector
from pydantic import Field, create_model, field_validator, model_validator

from storage.words import words_for_search

SOURCES = ("upload", "generated", "ingest")
HEX32 = re.compile(r"^[0-9a-f]{32}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_USER_ID = 256
MAX_TEXT = 20_000
# C0 controls and DEL: no legitimate id holds them, and they make logs and filters ambiguous.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_user_id(user_id: Any) -> str:
    """A user id as the gallery accepts it: 1-256 characters, no control characters.

    Quotes, `%`, `_` and any script are allowed: they are escaped where they meet a filter.
    """
    if not isinstance(user_id, str) or not 0 < len(user_id) <= MAX_USER_ID:
        raise ValueError(f"user_id must be a string of 1 to {MAX_USER_ID} characters")
    if _CONTROL.search(user_id):
        raise ValueError("user_id may not contain control characters")
    return user_id


def dedup_key(user_id: str, content_hash: str) -> str:
    """One column standing for (user_id, content_hash): LanceDB's primary key takes a single column."""
    return hashlib.sha256(f"{user_id}\x00{content_hash}".encode()).hexdigest()[:32]


# The texts a row carries besides its vector: the same in every model's table of a gallery.
TEXT_FIELDS = ("caption", "description", "post_text")


def search_text_of(caption: str, description: str, post_text: str = "") -> str:
    """What full-text search matches: the user's caption, the vision model's description and the post text."""
    return words_for_search("\n".join(t for t in (caption, description, post_text) if t).strip())


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class GalleryFields(LanceModel):
    """Columns every gallery table has; `vector` is added per embedding model (its dimension varies)."""

    img_id: str = Field(default_factory=lambda: uuid.uuid4().hex, description="Opaque id, 32 hex characters, made by us.")
    user_id: str = Field(description="Owner; every read filters on it.")
    content_hash: str = Field(description="sha256 (hex) of the original upload's bytes; unique per user.")
    image_uri: str = Field(min_length=1, max_length=1024, description="Blob key of the stored original.")
    display_uri: str = Field("", max_length=1024, description="Blob key of the display copy.")
    width: int = Field(ge=1, le=1_000_000, description="Width of the original, in pixels.")
    height: int = Field(ge=1, le=1_000_000, description="Height of the original, in pixels.")
    created_at: datetime = Field(
        default_factory=lambda: datetime.now(timezone.utc),
        json_schema_extra={"tz": "UTC"},
        description="When the row was written, UTC (a naive value is taken as UTC).",
    )
    source: str = Field("upload", description="upload | generated | ingest")
    caption: str = Field("", max_length=MAX_TEXT, description="What the user wrote about the image; never model output.")
    description: str = Field("", max_length=MAX_TEXT, description="What the vision model said about the image.")
    post_text: str = Field("", max_length=MAX_TEXT, description="The Chinese post text the Writer made from the description.")
    embed_model: str = Field(min_length=1, max_length=256, description="Id of the embedding model that made `vector`.")
    meta: str = Field("{}", description="JSON object of extra facts (generation prompt, seed, size, model).")
    search_text: str = Field("", description="Derived: caption + description as words, the full-text index's input.")
    dedup_key: str = Field("", description="Derived: hash of (user_id, content_hash), the table's primary key.")

    @field_validator("user_id")
    @classmethod
    def _user_id(cls, value: str) -> str:
        return check_user_id(value)

    @field_validator("img_id")
    @classmethod
    def _img_id(cls, value: str) -> str:
        if not HEX32.match(value):
            raise ValueError("img_id must be 32 lowercase hex characters")
        return value

    @field_validator("content_hash")
    @classmethod
    def _content_hash(cls, value: str) -> str:
        if not SHA256.match(value):
            raise ValueError("content_hash must be a sha256 hex digest (64 lowercase hex characters)")
        return value

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        if value not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}")
        return value

    @field_validator("created_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)

    @field_validator("meta", mode="before")
    @classmethod
    def _meta(cls, value: Any) -> str:
        if value is None:
            return "{}"
        if isinstance(value, str):
            value = json.loads(value or "{}")
        if not isinstance(value, dict):
            raise ValueError("meta must be a JSON object")
        return json.dumps(value, ensure_ascii=False, default=_json_default)

    @model_validator(mode="after")
    def _derived(self) -> "GalleryFields":
        # Derived columns are recomputed on every validation, so no caller can set them wrong.
        self.search_text = search_text_of(self.caption, self.description, self.post_text)
        self.dedup_key = dedup_key(self.user_id, self.content_hash)
        return self


DERIVED = ("search_text", "dedup_key")
PRIMARY_KEY = "dedup_key"  # the table's primary key: (user_id, content_hash) as one column
COLUMNS = list(GalleryFields.model_fields)
READ_COLUMNS = [c for c in COLUMNS if c not in DERIVED]
"""What a read returns: every column but the vector and the derived ones."""


def _finite_vector(value: list[float]) -> list[float]:
    arr = np.asarray(value, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError("vector holds NaN or infinity")
    if not np.any(arr):
        raise ValueError("vector is all zeros; cosine similarity is undefined for it")
    return value


@lru_cache(maxsize=16)
def gallery_row(dim: int) -> type[GalleryFields]:
    """The row model for vectors of `dim` float32 values (the Embedder's dimension)."""
    if not isinstance(dim, int) or not 0 < dim <= 16_384:
        raise ValueError(f"vector dimension must be an int in 1..16384, got {dim!r}")
    return create_model(
        f"GalleryRow{dim}",
        __base__=GalleryFields,
        vector=(Vector(dim, nullable=False), Field(description=f"The image's embedding: {dim} float32 values.")),
        __validators__={"_finite_vector": field_validator("vector")(_finite_vector)},
    )


@lru_cache(maxsize=16)
def arrow_schema(dim: int) -> pa.Schema:
    return gallery_row(dim).to_arrow_schema()
