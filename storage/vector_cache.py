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
- Rows this process just had written join the entry unread (`adopt`) when their commit is the only
  one since the entry's version (the writer answers the commit's version); their row ids are learnt
  at their first proof, which takes them by key and compares every cached column instead.
- Before answering, the top rows' primary keys are taken from the table by row id, one column
  (a near-duplicate check proves only the candidates it reports).
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
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from cachetools import LRUCache, TTLCache


UNPROVEN = np.uint64(2**64 - 1)  # the row id of a row adopted from this process's own write, until a search proves it


@dataclass
class UserVectors:
    """One user's rows as the cache holds them: unit vectors, ids, and what they were checked against."""

    version: int
    count: int
    newest_us: int  # created_at of the newest row, microseconds since the epoch
    keys: list[str]  # primary keys, aligned with everything below
    row_ids: np.ndarray  # uint64 row ids as last proven (`UNPROVEN`: an adopted row no search has proven yet)
    vectors: np.ndarray  # float32 (n, dim), L2-normalised
    rows: pa.Table  # the columns a search returns
    grown: "_Grown"  # the arrays `vectors`, `row_ids` and `keys` are the first `count` rows of
    loaded_at: float = field(default_factory=time.monotonic)
    # The rows are the table's at `version` exactly: read with no commit landing meanwhile (a read that raced a
    # commit may hold its rows under the older label). Only such an entry is extended unread (`adopt`).
    exact: bool = True

    @property
    def nbytes(self) -> int:
        room = len(self.grown.row_ids)
        return int(self.grown.vectors.nbytes + room * 8 + self.rows.nbytes + 120 * len(self.keys)) + 200

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


class _Grown:
    """The arrays behind a user's successive entries, with room to grow: rows appended to the latest entry are
    written past its end (what the entries before it see is never written again), so an upload's refresh costs
    its own rows, not a copy of the user's (amortised: the room doubles when it runs out)."""

    def __init__(self, vectors: np.ndarray, row_ids: np.ndarray, keys: list[str], room: int = 0):
        n = len(row_ids)
        if room:
            self.vectors = np.empty((n + room, vectors.shape[1]), np.float32)
            self.row_ids = np.empty(n + room, np.uint64)
            self.vectors[:n], self.row_ids[:n] = vectors, row_ids
        else:  # a load's own fresh arrays (unit_rows and astype made them): kept, not copied again
            self.vectors, self.row_ids = vectors, row_ids
        self.keys, self.filled = list(keys), n

    def append(self, vectors: np.ndarray, row_ids: np.ndarray, keys: list[str]) -> "_Grown":
        """The arrays with these rows after the filled ones: in place while there is room, else in a copy twice
        the size (the old arrays stay as they are for the entries that use them)."""
        n, k = self.filled, len(row_ids)
        grown = self
        if n + k > len(self.row_ids):
            grown = _Grown(self.vectors[:n], self.row_ids[:n], self.keys[:n], room=max(n, k, 64))
        grown.vectors[n:n + k], grown.row_ids[n:n + k] = vectors, row_ids
        grown.keys.extend(keys)
        grown.filled = n + k
        return grown


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
        # proofs: rows' keys taken from the table; adoptions: rows of this process's writes added unread
        self.hits = self.loads = self.refreshes = self.proofs = self.adoptions = 0

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


