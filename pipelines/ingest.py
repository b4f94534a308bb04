"""Bulk ingestion: a user's files -> Ray Data (read/check/decode tasks, an embedding actor pool) ->
blobs and gallery rows through the cluster's one GalleryWriter, with progress in the job ledger.

    python -m pipelines.ingest --user alice --config serve_config.local.yaml photos/ trip.zip
    ray job submit --working-dir . -- python -m pipelines.ingest --user alice s3://bucket/camera/

Every listed file ends as exactly one of: stored (`done`), skipped (its content is already in the
user's gallery, or earlier in this job: found by hash before any decode), or an error entry
(name, code, message). So `done + skipped_duplicates + failed == total`, and a rerun after a crash
costs little more than reading and hashing what is already stored.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import math
import os
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
from PIL import Image

from models.configs import EmbedderConfig
from models.errors import ModelError
from pipelines.config import PipelineSections, embedder_geometry, embedder_shape
from pipelines.jobs import NAMESPACE, JobSpec, job_id_for, ledger
from pipelines.sources import Entry, EntryReader, as_url, list_sources
from storage.errors import AtelierError, InvalidInput, Unavailable
from storage.rows import new_row
from storage.settings import StorageSettings

log = logging.getLogger("atelier.ingest")

NEW, KNOWN, DUPLICATE, ERROR = "new", "known", "duplicate", "error"
ADMITTED = pa.schema([
    ("index", pa.int64()), ("name", pa.string()), ("content_hash", pa.string()), ("outcome", pa.string()),
    ("code", pa.string()), ("message", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
    ("image_uri", pa.string()), ("display_uri", pa.string()), ("pixels", pa.binary()),
])


__all__ = ["IngestRun", "absolute_storage", "embedder_shape", "main", "run_job", "spec_from_config"]


def absolute_storage(settings: StorageSettings) -> StorageSettings:
    """Local paths made absolute: a job's tasks run in worker processes whose folder may differ."""
    update = {}
    if "://" not in settings.lancedb_uri:
        update["lancedb_uri"] = str(Path(settings.lancedb_uri).resolve())
    if settings.blob_backend == "local":
        update["blob_root"] = str(Path(settings.blob_root).resolve())
    return settings.model_copy(update=update)


def square_pixels(image: Image.Image, side: int, crop: bool = True) -> bytes:
    """The `side` x `side` RGB bytes the image tower sees: the centre square (CLIP: shortest side to
    `side`, centre crop), or the whole picture resized to the square (Chinese-CLIP, SigLIP: `crop` off)."""
    if not crop:
        return image.convert("RGB").resize((side, side), Image.Resampling.BICUBIC).tobytes()
    w, h = image.size
    if min(w, h) != side:
        scale = side / min(w, h)
        image = image.resize((max(side, round(w * scale)), max(side, round(h * scale))), Image.Resampling.BICUBIC)
        w, h = image.size
    left, top = (w - side) // 2, (h - side) // 2
    return image.convert("RGB").crop((left, top, left + side, top + side)).tobytes()


# -- stage 1: read, hash, skip known, check + decode + store blobs (CPU tasks) -------------------
class _TaskTools:
    """What a read task needs, opened once per worker process and reused by its later tasks."""

    def __init__(self, storage_json: str, display_max_side: int):
        from storage.blobs import open_blob_store
        from storage.intake import ImageIntake

        settings = StorageSettings(**json.loads(storage_json))
        settings = settings.model_copy(update={"display_max_side": display_max_side})
        self.settings = settings
        self.intake = ImageIntake(settings)
        self.blobs = open_blob_store(settings)
        self.ledger = ledger()


@functools.lru_cache(maxsize=4)
def _task_tools(storage_json: str, display_max_side: int) -> _TaskTools:
    return _TaskTools(storage_json, display_max_side)


