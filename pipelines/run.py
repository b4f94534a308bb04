"""The driver of one attempt at an ingestion job: list the job's files, stream them through the Ray Data
stages (pipelines.stages), write the rows in batches through the cluster's one GalleryWriter, and keep
the job ledger told (pipelines.attempt).
"""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime, timezone

import numpy as np
import ray
from ray.data import ActorPoolStrategy, DataContext, ExecutionResources, TaskPoolStrategy

from models.errors import ModelError
from pipelines.attempt import JobAttempt
from pipelines.config import embedder_geometry
from pipelines.sources import Entry, list_sources
from pipelines.spec import JobSpec, absolute_storage
from pipelines.stages import DUPLICATE, ERROR, KNOWN, NEW, EmbedImages, admit_batch
from pipelines.writer import cause, check_writer, writer_call
from storage.duplicates import mark_pairs, threshold
from storage.errors import AtelierError, InvalidInput
from storage.gallery_writer import gallery_writer
from storage.rows import new_row
from storage.settings import StorageSettings

log = logging.getLogger("atelier.ingest")


# -- the driver -------------------------------------------------------------------------------------
class IngestRun:
    """Runs one attempt of a job: lists, builds the dataset, writes its output in batches, reports."""

    def __init__(self, spec: JobSpec, *, console: bool = True):
        self.spec = spec
        self.console = console
        self.settings = absolute_storage(StorageSettings(**spec.storage))
        self.job = JobAttempt(spec, self.settings)
        self._nodes: set[str] = set()
        self.lost_nodes: set[str] = set()  # nodes alive when the run began and gone since
        self._policy = None  # the job's content policy (models.policy.Safety), read on its first photo

    def run(self) -> dict | None:
        if not self.job.begin(on_beat=self._watch_nodes):
            log.warning("job %s is not runnable now (cancelled, finished, or another driver runs it)",
                        self.spec.job_id)
            return self.job.status()
        self._nodes = self._alive_nodes()
        state, message = "succeeded", None
        try:
            entries = list_sources(self.spec.sources, self.settings, self.spec.ingest.zip,
                                   max_files=self.spec.ingest.max_files)
            entries += [Entry(f.name, f.url) for f in self.spec.files]
            self.job.add(total=len(entries))
            if entries and not self.job.stop.is_set():
                self._process(entries)
            if self.job.stop.is_set():
                state = "cancelled"
        except (AtelierError, ModelError) as exc:
            state, message = "failed", exc.message
        except Exception as exc:  # noqa: BLE001 - the job fails as a whole; a rerun resumes it
            log.exception("job %s failed", self.spec.job_id)
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            state, message = "failed", f"the job failed ({type(exc).__name__}: {first}); run it again to resume"
        finally:
            self.job.end_heartbeat()
        self._watch_nodes()
        if state == "succeeded" and self.lost_nodes:
            message = (f"{len(self.lost_nodes)} node(s) of the cluster went during this job "
                       f"({', '.join(n[:12] for n in sorted(self.lost_nodes))}); Ray Data re-ran the tasks and "
                       "restarted the embedding actors that were on them, and every file is counted once")
        return self.job.finish(state, message)

    def _process(self, entries: list[Entry]) -> None:
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
            fn_kwargs={"job_id": self.spec.job_id, "attempt": self.job.number, "user_id": self.spec.user_id,
                       "storage_json": self.settings.model_dump_json(), "writer": writer, "table": self._table,
                       "side": side, "crop": crop, "display_max_side": ingest.display_max_side},
            compute=TaskPoolStrategy(size=ingest.read_tasks), num_cpus=ingest.read_num_cpus,
        )
        gpu = {"num_gpus": ingest.embed_num_gpus} if ingest.embed_num_gpus else {}
        ds = ds.map_batches(
            EmbedImages, batch_size=ingest.batch_size, batch_format="pyarrow",
            fn_constructor_kwargs={"embedder": ingest.embedder.model_dump(), "side": side,
                                   "guard": ingest.guard.model_dump() if ingest.guard is not None else None},
            compute=ActorPoolStrategy(size=ingest.embed_actors), num_cpus=ingest.embed_num_cpus, **gpu,
        )
        batches = ds.iter_batches(batch_size=ingest.write_batch_size, batch_format="pyarrow", prefetch_batches=1)
        try:
            for batch in batches:
                self._write(writer, batch.to_pylist(), embed_model)
                if self.job.stop.is_set():
                    break
        except Exception:
            check_writer(table_ready)  # a gallery that could not be opened is the cause to report
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
        self.job.add(done=done, skipped=skipped, errors=errors)

    def _near_duplicates(self, writer, rows: list[dict]) -> int:
        """Each new row checked against the user's gallery (its nearest photos, found by the writer's search)
        and the batch's earlier rows, as an upload is: the pairs found stay on the row (`meta.near`, what
        GET /api/duplicates groups); how many rows have one. A check that cannot be made (the writer busy past
        its deadline) stores the rows unchecked: they are the user's photos."""
        s = self.settings
        if self.spec.on_duplicate == "ignore":
            return 0
        try:
            hits = writer_call(writer.nearest, self._table, self.spec.user_id,
                               [np.asarray(r["vector"], np.float32).tobytes() for r in rows],
                               s.near_duplicate_candidates)
        except Exception as exc:  # noqa: BLE001 - the photos are stored all the same
            log.warning("job %s: near-duplicate check skipped for %d photos (%s)", self.spec.job_id, len(rows), exc)
            return 0
        return mark_pairs(rows, hits, hash_bits=s.duplicate_hash_bits, cosine=threshold(s.near_shot_cosine,
                                                                                         self._table[0]))

    def _safety(self, verdict: str | None) -> dict:
        """`{"safety": ...}` for a row's meta from its Guard verdict, flagged by the job's content policy as an
        upload's is (never refused: the photos are the user's); nothing for a photo checked by no Guard."""
        if self._policy is None:  # read once per job, not per row
            from models.policy import Safety

            self._policy = Safety.model_validate(self.spec.safety or {})
        if not verdict or not self._policy.guard:  # the operator turned the Guard's checks off: as uploads
            return {}
        return {"safety": self._policy.record(json.loads(verdict))[1]}

    def _upsert(self, writer, new: list[dict], embed_model: str) -> tuple[list[bool], list[dict]]:
        """(created flag per row that was written, error entries for rows that could not be)."""
        now = datetime.now(timezone.utc)
        rows = [new_row(user_id=self.spec.user_id, content_hash=r["content_hash"], image_uri=r["image_uri"],
                        display_uri=r["display_uri"], width=r["width"], height=r["height"], source="ingest",
                        vector=np.frombuffer(r["vector"], dtype=np.float32), embed_model=embed_model,
                        meta={"ingest_job": self.spec.job_id, "name": r["name"], "phash": r.get("phash") or "",
                              **self._safety(r.get("safety"))}, created_at=now) for r in new]
        near = self._near_duplicates(writer, rows)
        if near and self.spec.on_duplicate == "skip":  # not written: counted as skipped duplicates by _write
            kept = [i for i, row in enumerate(rows) if not row["meta"].get("near")]
            rows, new = [rows[i] for i in kept], [new[i] for i in kept]
            if not rows:
                return [], []
        elif near:
            self.job.add(near=near)
        try:
            result = writer_call(writer.upsert, self._table, rows)
            # A row is this job's when the writer created it now, or when it holds this job's own row for that
            # file: a commit whose answer was lost with the writer's node (the writer restarted elsewhere and
            # the retried commit found the rows) stored them all the same, and they count as done, once.
            return [bool(created) or ((stored.get("meta") or {}).get("ingest_job") == self.spec.job_id
                                      and stored["meta"].get("name") == r["name"])
                    for created, stored, r in zip(result["created"], result["rows"], new)], []
        except Exception as exc:  # noqa: BLE001 - classified below; rows are never lost silently
            why = cause(exc)
            if isinstance(why, InvalidInput) and len(rows) > 1:
                # One row refused fails the whole commit: write them one by one to find it.
                created, errors = [], []
                for r, row in zip(new, rows):
                    c, e = self._upsert(writer, [r], embed_model)
                    created += c
                    errors += e
                return created, errors
            code = why.code if isinstance(why, AtelierError) else "gallery_write_failed"
            message = why.message if isinstance(why, AtelierError) else f"the gallery write failed ({why})"
            return [], [{"name": r["name"], "code": code, "message": message} for r in new]

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


def run_job(spec: JobSpec, *, console: bool = True) -> dict | None:
    """Run a job that is in the ledger; returns its final status."""
    return IngestRun(spec, console=console).run()

