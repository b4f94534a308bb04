"""The gallery on a real LanceDB in a temp dir: rows, pages, text search, models kept apart, and
no user ever reaching another's rows, whatever their ids look like."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from storage.errors import InvalidInput, NotFound
from storage.gallery import Gallery
from storage.settings import StorageSettings
from tests.support.rows import DIM, MODEL, make_row, sha, unit


HOSTILE_IDS = ["' OR 1=1 --", "%", "_", "'", "''", "\\", "\\'", "a' OR user_id LIKE '%", '"; DROP TABLE x; --',
               "日落", "ünïcödé", "%' OR '1'='1", "user_id", "*", "a b", "🙂"]


@pytest.fixture
def gallery(tmp_path) -> Gallery:
    return Gallery.open(StorageSettings(lancedb_uri=str(tmp_path / "db")), dim=DIM, embed_model=MODEL)


def test_upsert_is_idempotent_by_user_and_content(gallery):
    first = gallery.upsert([make_row("alice", 1), make_row("alice", 2), make_row("alice", 1), make_row("bob", 1)])
    assert first["created"] == [True, True, False, True] and first["inserted"] == 3
    assert first["version"] == gallery.table.version  # the commit that holds the three new rows
    # The in-batch duplicate answers with the row the batch stored.
    assert first["rows"][2]["img_id"] == first["rows"][0]["img_id"]
    # Same bytes from another user are another image.
    assert first["rows"][3]["img_id"] != first["rows"][0]["img_id"]

    proposed = make_row("alice", 1, img_id="f" * 32)
    again = gallery.upsert([proposed])
    assert again == {"rows": [first["rows"][0]], "created": [False], "inserted": 0, "version": None}
    assert gallery.count() == 3 and gallery.count("alice") == 2


def test_rows_come_back_as_written(gallery):
    when = datetime(2026, 5, 1, 12, 30, 15, 123456, tzinfo=timezone(timedelta(hours=8)))
    row = make_row("alice", 1, caption="海边的日落", description="a beach at dusk", created_at=when,
                   source="generated", meta={"seed": np.int64(7), "prompt": "日落"}, img_id="a" * 32)
    stored = gallery.upsert([row])["rows"][0]
    got = gallery.get("alice", "a" * 32)
    assert got == stored
    assert got["created_at"] == when and got["created_at"].utcoffset() == timedelta(0)
    assert got["meta"] == {"seed": 7, "prompt": "日落"} and got["source"] == "generated"
    assert {"vector", "search_text", "dedup_key"}.isdisjoint(got)
    assert gallery.find_by_hash("alice", sha("alice", 1))["img_id"] == "a" * 32
    assert gallery.find_by_hash("bob", sha("alice", 1)) is None
    assert gallery.existing_hashes("alice", [sha("alice", 1), sha("alice", 2), "not-a-hash"]) == {sha("alice", 1)}


@pytest.mark.parametrize("change, field", [
    ({"content_hash": "abc"}, "content_hash"),
    ({"source": "scraped"}, "source"),
    ({"img_id": "../../etc"}, "img_id"),
    ({"user_id": "a\x00b"}, "user_id"),
    ({"user_id": ""}, "user_id"),
    ({"user_id": "x" * 300}, "user_id"),
    ({"width": 0}, "width"),
    ({"caption": "x" * 20_001}, "caption"),
    ({"meta": "[1, 2]"}, "meta"),
    ({"vector": np.zeros(DIM)}, "vector"),
    ({"vector": np.full(DIM, np.nan)}, "vector"),
    ({"vector": np.ones(DIM + 1)}, "vector"),
    ({"embed_model": "someone/else"}, "embed_model"),
])
def test_bad_rows_are_refused_naming_the_field(gallery, change, field):
    good = make_row("alice", 1)
    with pytest.raises(InvalidInput) as err:
        gallery.upsert([make_row("alice", 2), {**good, **change}])
    assert err.value.field == field and err.value.status == 400
    assert gallery.count() == 0  # nothing half-written


def test_one_row_uploads_keep_the_table_compacted(tmp_path):
    # Each commit leaves a fragment that every later upsert's key lookup scans: without compaction
    # by commit count, one-row uploads slow down linearly until optimize_every_rows is reached.
    settings = StorageSettings(lancedb_uri=str(tmp_path / "db"), optimize_every_commits=5)
    gallery = Gallery.open(settings, dim=DIM, embed_model=MODEL)
    for n in range(12):
        assert gallery.upsert([make_row("alice", n)])["created"] == [True]
    assert len(gallery.table.to_lance().get_fragments()) <= 5
    assert gallery.count("alice") == 12
    assert gallery.upsert([make_row("alice", 3)])["created"] == [False]  # still deduplicated after compaction


def test_list_is_newest_first_with_an_opaque_cursor(gallery):
    base = datetime(2026, 1, 1, tzinfo=timezone.utc)
    # Three rows share one timestamp: img_id breaks the tie, so no page repeats or skips one.
    stamps = [base + timedelta(seconds=s) for s in (5, 1, 3, 3, 3, 2, 4)]
    gallery.upsert([make_row("alice", i, created_at=t) for i, t in enumerate(stamps)])
    gallery.upsert([make_row("bob", 99, created_at=base + timedelta(seconds=10))])
    seen, cursor, pages = [], None, 0
    while True:
        rows, cursor = gallery.list("alice", limit=3, cursor=cursor)
        seen += rows
        pages += 1
        if cursor is None:
            break
    assert pages == 3 and len(seen) == 7
    order = [(r["created_at"], r["img_id"]) for r in seen]
    assert order == sorted(order, reverse=True)
    assert {r["user_id"] for r in seen} == {"alice"}
    for bad in ("garbage", "MTIzOmFiYw", "x" * 500, "LTE6" + "a" * 10):
        with pytest.raises(InvalidInput) as err:
            gallery.list("alice", cursor=bad)
        assert err.value.field == "cursor"
    with pytest.raises(InvalidInput):
        gallery.list("alice", limit=0)


def test_chinese_and_english_full_text(gallery):
    gallery.warm_up()
    gallery.upsert([
        make_row("alice", 1, caption="海边的日落"),
        make_row("alice", 2, caption="城市夜景和霓虹灯"),
        make_row("alice", 3, description="Sunsets over the sea"),
        make_row("alice", 4, caption="日落时分的山脉"),
        make_row("bob", 1, caption="日落"),
    ])
    def captions(q):
        return {h["caption"] or h["description"] for h in gallery.search_text("alice", q, k=10)}

    assert captions("日落") == {"海边的日落", "日落时分的山脉"}
    assert captions("夜景") == {"城市夜景和霓虹灯"}
    assert captions("海边日落") >= {"海边的日落"}
    assert gallery.search_text("alice", "海边日落")[0]["caption"] == "海边的日落"
    assert captions("sunset") == {"Sunsets over the sea"}  # stemmed, case-folded
    assert captions("北京") == set()
    assert gallery.search_text("alice", "  ，。!?  ") == []
    # Query syntax is never parsed: operators and quotes are just words.
    assert captions('日落" OR user_id:bob AND (*') == {"海边的日落", "日落时分的山脉"}


def test_hybrid_lifts_a_caption_match(gallery):
    q = unit(np.arange(1, DIM + 1))
    near = [unit(q + 0.05 * np.eye(DIM)[i]) for i in range(4)]
    far = unit(-q + 0.1)
    gallery.upsert([make_row("alice", i, vector=v, caption="a red car") for i, v in enumerate(near)]
                   + [make_row("alice", 9, vector=far, caption="海边的日落")])
    vector_only = gallery.search("alice", q, k=5)
    assert vector_only[-1]["caption"] == "海边的日落"
    assert vector_only[0]["score"] == pytest.approx(max(float(np.dot(q, v)) for v in near), abs=1e-4)
    assert vector_only[-1]["score"] == pytest.approx(float(np.dot(q, far)), abs=1e-4)
    hybrid = gallery.search("alice", q, k=5, text="日落")
    assert hybrid[0]["caption"] == "海边的日落"
    assert [h["score"] for h in hybrid] == sorted((h["score"] for h in hybrid), reverse=True)


def test_update_and_delete(gallery):
    rows = gallery.upsert([make_row("alice", 1, caption="old words"), make_row("bob", 1)])["rows"]
    alice_id, bob_id = rows[0]["img_id"], rows[1]["img_id"]
    updated = gallery.update("alice", alice_id, caption="新的标题", description="with a 'quote' and \\ backslash")
    assert updated["caption"] == "新的标题"
    assert gallery.get("alice", alice_id)["description"] == "with a 'quote' and \\ backslash"
    assert [h["img_id"] for h in gallery.search_text("alice", "标题")] == [alice_id]
    assert gallery.search_text("alice", "old") == []
    with pytest.raises(NotFound):
        gallery.update("alice", bob_id, caption="mine now")
    with pytest.raises(InvalidInput):
        gallery.update("alice", alice_id, caption="x" * 20_001)

    assert gallery.delete("alice", bob_id) is None
    assert gallery.get("bob", bob_id)["img_id"] == bob_id
    deleted = gallery.delete("alice", alice_id)
    assert deleted["img_id"] == alice_id and deleted["image_uri"] == "blobs/1.png"
    assert gallery.delete("alice", alice_id) is None
    with pytest.raises(NotFound):
        gallery.get("alice", alice_id)
    assert gallery.search_text("alice", "标题") == []
    assert gallery.search("alice", np.ones(DIM)) == []
    # Deleted content can be uploaded again, as a new image.
    again = gallery.upsert([make_row("alice", 1)])
    assert again["created"] == [True] and again["rows"][0]["img_id"] != alice_id


def test_each_model_searches_only_its_own_vectors(tmp_path):
    settings = StorageSettings(lancedb_uri=str(tmp_path / "db"))
    clip = Gallery.open(settings, dim=DIM, embed_model=MODEL)
    other = Gallery.open(settings, dim=16, embed_model="org/other-embedder")
    assert clip.name != other.name
    clip.upsert([make_row("alice", i) for i in range(3)])
    other.upsert([{**make_row("alice", 10 + i), "vector": np.ones(16)} for i in range(2)])
    assert {h["embed_model"] for h in clip.search("alice", np.ones(DIM), k=10)} == {MODEL}
    assert len(clip.search("alice", np.ones(DIM), k=10)) == 3
    assert {h["embed_model"] for h in other.search("alice", np.ones(16), k=10)} == {"org/other-embedder"}
    with pytest.raises(InvalidInput):
        clip.search("alice", np.ones(16))
    with pytest.raises(InvalidInput) as err:
        clip.upsert([make_row("alice", 5, embed_model="org/other-embedder")])
    assert err.value.code == "wrong_embed_model"
    # A user's deletion reaches every model's table.
    assert clip.delete_user("alice") == 3
    assert clip.count() == 0 and other.count() == 0
    # Reopening finds the same table and rows.
    clip.upsert([make_row("bob", 1)])
    assert Gallery.open(settings, dim=DIM, embed_model=MODEL).count("bob") == 1


def test_bad_queries_are_400(gallery):
    for k in (0, 101, 2.5, True):
        with pytest.raises(InvalidInput):
            gallery.search("alice", np.ones(DIM), k=k)
    for vector in (np.zeros(DIM), [float("nan")] * DIM, ["a"] * DIM, np.ones(3)):
        with pytest.raises(InvalidInput):
            gallery.search("alice", vector)
    with pytest.raises(InvalidInput):
        gallery.search_text("alice", "x" * 1001)
    for user in ("", "a\nb", None, 7, "x" * 257):
        with pytest.raises(InvalidInput):
            gallery.search(user, np.ones(DIM))
    with pytest.raises(NotFound):
        gallery.get("alice", "' OR 1=1 --")


@pytest.mark.parametrize("hostile", HOSTILE_IDS)
def test_hostile_user_ids_reach_only_their_own_rows(gallery, hostile):
    gallery.upsert([make_row("alice", 1, caption="日落"), make_row("bob", 1, caption="日落"),
                    make_row(hostile, 1, caption="日落")])
    assert {r["user_id"] for r in gallery.list(hostile)[0]} == {hostile}
    assert {h["user_id"] for h in gallery.search(hostile, np.ones(DIM), k=10)} == {hostile}
    assert {h["user_id"] for h in gallery.search_text(hostile, "日落")} == {hostile}
    assert gallery.count(hostile) == 1
    gallery.delete_user(hostile)
    assert gallery.count() == 2 and gallery.count("alice") == 1 and gallery.count("bob") == 1


_hostile = st.sampled_from(HOSTILE_IDS)
_any_text_id = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=24,
)
user_ids = st.one_of(_hostile, _any_text_id, st.builds(lambda a, b: a + b, _hostile, _any_text_id))


def test_isolation_property(tmp_path):
    """Whatever two users are called, A's search, get, list, hashes and deletes see only A's rows."""
    gallery = Gallery.open(StorageSettings(lancedb_uri=str(tmp_path / "db")), dim=DIM, embed_model=MODEL)
    truth: dict[str, dict[str, str]] = {}  # user -> {img_id: content_hash}, across examples
    counter = iter(range(10**9))

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(a=user_ids, b=user_ids, shared=st.booleans(), wipe_a=st.booleans())
    def check(a, b, shared, wipe_a):
        if a == b:
            return
        n = next(counter)
        # `shared`: B uploads the very bytes A has, which must stay two separate images.
        a_rows = [make_row(a, f"{n}-a{i}", caption="海边的日落") for i in range(2)]
        b_rows = [make_row(b, f"{n}-b{i}", caption="日落") for i in range(2)]
        if shared:
            # Captioned like every other row: ids recur across examples, and a row without the
            # caption would be missing from A's text search once B's id comes back as A's.
            b_rows.append({**make_row(b, "x", caption="日落"), "content_hash": a_rows[0]["content_hash"]})
        result = gallery.upsert(a_rows + b_rows)
        for row in result["rows"]:
            truth.setdefault(row["user_id"], {})[row["img_id"]] = row["content_hash"]
        mine, theirs = truth.get(a, {}), truth.get(b, {})

        assert {h["img_id"] for h in gallery.search(a, b_rows[0]["vector"], k=100)} == set(mine)
        assert {h["img_id"] for h in gallery.search_text(a, "日落", k=100)} == set(mine)
        assert {h["img_id"] for h in gallery.search(a, np.ones(DIM), k=100, text="日落")} <= set(mine)
        listed, cursor = [], None
        while True:
            page, cursor = gallery.list(a, limit=50, cursor=cursor)
            listed += [r["img_id"] for r in page]
            if cursor is None:
                break
        assert sorted(listed) == sorted(mine)
        assert gallery.existing_hashes(a, theirs.values()) == set(theirs.values()) & set(mine.values())
        for img_id in theirs:
            with pytest.raises(NotFound):
                gallery.get(a, img_id)
            assert gallery.delete(a, img_id) is None
            with pytest.raises(NotFound):
                gallery.update(a, img_id, caption="taken")
        assert gallery.count(b) == len(theirs)
        if wipe_a:
            gallery.delete_user(a)
            truth[a] = {}
            assert gallery.count(a) == 0
        assert gallery.count(b) == len(theirs)
        assert {gallery.get(b, i)["user_id"] for i in theirs} <= {b}

    check()
    assert gallery.count() == sum(len(v) for v in truth.values())