def admit_batch(batch: pa.Table, *, job_id: str, attempt: int, user_id: str, storage_json: str, writer,
                table: tuple[str, int], side: int, display_max_side: int, crop: bool = True) -> pa.Table:
    """One row out per file in: new (blobs stored, pixels for the model), known, duplicate or error.

    Which hashes the user already has comes from the GalleryWriter (`writer`), which holds the table
    open: the tasks themselves never open LanceDB.
    """
    from storage.blobs import store_image

    tools = _task_tools(storage_json, display_max_side)
    out: list[dict] = []
    raw: dict[int, bytes] = {}
    with EntryReader(tools.settings) as reader:
        for entry in batch.to_pylist():
            row = {"index": entry["index"], "name": entry["name"], "content_hash": "", "outcome": ERROR,
                   "code": entry["code"], "message": entry["message"], "width": 0, "height": 0,
                   "image_uri": "", "display_uri": "", "pixels": b""}
            out.append(row)
            if entry["code"]:
                continue
            try:
                data = reader.read(entry)
            except AtelierError as exc:
                row.update(code=exc.code, message=exc.message)
                continue
            except Exception as exc:  # noqa: BLE001 - an unreadable file is that file's error, never the job's
                row.update(code="read_failed", message=f"the file could not be read ({type(exc).__name__}: {exc})")
                continue
            raw[len(out) - 1] = data
            row["content_hash"] = hashlib.sha256(data).hexdigest()
    hashes = {out[i]["content_hash"] for i in raw}
    known = _writer_call(writer.existing_hashes, table, user_id, sorted(hashes)) if hashes else set()
    pairs = [(out[i]["content_hash"], out[i]["index"]) for i in raw if out[i]["content_hash"] not in known]
    claimed = ray.get(tools.ledger.claim.remote(job_id, attempt, pairs)) if pairs else {}
    for i, data in raw.items():
        row = out[i]
        if row["content_hash"] in known:
            row.update(outcome=KNOWN, code="", message="")
            continue
        if claimed.get(row["content_hash"], row["index"]) != row["index"]:
            row.update(outcome=DUPLICATE, code="", message="")
            continue
        try:
            image = tools.intake.admit(data, filename=row["name"], model_size=side)
            keys = store_image(tools.blobs, user_id, image)
            row.update(outcome=NEW, code="", message="", width=image.width, height=image.height,
                       image_uri=keys.original, display_uri=keys.display,
                       pixels=square_pixels(image.model_image, side, crop))
        except AtelierError as exc:
            row.update(code=exc.code, message=exc.message)
        except Exception as exc:  # noqa: BLE001 - e.g. a decoder bug on one file: that file's error
            log.warning("job %s: %s failed unexpectedly", job_id, row["name"], exc_info=True)
            row.update(code="decode_failed", message=f"the image could not be processed ({type(exc).__name__})")
    return pa.Table.from_pylist(out, schema=ADMITTED)


# -- stage 2: embed (an actor pool; each actor loads the model once) ----------------------------
class EmbedImages:
    """A batch's new images -> unit vectors (float32 bytes); other rows pass through untouched."""

    def __init__(self, embedder: dict, side: int):
        from models.embedder import Embedder

        self.model = Embedder(EmbedderConfig.model_validate(embedder))
        self.model.load()
        self.side = side

    def _embed(self, pixels: list[bytes]) -> np.ndarray:
        images = [Image.frombytes("RGB", (self.side, self.side), p) for p in pixels]
        return self.model.embed_pixels(self.model.preprocess(images))

    def __call__(self, batch: pa.Table) -> pa.Table:
        outcome = batch.column("outcome").to_pylist()
        code = batch.column("code").to_pylist()
        message = batch.column("message").to_pylist()
        pixels = batch.column("pixels").to_pylist()
        vectors = [b""] * len(outcome)
        todo = [i for i, o in enumerate(outcome) if o == NEW]
        if todo:
            try:
                found = list(self._embed([pixels[i] for i in todo]))
            except Exception:  # noqa: BLE001 - find the one image that breaks the batch, keep the rest
                found = []
                for i in todo:
                    try:
                        found.append(self._embed([pixels[i]])[0])
                    except Exception as exc:  # noqa: BLE001
                        found.append(None)
                        outcome[i], code[i] = ERROR, "embed_failed"
                        message[i] = f"the embedding model failed on this image ({type(exc).__name__})"
            for i, vector in zip(todo, found):
                if vector is not None:
                    vectors[i] = np.asarray(vector, dtype=np.float32).tobytes()
        batch = batch.drop_columns(["pixels"])
        for name, values in (("outcome", outcome), ("code", code), ("message", message)):
            batch = batch.set_column(batch.schema.get_field_index(name), name, pa.array(values, pa.string()))
        return batch.append_column("vector", pa.array(vectors, pa.binary()))


