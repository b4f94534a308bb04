"""The read behind a user's duplicate groups (issue 32): the near-duplicate pairs their photos' rows keep
(`meta.near`, written by the upload's check: no rescan of the gallery). The rows those pairs name are read
with `Gallery.rows_by_img_ids`."""

from __future__ import annotations

import json

from .filters import user_filter


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
