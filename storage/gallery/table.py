"""The gallery table: one embedding model's LanceDB table of image rows, its writes and reads.

Search lives in `search.py`, SQL filters and cursors in `filters.py`, the table's upkeep (indexes,
compaction, purges) in `upkeep.py`, the write lock and commit retries in `commits.py`, and the vector
cache's refresh rules in `storage/vector_cache.py`; `Gallery` composes them.

- One table per embedding model (`<gallery_table>__<model slug>_<hash>_<dim>`): vectors of two
  models cannot be compared and their dimensions differ, so a search can only ever see its own
  model's vectors, each table trains its ANN index on one model's distribution, and switching
  models is a backfill into a new table while the old one keeps serving. Text columns are the
  same in every table, so deletes and caption updates reach all of them.
- Idempotent by (user_id, content_hash), stored as one `dedup_key` column declared as the table's
  primary key: LanceDB then detects two writers inserting the same new key and retries (without
  it both commit, lancedb#2463; compound primary keys are refused). A process lock serialises
  this process's writes, commit conflicts are retried, and the cluster's GalleryWriter actor
  makes one writer overall.
- Chinese full text: captions are split into words by `jieba` (PyPI, dictionary included) and
  their stop words dropped (`storage/words.py`) before they reach LanceDB's simple tokenizer, and
  queries the same way. Lance's own `jieba/default` tokenizer also works offline once the
  package's dict.txt sits under LANCE_LANGUAGE_MODEL_HOME, but measured 51 ms per query against
  9 ms here (it loads its dictionary per query), and n-grams match English noise ("sunset" -> "street").
- Search is per user with `prefilter=True`, scored by cosine similarity: an exact scan when the
  user has few rows (exact and fast), else IVF_PQ (or IVF_HNSW_SQ) with a refine step.
  Scalar indexes are BTREE: user ids are unbounded in number, which bitmaps are not made for.
"""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from typing import Any, Iterable, Mapping, Sequence

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.query import ColumnOrdering
from pydantic import ValidationError

from storage.errors import InvalidInput, NotFound
from storage.schema import (
    HEX32,
    PRIMARY_KEY,
    READ_COLUMNS,
    SHA256,
    GalleryFields,
    arrow_schema,
    check_user_id,
    dedup_key,
)
from storage.settings import StorageSettings
from storage.vector_cache import TableVectors, VectorCache
from storage.words import warm_up as load_words

from .commits import commit, table_lock
from .deletes import GalleryDeletes
from .groups import GalleryGroups
from .filters import decode_cursor, encode_cursor, in_list, invalid, row_out, sql_str, user_filter
from .search import GallerySearch
from .upkeep import GalleryUpkeep

_CACHED_COLUMNS = READ_COLUMNS + [PRIMARY_KEY, "vector"]  # what the vector cache holds of a row
_IN_CHUNK = 1000  # keys per `IN (...)` filter