# -- the driver -------------------------------------------------------------------------------------
class IngestRun:
    """Runs one attempt of a job: lists, builds the dataset, writes its output in batches, reports."""

    def __init__(self, spec: JobSpec, *, console: bool = True):
        self.spec = spec
        self.console = console
        self.settings = absolute_storage(StorageSettings(**spec.storage))
        self.ledger = ledger()
        self.counters = {"total": 0, "done": 0, "skipped_duplicates": 0, "failed": 0}
        self.errors: list[dict] = []
        self._pending: list[dict] = []
        self._lock = threading.Lock()
        self.stop = threading.Event()
        self._over = threading.Event()
        self.attempt = 0
        self.started = time.time()
        self._nodes: set[str] = set()
        self.lost_nodes: set[str] = set()  # nodes alive when the run began and gone since

    def run(self) -> dict | None:
        self.attempt = ray.get(self.ledger.begin.remote(self.spec.job_id))
        if self.attempt is None:
            log.warning("job %s is not runnable now (cancelled, finished, or another driver runs it)",
                        self.spec.job_id)
            return ray.get(self.ledger.status.remote(self.spec.job_id))
        self._nodes = self._alive_nodes()
        beat = threading.Thread(target=self._heartbeat, name="ingest-heartbeat", daemon=True)
        beat.start()
        state, message = "succeeded", None
        try:
            entries = list_sources(self.spec.sources, self.settings, self.spec.ingest.zip,
                                   max_files=self.spec.ingest.max_files)
            entries += [Entry(f.name, f.url) for f in self.spec.files]
            with self._lock:
                self.counters["total"] = len(entries)
            self._report()
            if entries and not self.stop.is_set():
                self._process(entries)
            if self.stop.is_set():
                state = "cancelled"
        except (AtelierError, ModelError) as exc:
            state, message = "failed", exc.message
        except Exception as exc:  # noqa: BLE001 - the job fails as a whole; a rerun resumes it
            log.exception("job %s failed", self.spec.job_id)
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            state, message = "failed", f"the job failed ({type(exc).__name__}: {first}); run it again to resume"
        finally:
            self._over.set()
            beat.join(timeout=5)
        if state != "failed" and self.spec.staged_prefix:
            # Before the job reads as ended: an upload retried after that re-stages the same keys.
            from storage.blobs import open_blob_store

            open_blob_store(self.settings).delete_prefix(self.spec.staged_prefix)
        self._watch_nodes()
        if state == "succeeded" and self.lost_nodes:
            message = (f"{len(self.lost_nodes)} node(s) of the cluster went during this job "
                       f"({', '.join(n[:12] for n in sorted(self.lost_nodes))}); Ray Data re-ran the tasks and "
                       "restarted the embedding actors that were on them, and every file is counted once")
        with self._lock:
            counters, errors, self._pending = dict(self.counters), self._pending, []
        return ray.get(self.ledger.finish.remote(self.spec.job_id, self.attempt, state, counters, errors, message))

    def _process(self, entries: list[Entry]) -> None:
        from ray.data import ActorPoolStrategy, DataContext, ExecutionResources, TaskPoolStrategy

        from storage.gallery_writer import gallery_writer

        ingest = self.spec.ingest
        dim, side, crop = embedder_geometry(ingest.embedder)
        embed_model = ingest.embedder.model
        self._table = (embed_model, dim)
        writer = gallery_writer(self.settings, self._table)
        # Not waited for: the writer opens (or creates) the table while Ray Data starts its workers;
        # every call to it queues behind that. A writer that cannot open the table fails the job below.
        table_ready = writer.upsert.remote(self._table, [])

        ctx = DataContext.get_current()
        # The cap that keeps interactive replicas served: the whole job, tasks and actors together.
        ctx.execution_options.resource_limits = ExecutionResources(cpu=ingest.max_cpus, gpu=ingest.max_gpus)
        ctx.enable_progress_bars = self.console
        rows = [{"index": i, "name": e.name, "url": e.url, "member": e.member or "", "size": e.size,
                 "code": e.code or "", "message": e.message or ""} for i, e in enumerate(entries)]
        ds = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / ingest.read_batch_size)))
        ds = ds.map_batches(
            admit_batch, batch_size=ingest.read_batch_size, batch_format="pyarrow",
            fn_kwargs={"job_id": self.spec.job_id, "attempt": self.attempt, "user_id": self.spec.user_id,
                       "storage_json": self.settings.model_dump_json(), "writer": writer, "table": self._table,
                       "side": side, "crop": crop, "display_max_side": ingest.display_max_side},
            compute=TaskPoolStrategy(size=ingest.read_tasks), num_cpus=ingest.read_num_cpus,
        )
        gpu = {"num_gpus": ingest.embed_num_gpus} if ingest.embed_num_gpus else {}
        ds = ds.map_batches(
            EmbedImages, batch_size=ingest.batch_size, batch_format="pyarrow",
            fn_constructor_kwargs={"embedder": ingest.embedder.model_dump(), "side": side},
            compute=ActorPoolStrategy(size=ingest.embed_actors), num_cpus=ingest.embed_num_cpus, **gpu,
        )
        batches = ds.iter_batches(batch_size=ingest.write_batch_size, batch_format="pyarrow", prefetch_batches=1)
        try:
            for batch in batches:
                self._write(writer, batch.to_pylist(), embed_model)
                if self.stop.is_set():
                    break
        except Exception:
            _check_writer(table_ready)  # a gallery that could not be opened is the cause to report
            raise
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # stops the streaming executor: a cancelled job frees its tasks and actors now

    def _write(self, writer, rows: list[dict], embed_model: str) -> None:
        new = [r for r in rows if r["outcome"] == NEW]
        skipped = sum(1 for r in rows if r["outcome"] in (KNOWN, DUPLICATE))
        errors = [{"name": r["name"], "code": r["code"], "message": r["message"]} for r in rows
                  if r["outcome"] == ERROR]
        done = 0
        if new:
            created, write_errors = self._upsert(writer, new, embed_model)
            done = sum(created)
            skipped += len(new) - done - len(write_errors)
            errors += write_errors
        with self._lock:
            self.counters["done"] += done
            self.counters["skipped_duplicates"] += skipped
            self.counters["failed"] += len(errors)
            self.errors += errors
            self._pending += errors
        self._report()

    def _upsert(self, writer, new: list[dict], embed_model: str) -> tuple[list[bool], list[dict]]:
        """(created flag per row that was written, error entries for rows that could not be)."""
        now = datetime.now(timezone.utc)
        rows = [new_row(user_id=self.spec.user_id, content_hash=r["content_hash"], image_uri=r["image_uri"],
                        display_uri=r["display_uri"], width=r["width"], height=r["height"], source="ingest",
                        vector=np.frombuffer(r["vector"], dtype=np.float32), embed_model=embed_model,
                        meta={"ingest_job": self.spec.job_id, "name": r["name"]}, created_at=now) for r in new]
        try:
            result = _writer_call(writer.upsert, self._table, rows)
            # A row is this job's when the writer created it now, or when it holds this job's own row for that
            # file: a commit whose answer was lost with the writer's node (the writer restarted elsewhere and
            # the retried commit found the rows) stored them all the same, and they count as done, once.
            return [bool(created) or ((stored.get("meta") or {}).get("ingest_job") == self.spec.job_id
                                      and stored["meta"].get("name") == r["name"])
                    for created, stored, r in zip(result["created"], result["rows"], new)], []
        except Exception as exc:  # noqa: BLE001 - classified below; rows are never lost silently
            cause = _cause(exc)
            if isinstance(cause, InvalidInput) and len(rows) > 1:
                # One row refused fails the whole commit: write them one by one to find it.
                created, errors = [], []
                for r, row in zip(new, rows):
                    c, e = self._upsert(writer, [r], embed_model)
                    created += c
                    errors += e
                return created, errors
            code = cause.code if isinstance(cause, AtelierError) else "gallery_write_failed"
            message = cause.message if isinstance(cause, AtelierError) else f"the gallery write failed ({cause})"
            return [], [{"name": r["name"], "code": code, "message": message} for r in new]

    def _heartbeat(self) -> None:
        while not self._over.wait(self.spec.ingest.heartbeat_s):
            self._watch_nodes()
            self._report()

    @staticmethod
    def _alive_nodes() -> set[str]:
        try:
            return {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        except Exception:  # noqa: BLE001 - the GCS busy: this look is skipped, the next beat looks again
            return set()

    def _watch_nodes(self) -> None:
        """Note the nodes that were alive when the run began and are gone now (said in the final status)."""
        alive = self._alive_nodes()
        if not alive:
            return
        for node in self._nodes - alive - self.lost_nodes:
            self.lost_nodes.add(node)
            log.warning("job %s: node %s left the cluster; Ray Data retries its work elsewhere",
                        self.spec.job_id, node)

    def _report(self) -> None:
        with self._lock:
            counters, errors, self._pending = dict(self.counters), self._pending, []
            ref = self.ledger.report.remote(self.spec.job_id, self.attempt, counters, errors)
        try:
            answer = ray.get(ref, timeout=30)
        except Exception:  # noqa: BLE001 - the ledger restarting must not stop the job; the next beat retries
            log.warning("job %s: the job ledger did not answer a report", self.spec.job_id, exc_info=True)
            return
        if answer == "stop":
            self.stop.set()
        elif answer == "unknown":
            with self._lock:
                errors = list(self.errors)
            ray.get(self.ledger.restore.remote(self.spec.model_dump(), self.attempt, self.started, counters, errors))


def _cause(exc: BaseException) -> BaseException:
    """The exception an actor raised, out of Ray's wrapper."""
    from ray.exceptions import RayTaskError

    return exc.cause if isinstance(exc, RayTaskError) and exc.cause is not None else exc


def _check_writer(ready) -> None:
    """Raise a job-level error when the GalleryWriter could not open the gallery table."""
    from ray.exceptions import ActorDiedError

    from storage.errors import GalleryUnopenable

    try:
        ray.get(ready, timeout=60)
    except ActorDiedError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise Unavailable(f"the gallery could not be opened ({lines[-1] if lines else 'its writer died'})") from exc
    except Exception as exc:  # noqa: BLE001 - the writer is fine or busy: the original error is the one to report
        if isinstance(_cause(exc), GalleryUnopenable):  # a writer that was there already, on another table
            raise Unavailable(_cause(exc).message) from exc
        return


# How long a job waits for its gallery writer to come back when the writer's node is lost: Ray restarts
# the writer once a node its label selector allows is there (KubeRay replaces a lost pod in about a
# minute). Past it, the rows are the job's errors and a rerun stores them.
WRITER_WAIT_S = 300.0


def _writer_call(method, *args):
    """`ray.get(method.remote(*args))` on the gallery writer; a busy table, or a writer restarting after
    its node went, is retried (each commit is idempotent: a row's key is its user and content hash)."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError
    from tenacity import Retrying, retry_if_exception, wait_exponential

    def transient(exc: BaseException) -> bool:
        return isinstance(_cause(exc), (Unavailable, ActorDiedError, ActorUnavailableError))

    def stop(state) -> bool:
        # A writer that died for good (it could not open the table) answers ActorDiedError at once,
        # every time: a few tries tell it from a restart. Unreachable or busy: up to WRITER_WAIT_S.
        died = isinstance(_cause(state.outcome.exception()), ActorDiedError)
        return state.seconds_since_start > WRITER_WAIT_S or (died and state.attempt_number >= 4)

    for attempt in Retrying(retry=retry_if_exception(transient), stop=stop,
                            wait=wait_exponential(multiplier=0.2, max=5), reraise=True):
        with attempt:
            return ray.get(method.remote(*args))
    raise AssertionError("unreachable")


def run_job(spec: JobSpec, *, console: bool = True) -> dict | None:
    """Run a job that is in the ledger; returns its final status."""
    return IngestRun(spec, console=console).run()


# -- command line ----------------------------------------------------------------------------------
def spec_from_config(config: Path, user: str, sources: list[str], *, job_id: str | None = None) -> JobSpec:
    """A job of `user` over `sources`, with the storage, embedder and ingest sections of a Serve config file."""
    sections = PipelineSections.from_file(config)
    settings = absolute_storage(sections.settings())
    urls = [as_url(s) for s in sources]
    basis = "cli\x00" + "\x00".join(urls)
    return JobSpec(job_id=job_id or job_id_for(user, basis), user_id=user, sources=urls,
                   storage=settings.model_dump(), ingest=sections.job_ingest(),
                   fingerprint=hashlib.sha256(basis.encode()).hexdigest())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.ingest",
        description="Embed a user's photos into the gallery with Ray Data: folders, .zip files, "
                    "s3:// prefixes or files. Resources, batch sizes and the model come from --config.")
    parser.add_argument("sources", nargs="*", help="folders, .zip files, s3://bucket/prefix, or image files")
    parser.add_argument("--user", help="the user whose gallery receives the images")
    parser.add_argument("--config", type=Path, default=Path(os.environ.get("ATELIER_SERVE_CONFIG", "serve_config.yaml")),
                        help="Serve config whose `storage`, `embedder` and `ingest` sections apply "
                             "(default: $ATELIER_SERVE_CONFIG or serve_config.yaml)")
    parser.add_argument("--job", help="run the job the API created with this id (its spec is in the job ledger)")
    parser.add_argument("--job-id", help="id of the job (default: made from the user and the sources, so a "
                                         "rerun of the same command resumes the same job)")
    parser.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local one)")
    parser.add_argument("--num-cpus", type=float, help="logical CPUs of a local cluster started here")
    args = parser.parse_args(argv)
    if not args.job and not (args.user and args.sources):
        parser.error("give --user and at least one SOURCE, or --job ID")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    spec = None
    if not args.job:
        if not args.config.is_file():
            parser.error(f"--config {args.config} is not a file")
        spec = spec_from_config(args.config, args.user, args.sources, job_id=args.job_id)
    address = args.address or os.environ.get("RAY_ADDRESS")
    # No address: a small cluster of its own ("local"), never whichever cluster `ray start` last recorded.
    local = {"num_cpus": args.num_cpus} if args.num_cpus and not address else {}
    # No usage reports from this driver either (the cluster starts with --disable-usage-stats): with them
    # on, Ray Data polls a Prometheus on localhost:9090 every 10 s for as long as the driver lives.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address=address or "local", namespace=NAMESPACE, **local)
    jobs = ledger()
    if args.job:
        raw = ray.get(jobs.spec.remote(args.job))
        if raw is None:
            print(f"no job {args.job} in the job ledger", file=sys.stderr)
            return 2
        spec = JobSpec.model_validate(raw)
    else:
        opened = ray.get(jobs.open.remote(spec.model_dump(), True))
        if opened["action"] == "conflict":
            print(f"job {spec.job_id} exists for other sources or another user; pass another --job-id",
                  file=sys.stderr)
            return 2
    print(f"ingestion job {spec.job_id} for user {spec.user_id!r}", file=sys.stderr, flush=True)
    status = run_job(spec, console=True)
    print(json.dumps(status, indent=2, ensure_ascii=False), flush=True)
    return 0 if status and status["state"] == "succeeded" else 1


if __name__ == "__main__":
    # Run the importable module, not `__main__`: Ray pickles functions by module name, and workers
    # cannot import `__main__`'s.
    from pipelines.ingest import main as _main

    sys.exit(_main())
