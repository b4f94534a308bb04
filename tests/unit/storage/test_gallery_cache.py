"""The per-replica vector cache: exact like numpy, and never staler than the table.

Two Gallery objects on one folder stand for the ingress (reads, cache) and the GalleryWriter
(writes) of the service: every write below happens through the other one, as in production.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import numpy as np
import pytest

from storage.gallery import Gallery
from storage.settings import StorageSettings

from test_gallery_search import cosine_top, rows_for

MODEL = "test/embedder"
DIM = 32


def pair(tmp_path, **settings) -> tuple[Gallery, Gallery]:
    base = {"lancedb_uri": str(tmp_path / "db"), "blob_root": str(tmp_path / "blobs"), **settings}
    writer = Gallery.open(StorageSettings(**base), dim=DIM, embed_model=MODEL)
    reader = Gallery.open(StorageSettings(**base), dim=DIM, embed_model=MODEL)
    return writer, reader


def ids_of(hits: list[dict]) -> list[str]:
    return [h["img_id"] for h in hits]


def test_cached_search_is_exact_and_per_user(tmp_path):
    rng = np.random.default_rng(3)
    writer, reader = pair(tmp_path)
    alice = rng.standard_normal((3000, DIM)).astype(np.float32)
    queries = rng.standard_normal((15, DIM)).astype(np.float32)
    bob = queries + 0.01 * rng.standard_normal(queries.shape).astype(np.float32)  # Bob sits on the queries
    rows = rows_for("alice", alice) + rows_for("bob", bob)
    order = rng.permutation(len(rows))  # users interleaved in storage
    stored = writer.upsert([rows[i] for i in order])["rows"]
    by_hash = {r["content_hash"]: r["img_id"] for r in stored}
    alice_ids = np.array([by_hash[r["content_hash"]] for r in rows[:3000]])
    for q in queries:
        truth, sims = cosine_top(alice, q, 10)
        hits = reader.search("alice", q, k=10)
        assert ids_of(hits) == list(alice_ids[truth]) == ids_of(reader.search("alice", q, k=10, exact=True))
        np.testing.assert_allclose([h["score"] for h in hits], sims, atol=1e-5)
        assert {h["user_id"] for h in hits} == {"alice"} and "vector" not in hits[0]
    assert reader._vectors.loads == 1 and reader._vectors.hits == len(queries) - 1
    # Bob's own search finds his rows, not Alice's; an unknown user finds nothing.
    assert reader.search("bob", queries[0], k=1)[0]["content_hash"] == rows[3000]["content_hash"]
    assert reader.search("nobody", queries[0], k=5) == []


def test_the_cache_follows_inserts_deletes_updates_and_compaction_by_another_process(tmp_path):
    rng = np.random.default_rng(5)
    writer, reader = pair(tmp_path)
    writer.upsert(rows_for("alice", rng.standard_normal((400, DIM)).astype(np.float32))
                  + rows_for("bob", rng.standard_normal((400, DIM)).astype(np.float32)))
    q = rng.standard_normal(DIM).astype(np.float32)
    before = reader.search("alice", q, k=5)
    assert reader._vectors.loads == 1

    # Alice gains a row right on the query: found next search, by appending, not reloading.
    added = writer.upsert(rows_for("alice", q[None, :] * 2, start=1000))["rows"][0]
    hits = reader.search("alice", q, k=5)
    assert hits[0]["img_id"] == added["img_id"] and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert ids_of(hits[1:]) == ids_of(before[:4])
    assert reader._vectors.loads == 1 and reader._vectors.refreshes == 1

    # Bob's writes move the table version but leave Alice's cached vectors as they are.
    writer.upsert(rows_for("bob", rng.standard_normal((3, DIM)).astype(np.float32), start=2000))
    assert ids_of(reader.search("alice", q, k=5)) == ids_of(hits)
    assert reader._vectors.loads == 1

    # A caption update rewrites the row: the search returns the new caption, never the old row.
    writer.update("alice", added["img_id"], caption="海边日落")
    hits = reader.search("alice", q, k=5)
    assert hits[0]["img_id"] == added["img_id"] and hits[0]["caption"] == "海边日落"

    # Deleting the best row: it is gone from the next search.
    writer.delete("alice", added["img_id"])
    hits = reader.search("alice", q, k=5)
    assert added["img_id"] not in ids_of(hits) and ids_of(hits) == ids_of(before)

    # Compaction moves every row (row ids change): results stay the same.
    writer.optimize()
    assert ids_of(reader.search("alice", q, k=5)) == ids_of(before)
    assert ids_of(reader.search("alice", q, k=5)) == ids_of(reader.search("alice", q, k=5, exact=True))


def test_a_back_dated_swap_is_seen_after_the_ttl(tmp_path):
    """One row deleted and one inserted with an old created_at keep the count and the newest row:
    the one change the version checks cannot see. The full reload after the TTL does."""
    rng = np.random.default_rng(9)
    writer, reader = pair(tmp_path, vector_cache_ttl_s=0.5)
    stored = writer.upsert(rows_for("alice", rng.standard_normal((50, DIM)).astype(np.float32)))["rows"]
    q = rng.standard_normal(DIM).astype(np.float32)
    reader.search("alice", q, k=3)
    old = rows_for("alice", q[None, :], start=500)[0]
    old["created_at"] = datetime(2001, 1, 1, tzinfo=timezone.utc)
    writer.delete("alice", stored[0]["img_id"])
    swapped = writer.upsert([old])["rows"][0]
    time.sleep(0.6)
    assert reader.search("alice", q, k=1)[0]["img_id"] == swapped["img_id"]


def test_deleting_one_of_the_newest_rows_then_uploading_is_seen_at_once(tmp_path):
    """One ingest commit stamps its rows with one created_at: delete one of them, add a photo, and
    the count is what it was. The new row is newer than every cached one, so it is found."""
    rng = np.random.default_rng(17)
    writer, reader = pair(tmp_path)
    batch = rows_for("alice", rng.standard_normal((20, DIM)).astype(np.float32))
    stamp = datetime.now(timezone.utc)
    for row in batch:
        row["created_at"] = stamp
    stored = writer.upsert(batch)["rows"]
    q = rng.standard_normal(DIM).astype(np.float32)
    reader.search("alice", q, k=3)
    writer.delete("alice", stored[0]["img_id"])
    added = writer.upsert(rows_for("alice", q[None, :], start=900))["rows"][0]
    hits = reader.search("alice", q, k=3)
    assert hits[0]["img_id"] == added["img_id"] and stored[0]["img_id"] not in ids_of(hits)
    assert reader._vectors.loads == 2  # same count, one newer row: the counts do not add up, so a reload


def test_a_user_too_large_in_bytes_is_loaded_once_then_searched_in_the_table(tmp_path):
    """Long descriptions make a user larger than its vectors suggest: refused once, then remembered,
    not reloaded on every search."""
    rng = np.random.default_rng(19)
    writer, reader = pair(tmp_path, vector_cache_mb=1)  # at most 256 KiB per user
    vectors = rng.standard_normal((300, DIM)).astype(np.float32)  # 38 KB of vectors
    rows = rows_for("alice", vectors)
    for row in rows:
        row["description"] = "长" * 1000  # ~900 KB of text in all
    stored = writer.upsert(rows)["rows"]
    q = rng.standard_normal(DIM).astype(np.float32)
    truth = [stored[i]["img_id"] for i in cosine_top(vectors, q, 5)[0]]
    for _ in range(3):
        assert ids_of(reader.search("alice", q, k=5)) == truth
    assert reader._vectors.loads == 1 and reader._vectors.get("alice") is None


def test_users_too_large_for_the_budget_and_a_disabled_cache_search_the_table(tmp_path):
    rng = np.random.default_rng(13)
    vectors = rng.standard_normal((6000, DIM)).astype(np.float32)  # 6000 x 128 B of vectors > 256 KiB
    writer, small = pair(tmp_path, vector_cache_mb=1)
    stored = writer.upsert(rows_for("alice", vectors) + rows_for("bob", vectors[:10]))["rows"]
    off = Gallery.open(StorageSettings(lancedb_uri=str(tmp_path / "db"), vector_cache_mb=0), dim=DIM,
                       embed_model=MODEL)
    q = rng.standard_normal(DIM).astype(np.float32)
    truth = [stored[i]["img_id"] for i in cosine_top(vectors, q, 10)[0]]
    assert ids_of(small.search("alice", q, k=10)) == truth == ids_of(off.search("alice", q, k=10))
    assert small._vectors.loads == 0 and off._vectors.loads == 0
    assert len(small.search("bob", q, k=10)) == 10 and small._vectors.loads == 1  # Bob fits


def test_uploads_one_at_a_time_are_appended_in_place_and_ranked_exactly(tmp_path):
    """An upload's refresh writes its row after the cached ones (no copy of the user's rows per upload): 100
    single-row writes, past the room the arrays started with, each search the table's exact answer; what an
    earlier entry holds is never written again."""
    from storage.vector_cache import _Grown

    rng = np.random.default_rng(11)
    writer, reader = pair(tmp_path)
    vectors = rng.standard_normal((101, DIM)).astype(np.float32)
    writer.upsert(rows_for("cleo", vectors[:1]))
    assert reader.search("cleo", vectors[0], k=1)
    for i in range(1, 101):
        writer.upsert(rows_for("cleo", vectors[i:i + 1], start=i))
        hits = reader.search("cleo", vectors[i], k=5)
        assert hits[0]["content_hash"] == rows_for("cleo", vectors[i:i + 1], start=i)[0]["content_hash"], i
        assert ids_of(hits) == ids_of(reader.search("cleo", vectors[i], k=5, exact=True)), i
    # Appended, not reloaded: but for the writer's compactions (every few dozen commits), which renumber rows.
    assert reader._vectors.refreshes >= 90 and reader._vectors.loads <= 5, (reader._vectors.refreshes,
                                                                             reader._vectors.loads)
    # In place while there is room; a full one is copied to one twice the size, the old arrays left as they were.
    grown = _Grown(vectors[:3], np.arange(3, dtype=np.uint64), ["a", "b", "c"], room=1)
    first = grown.vectors[:3]
    assert grown.append(vectors[3:4], np.array([3], np.uint64), ["d"]) is grown
    bigger = grown.append(vectors[4:6], np.array([4, 5], np.uint64), ["e", "f"])
    assert bigger is not grown and bigger.filled == 6 and len(bigger.row_ids) >= 6
    assert bigger.keys == ["a", "b", "c", "d", "e", "f"] and list(bigger.row_ids[:6]) == [0, 1, 2, 3, 4, 5]
    np.testing.assert_array_equal(first, vectors[:3])
    np.testing.assert_array_equal(bigger.vectors[:6], vectors[:6])


def test_a_near_duplicate_check_proves_only_the_candidates_it_keeps(tmp_path):
    """`near` ranks a cached user's candidates in memory and asks the table only about those it keeps: none
    when none is kept; a kept one that another process deleted (unseen by the counts) is never answered."""
    rng = np.random.default_rng(23)
    writer, reader = pair(tmp_path)
    writer.upsert(rows_for("alice", rng.standard_normal((60, DIM)).astype(np.float32)))
    q = rng.standard_normal(DIM).astype(np.float32)
    best = reader.search("alice", q, k=1)[0]
    proofs = reader._vectors.proofs
    assert reader.near("alice", q, k=8, keep=lambda hit: False) == []
    assert reader._vectors.proofs == proofs
    kept = reader.near("alice", q, k=8, keep=lambda hit: hit["score"] >= best["score"])
    assert ids_of(kept) == [best["img_id"]] and set(kept[0]) >= {"img_id", "content_hash", "meta", "score"}
    assert reader._vectors.proofs == proofs + 1

    # The best row swapped for a back-dated one on the query (same count, same newest row: the counts see nothing).
    old = rows_for("alice", q[None, :], start=500)[0]
    old["created_at"] = datetime(2001, 1, 1, tzinfo=timezone.utc)
    writer.delete("alice", best["img_id"])
    swapped = writer.upsert([old])["rows"][0]
    hits = reader.near("alice", q, k=8, keep=lambda hit: True)
    assert best["img_id"] not in ids_of(hits) and hits[0]["img_id"] == swapped["img_id"]
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_a_write_of_this_process_is_adopted_unread_and_proven_by_its_whole_row(tmp_path):
    """The rows an upload had written join the cached view without a read when their commit is the only one since
    it (`Gallery.adopt`); a search that takes one proves it by its key and every cached column, so a rewrite by
    another process in between is never answered; a commit in between makes the view read them back instead."""
    rng = np.random.default_rng(29)
    writer, reader = pair(tmp_path)
    writer.upsert(rows_for("alice", rng.standard_normal((40, DIM)).astype(np.float32)))
    q = rng.standard_normal(DIM).astype(np.float32)
    reader.search("alice", q, k=3)
    row = rows_for("alice", q[None, :], start=700)[0]
    done = writer.upsert([row])
    assert reader.adopt("alice", [{**done["rows"][0], "vector": row["vector"]}], done["version"])
    assert reader._vectors.adoptions == 1
    loads, refreshes, proofs = reader._vectors.loads, reader._vectors.refreshes, reader._vectors.proofs
    hits = reader.search("alice", q, k=3)
    assert hits[0]["img_id"] == done["rows"][0]["img_id"] and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert hits == reader.search("alice", q, k=3)  # the second search proves it by the row id it learnt
    assert (reader._vectors.loads, reader._vectors.refreshes) == (loads, refreshes)
    assert reader._vectors.proofs == proofs + 2

    # Adopted, then rewritten elsewhere before any search took it: the new caption, never the cached one.
    row = rows_for("alice", -q[None, :], start=800)[0]
    done = writer.upsert([row])
    assert reader.adopt("alice", [{**done["rows"][0], "vector": row["vector"]}], done["version"])
    writer.update("alice", done["rows"][0]["img_id"], caption="雨后的街道")
    hits = reader.search("alice", -q, k=1)
    assert hits[0]["img_id"] == done["rows"][0]["img_id"] and hits[0]["caption"] == "雨后的街道"

    # Another commit between the view and the write: not adopted; the next search reads both.
    reader.search("alice", q, k=1)
    writer.upsert(rows_for("bob", rng.standard_normal((1, DIM)).astype(np.float32), start=900))
    row = rows_for("alice", (q + 0.001)[None, :], start=901)[0]
    done = writer.upsert([row])
    assert not reader.adopt("alice", [{**done["rows"][0], "vector": row["vector"]}], done["version"])
    assert done["rows"][0]["img_id"] in ids_of(reader.search("alice", q, k=2))


def test_rows_named_by_id_come_from_the_cache_as_the_table_has_them(tmp_path):
    """`rows_of` (what a duplicate listing reads of the photos its pairs name) answers from a cached user the rows
    the table answers, never one another process deleted since; a user not cached is read from the table (not
    loaded for it)."""
    rng = np.random.default_rng(31)
    writer, reader = pair(tmp_path)
    stored = writer.upsert(rows_for("alice", rng.standard_normal((30, DIM)).astype(np.float32))
                           + rows_for("bob", rng.standard_normal((3, DIM)).astype(np.float32), start=100))["rows"]
    alice = [r["img_id"] for r in stored[:30]]
    wanted = set(alice[:5]) | {stored[30]["img_id"], "f" * 32, "not an id"}  # Bob's and unknown ids: not Alice's
    uncached = Gallery.open(StorageSettings(lancedb_uri=str(tmp_path / "db"), blob_root=str(tmp_path / "blobs"),
                                            vector_cache_mb=0), dim=DIM, embed_model=MODEL)
    assert reader.rows_of("alice", wanted) == uncached.rows_of("alice", wanted) and reader._vectors.loads == 0
    reader.search("alice", rng.standard_normal(DIM).astype(np.float32), k=1)  # Alice cached
    proofs = reader._vectors.proofs
    got = reader.rows_of("alice", wanted)
    assert set(got) == set(alice[:5]) and got == uncached.rows_of("alice", wanted)
    assert reader._vectors.proofs == proofs + 1 and reader._vectors.loads == 1
    writer.delete("alice", alice[0])
    writer.upsert([{**rows_for("alice", rng.standard_normal((1, DIM)).astype(np.float32), start=200)[0],
                    "created_at": datetime(2001, 1, 1, tzinfo=timezone.utc)}])  # the same count: a swap
    assert set(reader.rows_of("alice", wanted)) == set(alice[1:5])


def test_a_view_read_across_a_commit_is_never_extended_unread(tmp_path):
    """A refresh reads the table's version, then its rows: a commit landing between leaves rows newer than their
    label. Such a view must not adopt that commit's row (it holds it already: the search would answer it twice);
    the next refresh labels it right, and adoption works again."""
    rng = np.random.default_rng(37)
    writer, reader = pair(tmp_path)
    writer.upsert(rows_for("alice", rng.standard_normal((20, DIM)).astype(np.float32)))
    q = rng.standard_normal(DIM).astype(np.float32)
    reader.search("alice", q, k=1)
    vectors = reader._search.vectors
    before = reader.table.version  # what a search read just before the upload's commit landed
    row = rows_for("alice", q[None, :], start=300)[0]
    done = writer.upsert([row])
    assert done["version"] == before + 1
    with vectors.cache.load_lock("alice"):
        vectors._load("alice", before)  # its rows read after the commit, under the label read before it
    assert not vectors.cache.get("alice").exact
    assert not reader.adopt("alice", [{**done["rows"][0], "vector": row["vector"]}], done["version"])
    hits = reader.search("alice", q, k=3)
    assert ids_of(hits).count(done["rows"][0]["img_id"]) == 1
    assert vectors.cache.get("alice").exact and vectors.cache.get("alice").version == done["version"]
    row = rows_for("alice", -q[None, :], start=301)[0]
    done = writer.upsert([row])
    assert reader.adopt("alice", [{**done["rows"][0], "vector": row["vector"]}], done["version"])
