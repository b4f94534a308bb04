"""Chinese full text ranks by content words: stop words (的, 在, 我 ...) are cut out of captions and
queries alike, on a real LanceDB in a temp dir."""

from __future__ import annotations

import numpy as np
import pytest
from tests.support.rows import DIM, MODEL, make_row, unit

from storage.gallery import Gallery
from storage.settings import StorageSettings

CAPTIONS = ["红色的汽车停在路边", "蓝色的天空", "我的猫", "他在公园里的长椅上看书", "一个人在海边", "红色的花"]


@pytest.fixture
def gallery(tmp_path) -> Gallery:
    gallery = Gallery.open(StorageSettings(lancedb_uri=str(tmp_path / "db"), vector_cache_mb=0), dim=DIM,
                           embed_model=MODEL)
    gallery.warm_up()
    return gallery


def by_caption(gallery: Gallery) -> dict[str, str]:
    return {r["caption"]: r["img_id"] for r in gallery.list("alice", limit=100)[0]}


def test_the_text_leg_matches_content_words_not_function_characters(gallery):
    gallery.upsert([make_row("alice", i, caption=c) for i, c in enumerate(CAPTIONS)])

    def texts(q):
        return [h["caption"] for h in gallery.search_text("alice", q, k=10)]

    hits = texts("红色的汽车")
    assert hits[0] == "红色的汽车停在路边"
    # Only 的 is shared with these: they are not text hits at all.
    assert not {"蓝色的天空", "我的猫", "他在公园里的长椅上看书", "一个人在海边"} & set(hits)
    assert set(hits) == {"红色的汽车停在路边", "红色的花"}  # 红色 is a content word
    assert texts("的") == [] and texts("我的") == []  # nothing but stop words: no text hits
    assert texts("在海边的人") == ["一个人在海边"]  # 人 is a word of its own, not a stop word
    assert texts("猫") == ["我的猫"]


def test_hybrid_search_gets_no_text_votes_for_shared_function_characters(gallery):
    captions = CAPTIONS[:5]
    q = unit(np.arange(1, DIM + 1))
    # The car is the farthest from the query vector: only the text leg can lift it.
    vectors = [unit(q + 0.05 * np.eye(DIM)[i]) for i in range(len(captions))]
    vectors[0] = unit(-q + 0.1)
    gallery.upsert([make_row("alice", i, vector=v, caption=c) for i, (c, v) in enumerate(zip(captions, vectors))])
    vector_only = {h["img_id"]: h["score"] for h in gallery.search("alice", q, k=len(captions))}
    ranks = {img_id: rank for rank, img_id in enumerate(sorted(vector_only, key=lambda i: -vector_only[i]))}
    hybrid = gallery.search("alice", q, k=len(captions), text="红色的汽车")
    ids = by_caption(gallery)
    assert hybrid[0]["img_id"] == ids["红色的汽车停在路边"]
    # A caption sharing only 的 has the vector leg's vote and no more (reciprocal rank, c = 60).
    for caption in ("蓝色的天空", "我的猫", "他在公园里的长椅上看书"):
        score = next(h["score"] for h in hybrid if h["img_id"] == ids[caption])
        assert score == pytest.approx(1.0 / (60 + ranks[ids[caption]] + 1))


def test_a_table_from_before_gets_its_words_cut_again(tmp_path):
    import jieba

    settings = StorageSettings(lancedb_uri=str(tmp_path / "db"), vector_cache_mb=0)
    gallery = Gallery.open(settings, dim=DIM, embed_model=MODEL)
    gallery.upsert([make_row("alice", i, caption=c) for i, c in enumerate(CAPTIONS)]
                   + [make_row("alice", 9, caption="A red car", description="parked")])
    # As the rows were stored before: every word jieba cut, 的 and 在 included.
    for caption in CAPTIONS:
        old = " ".join(w for w in jieba.cut_for_search(caption) if w.strip())
        gallery.table.update(where=f"caption = '{caption}'", values={"search_text": old})
    gallery.optimize()  # and indexed so

    reopened = Gallery.open(settings, dim=DIM, embed_model=MODEL)
    stored = {r["caption"]: r["search_text"] for r in reopened.table.search().select(["caption", "search_text"])
              .limit(None).to_list()}
    assert stored["红色的汽车停在路边"] == "红色 汽车 停 路边" and stored["我的猫"] == "猫"
    assert stored["A red car"] == "A red car\nparked"  # English as it was
    assert {h["caption"] for h in reopened.search_text("alice", "红色的汽车")} == {"红色的汽车停在路边", "红色的花"}
    assert reopened.upkeep.restate_words() == 0  # done once
