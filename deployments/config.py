"""The typed arguments of the Serve application: serve_config.yaml's `args` validate against AppArgs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .embedder import BatchOptions
from .models.describer import DescriberConfig
from .models.embedder import EmbedderConfig
from .models.painter import PainterConfig
from .models.writer import WriterConfig


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


class AppArgs(_Strict):
    """The whole service, validated at load: the `args` of serve_config.yaml."""

    embedder: EmbedderSpec = Field(default_factory=EmbedderSpec)
    writer: WriterSpec = Field(default_factory=WriterSpec)
    describer: DescriberSpec = Field(default_factory=DescriberSpec)
    painter: PainterSpec = Field(default_factory=PainterSpec)
    ingress: IngressSpec = Field(default_factory=IngressSpec)
    storage: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of storage.settings.StorageSettings (paths, limits); secrets stay in the environment.",
    )
    environment: Literal["production", "local"] = Field("production", description="Shown in /readyz and logs.")
