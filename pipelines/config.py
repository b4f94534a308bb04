"""The pipelines' own configuration: ingestion jobs, zip limits, and the embedding model's shape.

A serve config's `storage` and `ingest` sections (and the embedder's model) are read here with these
models, so `python -m pipelines.ingest --config FILE` needs nothing of `deployments` but the plain
model config classes. The service's full config (`deployments.config.AppArgs`) embeds the same models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from models.configs import EmbedderConfig, GuardConfig, crops_centre, vector_shape
from storage.settings import StorageArgs, StorageSettings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ZipLimits(_Strict):
    """Bounds a .zip must meet before anything in it is read (zip bombs)."""

    max_entries: int = Field(10_000, ge=1, description="Most entries (files and folders) one archive may list.")
    max_total_bytes: int = Field(
        2 * 1024**3, ge=1, description="Most uncompressed bytes all entries together may declare."
    )
    max_ratio: float = Field(
        100.0, ge=1, description="Largest uncompressed/compressed ratio of an entry over 1 MiB; photos are near 1."
    )


class IngestSpec(_Strict):
    """Bulk ingestion jobs (pipelines.ingest): their resource caps keep interactive replicas served.

    The whole job (read tasks + embedding actors) never holds more than `max_cpus`/`max_gpus` of the
    cluster, and every task and actor asks for an explicit fraction: at Ray's default of one CPU
    per actor, a 2-core machine starves the read tasks and the job hangs.
    """

    max_cpus: float = Field(1.0, gt=0, description="Logical CPUs one job may hold in all (Ray Data resource limit).")
    max_gpus: float = Field(0.0, ge=0, description="GPU share one job may hold in all.")
    read_tasks: int = Field(2, ge=1, description="Read/check/decode tasks running at once.")
    read_num_cpus: float = Field(0.25, gt=0, description="Logical CPUs per read task.")
    read_batch_size: int = Field(16, ge=1, description="Files per read task call.")
    embed_actors: int = Field(1, ge=1, description="Size of the embedding actor pool; each loads the model once.")
    embed_num_cpus: float = Field(0.5, gt=0, description="Logical CPUs per embedding actor.")
    embed_num_gpus: float = Field(0.0, ge=0, description="GPU share per embedding actor, e.g. 0.1.")
    embed_threads: int = Field(1, ge=1, description="torch CPU threads per embedding actor.")
    batch_size: int = Field(32, ge=1, le=1024, description="Images per forward pass of the image tower.")
    write_batch_size: int = Field(64, ge=1, description="Rows per gallery commit (through the one GalleryWriter).")
    display_max_side: int = Field(
        480,
        ge=64,
        description="Long side of an ingested image's display copy. Small enough that JPEGs decode at 1/4 or "
        "1/8 scale (Pillow draft); raise it toward storage.display_max_side for sharper copies at a higher cost.",
    )
    driver_num_cpus: float = Field(0.05, gt=0, description="Logical CPUs of the job's driver (an actor or a Ray job).")
    heartbeat_s: float = Field(2.0, gt=0, description="Seconds between a driver's reports to the job ledger.")
    stale_after_s: float = Field(
        30.0, gt=0, description="A running job whose driver has not reported for this long is marked failed."
    )
    queue_timeout_s: float = Field(
        300.0, gt=0, description="A job whose driver has not started after this long is marked failed."
    )
    retention_s: float = Field(
        30 * 86_400.0, gt=0, description="A finished job's record and errors are removed from the job ledger, in "
        "memory and on disk, this long after it ended (its photos stay: they are the user's gallery).")
    submitter: Literal["actor", "jobs"] = Field(
        "actor",
        description="How the API starts a job: 'actor' runs the driver in a detached actor (no dashboard needed); "
        "'jobs' submits `python -m pipelines.ingest --job ID` through the Ray Jobs API at `jobs_address`.",
    )
    jobs_address: str = Field("http://127.0.0.1:8265", description="Ray dashboard address for submitter 'jobs'.")
    jobs_runtime_env: dict[str, Any] | None = Field(
        None, description="runtime_env of jobs submitted through the Jobs API (working_dir, pip...)."
    )
    max_upload_bytes: int = Field(
        256 * 1024**2, ge=1, description="Largest POST /api/init/upload body (all files, or the zip)."
    )
    max_files: int = Field(10_000, ge=1, description="Most files one job may hold (multipart files or zip entries).")
    zip: ZipLimits = Field(default_factory=ZipLimits)
    poll_s: float = Field(0.25, gt=0, description="How often the SSE stream re-reads a job's progress log.")
    fast_path_max_files: int = Field(
        16, ge=0, description="An upload of at most this many files (not a zip) is stored by the ingress through "
        "the running Embedder, like single uploads, instead of a Ray Data job; 0 sends every upload to Ray Data."
    )
    embedder: EmbedderConfig | None = Field(
        None, description="The embedding model of the jobs; left empty, the app's `embedder.model` (same table)."
    )

    guard: GuardConfig | None = Field(
        None, description="The Guard whose image classifier checks each new photo in the embedding actors (its "
        "verdict is stored with the row, as an upload's is); left empty, the app's `guard.model`. No image "
        "model: the rows carry no verdict.")

    def following(self, app_embedder: EmbedderConfig, app_guard: GuardConfig | None = None) -> "IngestSpec":
        """Ingested vectors must land in the table search reads: the app's model, ingestion's own threads; and
        the photos are checked by the app's Guard's image classifier, as uploads are."""
        update = {}
        if self.embedder is None:
            update["embedder"] = app_embedder.model_copy(update={"num_threads": self.embed_threads})
        if self.guard is None and app_guard is not None and app_guard.image_model is not None:
            update["guard"] = app_guard.model_copy(update={"num_threads": self.embed_threads})
        return self.model_copy(update=update) if update else self


class _EmbedderSection(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())
    model: EmbedderConfig = Field(default_factory=EmbedderConfig)


class _GuardSection(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())
    model: GuardConfig = Field(default_factory=GuardConfig)


class PipelineSections(BaseModel):
    """What the pipelines read of a serve config's `args`: storage, ingest and the embedder's model.

    Each section is validated strictly; the other sections are the service's (`python -m
    deployments.config FILE` checks those)."""

    model_config = ConfigDict(extra="ignore")
    storage: StorageArgs = Field(default_factory=StorageArgs)
    ingest: IngestSpec = Field(default_factory=IngestSpec)
    embedder: _EmbedderSection = Field(default_factory=_EmbedderSection)
    guard: _GuardSection | None = Field(default_factory=_GuardSection)
    # The content policy in the Ingress's live settings (its user_config `safety`), which flags ingested photos.
    safety: dict[str, Any] | None = None

    @classmethod
    def from_file(cls, path: Path) -> "PipelineSections":
        import yaml

        doc = yaml.safe_load(Path(path).read_text())
        apps = (doc or {}).get("applications") or []
        if not apps:
            raise SystemExit(f"{path} has no `applications`: point --config at a serve_config file")
        ingress = next((d for d in apps[0].get("deployments") or [] if d.get("name") == "Ingress"), {})
        return cls.model_validate({**apps[0].get("args", {}),
                                   "safety": (ingress.get("user_config") or {}).get("safety")})

    def settings(self) -> StorageSettings:
        return self.storage.settings()

    def job_ingest(self) -> IngestSpec:
        return self.ingest.following(self.embedder.model, self.guard.model if self.guard is not None else None)


def embedder_shape(config: EmbedderConfig) -> tuple[int, int]:
    """(vector dimension, image side) from the checkpoint's config, as `Embedder` reads them."""
    dim, side, _ = embedder_geometry(config)
    return dim, side


def embedder_geometry(config: EmbedderConfig) -> tuple[int, int, bool]:
    """(vector dimension, image side, whether the image tower sees the centre square) from the
    checkpoint's config.

    A local checkpoint's config.json is read as it is: importing transformers here would cost the
    job's driver a second or two before any task starts.
    """
    local = Path(config.model) / "config.json"
    if local.is_file():
        cfg = json.loads(local.read_text())
    else:
        from transformers import AutoConfig

        kw = {"revision": config.revision} if config.revision else {}
        cfg = AutoConfig.from_pretrained(config.model, trust_remote_code=False, **kw).to_dict()
    return (*vector_shape(cfg), crops_centre(cfg))