def table_name(base: str, embed_model: str, dim: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", embed_model.lower()).strip("_")[-40:] or "model"
    digest = hashlib.sha256(embed_model.encode()).hexdigest()[:8]
    return f"{base}__{slug}_{digest}_{dim}"


class Gallery(GalleryDeletes, GalleryGroups):
    """Rows, reads, writes and search of one embedding model's gallery table; `upkeep` keeps its indexes."""

    def __init__(self, db, table, settings: StorageSettings, dim: int, embed_model: str):
        self.db, self.table, self.settings = db, table, settings
        self.dim, self.embed_model = dim, embed_model
        self.name = table.name
        self._lock = table_lock(f"{settings.lancedb_uri}|{self.name}")
        self.upkeep = GalleryUpkeep(table, settings, dim=dim, lock=self._lock, model_tables=self._model_tables)
        self._vectors = VectorCache(settings.vector_cache_mb * 2**20, settings.vector_cache_ttl_s)
        self._search = GallerySearch(
            table, settings, dim=dim, index_names=self.upkeep.index_names,
            vectors=TableVectors(self._vectors, table, dim=dim, key=PRIMARY_KEY, columns=_CACHED_COLUMNS,
                                 user_filter=user_filter, keys_filter=lambda keys: in_list(PRIMARY_KEY, keys)))

    @classmethod
    def open(cls, settings: StorageSettings, *, dim: int, embed_model: str) -> "Gallery":
        """Open (or create) the table of `embed_model`, whose vectors have `dim` values."""
        if not isinstance(embed_model, str) or not embed_model.strip():
            raise InvalidInput("embed_model must name the embedding model", field="embed_model")
        db, table = _open_table(settings, table_name(settings.gallery_table, embed_model, dim), arrow_schema(dim))
        gallery = cls(db, table, settings, dim, embed_model)
        gallery.upkeep.setup()
        return gallery

    # -- writes -----------------------------------------------------------------------------------
    def upsert(self, rows: Sequence[Mapping[str, Any] | GalleryFields]) -> dict:
        """Insert the rows whose (user_id, content_hash) is new; never duplicate one.

        Returns `{"rows": [...], "created": [...], "inserted": n, "version": v}` aligned with the input:
        for each input, the stored row (the one already there for a duplicate, also within the batch)
        and whether this call created it (201 vs 200 for an upload); `version` is the commit's when
        it holds exactly the created rows, else None.
        """
        if not rows:
            return {"rows": [], "created": [], "inserted": 0, "version": None}
        fields, vectors = _checked_rows(rows, self.dim, self.embed_model)
        first: dict[str, int] = {}
        for i, row in enumerate(fields):
            first.setdefault(row.dedup_key, i)
        unique = sorted(first.values())
        with self._lock:
            stored = _rows_by_keys(self.table, [fields[i].dedup_key for i in unique])
            new = [i for i in unique if fields[i].dedup_key not in stored]
            created: set[str] = set()
            version = None  # the commit's version, when it holds exactly the new rows (`adopt`)
            if new:
                data = _to_arrow([fields[i] for i in new], vectors[new], self.dim)
                result = self._write(
                    lambda: self.table.merge_insert(PRIMARY_KEY).when_not_matched_insert_all().execute(data)
                )
                if result.num_inserted_rows == len(new):
                    version = result.version
                    for i in new:
                        created.add(fields[i].dedup_key)
                        stored[fields[i].dedup_key] = row_out(fields[i].model_dump())
                else:
                    # Another process inserted some of these keys meanwhile: their row is the one kept.
                    again = _rows_by_keys(self.table, [fields[i].dedup_key for i in new])
                    for i in new:
                        if again[fields[i].dedup_key]["img_id"] == fields[i].img_id:
                            created.add(fields[i].dedup_key)
                    stored.update(again)
            self._after_insert(len(created), {fields[i].user_id for i in new})
        return {
            "rows": [stored[row.dedup_key] for row in fields],
            "created": [first[row.dedup_key] == i and row.dedup_key in created for i, row in enumerate(fields)],
            "inserted": len(created),
            "version": version,
        }

    def update(self, user_id: str, img_id: str, *, caption: str | None = None, description: str | None = None,
               post_text: str | None = None) -> dict:
        """Set a row's texts (in every model's table); returns the row. `caption` is the user's own
        words: only a user's request may set it, never a model's answer (describe sets the others)."""
        with self._lock:
            row = self.get(user_id, img_id)
            given = {"caption": caption, "description": description, "post_text": post_text}
            changed = {name: row.get(name, "") if value is None else value for name, value in given.items()}
            try:
                checked = GalleryFields.model_validate({**row, **changed})
            except ValidationError as exc:
                raise invalid(exc) from None
            values = {name: getattr(checked, name) for name in given}
            values["search_text"] = checked.search_text
            where = f"{user_filter(user_id)} AND {PRIMARY_KEY} = {sql_str(checked.dedup_key)}"
            for table in self._model_tables():
                self._write(lambda t=table: t.update(where=where, values=values))
        return {**row, **{name: getattr(checked, name) for name in given}}

    def warm_up(self) -> None:
        """Load what the first search would otherwise pay for: jieba's dictionary and the stop
        words (1-4 s here) and the table's indexes. Call once per replica at start."""
        load_words()
        self.upkeep.index_names(fresh=True)
        self.table.count_rows()

    def optimize(self) -> dict:
        """`GalleryUpkeep.optimize`: compact, fold new rows into the indexes, drop old versions."""
        return self.upkeep.optimize()

    # -- reads ------------------------------------------------------------------------------------
    def get(self, user_id: str, img_id: str) -> dict:
        if not isinstance(img_id, str) or not HEX32.match(img_id):
            raise NotFound("no such image", code="image_not_found")
        rows = _select(self.table, f"{user_filter(user_id)} AND img_id = {sql_str(img_id)}", limit=1)
        if not rows:
            raise NotFound("no such image", code="image_not_found")
        return rows[0]

    def owner_of(self, img_id: str) -> str | None:
        """The user an image belongs to, or None (for signed URLs, which must not carry the owner's id)."""
        if not isinstance(img_id, str) or not HEX32.match(img_id):
            return None
        rows = (self.table.search().where(f"img_id = {sql_str(img_id)}").select(["user_id"]).limit(1).to_list())
        return rows[0]["user_id"] if rows else None

    def find_by_hash(self, user_id: str, content_hash: str) -> dict | None:
        """The user's row for these bytes, if any (an upload answers 200 with it)."""
        if not isinstance(content_hash, str) or not SHA256.match(content_hash):
            return None
        key = dedup_key(check_user_id(user_id), content_hash)
        rows = _select(self.table, f"{user_filter(user_id)} AND {PRIMARY_KEY} = {sql_str(key)}", limit=1)
        return rows[0] if rows else None

    def existing_hashes(self, user_id: str, hashes: Iterable[str]) -> set[str]:
        """Which of these content hashes the user already has (the ingestion job skips them unread)."""
        where_user = user_filter(user_id)
        by_key = {dedup_key(user_id, h): h for h in hashes if isinstance(h, str) and SHA256.match(h)}
        found: set[str] = set()
        keys = sorted(by_key)
        for i in range(0, len(keys), _IN_CHUNK):
            tbl = (self.table.search().where(f"{where_user} AND {in_list(PRIMARY_KEY, keys[i:i + _IN_CHUNK])}")
                   .select([PRIMARY_KEY]).limit(None).to_arrow())
            found.update(by_key[k] for k in tbl.column(PRIMARY_KEY).to_pylist())
        return found

    def rows_by_img_ids(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], dict]:
        """The rows of these (user_id, img_id) pairs that this table holds, by pair."""
        wanted = {(u, i) for u, i in pairs if isinstance(i, str) and HEX32.match(i)}
        ids = sorted({i for _, i in wanted})
        found: dict[tuple[str, str], dict] = {}
        for n in range(0, len(ids), _IN_CHUNK):
            for r in (self.table.search().where(in_list("img_id", ids[n:n + _IN_CHUNK])).select(READ_COLUMNS)
                      .limit(None).to_list()):
                if (r["user_id"], r["img_id"]) in wanted:
                    found[(r["user_id"], r["img_id"])] = row_out(r)
        return found

    def count(self, user_id: str | None = None) -> int:
        return self.table.count_rows(user_filter(user_id) if user_id is not None else None)

    def list(self, user_id: str, *, limit: int = 20, cursor: str | None = None) -> tuple[list[dict], str | None]:
        """A user's rows newest first; the cursor is opaque (created_at and img_id of the last row)."""
        if not isinstance(limit, int) or not 1 <= limit <= self.settings.list_max_limit:
            raise InvalidInput(f"limit must be 1..{self.settings.list_max_limit}", field="limit")
        where = user_filter(user_id)
        if cursor:
            micros, last_id = decode_cursor(cursor)
            stamp = f"to_timestamp_micros({micros})"
            where += f" AND (created_at < {stamp} OR (created_at = {stamp} AND img_id < {sql_str(last_id)}))"
        order = [ColumnOrdering(column_name="created_at", ascending=False),
                 ColumnOrdering(column_name="img_id", ascending=False)]
        raw = self.table.search().where(where).select(READ_COLUMNS).order_by(order).limit(limit + 1).to_list()
        rows = [row_out(r) for r in raw[:limit]]
        next_cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["img_id"]) if len(raw) > limit else None
        return rows, next_cursor

    # -- search (storage/gallery/search.py) --------------------------------------------------------
    def search(self, user_id: str, vector: Any, *, k: int = 10, text: str | None = None,
               exact: bool | None = None) -> list[dict]:
        """A user's k best rows for a query vector, best first, `score` = cosine similarity.

        With `text`, vector hits and full-text hits on captions and descriptions are fused by
        reciprocal rank (`score` is then the fused score). By default a user whose vectors fit the
        process's vector cache is ranked exactly in memory; otherwise the gallery picks a flat scan
        or the ANN index from the user's row count. `exact` forces LanceDB's flat scan (True) or its
        ANN index (False).
        """
        return self._search.search(user_id, vector, k=k, text=text, exact=exact)

    def adopt(self, user_id: str, rows: Sequence[Mapping[str, Any]], version: int | None) -> bool:
        """This process's cached view of the user extended by rows it just had written in the commit `version`
        (each as `upsert` answered it, with its `vector`), without reading them back, when that commit is the
        only one since the view (`TableVectors.adopt`). False when it could not be: a refresh reads them."""
        if version is None or not self._vectors.enabled:
            return False
        fields, vectors = _checked_rows(rows, self.dim, self.embed_model)
        return self._search.vectors.adopt(user_id, _to_arrow(fields, vectors, self.dim), version)

    def near(self, user_id: str, vector: Any, *, k: int, keep) -> list[dict]:
        """Of the user's k nearest rows to a vector, those `keep` keeps (`GallerySearch.near`)."""
        return self._search.near(user_id, vector, k=k, keep=keep)

    def search_text(self, user_id: str, text: str, *, k: int = 10) -> list[dict]:
        """A user's k best rows by full text over captions and descriptions (`score` = BM25)."""
        return self._search.search_text(user_id, text, k=k)

    def warm(self, user_id: str) -> None:
        """Ready this process's view of a user for the next vector search (see `GallerySearch.warm`)."""
        self._search.warm(user_id)

    def _use_ann(self, user_id: str) -> bool:
        return self._search.use_ann(user_id)

    def forget(self, user_id: str) -> None:
        """Drop what this process caches of a user (call after writing that user's rows elsewhere)."""
        self._vectors.drop(user_id)

    # -- internals --------------------------------------------------------------------------------
    def _after_insert(self, inserted: int, users: set[str]) -> None:
        for user in users:
            self._search.user_changed(user)
        self.upkeep.after_insert(inserted)

    def _write(self, op):
        """Run one commit, retrying commit conflicts; a conflict that persists is a 503."""
        return commit(op, self.settings.write_retry_attempts)

    def _model_tables(self) -> list:
        """This model's table and every other model's table of the same gallery."""
        prefix = f"{self.settings.gallery_table}__"
        names, token = [], None
        while True:
            page = self.db.list_tables(page_token=token)
            names += [n for n in page.tables if n.startswith(prefix) and n != self.name]
            token = page.page_token
            if not token:
                break
        return [self.table] + [self.db.open_table(n) for n in sorted(names)]


