"""A gallery with two embedding models' tables, written through its one writer (in-process): what a model
backfill copies, and what users delete or edit meanwhile, never cross (real LanceDB in a temp folder)."""

from __future__ import annotations

import numpy as np
import pytest

from storage.gallery_writer import GalleryWrites
from storage.settings import StorageSettings


OLD, NEW = ("tiny/old-model", 8), ("tiny/new-model", 6)


def _row(user: str, n: int, dim: int, caption: str = "") -> dict:
    rng = np.random.default_rng(n)
    return {"user_id": user, "content_hash": f"{n:064x}", "image_uri": f"b/{n}.png", "display_uri": f"b/{n}.jpg",
            "width": 8, "height": 8, "source": "upload", "caption": caption, "description": "",
            "vector": rng.standard_normal(dim).astype(np.float32)}


def _as_new(row: dict) -> dict:
    """The backfill's copy of a stored row: the same image and texts, the new model's vector."""
    return {**row, "embed_model": NEW[0], "vector": np.random.default_rng(7).standard_normal(NEW[1]).astype(np.float32)}


@pytest.fixture
def writes(tmp_path) -> GalleryWrites:
    return GalleryWrites(StorageSettings(lancedb_uri=str(tmp_path / "db"), purge_within_s=3600))


def test_copy_rows_copies_once_and_never_brings_back_a_deleted_image(writes):
    stored = writes.upsert(OLD, [_row("ann", i, OLD[1], caption=f"c{i}") for i in range(5)])["rows"]
    copies = [_as_new(r) for r in stored]
    writes.delete(OLD, "ann", stored[0]["img_id"])  # deleted after the backfill read it
    writes.update(OLD, "ann", stored[1]["img_id"], caption="edited meanwhile")
    assert writes.copy_rows(OLD, NEW, copies) == {"copied": 4, "already": 0, "gone": 1}
    assert writes.copy_rows(OLD, NEW, copies) == {"copied": 0, "already": 4, "gone": 1}  # idempotent
    new = writes.gallery(NEW)
    rows = {r["img_id"]: r for r in new.list("ann", limit=100)[0]}
    assert set(rows) == {r["img_id"] for r in stored[1:]}
    assert rows[stored[1]["img_id"]]["caption"] == "edited meanwhile"  # the texts it has now, not when read
    assert {r["embed_model"] for r in rows.values()} == {NEW[0]}


def test_deletes_and_edits_reach_every_models_table(writes):
    stored = writes.upsert(OLD, [_row("bob", i, OLD[1]) for i in range(3)])["rows"]
    writes.copy_rows(OLD, NEW, [_as_new(r) for r in stored])
    writes.update(NEW, "bob", stored[0]["img_id"], description="from the vision model")
    assert writes.gallery(OLD).get("bob", stored[0]["img_id"])["description"] == "from the vision model"
    assert writes.delete(NEW, "bob", stored[1]["img_id"])["img_id"] == stored[1]["img_id"]
    for table in (OLD, NEW):
        assert {r["img_id"] for r in writes.gallery(table).list("bob", limit=10)[0]} == {stored[0]["img_id"],
                                                                                      stored[2]["img_id"]}
    writes.delete_user(OLD, "bob")
    assert writes.gallery(OLD).count("bob") == writes.gallery(NEW).count("bob") == 0


def test_an_image_only_the_other_model_holds_is_found_and_deleted(writes):
    """Stored through a replica of the new model while the switch rolls out, deleted through an old one."""
    only_new = writes.upsert(NEW, [{**_row("cat", 9, NEW[1]), "embed_model": NEW[0]}])["rows"][0]
    assert writes.delete(OLD, "cat", only_new["img_id"])["img_id"] == only_new["img_id"]
    assert writes.gallery(NEW).count("cat") == 0
    assert writes.delete(OLD, "cat", only_new["img_id"]) is None  # gone everywhere: a 404 for the caller


def test_a_table_asked_for_with_another_dimension_is_refused(writes):
    from storage.errors import InvalidInput

    writes.gallery(OLD)
    with pytest.raises(InvalidInput, match="8-d"):
        writes.gallery((OLD[0], 12))


