"""The gallery: one LanceDB table of image rows per embedding model, searched per user.

Vectors belong to the model that made them and dimensions differ between models, so each
embedding model gets its own table (`<gallery_table>__<model slug>_<dim>`): a search can never
compare vectors of two models, and switching models is a backfill into a new table while the
old one keeps serving. Every filter value is validated or escaped before it reaches a query.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from datetime import datetime, timedelta, timezone
from typing import Iterable

import lancedb
import numpy as np
import pyarrow as pa
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_random_exponential

from storage.errors import InvalidInput, NotFound
from storage.schema import COLUMNS, arrow_schema
from storage.settings import StorageSettings

_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_READ_COLUMNS = [c for c in COLUMNS if c != "search_text"]


def sql_str(value: str) -> str:
    """A SQL string literal of any text: single quotes doubled, NULs refused."""
    if not isinstance(value, str):
        raise InvalidInput("ids must be strings", code="invalid_id")
    if "\x00" in value:
        raise InvalidInput("ids may not contain NUL", code="invalid_id")
    return "'" + value.replace("'", "''") + "'"


def table_name(base: str, embed_model: str, dim: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", embed_model.lower()).strip("_")[-40:] or "model"
    digest = hashlib.sha256(embed_model.encode()).hexdigest()[:8]
    return f"{base}__{slug}_{digest}_{dim}"


def _is_conflict(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "conflict" in text or "retryable" in text or "commit" in text and "version" in text


_commit_retry = retry(
    retry=retry_if_exception(_is_conflict), stop=stop_after_attempt(8),
    wait=wait_random_exponential(multiplier=0.05, max=2), reraise=True,
)


class Gallery:
    """Rows, search and indexes of one embedding model's table."""

    def __init__(self, db, table, settings: StorageSettings, dim: int, embed_model: str):
        self.db, self.table, self.settings = db, table, settings
        self.dim, self.embed_model = dim, embed_model
        # One writer per process; the cluster's GalleryWriter actor makes it one writer overall.
        self._write_lock = threading.Lock()
        self._since_optimize = 0

    @classmethod
    def open(cls, settings: StorageSettings, *, dim: int, embed_model: str) -> "Gallery":
        # Writes come from the GalleryWriter actor in another process: without a consistency
        # interval this process would keep reading the table version it first opened.
        db = lancedb.connect(settings.lancedb_uri,
                             read_consistency_interval=timedelta(seconds=settings.read_consistency_s))
        name = table_name(settings.gallery_table, embed_model, dim)
        try:
            table = db.open_table(name)
        except (ValueError, FileNotFoundError):
            try:
                table = db.create_table(name, schema=arrow_schema(dim))
            except ValueError:  # created meanwhile by another process
                table = db.open_table(name)
        return cls(db, table, settings, dim, embed_model)

    # -- writes -----------------------------------------------------------------------------------
    def upsert(self, rows: list[dict]) -> dict:
        """Insert rows new by (user_id, content_hash); return the stored row for every input, in order."""
        if not rows:
            return {"rows": [], "inserted": 0}
        batch, seen = [], set()
        for row in rows:
            key = (row["user_id"], row["content_hash"])
            if key not in seen:
                seen.add(key)
                batch.append(self._normalise(row))
        with self._write_lock:
            before = self.table.count_rows()
            self._merge(pa.Table.from_pylist(batch, schema=arrow_schema(self.dim)))
            inserted = self.table.count_rows() - before
            self._ensure_indexes()
            self._since_optimize += inserted
            if self._since_optimize >= self.settings.optimize_every_rows:
                # Folds new rows into the indexes and compacts the small fragments many upserts leave.
                self.table.optimize()
                self._since_optimize = 0
        stored = self._by_hashes(rows)
        return {"rows": [stored[(r["user_id"], r["content_hash"])] for r in rows], "inserted": inserted}

    @_commit_retry
    def _merge(self, data: pa.Table) -> None:
        (self.table.merge_insert(["user_id", "content_hash"]).when_not_matched_insert_all().execute(data))

    def update(self, user_id: str, img_id: str, *, caption: str | None = None,
               description: str | None = None) -> dict:
        row = self.get(user_id, img_id)
        values = {"caption": row["caption"] if caption is None else caption,
                  "description": row["description"] if description is None else description}
        values["search_text"] = f"{values['caption']}\n{values['description']}".strip()
        with self._write_lock:
            self._update(self._owned(user_id, img_id), values)
        return {**row, **{k: v for k, v in values.items() if k != "search_text"}}

    @_commit_retry
    def _update(self, where: str, values: dict) -> None:
        self.table.update(where=where, values=values)

    def delete(self, user_id: str, img_id: str) -> dict | None:
        """Delete one of a user's rows; returns it (so its blobs can go too), or None."""
        try:
            row = self.get(user_id, img_id)
        except NotFound:
            return None
        with self._write_lock:
            self._delete(self._owned(user_id, img_id))
        return row

    def delete_user(self, user_id: str) -> int:
        where = f"user_id = {sql_str(user_id)}"
        n = self.table.count_rows(where)
        with self._write_lock:
            self._delete(where)
        return n

    @_commit_retry
    def _delete(self, where: str) -> None:
        self.table.delete(where)

    # -- reads ------------------------------------------------------------------------------------
    def get(self, user_id: str, img_id: str) -> dict:
        if not isinstance(img_id, str) or not _HEX32.match(img_id):
            raise NotFound("no such image")
        rows = self._select(self._owned(user_id, img_id), limit=1)
        if not rows:
            raise NotFound("no such image")
        return rows[0]

    def find_by_hash(self, user_id: str, content_hash: str) -> dict | None:
        if not _SHA256.match(content_hash or ""):
            return None
        rows = self._select(f"user_id = {sql_str(user_id)} AND content_hash = {sql_str(content_hash)}", limit=1)
        return rows[0] if rows else None

    def existing_hashes(self, user_id: str, hashes: Iterable[str]) -> set[str]:
        """Which of these content hashes the user already has (the ingestion job skips them unread)."""
        wanted = sorted({h for h in hashes if _SHA256.match(h or "")})
        found: set[str] = set()
        for i in range(0, len(wanted), 500):
            chunk = ", ".join(sql_str(h) for h in wanted[i:i + 500])
            tbl = (self.table.search().where(f"user_id = {sql_str(user_id)} AND content_hash IN ({chunk})")
                   .select(["content_hash"]).limit(None).to_arrow())
            found.update(tbl.column("content_hash").to_pylist())
        return found

    def count(self, user_id: str | None = None) -> int:
        return self.table.count_rows(f"user_id = {sql_str(user_id)}" if user_id is not None else None)

    def list(self, user_id: str, *, limit: int = 20, cursor: str | None = None) -> tuple[list[dict], str | None]:
        """A user's rows newest first; the cursor is opaque (created_at and img_id of the last row)."""
        where = f"user_id = {sql_str(user_id)}"
        if cursor:
            ts, last_id = _decode_cursor(cursor)
            stamp = f"arrow_cast({ts}, 'Timestamp(Microsecond, None)')"
            where += f" AND (created_at < {stamp} OR (created_at = {stamp} AND img_id < {sql_str(last_id)}))"
        keys = (self.table.search().where(where).select(["img_id", "created_at"]).limit(None).to_arrow())
        if keys.num_rows == 0:
            return [], None
        order = sorted(zip(keys.column("created_at").to_pylist(), keys.column("img_id").to_pylist()), reverse=True)
        page = order[:limit]
        ids = ", ".join(sql_str(i) for _, i in page)
        by_id = {r["img_id"]: r for r in self._select(f"user_id = {sql_str(user_id)} AND img_id IN ({ids})")}
        rows = [by_id[i] for _, i in page if i in by_id]
        next_cursor = _encode_cursor(page[-1][0], page[-1][1]) if len(order) > limit else None
        return rows, next_cursor

    def search(self, user_id: str, vector: np.ndarray, *, k: int = 10, text: str | None = None) -> list[dict]:
        """A user's k best rows for a query vector (cosine similarity as `score`), optionally fused
        with full-text hits on captions and descriptions (reciprocal rank fusion)."""
        where = f"user_id = {sql_str(user_id)}"
        q = np.asarray(vector, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise InvalidInput(f"the query vector has {q.shape[0]} dimensions; this gallery holds {self.dim}")
        query = self.table.search(q, vector_column_name="vector").distance_type("cosine").where(where, prefilter=True)
        if self._use_ann(user_id):
            query = query.nprobes(self.settings.ann_nprobes).refine_factor(self.settings.ann_refine_factor)
        else:
            # Few rows for this user: an exact scan of just those rows beats the index on recall and speed.
            query = query.bypass_vector_index()
        vec_rows = query.select(_READ_COLUMNS + ["_distance"]).limit(max(k, 1) * (2 if text else 1)).to_list()
        for r in vec_rows:
            r["score"] = 1.0 - float(r.pop("_distance"))
        if not text or not text.strip() or not self._has_fts():
            return [_row_out(r) for r in vec_rows[:k]]
        fts_rows = (self.table.search(text, query_type="fts", fts_columns="search_text").where(where, prefilter=True)
                    .select(_READ_COLUMNS + ["_score"]).limit(k * 2).to_list())
        return _rrf(vec_rows, fts_rows, k)

    # -- indexes ----------------------------------------------------------------------------------
    def _ensure_indexes(self) -> None:
        names = {ix.name for ix in self.table.list_indices()}
        if "user_id_idx" not in names:
            self.table.create_scalar_index("user_id", index_type="BITMAP", name="user_id_idx")
        if "content_hash_idx" not in names:
            self.table.create_scalar_index("content_hash", index_type="BTREE", name="content_hash_idx")
        if "search_text_idx" not in names:
            # n-grams split Chinese (and every other script) without a dictionary on disk.
            self.table.create_fts_index("search_text", base_tokenizer="ngram", ngram_min_length=1,
                                        ngram_max_length=2, prefix_only=False, name="search_text_idx",
                                        replace=True)
        if "vector_idx" not in names and self.table.count_rows() >= self.settings.ann_min_rows:
            self.build_ann_index()

    def build_ann_index(self) -> None:
        n = self.table.count_rows()
        partitions = max(1, int(np.sqrt(n)))
        self.table.create_index(metric="cosine", vector_column_name="vector", index_type="IVF_PQ",
                                num_partitions=partitions, num_sub_vectors=max(1, self.dim // 16),
                                name="vector_idx", replace=True)

    def optimize(self) -> None:
        """Compact small fragments and fold new rows into every index."""
        with self._write_lock:
            self.table.optimize()

    def _has_fts(self) -> bool:
        return any(ix.name == "search_text_idx" for ix in self.table.list_indices())

    def _use_ann(self, user_id: str) -> bool:
        if not any(ix.name == "vector_idx" for ix in self.table.list_indices()):
            return False
        return self.count(user_id) > self.settings.flat_search_max_rows

    # -- internals --------------------------------------------------------------------------------
    def _owned(self, user_id: str, img_id: str) -> str:
        return f"user_id = {sql_str(user_id)} AND img_id = {sql_str(img_id)}"

    def _select(self, where: str, limit: int | None = None) -> list[dict]:
        rows = self.table.search().where(where).select(_READ_COLUMNS).limit(limit).to_list()
        return [_row_out(r) for r in rows]

    def _by_hashes(self, rows: list[dict]) -> dict[tuple[str, str], dict]:
        out = {}
        by_user: dict[str, set[str]] = {}
        for r in rows:
            by_user.setdefault(r["user_id"], set()).add(r["content_hash"])
        for user, hashes in by_user.items():
            hs = sorted(hashes)
            for i in range(0, len(hs), 500):
                chunk = ", ".join(sql_str(h) for h in hs[i:i + 500])
                for r in self._select(f"user_id = {sql_str(user)} AND content_hash IN ({chunk})"):
                    out[(user, r["content_hash"])] = r
        return out

    def _normalise(self, row: dict) -> dict:
        vector = np.asarray(row["vector"], dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.dim:
            raise InvalidInput(f"vector has {vector.shape[0]} dimensions; this gallery holds {self.dim}")
        if not _SHA256.match(row.get("content_hash", "")):
            raise InvalidInput("content_hash must be a sha256 hex digest", code="invalid_content_hash")
        if not _HEX32.match(row.get("img_id", "")):
            raise InvalidInput("img_id must be 32 hex characters", code="invalid_id")
        created = row.get("created_at") or datetime.now(timezone.utc)
        if created.tzinfo is not None:
            created = created.astimezone(timezone.utc).replace(tzinfo=None)
        caption, description = row.get("caption") or "", row.get("description") or ""
        meta = row.get("meta") or {}
        return {
            "img_id": row["img_id"], "user_id": row["user_id"], "content_hash": row["content_hash"],
            "image_uri": row.get("image_uri", ""), "display_uri": row.get("display_uri", ""),
            "width": int(row.get("width", 0)), "height": int(row.get("height", 0)), "created_at": created,
            "source": row.get("source", "upload"), "caption": caption, "description": description,
            "search_text": f"{caption}\n{description}".strip(), "embed_model": self.embed_model,
            "meta": meta if isinstance(meta, str) else json.dumps(meta, ensure_ascii=False),
            "vector": vector,
        }


def _row_out(row: dict) -> dict:
    row = {k: v for k, v in row.items() if k not in ("vector", "search_text", "_relevance_score", "_score")}
    if isinstance(row.get("created_at"), datetime) and row["created_at"].tzinfo is None:
        row["created_at"] = row["created_at"].replace(tzinfo=timezone.utc)
    if isinstance(row.get("meta"), str):
        try:
            row["meta"] = json.loads(row["meta"]) if row["meta"] else {}
        except ValueError:
            row["meta"] = {}
    return row


def _rrf(vec_rows: list[dict], fts_rows: list[dict], k: int, c: int = 60) -> list[dict]:
    scores: dict[str, float] = {}
    rows: dict[str, dict] = {}
    for ranked in (vec_rows, fts_rows):
        for rank, r in enumerate(ranked):
            scores[r["img_id"]] = scores.get(r["img_id"], 0.0) + 1.0 / (c + rank + 1)
            rows.setdefault(r["img_id"], r)
    best = sorted(scores, key=scores.get, reverse=True)[:k]
    return [_row_out({**rows[i], "score": scores[i]}) for i in best]


def _encode_cursor(created: datetime, img_id: str) -> str:
    if created.tzinfo is not None:
        created = created.astimezone(timezone.utc).replace(tzinfo=None)
    micros = int((created - datetime(1970, 1, 1)).total_seconds() * 1_000_000)
    return base64.urlsafe_b64encode(f"{micros}:{img_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        micros, img_id = raw.split(":", 1)
        if not _HEX32.match(img_id):
            raise ValueError
        return int(micros), img_id
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("cursor is not one this service issued; start again without it", field="cursor") from None