def _add_text_column(table, name: str) -> None:
    """Add an empty string column to an existing table (a schema migration; concurrent openers race safely)."""
    try:
        table.add_columns({name: "CAST('' AS STRING)"})
    except Exception:  # noqa: BLE001 - another process added it first: fine if it is there now
        table.checkout_latest()
        if name not in table.schema.names:
            raise


def _open_table(settings: StorageSettings, name: str, schema: pa.Schema):
    """(db, table): the table `name` opened, or created with `schema`; a table from before post texts
    gets that column, one with another schema is refused."""
    # Writes come from the GalleryWriter actor in another process: without a consistency
    # interval this process would keep reading the table version it first opened.
    db = lancedb.connect(
        settings.lancedb_uri,
        read_consistency_interval=timedelta(seconds=settings.read_consistency_s),
        storage_options=settings.lancedb_storage_options or None,
    )
    try:
        table = db.open_table(name)
    except ValueError:  # not there yet
        try:
            table = db.create_table(name, schema=schema)
        except ValueError:  # created meanwhile by another process
            table = db.open_table(name)
    missing = [f.name for f in schema if f.name not in table.schema.names]
    if missing == ["post_text"]:  # a table from before post texts had their own column
        _add_text_column(table, "post_text")
        missing = []
    if missing or table.schema.field("vector").type != schema.field("vector").type:
        raise RuntimeError(
            f"gallery table {name} at {settings.lancedb_uri} has another schema (missing {missing}); "
            "back it up and remove it, or point ATELIER_LANCEDB_URI elsewhere"
        )
    return db, table