class TableVectors:
    """Keeps a VectorCache true to one LanceDB table (the refresh rules in this module's docstring)
    and ranks a cached user's rows.

    `user_filter` turns a user id into the table's filter string (`keys_filter` primary keys), `key`
    names the primary-key column, and `columns` are the columns an entry holds (the returned ones,
    the key and `vector`).
    """

    MAX_CHUNKS = 32  # appended pieces of an entry's returned columns before they are joined into one

    def __init__(self, cache: VectorCache, table, *, dim: int, key: str, columns: list[str],
                 user_filter: Callable[[str], str], keys_filter: Callable[[list[str]], str]):
        self.cache, self.table, self.dim = cache, table, dim
        self.key, self.columns = key, columns
        self.user_filter, self.keys_filter = user_filter, keys_filter

    def rank(self, user_id: str, query: np.ndarray, depth: int, *, columns: list[str] | None = None,
             keep: Callable[[dict, float], bool] | None = None) -> list[tuple[dict, float]] | None:
        """The user's best rows (as stored, with their cosine similarity), or None when the user is not cacheable.

        `columns` narrows what each row carries (a take of fewer columns). With `keep`, only the rows it keeps are
        answered, and only they are proven still in the table: a near-duplicate check ranks a few candidates and
        usually keeps none, so it usually asks the table nothing. (A row deleted where the counts cannot see it,
        module docstring, then holds one of the `depth` places until the next reload.)"""
        query = unit_rows(query.reshape(1, -1))[0]
        for _ in range(2):
            entry = self.entry(user_id)
            if entry is None:
                return None
            positions, scores = entry.top(query, depth)
            rows = (entry.rows.select(columns) if columns else entry.rows).take(pa.array(positions, pa.int64()))
            ranked = [(row, float(score)) for row, score in zip(rows.to_pylist(), scores)]
            if keep is not None:
                kept = [i for i, (row, score) in enumerate(ranked) if keep(row, score)]
                positions, ranked = positions[kept], [ranked[i] for i in kept]
            if self._still_there(entry, positions):
                return ranked
            self.cache.drop(user_id)  # a row moved, changed or went away since: reload and rank again
        return None

    def rows_named(self, user_id: str, column: str, values: list[str]) -> list[dict] | None:
        """The user's rows whose `column` is one of `values` (as stored), from the cache and proven still in the
        table; None when the user is not cached now (this read is no reason to load them all) or a row moved
        since: read them from the table then."""
        if self.cache.get(user_id) is None:
            return None
        entry = self.entry(user_id)
        if entry is not None:
            wanted = pc.is_in(entry.rows.column(column), value_set=pa.array(values, pa.string()))
            positions = np.flatnonzero(wanted.to_numpy(zero_copy_only=False))
            if self._still_there(entry, positions):
                return entry.rows.take(pa.array(positions, pa.int64())).to_pylist()
            self.cache.drop(user_id)  # the next search reloads the user, not this read
        return None

    def entry(self, user_id: str) -> UserVectors | None:
        """The user's entry, valid at the table's current version (loaded, extended or kept); one that another
        thread brought to a later version meanwhile is kept as it is (a label never goes back)."""
        version = self.table.version
        entry = self.cache.get(user_id)
        if entry is not None and entry.version >= version:
            self.cache.hits += 1
            return entry
        with self.cache.load_lock(user_id):
            entry = self.cache.get(user_id)  # another thread may have just loaded or refreshed it
            if entry is None:
                return self._load(user_id, version)
            if entry.version < version:
                return self._refresh(user_id, entry, version)
            return entry

    def adopt(self, user_id: str, tbl: pa.Table, version: int) -> bool:
        """Rows this process just had written (`tbl`: the table's columns, as written) in the commit `version`,
        appended to the user's entry without reading them back, when that commit is the only one since the
        entry's version. Their row ids are not known yet (`UNPROVEN`): the first search that takes one proves it
        by its key and the whole row instead, and learns its row id then."""
        with self.cache.load_lock(user_id):
            entry = self.cache.get(user_id)
            if entry is None or not entry.exact or entry.version != version - 1:
                return False
            rows = tbl.select(entry.rows.schema.names).cast(entry.rows.schema)
            rows = rows.append_column("vector", tbl.column("vector")).append_column(
                "_rowid", pa.array(np.full(tbl.num_rows, UNPROVEN), pa.uint64()))
            entry = self._entry(version, rows, after=entry)
            self.cache.adoptions += 1
            return self.cache.put(user_id, entry)

    def _count(self, user_id: str) -> int:
        return self.table.count_rows(self.user_filter(user_id))

    def _rows_arrow(self, where: str) -> pa.Table:
        return self.table.search().where(where).select(self.columns).with_row_id(True).limit(None).to_arrow()

    def _entry(self, version: int, tbl: pa.Table, *, after: UserVectors | None = None) -> UserVectors:
        """An entry of the rows in `tbl` (as `_rows_arrow` reads them), appended to `after` if given."""
        vectors = unit_rows(_vectors_of(tbl, self.dim))
        row_ids = tbl.column("_rowid").to_numpy().astype(np.uint64)
        rows = tbl.drop_columns(["vector", "_rowid"]).combine_chunks()
        keys = rows.column(self.key).to_pylist()
        created = rows.column("created_at").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
        newest = int(created.max()) if len(created) else 0
        if after is None:
            grown = _Grown(vectors, row_ids, keys)
            loaded_at = time.monotonic()
        else:
            # The latest entry's arrays grow in place (one writer per user: `load_lock`); an older entry's are copied.
            if after.grown.filled == after.count:
                grown = after.grown.append(vectors, row_ids, keys)
            else:
                grown = _Grown(after.vectors, after.row_ids, after.keys[:after.count], room=after.count)
                grown = grown.append(vectors, row_ids, keys)
            rows = pa.concat_tables([after.rows, rows])
            if rows.column(0).num_chunks > self.MAX_CHUNKS:  # a take over many chunks slows down: joined again
                rows = rows.combine_chunks()
            newest, loaded_at = max(after.newest_us, newest), after.loaded_at
        n = grown.filled
        return UserVectors(version=version, count=n, newest_us=newest, keys=grown.keys, row_ids=grown.row_ids[:n],
                           vectors=grown.vectors[:n], rows=rows, loaded_at=loaded_at, grown=grown)

    def _load(self, user_id: str, version: int) -> UserVectors | None:
        count = self._count(user_id)
        if count * self.dim * 4 > self.cache.max_entry_bytes or self.cache.too_large(user_id, count):
            return None
        self.cache.loads += 1
        entry = self._entry(version, self._rows_arrow(self.user_filter(user_id)))
        entry.exact = self.table.version == version
        return entry if self.cache.put(user_id, entry) else None

    def _refresh(self, user_id: str, entry: UserVectors, version: int) -> UserVectors | None:
        """The table moved on (any user's write): keep, extend or reload this user's entry.

        The user's count through the user_id index (~4 ms at 1M rows), then the rows created after
        the newest cached one (counted, or read when the count grew) tell the cases apart: the same
        count and no newer row -> unchanged; only newer rows, as many as the count grew -> they are
        appended; anything else -> reload. Deleted or
        rewritten rows that the counts miss are caught when a search takes them (`_still_there`)."""
        where = self.user_filter(user_id)
        count = self._count(user_id)
        since = f"{where} AND created_at > to_timestamp_micros({entry.newest_us})"
        if count == entry.count and self.table.count_rows(since) == 0:
            entry.version = version
        elif count > entry.count:
            # The newer rows read at once (an upload's usual case: one appended row), not counted first: as many
            # as the count grew -> appended; otherwise (rows deleted too, or a write landed between) reload.
            new = self._rows_arrow(since)  # all newer than every cached row: none is cached yet
            if new.num_rows != count - entry.count:
                return self._load(user_id, version)
            entry = self._entry(version, new, after=entry)
        else:
            return self._load(user_id, version)
        entry.exact = self.table.version == version  # no commit landed while the counts and rows were read
        self.cache.refreshes += 1
        return entry if self.cache.put(user_id, entry) else None

    def _still_there(self, entry: UserVectors, positions: np.ndarray) -> bool:
        """Whether the rows at these cache positions are still the rows the cache holds: by row id (an
        adopted row not proven yet: by its key and every cached column, `_adopted_still_there`).

        A delete removes the row id, a caption update rewrites the row under a new one, and
        compaction renumbers rows: each shows here as a missing or different primary key."""
        if not len(positions):
            return True
        self.cache.proofs += 1
        adopted = [p for p in positions if entry.row_ids[p] == UNPROVEN]
        known = [p for p in positions if entry.row_ids[p] != UNPROVEN]
        if adopted and not self._adopted_still_there(entry, adopted):
            return False
        if not known:
            return True
        ids = [int(entry.row_ids[p]) for p in known]
        try:
            got = self.table.take_row_ids(ids).select([self.key]).with_row_id().to_arrow()
        except (ValueError, OSError, RuntimeError):  # e.g. a fragment compacted away: the cache is stale
            return False
        found = dict(zip(got.column("_rowid").to_pylist(), got.column(self.key).to_pylist()))
        return all(found.get(row_id) == entry.keys[p] for p, row_id in zip(known, ids))

    def _adopted_still_there(self, entry: UserVectors, positions: list[int]) -> bool:
        """Adopted rows (no row id yet) proven by their key: each in the table, every cached column as cached
        (a rewrite would show in one); their row ids are learnt for the next proof."""
        keys = [entry.keys[p] for p in positions]
        try:
            got = self._rows_arrow(self.keys_filter(keys))
        except (ValueError, OSError, RuntimeError):  # as `_still_there`: a reload answers instead
            return False
        stored = {r[self.key]: r for r in got.drop_columns(["vector"]).to_pylist()}
        cached = entry.rows.take(pa.array(positions, pa.int64())).to_pylist()
        for p, row in zip(positions, cached):
            there = stored.get(entry.keys[p])
            if there is None or {**there, "_rowid": None} != {**row, "_rowid": None}:
                return False
        for p in positions:
            entry.row_ids[p] = stored[entry.keys[p]]["_rowid"]
        return True


def _vectors_of(tbl: pa.Table, dim: int) -> np.ndarray:
    column = tbl.column("vector").combine_chunks()
    if not len(column):
        return np.empty((0, dim), np.float32)
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
