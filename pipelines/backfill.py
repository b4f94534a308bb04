"""A live model switch: every stored image re-embedded by another embedding model into that model's
table, with Ray Data, while search keeps serving from the current model's table.

    python -m pipelines.backfill --config serve_config.local.yaml --to checkpoints/tiny/embedder_chinese_clip
    python -m pipelines.backfill --config serve_config.local.yaml --to MODEL --user alice
    python -m pipelines.backfill --config serve_config.local.yaml --to MODEL --status

The images come from the blob store (each row's original), are decoded and squared for the new
model's image tower by read tasks, embedded by an actor pool running the new model, and committed
through the gallery's one writer (`GalleryWrites.copy_rows`), which copies a row only while its image
is still in the current table, with the texts it has there now. So it is:

- **idempotent and resumable**: what the new table already holds (by user and content) is skipped
  before any blob is read; a rerun after a crash does only what is left;
- **safe beside users**: an image deleted while the backfill runs is not brought back (deletes reach
  every model's table, and a copy never interleaves with one), and an edited caption or description
  is copied as it is now;
- **caught up**: after the pass over every image, passes repeat over what was stored meanwhile until
  one finds nothing left; then the job ends `succeeded` with `missing: 0`.

Then flip the config's embedder `model` to the new one and `serve deploy` it: while the rollout replaces
the replicas, every vector is stored and searched in its own model's table (`deployments.service`), so no
replica searches one model's table with the other's vector. Run the same command once more after the
rollout: it copies what replicas of the old model stored during it (usually nothing).

Progress and the outcome are kept in the gallery's `<gallery_table>_backfills` table (`--status`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

from models.configs import EmbedderConfig
from pipelines.config import PipelineSections, embedder_geometry
from pipelines.spec import absolute_storage
from pipelines.stages import ERROR, NEW, EmbedImages, square_pixels
from pipelines.writer import writer_call as _writer_call
from storage.placement import NAMESPACE
# The rest of storage is imported inside the stage or driver that uses it: every Ray Data task of a backfill
# imports this module, and a read task needs neither LanceDB (the driver's) nor the writer actor's client.
from storage.settings import StorageSettings

log = logging.getLogger("atelier.backfill")

FETCHED = pa.schema([("index", pa.int64()), ("outcome", pa.string()), ("code", pa.string()),
                     ("message", pa.string()), ("pixels", pa.binary())])
_STATUS = pa.schema([("key", pa.string()), ("status", pa.string())])


# -- stage 1: the stored original of each image, decoded and squared for the new model (CPU tasks) --------
class _Blobs:
    def __init__(self, storage_json: str):
        from storage.blobs import open_blob_store
        from storage.intake import ImageIntake

        settings = StorageSettings(**json.loads(storage_json))
        self.blobs, self.intake = open_blob_store(settings), ImageIntake(settings)


_TOOLS: dict[str, _Blobs] = {}


def fetch_batch(batch: pa.Table, *, storage_json: str, side: int, crop: bool) -> pa.Table:
    tools = _TOOLS.get(storage_json) or _TOOLS.setdefault(storage_json, _Blobs(storage_json))
    out = []
    for row in batch.to_pylist():
        try:
            image = tools.intake.decode(tools.blobs.get(row["image_uri"]), model_size=side).model_image
            out.append({"index": row["index"], "outcome": NEW, "code": "", "message": "",
                        "pixels": square_pixels(image, side, crop)})
        except Exception as exc:  # noqa: BLE001 - one unreadable blob is one failed row, never the job
            out.append({"index": row["index"], "outcome": ERROR, "code": "blob_unreadable",
                        "message": f"{type(exc).__name__}: {str(exc)[:200]}", "pixels": b""})
    return pa.Table.from_pylist(out, schema=FETCHED)


# -- the driver -------------------------------------------------------------------------------------
class Backfill:
    def __init__(self, sections: PipelineSections, target: EmbedderConfig, *, source: str | None = None,
                 user: str | None = None, max_passes: int = 5, console: bool = False):
        from storage.gallery import Gallery

        self.settings = absolute_storage(sections.settings())
        self.ingest = sections.job_ingest()
        self.target_config = target.model_copy(update={"num_threads": self.ingest.embed_threads})
        source_config = self.ingest.embedder if source is None else EmbedderConfig(model=source)
        self.source = (source_config.model, embedder_geometry(source_config)[0])
        dim, self.side, self.crop = embedder_geometry(self.target_config)
        self.target = (self.target_config.model, dim)
        if self.source[0] == self.target[0]:
            raise SystemExit(f"--to {self.target[0]} is the model the config already serves: nothing to backfill")
        self.user, self.max_passes, self.console = user, max_passes, console
        self.src = Gallery.open(self.settings, dim=self.source[1], embed_model=self.source[0])
        self.dst = Gallery.open(self.settings, dim=self.target[1], embed_model=self.target[0])
        self.status = {"state": "running", "source": self.source[0], "target": self.target[0],
                       "user": user, "source_rows": 0, "copied": 0, "already": 0, "gone": 0, "failed": 0,
                       "missing": None, "duplicated": None, "passes": 0, "errors": [],
                       "started_at": _now(), "finished_at": None, "seconds": 0.0}
        self._t0 = time.perf_counter()

    # which rows are left: the current table's, less what the new one holds (by user and content)
    def _left(self) -> list[dict]:
        from storage.gallery.filters import row_out
        from storage.schema import READ_COLUMNS

        where = _user_where(self.user)
        query = self.src.table.search().select(READ_COLUMNS).limit(None)
        rows = [row_out(r) for r in (query.where(where) if where else query).to_list()]
        self.status["source_rows"] = len(rows)
        have = self._keys(self.dst)
        return [r for r in rows if (r["user_id"], r["content_hash"]) not in have]

    def _keys(self, gallery) -> set[tuple[str, str]]:
        where = _user_where(self.user)
        query = gallery.table.search().select(["user_id", "content_hash"]).limit(None)
        tbl = (query.where(where) if where else query).to_arrow()
        return set(zip(tbl.column("user_id").to_pylist(), tbl.column("content_hash").to_pylist()))

    def run(self) -> dict:
        from storage.gallery_writer import gallery_writer

        writer = gallery_writer(self.settings, self.source)
        ray.get(writer.upsert.remote(self.target, []))  # the writer holds the new table open from here on
        try:
            for _ in range(self.max_passes):
                left = self._left()
                failed_before = self.status["failed"]
                if not left:
                    break
                self.status["passes"] += 1
                self._pass(writer, left)
                self._save()
                if self.status["failed"] - failed_before == len(left):
                    break  # nothing but unreadable blobs left: another pass would fail them again
            self._finish()
        except Exception as exc:
            self.status.update(state="failed", message=f"{type(exc).__name__}: {str(exc)[:300]}")
            self._finish(final=False)
            raise
        return self.status

    def _pass(self, writer, rows: list[dict]) -> None:
        from ray.data import ActorPoolStrategy, DataContext, ExecutionResources, TaskPoolStrategy

        ingest = self.ingest
        ctx = DataContext.get_current()
        ctx.execution_options.resource_limits = ExecutionResources(cpu=ingest.max_cpus, gpu=ingest.max_gpus)
        ctx.enable_progress_bars = self.console
        items = [{"index": i, "image_uri": r["image_uri"]} for i, r in enumerate(rows)]
        ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / ingest.read_batch_size)))
        ds = ds.map_batches(fetch_batch, batch_size=ingest.read_batch_size, batch_format="pyarrow",
                            fn_kwargs={"storage_json": self.settings.model_dump_json(), "side": self.side,
                                       "crop": self.crop},
                            compute=TaskPoolStrategy(size=ingest.read_tasks), num_cpus=ingest.read_num_cpus)
        gpu = {"num_gpus": ingest.embed_num_gpus} if ingest.embed_num_gpus else {}
        ds = ds.map_batches(EmbedImages, batch_size=ingest.batch_size, batch_format="pyarrow",
                            fn_constructor_kwargs={"embedder": self.target_config.model_dump(), "side": self.side},
                            compute=ActorPoolStrategy(size=ingest.embed_actors), num_cpus=ingest.embed_num_cpus,
                            **gpu)
        for batch in ds.iter_batches(batch_size=ingest.write_batch_size, batch_format="pyarrow", prefetch_batches=1):
            copies, failed = [], []
            for done in batch.to_pylist():
                row = rows[done["index"]]
                if done["outcome"] != NEW:
                    failed.append({"user_id": row["user_id"], "img_id": row["img_id"], "code": done["code"],
                                   "message": done["message"]})
                    continue
                copies.append({**row, "embed_model": self.target[0],
                               "vector": np.frombuffer(done["vector"], dtype=np.float32)})
            counts = _writer_call(writer.copy_rows, self.source, self.target, copies) if copies else {}
            for name in ("copied", "already", "gone"):
                self.status[name] += counts.get(name, 0)
            # A blob that could not be read because its image was deleted meanwhile is gone, not failed.
            still = self.src.rows_by_img_ids([(f["user_id"], f["img_id"]) for f in failed]) if failed else {}
            for f in failed:
                if (f["user_id"], f["img_id"]) in still:
                    self.status["failed"] += 1
                    self.status["errors"] = (self.status["errors"] + [f])[-100:]
                else:
                    self.status["gone"] += 1
            self._save(progress=True)

    def _finish(self, final: bool = True) -> None:
        if final:
            source, target = self._keys(self.src), self._keys(self.dst)
            self.status["missing"] = len(source - target)
            dst_rows = self.dst.count(self.user) if self.user else self.dst.count()
            self.status["duplicated"] = dst_rows - len(target)
            self.status["state"] = "succeeded" if self.status["missing"] == 0 else "failed"
            if self.status["missing"]:
                self.status["message"] = (f"{self.status['missing']} images are not in the new table "
                                          f"({self.status['failed']} could not be read); run again to retry them")
        self.status.update(finished_at=_now(), seconds=round(time.perf_counter() - self._t0, 2))
        self._save()

    def _save(self, progress: bool = False) -> None:
        self.status["seconds"] = round(time.perf_counter() - self._t0, 2)
        save_status(self.settings, self.status)
        if self.console and not progress:
            print(json.dumps({k: self.status[k] for k in ("state", "passes", "copied", "already", "gone", "failed")}),
                  file=sys.stderr, flush=True)


def _user_where(user: str | None) -> str | None:
    if user is None:
        return None
    from storage.gallery.filters import user_filter

    return user_filter(user)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _status_key(status: dict) -> str:
    return f"{status['source']}\x00{status['target']}\x00{status.get('user') or ''}"


def _status_table(settings: StorageSettings):
    import lancedb

    db = lancedb.connect(settings.lancedb_uri, storage_options=settings.lancedb_storage_options or None)
    name = f"{settings.gallery_table}_backfills"
    try:
        return db.open_table(name)
    except ValueError:
        try:
            return db.create_table(name, schema=_STATUS)
        except ValueError:  # created meanwhile
            return db.open_table(name)


def save_status(settings: StorageSettings, status: dict) -> None:
    """One row per (source, target, user): the backfill's latest status, as JSON."""
    table = _status_table(settings)
    key = _status_key(status)
    data = pa.Table.from_pylist([{"key": key, "status": json.dumps(status, ensure_ascii=False)}], schema=_STATUS)
    table.merge_insert("key").when_matched_update_all().when_not_matched_insert_all().execute(data)


