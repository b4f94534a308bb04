"""Search in a gallery table, always within one user: vector search (in-memory ranking of a cached user,
LanceDB's flat scan, or its ANN index), full text over captions and descriptions, and their fusion.

Scores are cosine similarities for vector hits, BM25 for text hits, and reciprocal-rank-fusion scores
when both are asked for (two scales cannot be added, ranks can).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from cachetools import TTLCache
from lancedb.query import MatchQuery

from storage.errors import InvalidInput
from storage.schema import READ_COLUMNS
from storage.settings import StorageSettings
from storage.vector_cache import TableVectors
from storage.words import words_for_search

from .filters import row_out, user_filter

VECTOR_INDEX = "vector_idx"
_MAX_QUERY_CHARS = 1000
NEAR_COLUMNS = ["img_id", "content_hash", "meta"]  # what a near-duplicate check reads of a candidate
_RRF_C = 60  # the usual reciprocal-rank-fusion constant: damps the weight of the very first ranks


class GallerySearch:
    """The read side of a gallery table that ranks: `search` (vector, optionally fused with text) and `search_text`."""

    def __init__(self, table, settings: StorageSettings, *, dim: int, vectors: TableVectors,
                 index_names: Callable[[], frozenset[str]]):
        self.table, self.settings, self.dim = table, settings, dim
        self.vectors = vectors
        self._index_names = index_names
        # Per-user row counts decide exact vs ANN search; a few seconds of staleness only moves
        # a user across the threshold a little late.
        self._user_rows: TTLCache = TTLCache(maxsize=10_000, ttl=10)

    def user_changed(self, user_id: str) -> None:
        """A write of this process changed the user's row count."""
        self._user_rows.pop(user_id, None)

    def search(self, user_id: str, vector: Any, *, k: int = 10, text: str | None = None,
               exact: bool | None = None) -> list[dict]:
        """A user's k best rows for a query vector, best first (see `Gallery.search`)."""
        where = user_filter(user_id)
        self.check_k(k)
        q = self.query_vector(vector)
        words = self.query_words(text) if text is not None else ""
        depth = k * 2 if words else k
        hits = self._cached(user_id, q, depth) if exact is None and self.vectors.cache.enabled else None
        if hits is None:
            hits = self._table_search(user_id, where, q, depth, exact)
        if not words:
            return hits[:k]
        return fuse(hits, self._fts(where, words, depth), k)

    def warm(self, user_id: str) -> None:
        """Bring what a vector search of the user reads up to the table's current version: the cached entry
        (loaded, extended or kept), else the user's row count that picks flat or ANN. An upload calls it while
        the Embedder works, so that its near-duplicate search after the embedding finds it done."""
        if self.vectors.cache.enabled and self.vectors.entry(user_id) is not None:
            return
        self.use_ann(user_id)

    def near(self, user_id: str, vector: Any, *, k: int, keep: Callable[[dict], bool]) -> list[dict]:
        """Of the user's k nearest rows (`img_id`, `content_hash`, `meta` and `score`, the cosine similarity), those
        `keep` keeps. A cached user's candidates are ranked in memory and only the kept ones proven still in the
        table (`TableVectors.rank`); otherwise LanceDB's search answers them."""
        self.check_k(k)
        q = self.query_vector(vector)
        if self.vectors.cache.enabled:
            ranked = self.vectors.rank(user_id, q, k, columns=NEAR_COLUMNS,
                                       keep=lambda row, score: keep({**row_out(row), "score": score}))
            if ranked is not None:
                return [{**row_out(row), "score": score} for row, score in ranked]
        return [hit for hit in self._table_search(user_id, user_filter(user_id), q, k, None) if keep(hit)]

    def search_text(self, user_id: str, text: str, *, k: int = 10) -> list[dict]:
        """A user's k best rows by full text over captions and descriptions (`score` = BM25)."""
        where = user_filter(user_id)
        self.check_k(k)
        words = self.query_words(text)
        return self._fts(where, words, k) if words else []

    def _cached(self, user_id: str, q: np.ndarray, depth: int) -> list[dict] | None:
        ranked = self.vectors.rank(user_id, q, depth)
        if ranked is None:
            return None
        return [{**row_out(row), "score": score} for row, score in ranked]

    def _table_search(self, user_id: str, where: str, q: np.ndarray, depth: int, exact: bool | None) -> list[dict]:
        """LanceDB's own search, prefiltered to the user: flat, or the ANN index with a refine step."""
        use_ann = self.use_ann(user_id) if exact is None else (not exact and self.has_vector_index())
        query = (self.table.search(q, vector_column_name="vector").distance_type("cosine")
                 .where(where, prefilter=True).select(READ_COLUMNS + ["_distance"]).limit(depth))
        if use_ann:
            query = query.minimum_nprobes(self.settings.ann_nprobes).refine_factor(self.settings.ann_refine_factor)
            # A narrow filter may leave the probed partitions short of k rows: probe further then.
            query = query.maximum_nprobes(0)
            if self.settings.ann_index_type == "IVF_HNSW_SQ":
                # The refine step asks the graph for depth * refine_factor candidates, and
                # HNSW refuses an ef below what it is asked for.
                query = query.ef(max(self.settings.ann_ef, depth * self.settings.ann_refine_factor))
        else:
            query = query.bypass_vector_index()
        hits = []
        for r in query.to_list():
            out = row_out(r)
            out["score"] = 1.0 - float(r["_distance"])
            hits.append(out)
        return hits

    def _fts(self, where: str, words: str, limit: int) -> list[dict]:
        # MatchQuery: the words are matched as terms, never parsed as a query language.
        query = (self.table.search(MatchQuery(words, "search_text"), query_type="fts")
                 .where(where, prefilter=True).select(READ_COLUMNS + ["_score"]).limit(limit))
        hits = []
        for r in query.to_list():
            out = row_out(r)
            out["score"] = float(r["_score"])
            hits.append(out)
        return hits

    def has_vector_index(self) -> bool:
        return VECTOR_INDEX in self._index_names()

    def use_ann(self, user_id: str) -> bool:
        if not self.has_vector_index():
            return False
        rows = self._user_rows.get(user_id)
        if rows is None:
            rows = self._user_rows[user_id] = self.table.count_rows(user_filter(user_id))
        return rows > self.settings.flat_search_max_rows

    def check_k(self, k: Any) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= self.settings.search_max_k:
            raise InvalidInput(f"k must be an integer in 1..{self.settings.search_max_k}", field="k")

    def query_vector(self, vector: Any) -> np.ndarray:
        try:
            q = np.asarray(vector, dtype=np.float32).reshape(-1)
        except (ValueError, TypeError):
            raise InvalidInput("the query vector must be numbers", field="vector") from None
        if q.shape[0] != self.dim:
            raise InvalidInput(f"the query vector has {q.shape[0]} values; this gallery's model makes {self.dim}",
                               field="vector")
        if not np.isfinite(q).all() or not q.any():
            raise InvalidInput("the query vector is all zeros or not finite", field="vector")
        return q

    @staticmethod
    def query_words(text: Any) -> str:
        if not isinstance(text, str):
            raise InvalidInput("the text query must be a string", field="q")
        if len(text) > _MAX_QUERY_CHARS:
            raise InvalidInput(f"the text query is longer than {_MAX_QUERY_CHARS} characters", field="q")
        return words_for_search(text).strip()


def fuse(vector_hits: list[dict], text_hits: list[dict], k: int) -> list[dict]:
    """Reciprocal rank fusion: scores from two scales (cosine, BM25) cannot be added, ranks can."""
    scores: dict[str, float] = {}
    rows: dict[str, dict] = {}
    for ranked in (vector_hits, text_hits):
        for rank, row in enumerate(ranked):
            scores[row["img_id"]] = scores.get(row["img_id"], 0.0) + 1.0 / (_RRF_C + rank + 1)
            rows.setdefault(row["img_id"], row)
    best = sorted(scores, key=lambda i: (-scores[i], i))[:k]
    return [{**rows[i], "score": scores[i]} for i in best]
