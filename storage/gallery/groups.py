"""The reads behind a user's duplicate groups (issue 32): the near-duplicate pairs their photos' rows keep
(`meta.near`, written by the upload's check: no rescan of the gallery), and the rows those pairs name."""

from __future__ import annotations

import json

from storage.schema import READ_COLUMNS

from .filters import in_list, row_out, user_filter

_IN_CHUNK = 1000  # ids per `IN (...)` filter


class GalleryGroups:
    """Mixed into `Gallery` (storage/gallery/table.py), which provides the table."""

    def near_pairs(self, user_id: str) -> list[tuple[str, str, str, float]]:
        """(img_id, other img_id, kind, distance) of every pair a row of the user keeps."""
        where = f"{user_filter(user_id)} AND meta LIKE '%\"near\"%'"
        found = self.table.search().where(where).select(["img_id", "meta"]).limit(None).to_arrow()
        pairs = []
        for img_id, meta in zip(found.column("img_id").to_pylist(), found.column("meta").to_pylist()):
            try:
                near = json.loads(meta or "{}").get("near") or []
                pairs.extend((img_id, str(other), str(kind), float(distance)) for other, kind, distance in near)
            except (ValueError, TypeError, AttributeError):  # a row whose meta says "near" some other way
                continue
        return pairs

    def get_many(self, user_id: str, img_ids: list[str]) -> dict[str, dict]:
        """The user's rows of these ids (img_id -> row); ids they have no row of are left out."""
        out: dict[str, dict] = {}
        ids = sorted(set(img_ids))
        for start in range(0, len(ids), _IN_CHUNK):
            where = f"{user_filter(user_id)} AND {in_list('img_id', ids[start:start + _IN_CHUNK])}"
            for r in self.table.search().where(where).select(READ_COLUMNS).limit(None).to_list():
                out[r["img_id"]] = row_out(r)
        return out