def _rows_by_keys(table, keys: Sequence[str]) -> dict[str, dict]:
    """The rows of `table` with these primary keys, by key."""
    found: dict[str, dict] = {}
    for i in range(0, len(keys), _IN_CHUNK):
        chunk = keys[i:i + _IN_CHUNK]
        for r in (table.search().where(in_list(PRIMARY_KEY, chunk)).select(READ_COLUMNS + [PRIMARY_KEY])
                  .limit(None).to_list()):
            found[r[PRIMARY_KEY]] = row_out(r)
    return found


def _select(table, where: str, limit: int | None = None) -> list[dict]:
    return [row_out(r) for r in table.search().where(where).select(READ_COLUMNS).limit(limit).to_list()]


def _checked_rows(rows: Sequence[Mapping[str, Any] | GalleryFields], dim: int,
                  embed_model: str) -> tuple[list[GalleryFields], np.ndarray]:
    """Every row through the schema's model; vectors checked together (per-row pydantic
    validation of 512 floats would cost more than the write)."""
    fields, vectors = [], []
    for i, row in enumerate(rows):
        if isinstance(row, GalleryFields):
            data = row.model_dump()
        elif isinstance(row, Mapping):
            data = dict(row)
        else:
            raise InvalidInput(f"row {i} is a {type(row).__name__}, not a mapping", field="rows")
        if "vector" not in data:
            raise InvalidInput(f"row {i} has no vector", field="vector")
        vectors.append(data.pop("vector"))
        data.setdefault("embed_model", embed_model)
        if data["embed_model"] != embed_model:
            raise InvalidInput(
                f"row {i} was embedded by {data['embed_model']!r}; this gallery holds {embed_model!r} vectors",
                code="wrong_embed_model", field="embed_model")
        for derived in ("search_text", "dedup_key"):
            data.pop(derived, None)
        if data.get("img_id") is None:
            data.pop("img_id", None)
        if data.get("created_at") is None:
            data.pop("created_at", None)
        try:
            fields.append(GalleryFields.model_validate(data))
        except ValidationError as exc:
            raise invalid(exc, row=i) from None
    try:
        matrix = np.asarray(vectors, dtype=np.float32)
    except (ValueError, TypeError):
        raise InvalidInput(f"every vector must hold {dim} numbers", field="vector") from None
    if matrix.ndim != 2 or matrix.shape[1] != dim:
        raise InvalidInput(f"every vector must hold {dim} numbers (this gallery's model)", field="vector")
    bad = ~np.isfinite(matrix).all(axis=1) | ~matrix.any(axis=1)
    if bad.any():
        raise InvalidInput(f"row {int(np.argmax(bad))}'s vector is all zeros or not finite", field="vector")
    return fields, matrix


def _to_arrow(rows: list[GalleryFields], vectors: np.ndarray, dim: int) -> pa.Table:
    schema = arrow_schema(dim)
    columns = {name: [getattr(r, name) for r in rows] for name in schema.names if name != "vector"}
    arrays = [pa.array(columns[f.name], type=f.type) for f in schema if f.name != "vector"]
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), type=pa.float32())
    arrays.append(pa.FixedSizeListArray.from_arrays(flat, dim))
    return pa.Table.from_arrays(arrays, schema=schema)