def test_an_import_is_taken_back_from_every_models_table_and_nothing_else_goes(writes):
    """Issue 32, undo an import: the rows a bulk job stored (its id in their meta), in both models' tables
    (one stored only through a new model's replica during a switch); the user's own uploads, another job's rows
    and another user's rows stay, and the purge that makes the delete final is scheduled."""
    job, other_job = "a" * 32, "b" * 32

    def imported(user: str, n: int, dim: int, job_id: str, **extra) -> dict:
        return {**_row(user, n, dim), "source": "ingest", "meta": {"ingest_job": job_id, "name": f"{n}.jpg"}, **extra}

    own = writes.upsert(OLD, [_row("dan", i, OLD[1]) for i in range(3)])["rows"]
    mine = writes.upsert(OLD, [imported("dan", 10 + i, OLD[1], job) for i in range(4)])["rows"]
    writes.copy_rows(OLD, NEW, [_as_new(r) for r in mine[:2]])  # the backfill copied two of them
    only_new = writes.upsert(NEW, [imported("dan", 20, NEW[1], job, embed_model=NEW[0])])["rows"]
    kept = writes.upsert(OLD, [imported("dan", 30, OLD[1], other_job), imported("eve", 40, OLD[1], job)])["rows"]
    # A row whose meta merely mentions the id (a name) is not the job's.
    named = writes.upsert(OLD, [imported("dan", 50, OLD[1], other_job, meta={"name": job})])["rows"]
    gone = writes.delete_import(OLD, "dan", job)
    assert {r["img_id"] for r in gone} == {r["img_id"] for r in mine + only_new}
    assert {r["image_uri"] for r in gone} == {r["image_uri"] for r in mine + only_new}  # the blobs to delete
    assert {r["img_id"] for r in writes.gallery(OLD).list("dan", limit=100)[0]} == \
        {r["img_id"] for r in own + kept[:1] + named}
    assert writes.gallery(NEW).count("dan") == 0
    assert writes.gallery(OLD).count("eve") == 1
    assert writes.purge_status()["pending"] >= 1
    assert writes.delete_import(OLD, "dan", job) == []  # taken back already: nothing more goes
    assert writes.delete_import(OLD, "dan", "not a job id") == []


def test_a_backfill_judges_near_duplicate_pairs_again_by_the_new_model(writes):
    """Issue 32: the old model's near-shot pair is not carried over (its cosine is not the new model's); the new
    model's near shots are found; a same picture (the perceptual hash) stays one whatever the model."""
    def row(n: int, phash: str, near: list | None = None) -> dict:
        return {**_row("bo", n, OLD[1]), "meta": {"phash": phash, **({"near": near} if near else {})}}

    a = writes.upsert(OLD, [row(1, "0" * 16)])["rows"][0]
    b, c, d = writes.upsert(OLD, [row(2, "f" * 16, near=[[a["img_id"], "near_shot", 0.01]]),
                                  row(3, "0f" * 8), row(4, "f0" * 8)])["rows"]
    e = writes.upsert(OLD, [row(5, "00ff" * 4)])["rows"][0]
    f = writes.upsert(OLD, [row(6, "00ff" * 4)])["rows"][0]  # the same picture as e (equal hashes)
    rng = np.random.default_rng(3)
    basis = np.eye(NEW[1], dtype=np.float32)
    new_vectors = {a["img_id"]: basis[0], b["img_id"]: basis[1],  # apart under the new model
                   c["img_id"]: basis[2], d["img_id"]: basis[2] + 0.01 * basis[3],  # a near shot under it
                   e["img_id"]: basis[4], f["img_id"]: basis[5] + 0.1 * rng.standard_normal(NEW[1]).astype(np.float32)}
    copies = [{**_as_new(r), "vector": new_vectors[r["img_id"]]} for r in (a, b, c, d, e, f)]
    assert writes.copy_rows(OLD, NEW, copies[:3])["copied"] == 3
    assert writes.copy_rows(OLD, NEW, copies[3:])["copied"] == 3  # a later batch finds the earlier one's photos
    pairs = {(x, y): kind for x, y, kind, _ in writes.gallery(NEW).near_pairs("bo")}
    assert pairs == {(d["img_id"], c["img_id"]): "near_shot", (f["img_id"], e["img_id"]): "same_picture"}, pairs
    assert (b["img_id"], a["img_id"]) in {(x, y) for x, y, _, _ in writes.gallery(OLD).near_pairs("bo")}
