"""A gallery table's upkeep: its indexes, compaction and purges (`Gallery` keeps the rows, reads and writes).

- Indexes: the primary key and the BTREE and full-text indexes every table has from its first row on
  (`setup`; it also cuts again the words of rows stored before Chinese stop words were left out),
  the vector index once the table holds `ann_min_rows` rows (built after an insert or by
  `optimize`; `build_ann_index` forces it), and the names of those there now, cached for seconds
  (search reads them to choose between a flat scan and the ANN index).
- Compaction: after `optimize_every_rows` inserted rows or `optimize_every_commits` commits
  (`after_insert`), or when asked (`optimize`), new rows are folded into the indexes, the small
  fragments upserts leave are compacted and versions older than the retention are dropped.
- Purge: what was deleted made physically gone from every model's table of the gallery (`purge`, run
  by `storage.gallery.purge.Purger` when a delete's purge falls due).

Every commit goes through the gallery's lock and `commits.commit`, as its writes do.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any, Callable

import pyarrow as pa
from lancedb.index import FTS, BTree, HnswSq, IvfPq
from lancedb.query import MatchQuery

from storage.schema import PRIMARY_KEY, TEXT_FIELDS, search_text_of
from storage.settings import StorageSettings
from storage.words import stop_words

from .commits import commit
from .search import VECTOR_INDEX

FTS_INDEX = "search_text_idx"
SCALAR_INDEXES = {"user_id": "user_id_idx", "img_id": "img_id_idx", PRIMARY_KEY: "dedup_key_idx"}
_INDEX_NAMES_TTL_S = 10


class GalleryUpkeep:
    """Indexes, compaction and purges of one embedding model's gallery table.

    `lock` is the table's process lock (`commits.table_lock`), held by the gallery around its writes;
    `model_tables` lists this table and every other model's table of the gallery (a purge covers all).
    """

    def __init__(self, table, settings: StorageSettings, *, dim: int, lock: threading.Lock,
                 model_tables: Callable[[], list]):
        self.table, self.settings, self.dim = table, settings, dim
        self.name = table.name
        self._lock, self._model_tables = lock, model_tables
        self._since_optimize = 0
        self._commits_since_optimize = 0
        self._indexes_seen: tuple[float, frozenset[str]] = (0.0, frozenset())

    def setup(self) -> None:
        """Primary key and the indexes every table has from its first row on (idempotent)."""
        field = self.table.schema.field(PRIMARY_KEY)
        if not any(k.startswith(b"lance-schema:unenforced-primary-key") for k in (field.metadata or {})):
            self._write(lambda: self.table.set_unenforced_primary_key(PRIMARY_KEY))
        names = self.index_names(fresh=True)
        for column, index in SCALAR_INDEXES.items():
            if index not in names:
                self._write(lambda c=column, i=index: self.table.create_index(c, config=BTree(), name=i))
        if FTS_INDEX not in names:
            self._write(lambda: self.table.create_index("search_text", config=fts_config(), name=FTS_INDEX))
        self.index_names(fresh=True)
        self.restate_words()

    def restate_words(self) -> int:
        """Cut again the words of rows whose `search_text` still holds Chinese stop words (stored before
        they were left out); returns how many. The full-text index finds them, so a table with none
        left costs one query. Only `search_text` is written (a merge of that column alone: one with a
        condition on the texts panics in lance 14), so a caption edited in the same instant by another
        process could keep the words of its old text until its next edit."""
        stale = (self.table.search(MatchQuery(" ".join(sorted(stop_words())), "search_text"), query_type="fts")
                 .select([PRIMARY_KEY, *TEXT_FIELDS, "_score"]).limit(None).to_arrow())
        if not stale.num_rows:
            return 0
        texts = [stale.column(name).to_pylist() for name in TEXT_FIELDS]
        columns = {PRIMARY_KEY: stale.column(PRIMARY_KEY), "search_text": [search_text_of(*t) for t in zip(*texts)]}
        data = pa.table(columns, schema=pa.schema([self.table.schema.field(name) for name in columns]))
        with self._lock:
            self._write(lambda: self.table.merge_insert(PRIMARY_KEY).when_matched_update_all().execute(data))
        return stale.num_rows

    def index_names(self, fresh: bool = False) -> frozenset[str]:
        """The table's index names, listed again when `fresh` or older than a few seconds."""
        seen_at, names = self._indexes_seen
        if fresh or time.monotonic() - seen_at > _INDEX_NAMES_TTL_S:
            names = frozenset(ix.name for ix in self.table.list_indices())
            self._indexes_seen = (time.monotonic(), names)
        return names

    def build_ann_index(self) -> None:
        """(Re)build the vector index over every row now in the table."""
        with self._lock:
            self._build_ann_index()

    def after_insert(self, inserted: int) -> None:
        """Count a commit of `inserted` new rows (with the lock held): build the vector index once the
        table is large enough, else compact when enough rows or commits came since the last time."""
        if not inserted:
            return
        self._since_optimize += inserted
        self._commits_since_optimize += 1
        if VECTOR_INDEX not in self.index_names() and self.table.count_rows() >= self.settings.ann_min_rows:
            self._build_ann_index()
        elif (self._since_optimize >= self.settings.optimize_every_rows
              or self._commits_since_optimize >= self.settings.optimize_every_commits):
            self._compact()

    def optimize(self) -> dict:
        """Compact small fragments, fold new rows into every index, drop versions older than the
        retention (deleted rows linger in old versions until then), and build the ANN index once
        the table is large enough."""
        with self._lock:
            self._compact()
            rows = self.table.count_rows()
            if VECTOR_INDEX not in self.index_names(fresh=True) and rows >= self.settings.ann_min_rows:
                self._build_ann_index()
        return {"rows": rows, "indexes": sorted(self.index_names(fresh=True))}

    def purge(self) -> dict:
        """Make what was deleted physically gone from every model's table of this gallery.

        A delete only hides rows (a deletion vector), and the old versions, the data files and the
        full-text and scalar indexes keep their values. Here fragments holding deleted rows are
        rewritten without them (compaction materialises deletions), every index is rebuilt over what
        remains, and every older version is removed with the files only it referenced. Readers that
        were on a removed version re-read the latest one (`storage.library` retries such a read).
        """
        done = []
        with self._lock:
            for table in self._model_tables():
                self._write(lambda t=table: t.to_lance().optimize.compact_files(
                    materialize_deletions=True, materialize_deletions_threshold=0.0))
                table.checkout_latest()
                self._rebuild_indexes(table)
                table.cleanup_old_versions(older_than=timedelta(0))
                done.append(table.name)
            self.index_names(fresh=True)
            self._since_optimize = self._commits_since_optimize = 0
        return {"tables": done}

    # -- internals (the lock held) -----------------------------------------------------------------
    def _ann_config(self, dim: int):
        s = self.settings
        if s.ann_index_type == "IVF_HNSW_SQ":
            return HnswSq(distance_type="cosine", num_partitions=s.ann_num_partitions,
                          max_iterations=s.ann_max_iterations)
        sub = s.ann_num_sub_vectors or (dim // 8 if dim % 8 == 0 else None)
        return IvfPq(distance_type="cosine", num_partitions=s.ann_num_partitions, num_sub_vectors=sub,
                     max_iterations=s.ann_max_iterations)

    def _build_ann_index(self) -> None:
        config = self._ann_config(self.dim)
        self._write(lambda: self.table.create_index("vector", config=config, name=VECTOR_INDEX, replace=True))
        self.index_names(fresh=True)

    def _compact(self) -> None:
        """Fold new rows into the indexes, compact the small fragments upserts leave, drop old
        versions; the counters that trigger it start again."""
        self._write(lambda: self.table.optimize(
            cleanup_older_than=timedelta(seconds=self.settings.version_retention_s)))
        self._since_optimize = self._commits_since_optimize = 0

    def _rebuild_indexes(self, table) -> None:
        """Every index of `table` built again from its current rows (an index keeps the values of rows
        deleted since it was built)."""
        names = {ix.name for ix in table.list_indices()}
        for column, index in SCALAR_INDEXES.items():
            self._write(lambda c=column, i=index: table.create_index(c, config=BTree(), name=i, replace=True))
        self._write(lambda: table.create_index("search_text", config=fts_config(), name=FTS_INDEX, replace=True))
        if VECTOR_INDEX in names:
            dim = table.schema.field("vector").type.list_size
            self._write(lambda: table.create_index("vector", config=self._ann_config(dim), name=VECTOR_INDEX,
                                                   replace=True))

    def _write(self, op: Callable[[], Any]) -> Any:
        return commit(op, self.settings.write_retry_attempts)


def fts_config() -> FTS:
    # Text arrives already split into words (words_for_search); stemming folds English forms.
    return FTS(base_tokenizer="simple", language="English", lower_case=True, stem=True, remove_stop_words=False,
               ascii_folding=True)
