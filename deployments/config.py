"""The typed arguments of the Serve application: serve_config.yaml's `args` validate against AppArgs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .models.configs import DescriberConfig, EmbedderConfig, PainterConfig, WriterConfig


class BatchOptions(BaseModel):
    """Live-tunable batching (the deployment's user_config); reconfigure() applies changes without restarts."""

    max_batch_size: int = Field(32, ge=1, le=1024, description="Most requests folded into one forward pass.")
    batch_wait_timeout_s: float = Field(
        0.01, ge=0.0, le=1.0, description="How long the first request of a batch waits for company."
    )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ActorOptions(_Strict):
    """Resources of one replica. Explicit CPUs matter: a replica asking for a whole core it never gets waits forever."""

    num_cpus: float = Field(0.25, ge=0, description="Logical CPUs reserved per replica (fractions allowed).")
    num_gpus: float = Field(0.0, ge=0, description="GPU share per replica, e.g. 0.25 packs four replicas on a GPU.")
    memory: int | None = Field(None, ge=0, description="Bytes of RAM reserved per replica, for scheduling.")
    runtime_env: dict[str, Any] | None = Field(None, description="Ray runtime_env of the replica's process.")


class Autoscaling(_Strict):
    min_replicas: int = Field(1, ge=0, description="Replicas kept when idle.")
    initial_replicas: int | None = Field(None, ge=0, description="Replicas at start; defaults to min_replicas.")
    max_replicas: int = Field(1, ge=1, description="Upper bound under load.")
    target_ongoing_requests: float = Field(2.0, gt=0, description="Load per replica the autoscaler aims for.")
    upscale_delay_s: float = Field(10.0, ge=0, description="Sustained load before adding a replica.")
    downscale_delay_s: float = Field(300.0, ge=0, description="Sustained idleness before removing one.")


class DeploymentOptions(_Strict):
    """How Serve runs one deployment: replicas, resources and back-pressure."""

    num_replicas: int | None = Field(None, ge=1, description="Fixed replica count; leave empty to autoscale.")
    autoscaling: Autoscaling | None = Field(default_factory=Autoscaling, description="Used when num_replicas is empty.")
    ray_actor_options: ActorOptions = Field(default_factory=ActorOptions)
    max_ongoing_requests: int = Field(8, ge=1, description="Requests a replica works on at once.")
    max_queued_requests: int = Field(
        64, ge=-1, description="Requests allowed to wait per caller before it answers 503 (-1: unbounded)."
    )
    health_check_period_s: float = Field(10.0, gt=0, description="Seconds between health checks.")
    health_check_timeout_s: float = Field(30.0, gt=0, description="Seconds a health check may take.")
    graceful_shutdown_timeout_s: float = Field(20.0, ge=0, description="Grace for in-flight requests on stop.")

    def serve_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "ray_actor_options": self.ray_actor_options.model_dump(exclude_none=True),
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "health_check_period_s": self.health_check_period_s,
            "health_check_timeout_s": self.health_check_timeout_s,
            "graceful_shutdown_timeout_s": self.graceful_shutdown_timeout_s,
        }
        if self.num_replicas is not None:
            opts["num_replicas"] = self.num_replicas
        elif self.autoscaling is not None:
            opts["autoscaling_config"] = self.autoscaling.model_dump(exclude_none=True)
        else:
            opts["num_replicas"] = 1
        return opts


class EmbedderSpec(_Strict):
    model: EmbedderConfig = Field(default_factory=EmbedderConfig)
    batching: BatchOptions = Field(default_factory=BatchOptions)
    deployment: DeploymentOptions = Field(default_factory=lambda: DeploymentOptions(max_ongoing_requests=64))


class WriterSpec(_Strict):
    model: WriterConfig = Field(default_factory=WriterConfig)
    deployment: DeploymentOptions = Field(default_factory=DeploymentOptions)


class DescriberSpec(_Strict):
    model: DescriberConfig = Field(default_factory=DescriberConfig)
    deployment: DeploymentOptions = Field(default_factory=DeploymentOptions)


class PainterSpec(_Strict):
    model: PainterConfig = Field(default_factory=PainterConfig)
    deployment: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(max_ongoing_requests=1, max_queued_requests=4)
    )


class Timeouts(_Strict):
    """Per-route deadlines, shorter than the HTTP proxy's request_timeout_s, so we answer them as JSON."""

    default_s: float = Field(30.0, gt=0, description="Any route not named below.")
    writer_s: float = Field(20.0, gt=0, description="Budget for the Writer inside a request; past it we degrade.")
    search_s: float = Field(15.0, gt=0)
    describe_s: float = Field(60.0, gt=0)
    generate_s: float = Field(110.0, gt=0)
    chat_s: float = Field(110.0, gt=0)


class Caches(_Strict):
    lru_size: int = Field(4096, ge=0, description="Entries of each per-replica LRU (0 disables it).")
    ttl_s: float = Field(3600.0, gt=0, description="Lifetime of a cached prompt or text vector.")
    redis_url: str | None = Field(None, description="Optional shared second level, e.g. redis://127.0.0.1:6379/0.")


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
    poll_s: float = Field(0.25, gt=0, description="How often the SSE stream re-reads a job's status.")
    embedder: EmbedderConfig | None = Field(
        None, description="The embedding model of the jobs; left empty, the app's `embedder.model` (same table)."
    )


class IngressSpec(_Strict):
    deployment: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(max_ongoing_requests=64, max_queued_requests=256)
    )
    timeouts: Timeouts = Field(default_factory=Timeouts)
    caches: Caches = Field(default_factory=Caches)
    max_search_k: int = Field(100, ge=1, description="Largest k a search may ask for.")
    signed_url_ttl_s: int = Field(3600, ge=10, description="Lifetime of a signed image URL.")
    retry_after_s: int = Field(2, ge=1, description="Retry-After sent with 503/429 answers.")
    enhance_search: bool = Field(True, description="Translate non-English search text with the Writer before CLIP.")
    ingest: IngestSpec | None = Field(
        None, description="Filled from the app's top-level `ingest` section when AppArgs validates; leave it out."
    )


class AppArgs(_Strict):
    """The whole service, validated at load: the `args` of serve_config.yaml."""

    embedder: EmbedderSpec = Field(default_factory=EmbedderSpec)
    writer: WriterSpec = Field(default_factory=WriterSpec)
    describer: DescriberSpec = Field(default_factory=DescriberSpec)
    painter: PainterSpec = Field(default_factory=PainterSpec)
    ingress: IngressSpec = Field(default_factory=IngressSpec)
    ingest: IngestSpec = Field(default_factory=IngestSpec, description="Bulk ingestion jobs and their resource caps.")
    storage: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of storage.settings.StorageSettings (paths, limits); secrets stay in the environment.",
    )
    environment: Literal["production", "local"] = Field("production", description="Shown in /readyz and logs.")

    @model_validator(mode="after")
    def _ingest_follows_the_app(self) -> "AppArgs":
        # Ingested vectors must land in the table search reads: same model id, ingestion's own threads.
        if self.ingest.embedder is None:
            self.ingest.embedder = self.embedder.model.model_copy(update={"num_threads": self.ingest.embed_threads})
        self.ingress.ingest = self.ingest
        return self
