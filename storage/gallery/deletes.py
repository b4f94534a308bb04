"""What leaves a gallery: one image, a bulk job's import, or all of a user's rows, from every model's table
(the texts and keys of a row are the same in each, so a delete reaches all of them). The callers delete the
rows' blobs after the rows, so no reader can reach a blob that is about to vanish; the GalleryWriter schedules
the purge of the old table versions that still hold them."""

from __future__ import annotations

from storage.errors import NotFound
from storage.schema import HEX32, PRIMARY_KEY, READ_COLUMNS, dedup_key

from .filters import in_list, row_out, sql_str, user_filter

_IN_CHUNK = 1000  # keys per `IN (...)` filter


class GalleryDeletes:
    """The deletes of `Gallery` (storage/gallery/table.py), which provides the table, the lock and the rest."""

    def delete(self, user_id: str, img_id: str) -> dict | None:
        """Delete one of a user's images from every model's table; returns its row (so its blobs can
        go too), or None when the user has no such image in any of them (another user's id included)."""
        with self._lock:
            row = self._find_anywhere(user_id, img_id)
            if row is None:
                return None
            key = dedup_key(row["user_id"], row["content_hash"])
            where = f"{user_filter(user_id)} AND (img_id = {sql_str(img_id)} OR {PRIMARY_KEY} = {sql_str(key)})"
            for table in self._model_tables():
                self._write(lambda t=table: t.delete(where))
            self._search.user_changed(user_id)
        return row

    def _find_anywhere(self, user_id: str, img_id: str) -> dict | None:
        """The user's row of this image in this model's table, else in another model's (an image stored
        through a replica of the other model while a model switch rolls out)."""
        try:
            return self.get(user_id, img_id)
        except NotFound:
            return _find_in(self._model_tables()[1:], user_id, img_id)

    def delete_import(self, user_id: str, job_id: str) -> list[dict]:
        """Every row the bulk job `job_id` stored for the user (the job's id is in the row's meta), from every
        model's table; returns them, so their blobs can go too. Nothing else of the user's goes: a photo the
        job skipped as already there is the row of the upload (or job) that stored it first."""
        with self._lock:
            tables = self._model_tables()
            found = _import_rows(tables, user_id, job_id)
            keys = sorted(found)
            for table in tables:
                for i in range(0, len(keys), _IN_CHUNK):
                    where = f"{user_filter(user_id)} AND {in_list(PRIMARY_KEY, keys[i:i + _IN_CHUNK])}"
                    self._write(lambda t=table, w=where: t.delete(w))
            if found:
                self._search.user_changed(user_id)
        return list(found.values())

    def delete_user(self, user_id: str) -> int:
        """Every row of a user, in every model's table (`DELETE /api/me`); returns how many this table held."""
        where = user_filter(user_id)
        with self._lock:
            count = self.table.count_rows(where)
            for table in self._model_tables():
                self._write(lambda t=table: t.delete(where))
            self._search.user_changed(user_id)
        return count


def _find_in(tables, user_id: str, img_id: str) -> dict | None:
    """The user's row of this image in the first of `tables` that holds it."""
    if not isinstance(img_id, str) or not HEX32.match(img_id):
        return None
    for table in tables:
        rows = _select(table, f"{user_filter(user_id)} AND img_id = {sql_str(img_id)}", limit=1)
        if rows:
            return rows[0]
    return None


def _import_rows(tables, user_id: str, job_id: str) -> dict[str, dict]:
    """The user's rows a bulk job stored, in any of `tables`, by primary key. The LIKE narrows the scan; the
    row's meta, read as JSON, decides."""
    if not isinstance(job_id, str) or not HEX32.match(job_id):
        return {}
    where = f"{user_filter(user_id)} AND source = 'ingest' AND meta LIKE {sql_str('%' + job_id + '%')}"
    found: dict[str, dict] = {}
    for table in tables:
        for r in table.search().where(where).select(READ_COLUMNS + [PRIMARY_KEY]).limit(None).to_list():
            row = row_out(r)
            if row["meta"].get("ingest_job") == job_id:
                found.setdefault(r[PRIMARY_KEY], row)
    return found


def _select(table, where: str, limit: int | None = None) -> list[dict]:
    return [row_out(r) for r in table.search().where(where).select(READ_COLUMNS).limit(limit).to_list()]
