"""`python -m pipelines.versions`: a gallery's recent table versions, and the rollback of a bad write.

    python -m pipelines.versions list --config serve_config.local.yaml
    python -m pipelines.versions restore --config serve_config.local.yaml --table TABLE --version N

`list` prints every embedding model's table of the gallery with its recent versions: when, which operation
wrote it (`Append`, `Update`, `Delete`, `Rewrite`, `CreateIndex`, `Restore`) and the rows it added or removed.
`restore` makes version N of that table the latest again (a new version: LanceDB's restore), then deletes the
blobs of the rows it took away that no table of the gallery still names. It refuses a version a user's
deletion came after (storage/gallery/versions.py says why); run it with writes paused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pipelines.config import PipelineSections
from pipelines.spec import absolute_storage
from storage.errors import InvalidInput
from storage.settings import StorageSettings


def _db(settings: StorageSettings):
    import lancedb

    return lancedb.connect(settings.lancedb_uri, storage_options=settings.lancedb_storage_options or None)


def gallery_tables(settings: StorageSettings, db=None) -> list[str]:
    """Every embedding model's table of the gallery, by name."""
    from storage.gallery.versions import table_names

    return [n for n in table_names(db or _db(settings)) if n.startswith(f"{settings.gallery_table}__")]


def list_versions(settings: StorageSettings, limit: int = 20) -> dict[str, list[dict]]:
    from storage.gallery.versions import history

    db = _db(settings)
    return {name: history(db.open_table(name), limit) for name in gallery_tables(settings, db)}


def rollback(settings: StorageSettings, table_name: str, version: int) -> dict:
    """Restore `version` of the gallery table `table_name`; what it undid, and the blobs it deleted."""
    from storage.blobs import open_blob_store
    from storage.gallery.filters import in_list
    from storage.gallery.versions import check_rollback, rows_taken_away
    from storage.schema import PRIMARY_KEY

    db = _db(settings)
    tables = gallery_tables(settings, db)
    if table_name not in tables:
        raise InvalidInput(f"no gallery table {table_name!r} (there are: {', '.join(tables) or 'none'})",
                           field="table")
    table = db.open_table(table_name)
    undone = check_rollback(table, version)
    gone = rows_taken_away(table, version, ["image_uri", "display_uri"])
    table.restore(version)
    keys = [r[PRIMARY_KEY] for r in gone]
    named: set[str] = set()  # rows still in some table of the gallery (another model's) keep their blobs
    for name in tables:
        other = db.open_table(name)
        for i in range(0, len(keys), 1000):
            found = other.search().where(in_list(PRIMARY_KEY, keys[i:i + 1000])).select([PRIMARY_KEY]).limit(None)
            named.update(found.to_arrow().column(PRIMARY_KEY).to_pylist())
    blobs, deleted = open_blob_store(settings), 0
    for row in gone:
        if row[PRIMARY_KEY] in named:
            continue
        for key in {row["image_uri"], row["display_uri"]} - {None, ""}:
            blobs.delete(key)
            deleted += 1
    return {"table": table_name, "restored": version, "version": table.version, "rows_removed": len(gone),
            "blobs_deleted": deleted, "undone": undone}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.versions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("list", "restore"))
    parser.add_argument("--config", type=Path, default=Path(os.environ.get("ATELIER_SERVE_CONFIG", "serve_config.yaml")))
    parser.add_argument("--table", help="restore: the gallery table (as `list` names it)")
    parser.add_argument("--version", type=int, help="restore: the version to make the latest again")
    parser.add_argument("--limit", type=int, default=20, help="list: versions per table")
    args = parser.parse_args(argv)
    if not args.config.is_file():
        parser.error(f"--config {args.config} is not a file")
    settings = absolute_storage(PipelineSections.from_file(args.config).settings())
    try:
        if args.command == "list":
            out = list_versions(settings, args.limit)
        else:
            if not args.table or args.version is None:
                parser.error("restore needs --table and --version")
            out = rollback(settings, args.table, args.version)
    except InvalidInput as exc:
        print(f"refused: {exc.message}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