def load_statuses(settings: StorageSettings) -> list[dict]:
    return [json.loads(r["status"]) for r in _status_table(settings).to_arrow().to_pylist()]


# -- command line ----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.backfill",
        description="Re-embed every stored image (of every user, or one) with another embedding model into that "
                    "model's table, while search keeps serving from the current one. Storage, resources and the "
                    "current model come from --config.")
    parser.add_argument("--to", dest="target", help="the new embedding model: a hub id or a checkpoint folder")
    parser.add_argument("--from", dest="source", help="the model whose table is copied (default: the config's)")
    parser.add_argument("--user", help="only this user's images (default: every user's)")
    parser.add_argument("--config", type=Path, default=Path(os.environ.get("ATELIER_SERVE_CONFIG", "serve_config.yaml")))
    parser.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local one)")
    parser.add_argument("--num-cpus", type=float, help="logical CPUs of a local cluster started here")
    parser.add_argument("--passes", type=int, default=5, help="most passes (the first, then catching up)")
    parser.add_argument("--status", action="store_true", help="print the backfills' statuses and exit")
    args = parser.parse_args(argv)
    if not args.config.is_file():
        parser.error(f"--config {args.config} is not a file")
    sections = PipelineSections.from_file(args.config)
    if args.status:
        print(json.dumps(load_statuses(absolute_storage(sections.settings())), indent=2, ensure_ascii=False))
        return 0
    if not args.target:
        parser.error("give --to MODEL (or --status)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    address = args.address or os.environ.get("RAY_ADDRESS")
    local = {"num_cpus": args.num_cpus} if args.num_cpus and not address else {}
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address=address or "local", namespace=NAMESPACE, **local)
    job = Backfill(sections, EmbedderConfig(model=args.target), source=args.source, user=args.user,
                   max_passes=args.passes, console=True)
    print(f"backfill {job.source[0]} -> {job.target[0]}" + (f" for user {args.user!r}" if args.user else ""),
          file=sys.stderr, flush=True)
    status = job.run()
    print(json.dumps(status, indent=2, ensure_ascii=False), flush=True)
    return 0 if status["state"] == "succeeded" else 1


if __name__ == "__main__":
    # The importable module, not `__main__`: Ray pickles functions by module name.
    from pipelines.backfill import main as _main

    sys.exit(_main())
