"""A replica's in-memory copy of recently searched users' rows, so a search ranks them in numpy.

At a million rows, LanceDB's prefiltered search spends its time fetching one user's rows out of
the whole table (20-140 ms for 10k vectors, depending on how scattered they are) and then the
returned columns of its top rows (~20 ms: a random take costs ~2 ms per column), not ranking
(under 1 ms in numpy). A user's vectors, returned columns, primary keys and row ids are loaded
once; a search then ranks the vectors exactly and answers from memory.

Kept true to the table:
- Each entry remembers the table version it was checked at. When the version moves (anyone's
  write), two counts through the user_id index decide: unchanged, only new rows (appended), or
  anything else (reloaded).
- Before answering, the top rows' primary keys are taken from the table by row id, one column.
  A row deleted or rewritten since (a caption update rewrites the row) or renumbered by
  compaction shows as a missing or different key, and the search reloads the user and ranks again.
- An entry is reloaded in full after `ttl_s` whatever happened. That bounds the changes the counts
  cannot see: as many rows deleted as inserted with a back-dated `created_at`, or rows deleted at
  the newest instant and as many inserted then; and a rewritten row that compaction happens to
  renumber to its old row id. The replica that makes a caption update or delete drops the user.
- Byte-bounded LRU over users; a user larger than the whole budget is not cached.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from cachetools import LRUCache


@dataclass
class UserVectors:
    """One user's rows as the cache holds them: unit vectors, ids, and what they were checked against."""

    version: int
    count: int
    newest_us: int  # created_at of the newest row, microseconds since the epoch
    at_newest: int  # rows created at exactly that instant
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
