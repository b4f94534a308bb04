"""The model's post text has its own column: searched like the other texts, never over the user's caption,
and added to a table written before it existed."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from tests.support.rows import DIM, MODEL, make_row

from storage.gallery import Gallery
from storage.settings import StorageSettings



@pytest.fixture
def gallery(tmp_path) -> Gallery:
    return Gallery.open(StorageSettings(lancedb_uri=str(tmp_path / "db"), vector_cache_mb=0), dim=DIM,
                        embed_model=MODEL)


def test_post_text_is_its_own_searchable_field(gallery):
    row = gallery.upsert([make_row("alice", 1, caption="my own words")])["rows"][0]
    assert row["post_text"] == ""
    updated = gallery.update("alice", row["img_id"], description="a lighthouse", post_text="灯塔在黄昏时分闪耀")
    assert (updated["caption"], updated["post_text"]) == ("my own words", "灯塔在黄昏时分闪耀")
    stored = gallery.get("alice", row["img_id"])
    assert (stored["caption"], stored["description"], stored["post_text"]) == (
        "my own words", "a lighthouse", "灯塔在黄昏时分闪耀")
    gallery.optimize()  # fold the rewritten row into the full-text index
    assert [h["img_id"] for h in gallery.search_text("alice", "灯塔")] == [row["img_id"]]
    assert [h["img_id"] for h in gallery.search_text("alice", "words")] == [row["img_id"]]
    assert gallery.search_text("bob", "灯塔") == []
    # Leaving a text out keeps it: a later description does not erase the caption or the post text.
    gallery.update("alice", row["img_id"], description="a tall lighthouse")
    assert gallery.get("alice", row["img_id"])["post_text"] == "灯塔在黄昏时分闪耀"


def test_a_table_from_before_post_text_gains_the_column(tmp_path):
    import lancedb

    from storage.gallery.table import table_name
    from storage.schema import GalleryFields, arrow_schema

    settings = StorageSettings(lancedb_uri=str(tmp_path / "db"))
    old_schema = pa.schema([f for f in arrow_schema(DIM) if f.name != "post_text"])
    data = make_row("alice", 1, caption="written before")
    vector = [float(x) for x in data.pop("vector")]
    fields = GalleryFields.model_validate({**data, "embed_model": MODEL}).model_dump()
    fields.pop("post_text")
    db = lancedb.connect(settings.lancedb_uri)
    db.create_table(table_name(settings.gallery_table, MODEL, DIM),
                    data=pa.Table.from_pylist([{**fields, "vector": vector}], schema=old_schema))

    gallery = Gallery.open(settings, dim=DIM, embed_model=MODEL)
    assert "post_text" in gallery.table.schema.names
    old = gallery.get("alice", fields["img_id"])
    assert (old["caption"], old["post_text"]) == ("written before", "")
    new = gallery.upsert([make_row("alice", 2)])["rows"][0]
    gallery.update("alice", old["img_id"], post_text="旧照片的帖子")
    assert gallery.get("alice", old["img_id"])["post_text"] == "旧照片的帖子"
    hits = gallery.search("alice", np.asarray(vector, dtype=np.float32), k=2)
    assert {h["img_id"] for h in hits} == {old["img_id"], new["img_id"]}
