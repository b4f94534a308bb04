"""Backup, verify and restore of a whole deployment's data (issue 32).

    python -m storage.backup create DEST  [--config serve_config.yaml] [--keys-uri URI]
    python -m storage.backup verify SRC
    python -m storage.backup restore SRC  [--config ...] [--erasures URI ...] [--restore-erased USER ...]

DEST and SRC are a folder or an `s3://bucket/prefix` (reached with the deployment's S3 settings). A backup holds
every table of the gallery's LanceDB (every embedding model's gallery table, the key and plan tables, the
durable ledgers, the erasure log) and of the key database where that is another one, each as it was at one
version, and the blobs: `lancedb/`, `keys/`, `blobs/`, and `manifest.json` (written last: a backup without it
is unfinished) with each table's version, rows and sha256, and each blob's size and sha256.

Consistent while uploads go on: each table is read at one version, and a gallery row is kept only with both
its blobs (a blob is always written before its row, so only a row deleted after that version can have lost
its blobs: it is left out, as it is gone anyway). Blobs written after the version are not copied: a row is in
the backup with its blobs, or neither is.

`restore` checks the backup first (as `verify` does), refuses a deployment that already holds data, and
leaves out every user of the erasure log (the backup's own, the target's, and any `--erasures` database: a
live deployment's, or a newer backup's `lancedb/`): a user deleted after the backup was taken stays deleted
unless the operator names them (`--restore-erased USER`), which also takes them off the restored log.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa

from storage.blobs import BlobStore, LocalBlobStore, S3BlobStore, check_key, media_type, open_blob_store
from storage.erasures import ERASURES_TABLE, ErasureLog, user_digest
from storage.errors import InvalidInput, NotFound
from storage.gallery.versions import table_names
from storage.settings import StorageArgs, StorageSettings

FORMAT = 1
MANIFEST = "manifest.json"
SKIPPED_TABLES = {"gallery_purges"}  # the writer's schedule of old versions to remove: nothing to restore
_THREADS = 4  # blobs copied at once: a local disk gains little past this on a small box (measured 2-8 on 2 cores)


# -- where a backup is ---------------------------------------------------------------------------------
class Place:
    """A backup's location: a local folder or an S3 prefix (with the deployment's S3 settings)."""

    def __init__(self, where: str, settings: StorageSettings):
        self.where = where.rstrip("/")
        self.s3 = self.where.startswith("s3://")
        self.settings = settings
        if self.s3:
            self.bucket, _, self.prefix = self.where[len("s3://"):].partition("/")

    def db_uri(self, part: str) -> str:
        return f"{self.where}/{part}"

    def storage_options(self) -> dict[str, str] | None:
        if not self.s3:
            return None
        s = self.settings
        options = {"aws_region": s.s3_region}
        if s.s3_endpoint_url:
            options.update(aws_endpoint=s.s3_endpoint_url, allow_http=str(s.s3_endpoint_url.startswith("http:")).lower())
        if s.s3_access_key_id:
            options.update(aws_access_key_id=s.s3_access_key_id, aws_secret_access_key=s.s3_secret_access_key or "")
        return options

    def store(self, part: str = "") -> BlobStore:
        if not self.s3:
            return LocalBlobStore(Path(self.where) / part if part else Path(self.where))
        s = self.settings
        return S3BlobStore(self.bucket, "/".join(p for p in (self.prefix, part) if p), endpoint_url=s.s3_endpoint_url,
                           region=s.s3_region, access_key_id=s.s3_access_key_id,
                           secret_access_key=s.s3_secret_access_key, timeout_s=s.blob_timeout_s)

    def writer(self, part: str):
        """put(key, data) into the backup: a local folder is written plainly, and synced once before the manifest."""
        if self.s3:
            store = self.store(part)
            return lambda key, data: store.put(key, data, media_type(key))
        return plain_writer(Path(self.where) / part)

    def manifest(self) -> dict | None:
        try:
            return json.loads(self.store().get(MANIFEST))
        except (NotFound, FileNotFoundError):
            return None

    def write_manifest(self, manifest: dict) -> None:
        if not self.s3:
            os.sync()  # every blob and table file on disk before the manifest says the backup is whole
        self.store().put(MANIFEST, json.dumps(manifest, sort_keys=True).encode(), "application/json")


def plain_writer(root: Path):
    """put(key, data) as plain files under `root` (no fsync per file: the caller syncs once at the end, as a
    copy does). Keys pass the blob store's check (relative, plain segments: no '..'); the folders are made
    here, so none is a link leading out."""
    root = root.resolve()
    made: set[Path] = set()

    def put(key: str, data: bytes) -> None:
        path = root / check_key(key)
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        with open(path, "wb") as out:
            out.write(data)

    return put


def reader(store: BlobStore):
    """get(key) of a blob store; a local folder's files read directly (its `get` resolves every path, which
    costs more than the read of a small file)."""
    if isinstance(store, LocalBlobStore):
        root = store.root

        def get(key: str) -> bytes:
            try:
                with open(root / check_key(key), "rb") as f:
                    return f.read()
            except FileNotFoundError:
                raise NotFound(f"no blob {key}") from None

        return get
    return store.get


def _target_writer(settings: StorageSettings):
    if settings.blob_backend == "local":
        return plain_writer(Path(settings.blob_root))
    store = open_blob_store(settings)
    return lambda key, data: store.put(key, data, media_type(key))


def _connect(uri: str, options: dict[str, str] | None):
    import lancedb

    return lancedb.connect(uri, storage_options=options or None)


def _tables(db) -> list[str]:
    return [n for n in table_names(db) if n not in SKIPPED_TABLES]


def table_digest(tbl: pa.Table) -> str:
    """sha256 of a table's schema and data (Arrow IPC of its rows as one batch): the same rows read twice
    give the same digest; a changed value, row or column another."""
    tbl = tbl.combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, tbl.schema) as writer:
        writer.write_table(tbl, max_chunksize=max(tbl.num_rows, 1))
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def _databases(settings: StorageSettings, keys_uri: str | None) -> dict[str, tuple[str, dict | None]]:
    dbs = {"lancedb": (settings.lancedb_uri, settings.lancedb_storage_options or None)}
    if keys_uri and keys_uri.rstrip("/") != settings.lancedb_uri.rstrip("/"):
        dbs["keys"] = (keys_uri, settings.lancedb_storage_options or None)
    return dbs


def _blob_columns(tbl: pa.Table) -> list[str]:
    return [c for c in ("image_uri", "display_uri") if c in tbl.column_names]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- create --------------------------------------------------------------------------------------------
def create(settings: StorageSettings, dest: str, *, keys_uri: str | None = None) -> dict:
    """Write a backup of the deployment to `dest` (which must hold none yet); its manifest."""
    place = Place(dest, settings)
    if place.manifest() is not None:
        raise InvalidInput(f"{dest} already holds a backup: pick a new place", field="dest")
    source, out = reader(open_blob_store(settings)), place.writer("blobs")
    manifest: dict[str, Any] = {"format": FORMAT, "created_at": datetime.now(timezone.utc).isoformat(),
                                "tables": {}, "blobs": {}}
    snapshots: dict[tuple[str, str], tuple[int, pa.Table]] = {}
    for part, (uri, options) in _databases(settings, keys_uri).items():
        db = _connect(uri, options)
        for name in _tables(db):
            dataset = db.open_table(name).to_lance()  # one version of the table, read whole
            snapshots[(part, name)] = (dataset.version, dataset.to_table())
    wanted = sorted({key for _, tbl in snapshots.values() for c in _blob_columns(tbl)
                     for key in tbl.column(c).to_pylist() if key}
                    | set(_other_blobs(open_blob_store(settings))))
    copied = dict(zip(wanted, _parallel(lambda key: _copy(source, out, key), wanted)))
    manifest["blobs"] = {key: got for key, got in copied.items() if got is not None}
    for (part, name), (version, tbl) in snapshots.items():
        columns = _blob_columns(tbl)
        if columns:  # a row only with both its blobs (only a row deleted since `version` lost them)
            whole = [all(not key or key in manifest["blobs"] for key in keys)
                     for keys in zip(*(tbl.column(c).to_pylist() for c in columns))]
            tbl = tbl.filter(pa.array(whole, pa.bool_())) if whole else tbl
        written = _connect(place.db_uri(part), place.storage_options()).create_table(name, data=tbl, schema=tbl.schema)
        manifest["tables"].setdefault(part, {})[name] = {
            "version": version, "rows": tbl.num_rows, "sha256": table_digest(written.to_arrow())}
    place.write_manifest(manifest)
    return summary(manifest)


def _other_blobs(store: BlobStore) -> Iterable[str]:
    """Blobs no gallery row names (an idempotent answer's image, under `i/`), as listed now."""
    try:
        return list(store.keys("i/"))
    except (NotFound, FileNotFoundError):
        return []


def _copy(source, out, key: str) -> list | None:
    try:
        data = source(key)
    except NotFound:
        return None  # deleted since the tables' versions: its row is left out
    out(key, data)
    return [len(data), _sha(data)]


def _parallel(fn, items: list) -> list:
    with ThreadPoolExecutor(_THREADS) as pool:
        return list(pool.map(fn, items))


def summary(manifest: dict) -> dict:
    return {"created_at": manifest["created_at"],
            "tables": {f"{part}/{name}": t["rows"] for part, ts in manifest["tables"].items() for name, t in ts.items()},
            "blobs": len(manifest["blobs"]), "bytes": sum(size for size, _ in manifest["blobs"].values())}


# -- verify --------------------------------------------------------------------------------------------
def verify(settings: StorageSettings, src: str) -> dict:
    """Check a backup without restoring it: every table's rows and digest, every blob's size and sha256."""
    place = Place(src, settings)
    manifest = place.manifest()
    if manifest is None:
        return {"ok": False, "problems": [f"{src} has no {MANIFEST}: not a backup, or an unfinished one"]}
    problems = []
    for part, tables in manifest["tables"].items():
        db = _connect(place.db_uri(part), place.storage_options())
        for name, expected in tables.items():
            try:
                tbl = db.open_table(name).to_arrow()
            except Exception as exc:  # noqa: BLE001 - any failure to read the table is what verify reports
                problems.append(f"table {part}/{name} cannot be read: {exc}")
                continue
            if tbl.num_rows != expected["rows"] or table_digest(tbl) != expected["sha256"]:
                problems.append(f"table {part}/{name} differs from the manifest ({tbl.num_rows} rows, "
                                f"{expected['rows']} expected)")
    blobs = reader(place.store("blobs"))

    def check(item) -> str | None:
        key, (size, sha) = item
        try:
            data = blobs(key)
        except NotFound:
            return f"blob {key} is missing"
        return None if len(data) == size and _sha(data) == sha else f"blob {key} is corrupted (size or sha256)"

    problems += [p for p in _parallel(check, sorted(manifest["blobs"].items())) if p]
    return {"ok": not problems, "problems": problems, **summary(manifest)}


# -- restore -------------------------------------------------------------------------------------------
def restore(settings: StorageSettings, src: str, *, keys_uri: str | None = None, erasures: Iterable[str] = (),
            restore_erased: Iterable[str] = ()) -> dict:
    """Restore a backup into this (empty) deployment, leaving out every erased user but those named."""
    dbs = _databases(settings, keys_uri)
    _check_empty(settings, dbs)  # cheap: before the full read of the backup
    checked = verify(settings, src)
    if not checked["ok"]:
        raise InvalidInput("the backup does not verify: " + "; ".join(checked["problems"][:5]), field="src")
    place = Place(src, settings)
    manifest = place.manifest()
    allowed = {user_digest(u) for u in restore_erased}
    erased = (_erased(place.db_uri("lancedb"), place.storage_options())
              | _erased(settings.lancedb_uri, settings.lancedb_storage_options or None)
              | set().union(*(_erased(uri, settings.lancedb_storage_options or None) for uri in erasures))) - allowed
    prefixes = tuple(f"{top}/{d[:32]}/" for d in erased for top in ("u", "i"))
    target, blobs = _target_writer(settings), reader(place.store("blobs"))
    keys = [k for k in manifest["blobs"] if not k.startswith(prefixes)]
    _parallel(lambda key: target(key, blobs(key)), keys)  # blobs first (on disk: synced), then rows
    if settings.blob_backend == "local":
        os.sync()
    restored: dict[str, int] = {}
    for part, tables in manifest["tables"].items():
        if part not in dbs:
            raise InvalidInput(f"the backup has a separate key database ({part}/): pass --keys-uri", field="keys_uri")
        db, backed_up = _connect(*dbs[part]), _connect(place.db_uri(part), place.storage_options())
        for name in tables:
            tbl = backed_up.open_table(name).to_arrow()
            digests = _user_digests(tbl)
            if name == ERASURES_TABLE:
                tbl = _log_of(erased)
            elif digests is not None and erased:
                tbl = tbl.filter(pa.array([d not in erased for d in digests], pa.bool_()))
            db.create_table(name, data=tbl, schema=tbl.schema, mode="overwrite")
            restored[f"{part}/{name}"] = tbl.num_rows
    return {"tables": restored, "blobs": len(keys), "erased_left_out": len(erased),
            "erased_restored": len(allowed)}


def _user_digests(tbl: pa.Table) -> list[str] | None:
    """Each row's user, as the erasure log names them: by `user_id`, or by `user_digest` where a table keeps
    only that (dismissals); None for a table of no user's."""
    if "user_id" in tbl.column_names:
        return [user_digest(u) for u in tbl.column("user_id").to_pylist()]
    if "user_digest" in tbl.column_names:
        return tbl.column("user_digest").to_pylist()
    return None


def _erased(uri: str, options: dict | None) -> set[str]:
    try:
        db = _connect(uri, options)
        if ERASURES_TABLE not in _tables(db):
            return set()
    except (OSError, ValueError, RuntimeError):
        return set()
    return ErasureLog(uri, storage_options=options).digests()


def _log_of(digests: set[str]) -> pa.Table:
    from storage.erasures import ERASURE_SCHEMA

    now = datetime.now(timezone.utc)
    return pa.Table.from_pylist([{"user_digest": d, "erased_at": now} for d in sorted(digests)], schema=ERASURE_SCHEMA)


def _check_empty(settings: StorageSettings, dbs: dict) -> None:
    """Refuse a deployment that already holds rows (a table with rows, the erasure log aside) or blobs."""
    for uri, options in dbs.values():
        try:
            db = _connect(uri, options)
            names = _tables(db)
        except (OSError, ValueError, RuntimeError):
            continue
        for name in names:
            if name != ERASURES_TABLE and db.open_table(name).count_rows() > 0:
                raise InvalidInput(f"restore needs an empty deployment: table {name} in {uri} has rows", field="target")
    store = open_blob_store(settings)
    for top in ("u/", "i/"):
        if next(iter(_keys(store, top)), None) is not None:
            raise InvalidInput(f"restore needs an empty deployment: the blob store has {top} blobs", field="target")


def _keys(store: BlobStore, prefix: str) -> Iterable[str]:
    try:
        return store.keys(prefix)
    except (NotFound, FileNotFoundError):
        return []


# -- command line --------------------------------------------------------------------------------------
def settings_of(config: Path | None) -> StorageSettings:
    """The storage settings of a serve config's first application (its `storage` args), else the environment's."""
    if config is None:
        return StorageSettings()
    import yaml

    apps = (yaml.safe_load(config.read_text()) or {}).get("applications") or []
    if not apps:
        raise SystemExit(f"{config} has no `applications`: point --config at a serve_config file")
    return StorageArgs.model_validate((apps[0].get("args") or {}).get("storage") or {}).settings()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m storage.backup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("create", "verify", "restore"))
    parser.add_argument("place", help="create: DEST; verify, restore: SRC (a folder or s3://bucket/prefix)")
    parser.add_argument("--config", type=Path, default=None,
                        help="the serve config whose storage to use (default: the ATELIER_* environment's)")
    parser.add_argument("--keys-uri", default=os.environ.get("ATELIER_KEYS_URI"),
                        help="the key database, where it is not the gallery's (ATELIER_KEYS_URI)")
    parser.add_argument("--erasures", action="append", default=[],
                        help="restore: another LanceDB whose erasure log also counts (a live deployment's, a newer backup's lancedb/)")
    parser.add_argument("--restore-erased", action="append", default=[], metavar="USER",
                        help="restore: bring back this erased user all the same (the operator's decision)")
    args = parser.parse_args(argv)
    if args.config is not None and not args.config.is_file():
        parser.error(f"--config {args.config} is not a file")
    settings = settings_of(args.config)
    try:
        if args.command == "create":
            out = create(settings, args.place, keys_uri=args.keys_uri)
        elif args.command == "verify":
            out = verify(settings, args.place)
        else:
            out = restore(settings, args.place, keys_uri=args.keys_uri, erasures=args.erasures,
                          restore_erased=args.restore_erased)
    except InvalidInput as exc:
        print(f"refused: {exc.message}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return 0 if out.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
