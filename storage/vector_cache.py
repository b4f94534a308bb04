"""A replica's in-memory copy of its busiest users' vectors, so a search ranks them in numpy.

At a million rows, LanceDB's prefiltered search spends its time fetching one user's rows out of
the whole table (18-136 ms for 10k vectors, depending on how scattered they are), not ranking
them (under 2 ms in numpy). A user's vectors, their img_ids and row ids are loaded once; a search
then ranks them exactly and takes its top k rows by row id.

Kept true to the table:
- Each entry remembers the table version it was checked at. When the version moves, the user's
  row count and rows created since the newest cached one are read (two indexed queries): new
  rows are appended, a count that does not add up reloads the user.
- Rows come back by row id and are checked against what the cache expected (same img_id, same
  user). A row deleted or rewritten since (caption updates rewrite rows, compaction moves them)
  fails that check, and the search reloads the user and runs again.
- An entry is reloaded in full after `ttl_s` whatever happened: the one change the two checks
  cannot see (as many rows deleted as rows inserted with back-dated `created_at`) lasts no longer.
- Byte-bounded LRU over users; a user larger than the whole budget is not cached.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
from cachetools import LRUCache


@dataclass
class UserVectors:
    """One user's rows as the cache holds them: unit vectors, ids, and what they were checked against."""

    version: int
    count: int
    newest_us: int  # created_at of the newest row, microseconds since the epoch
    img_ids: list[str]
    row_ids: np.ndarray  # uint64, aligned with img_ids
    vectors: np.ndarray  # float32 (n, dim), L2-normalised
    loaded_at: float = field(default_factory=time.monotonic)

    @property
    def nbytes(self) -> int:
        return int(self.vectors.nbytes + self.row_ids.nbytes + 48 * len(self.img_ids)) + 200

    def top(self, query: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions and cosine similarities of the `depth` best rows, best first."""
        if not len(self.img_ids):
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        scores = self.vectors @ query
        depth = min(depth, len(scores))
        if depth < len(scores):
            best = np.argpartition(-scores, depth - 1)[:depth]
        else:
            best = np.arange(len(scores))
        best = best[np.lexsort((best, -scores[best]))]  # by score, ties by position: deterministic
        return best, scores[best]


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (cosine similarity becomes a dot product); zero rows stay zero."""
    vectors = np.array(vectors, dtype=np.float32, order="C")  # a writable copy: Arrow's buffers are read-only
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    np.divide(vectors, norms, out=vectors, where=norms > 0)
    return vectors


class VectorCache:
    """Thread-safe LRU of `UserVectors`, bounded by bytes."""

    def __init__(self, max_bytes: int, ttl_s: float):
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._entries: LRUCache = LRUCache(maxsize=max(1, max_bytes), getsizeof=lambda e: e.nbytes)
        self._lock = threading.Lock()
        self.hits = self.loads = self.refreshes = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def get(self, user_id: str) -> UserVectors | None:
        with self._lock:
            entry = self._entries.get(user_id)
        if entry is not None and time.monotonic() - entry.loaded_at > self.ttl_s:
            self.drop(user_id)
            return None
        return entry

    def put(self, user_id: str, entry: UserVectors) -> None:
        if entry.nbytes > self.max_bytes:
            self.drop(user_id)
            return
        with self._lock:
            self._entries[user_id] = entry

    def drop(self, user_id: str) -> None:
        with self._lock:
            self._entries.pop(user_id, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
