"""A gallery table's recent versions, and the rollback of a bad write to one of them (LanceDB's `restore`).

Every commit of a gallery table is a LanceDB version whose transaction names its operation: `Append`
(uploads, generations, a bulk job's batches: merge-inserts of new rows show as `Update`), `Update` (a
caption or description edited), `Delete` (a user deleting an image, an import or themselves), `Rewrite`
(compaction), `CreateIndex`, `Restore`. A rollback makes a chosen version the latest again, as a new version,
and then deletes the blobs of the rows it took away that no table of the gallery still names.

A rollback never undoes a deletion: a version older than any `Delete` after it is refused (the rows a user
deleted would come back), and so is one whose history cannot be read to the end (its transactions gone with a
compaction's cleanup). A version the writer's purge removed cannot be restored at all. Run it with writes
paused: the gallery writer's commits racing it are retried on top of the restored version.
"""

from __future__ import annotations

from datetime import timezone
from typing import Any

from storage.errors import InvalidInput


def table_names(db) -> list[str]:
    """Every table of a LanceDB database, sorted (its listing read page by page)."""
    names, token = [], None
    while True:
        page = db.list_tables(page_token=token)
        names += list(page.tables)
        token = page.page_token
        if not token:
            return sorted(names)

ERASING = frozenset({"Delete"})


def history(table, limit: int = 20) -> list[dict[str, Any]]:
    """The table's `limit` most recent versions, newest first: {version, at (UTC ISO), operation, rows, change}
    (`change`: rows added or removed by it; None where the version before it is gone)."""
    versions = {v["version"]: v for v in table.list_versions()}
    latest = table.version
    transactions = table.to_lance().get_transactions(limit)
    out = []
    for i, transaction in enumerate(transactions):
        version = latest - i
        if version not in versions:
            break
        rows = _rows(versions[version])
        before = versions.get(version - 1)
        at = versions[version]["timestamp"]
        at = at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)
        out.append({"version": version, "at": at.isoformat(timespec="seconds"),
                    "operation": _operation(transaction), "rows": rows,
                    "change": None if before is None else rows - _rows(before)})
    return out


def check_rollback(table, version: int) -> list[dict[str, Any]]:
    """The versions a rollback to `version` would undo, newest first; InvalidInput when it may not be undone."""
    latest = table.version
    if not isinstance(version, int) or not 1 <= version < latest:
        raise InvalidInput(f"version must be one of the table's earlier versions (1..{latest - 1})", field="version")
    if version not in {v["version"] for v in table.list_versions()}:
        raise InvalidInput(f"version {version} is gone (purged or cleaned up): it cannot be restored", field="version")
    undone = history(table, latest - version)
    if len(undone) < latest - version or any(v["operation"] == "?" for v in undone):
        raise InvalidInput(f"the history after version {version} cannot be read to the end: refused, it may hold "
                           "a deletion", code="rollback_refused", field="version")
    erased = [v["version"] for v in undone if v["operation"] in ERASING]
    if erased:
        raise InvalidInput(f"refused: version(s) {erased} after {version} deleted rows at a user's request; a "
                           "rollback past them would bring deleted data back", code="rollback_refused",
                           field="version")
    return undone


def rows_taken_away(table, version: int, columns: list[str]) -> list[dict]:
    """The rows the latest version holds and `version` does not (by primary key), with `columns`."""
    from storage.schema import PRIMARY_KEY

    now = table.to_lance()
    then = now.checkout_version(version)
    kept = set(then.to_table(columns=[PRIMARY_KEY]).column(PRIMARY_KEY).to_pylist())
    current = now.to_table(columns=[PRIMARY_KEY, *columns]).to_pylist()
    return [r for r in current if r[PRIMARY_KEY] not in kept]


def _rows(version: dict) -> int:
    return int((version.get("metadata") or {}).get("total_rows", 0))


def _operation(transaction) -> str:
    if transaction is None:
        return "?"
    return type(transaction.operation).__name__
