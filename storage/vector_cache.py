"""A replica's in-memory copy of recently searched users' rows, so a search ranks them in numpy.

At a million rows, LanceDB's prefiltered search spends its time fetching one user's rows out of
the whole table (20-140 ms for 10k vectors, depending on how scattered they are) and then the
returned columns of its top rows (~20 ms: a random take costs ~2 ms per column), not ranking
(under 1 ms in numpy). A user's vectors, returned columns, primary keys and row ids are loaded
once; a search then ranks the vectors exactly and answers from memory.

Kept true to the table:
- Each entry remembers the table version it was checked at. When the version moves (anyone's
  write), two counts through the user_id index decide: the user's rows, and those created after
  the newest cached one. Same count and none newer: unchanged. Only newer rows, as many as the
  count grew: appended. Anything else: reloaded.
- Before answering, the top rows' primary keys are taken from the table by row id, one column.
  A row deleted or rewritten since (a caption update rewrites the row) or renumbered by
  compaction shows as a missing or different key, and the search reloads the user and ranks again.
- An entry is reloaded in full after `ttl_s` whatever happened. That bounds the changes the counts
  cannot see: as many rows deleted as inserted with a `created_at` no later than the newest
  cached one (back-dated rows); and a rewritten row that compaction happens to renumber to its
  old row id. The replica that makes a caption update or delete drops the user.
- Byte-bounded LRU over users. A user larger than a quarter of the budget is not cached (and
  remembered as such); one load per user at a time.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from cachetools import LRUCache, TTLCache


@dataclass
class UserVectors:
    """One user's rows as the cache holds them: unit vectors, ids, and what they were checked against."""

    version: int
    count: int
    newest_us: int  # created_at of the newest row, microseconds since the epoch
    keys: list[str]  # primary keys, aligned with everything below
    row_ids: np.ndarray  # uint64 row ids at the version the entry was loaded
    vectors: np.ndarray  # float32 (n, dim), L2-normalised
    rows: pa.Table  # the columns a search returns
    loaded_at: float = field(default_factory=time.monotonic)

    @property
    def nbytes(self) -> int:
        return int(self.vectors.nbytes + self.row_ids.nbytes + self.rows.nbytes + 120 * len(self.keys)) + 200

    def top(self, query: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions and cosine similarities of the `depth` best rows, best first."""
        if not self.count:
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
        self.max_entry_bytes = max_bytes // 4  # one user never takes more than a quarter of the budget
        self.ttl_s = ttl_s
        self._entries: LRUCache = LRUCache(maxsize=max(1, max_bytes), getsizeof=lambda e: e.nbytes)
        # Users found too large, with their row count then: they search the table, not the cache,
        # until they shrink or the TTL passes (no reload per search).
        self._too_large: TTLCache = TTLCache(maxsize=10_000, ttl=ttl_s)
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self.hits = self.loads = self.refreshes = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def get(self, user_id: str) -> UserVectors | None:
        with self._lock:
            entry = self._entries.get(user_id)
            if entry is not None and time.monotonic() - entry.loaded_at > self.ttl_s:
                del self._entries[user_id]
                return None
        return entry

    def put(self, user_id: str, entry: UserVectors) -> bool:
        """Keep the entry; False (and the user remembered as too large) when it exceeds its share."""
        with self._lock:
            if entry.nbytes > self.max_entry_bytes:
                self._entries.pop(user_id, None)
                self._too_large[user_id] = entry.count
                return False
            self._entries[user_id] = entry
            return True

    def too_large(self, user_id: str, count: int) -> bool:
        """Whether a user of `count` rows was found too large at this size or less."""
        with self._lock:
            known = self._too_large.get(user_id)
        return known is not None and count >= known

    def load_lock(self, user_id: str) -> threading.Lock:
        """One load of a user at a time in this process: concurrent first searches wait for it."""
        with self._lock:
            if len(self._loading) > 10_000:
                self._loading = {u: lock for u, lock in self._loading.items() if lock.locked()}
            return self._loading.setdefault(user_id, threading.Lock())

    def drop(self, user_id: str) -> None:
        with self._lock:
            self._entries.pop(user_id, None)
