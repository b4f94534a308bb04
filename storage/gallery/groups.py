"""The read behind a user's duplicate groups (issue 32): the near-duplicate pairs their photos' rows keep
(`meta.near`, written by the upload's check: no rescan of the gallery), and the rows those pairs name."""

from __future__ import annotations

import json

from storage.schema import HEX32

from .filters import row_out, user_filter


class GalleryGroups:
    """Mixed into `Gallery` (storage/gallery/table.py), which provides the table, its search (with the vector
    cache) and `rows_by_img_ids`."""

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

    def rows_of(self, user_id: str, img_ids: set[str]) -> dict[str, dict]:
        """The user's rows of these ids that the table holds, by img_id: from this process's cache of the user
        (proven still there) when it holds them, else read from the table."""
        ids = sorted(i for i in img_ids if isinstance(i, str) and HEX32.match(i))
        cached = self._search.vectors.rows_named(user_id, "img_id", ids) if self._vectors.enabled and ids else None
        if cached is not None:
            return {row["img_id"]: row_out(row) for row in cached}
        return {img_id: row for (_, img_id), row in self.rows_by_img_ids((user_id, i) for i in ids).items()}
