"""The typed arguments of the Serve application: serve_config.yaml's `args` validate against AppArgs.

Every section is strict: an unknown or misspelt key anywhere in `args` is refused when the config is
loaded, naming the key. `python -m deployments.config FILE` checks a whole serve config file (Serve's
own schema, then each application's `args`) without starting anything.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ByteSize, ConfigDict, Field, ValidationError, model_validator

from pipelines.config import IngestSpec, ZipLimits
from storage.settings import StorageArgs

from models.configs import DescriberConfig, EmbedderConfig, GuardConfig, PainterConfig, WriterConfig

from models.policy import Safety

__all__ = ["LIVE_SETTINGS", "AppArgs", "BatchOptions", "DeploymentOptions", "IngestSpec", "IngressArgs", "IngressSpec",
           "IngressTuning", "ZipLimits"]

# Buckets of every latency histogram the service exports (model calls and HTTP routes), in seconds.
LATENCY_BOUNDARIES_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]


class BatchOptions(BaseModel):
    """The Embedder's live settings: its user_config, set in the serve config's `deployments:` section
    (not in `args`), applied by reconfigure() on the running replicas without a restart."""

    model_config = ConfigDict(extra="forbid")

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
    label_selector: dict[str, str] | None = Field(
        None, description="Ray node labels the replica must run on, e.g. {'atelier/pool': '!gpu'} keeps it off "
                          "the GPU nodes (values: 'v', '!v', 'in(a,b)', '!in(a,b)')."
    )
    runtime_env: dict[str, Any] | None = Field(None, description="Ray runtime_env of the replica's process.")


class Autoscaling(_Strict):
    min_replicas: int = Field(1, ge=0, description="Replicas kept when idle.")
    initial_replicas: int | None = Field(None, ge=0, description="Replicas at start; defaults to min_replicas.")
    max_replicas: int = Field(1, ge=1, description="Upper bound under load.")
    target_ongoing_requests: float = Field(2.0, gt=0, description="Load per replica the autoscaler aims for.")
    upscale_delay_s: float = Field(10.0, ge=0, description="Sustained load before adding a replica.")
    downscale_delay_s: float = Field(300.0, ge=0, description="Sustained idleness before removing one.")
    downscale_to_zero_delay_s: float | None = Field(
        None, ge=0, description="With min_replicas 0: idleness before the last replica goes (1 -> 0); empty: "
                                "downscale_delay_s. Serve's AutoscalingConfig field of the same name.")
    look_back_period_s: float | None = Field(
        None, gt=0, description="Window over which Serve averages the load it scales on; empty: Serve's 30 s.")


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

    def most_at_once(self) -> int | None:
        """Calls Serve takes at once before it answers back-pressure: each replica's `max_ongoing_requests` at
        the most replicas, plus the queue (None: an unbounded queue)."""
        if self.max_queued_requests < 0:
            return None
        most = self.num_replicas if self.num_replicas is not None else \
            self.autoscaling.max_replicas if self.autoscaling is not None else 1
        return most * self.max_ongoing_requests + self.max_queued_requests

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


class GuardSpec(_Strict):
    model: GuardConfig = Field(default_factory=GuardConfig)
    deployment: DeploymentOptions = Field(default_factory=lambda: DeploymentOptions(max_ongoing_requests=64))


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
    failure_ttl_s: float = Field(
        30.0, gt=0, description="How long a search text the Writer failed to translate is searched untranslated "
        "without asking the Writer again (per replica)."
    )


# The route classes a plan limits (API.md "Limits"; deployments.http.limits maps routes to them).
RouteClass = Literal["search", "upload", "text", "generate", "describe", "chat", "embeddings", "ingest"]
ModelRole = Literal["embedder", "writer", "describer", "painter"]
# The roles whose compute a plan budgets in GPU seconds (the Embedder's calls are small and batched across
# users, so a plan bounds them by requests per minute instead).
BudgetedRole = Literal["writer", "describer", "painter"]


class Plan(_Strict):
    """What one user may use (README "Plans and limits"). A limit left out is no limit. (Requests per route
    class, calls at once per model role, GPU seconds per role, chat tokens, stored images and bytes.)"""

    requests: dict[RouteClass, str] = Field(
        default_factory=dict, description="Requests per route class, in the `limits` library's notation, each a "
        "moving window: '60/minute', '10/second;1000/day' (both hold). '0/minute' closes the class to the plan.")

    concurrent: dict[ModelRole, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict, description="Calls at once per model role (embedder, writer, describer, painter), "
        "counted across every replica: one user cannot fill a role's queue. A request of n images takes n "
        "painter calls. A role left out is not limited.")

    gpu_seconds: dict[BudgetedRole, str] = Field(
        default_factory=dict, description="GPU seconds per role (writer, describer, painter) in the `limits` "
        "notation, the amount in seconds: '600/day', '60/hour;600/day'. Charged after each call from the compute "
        "its replica measured times the replica's GPU share (a replica without a GPU counts as one whole device); "
        "a call whose estimate no longer fits is refused before it starts; a cancelled call is charged for what it "
        "ran. Counted as sliding-window counters.")

    tokens: str | None = Field(
        None, description="Chat tokens (prompt and answer, /v1/chat/completions) in the `limits` notation: "
        "'200000/day'. A request is refused when its prompt no longer fits what is left; the answer is charged "
        "when it ends. Counted as sliding-window counters.")

    stored_images: Annotated[int, Field(ge=0)] | None = Field(
        None, description="Images a user may keep in their gallery (uploads, generations kept, ingested). An upload, "
        "a kept generation or an ingestion job that would go past it is refused before anything is written.")

    stored_bytes: ByteSize | None = Field(
        None, description="Bytes a user may keep (their originals and display copies): '2GB', '500MiB' or a number "
        "of bytes. Checked like stored_images, with an upload's own size.")

    safety_tolerance: float = Field(
        0.0, ge=0.0, le=1.0, description="How much looser the content policy's thresholds are for this plan: a "
        "threshold t becomes t + (1 - t) * tolerance (0: as configured; 1: no Guard score blocks or flags). The "
        "term list holds for every plan.")

    @model_validator(mode="after")
    def _rates(self) -> "Plan":
        import limits

        for route_class, text in self.requests.items():
            try:
                limits.parse_many(text)
            except ValueError:
                raise ValueError(f"requests.{route_class}: {text!r} is not a rate like '60/minute' or "
                                 "'10/second;1000/day'") from None
        budgets = {f"gpu_seconds.{role}": text for role, text in self.gpu_seconds.items()}
        if self.tokens is not None:
            budgets["tokens"] = self.tokens
        for where, text in budgets.items():
            try:
                items = limits.parse_many(text)
            except ValueError:
                items = []
            if not items or any(item.amount < 1 for item in items):
                raise ValueError(f"{where}: {text!r} is not a budget like '600/day' or '60/hour;600/day' (a whole "
                                 "number, at least 1)")
        return self


def _default_plans() -> dict[str, Plan]:
    return {"default": Plan()}


class IngressTuning(_Strict):
    """The ingress's live settings: its user_config, set in the serve config's `deployments:` section
    (not in `args`: Serve hashes `args` into the code version, so editing them restarts every replica),
    applied by Ingress.reconfigure() on the running replicas."""

    timeouts: Timeouts = Field(default_factory=Timeouts)
    caches: Caches = Field(default_factory=Caches)
    retry_after_s: int = Field(2, ge=1, description="Retry-After sent with 503/429 answers.")
    safety: Safety = Field(default_factory=Safety)
    plans: dict[str, Plan] = Field(
        default_factory=_default_plans, description="Per-user limits by plan name; `default` is every user's "
        "unless `python -m deployments.keys plan USER NAME` says otherwise. Names: a-z, 0-9, '_', '-'.")
    enhance_search: bool | None = Field(
        None, description="Query expansion by the Writer: a non-English query's English translation is embedded too. "
                          "With an English-only embedder (CLIP) the translation is what is searched; with a bilingual "
                          "one (SigLIP 2, Chinese-CLIP) the query is embedded as it is and the translation's vector is "
                          "fused with it, never replacing it. Default (null): on for English-only embedders, off for "
                          "bilingual ones.")


    @model_validator(mode="after")
    def _plans_named(self) -> "IngressTuning":
        import re

        if "default" not in self.plans:
            raise ValueError("plans must name a `default` plan: the plan of every user not given another")
        for name in self.plans:
            if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,31}", name):
                raise ValueError(f"plan name {name!r}: use 1-32 of a-z, 0-9, '_' and '-'")
        return self


# Which deployments have live settings (user_config), and their models; the others take none.
LIVE_SETTINGS: dict[str, type[BaseModel]] = {"Embedder": BatchOptions, "Ingress": IngressTuning}


class IngressSpec(_Strict):
    deployment: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(max_ongoing_requests=64, max_queued_requests=256)
    )
    signed_url_ttl_s: int = Field(3600, ge=10, description="Lifetime of a signed image URL.")
    redis_url: str | None = Field(
        None, description="Redis shared by every ingress replica: the plans' counters and the second level of "
        "the answer caches, e.g. redis://127.0.0.1:6379/0. Required with more than one ingress replica.")

    @model_validator(mode="after")
    def _shared_counters(self) -> "IngressSpec":
        d = self.deployment
        most = d.num_replicas if d.num_replicas is not None else (d.autoscaling.max_replicas if d.autoscaling else 1)
        if most > 1 and not self.redis_url:
            raise ValueError(f"the ingress may run {most} replicas but ingress.redis_url is not set: each replica "
                             "would count the plans' limits alone, so a user would get the limit times the replica "
                             "count. Set redis_url, or run one ingress replica")
        return self


class AppArgs(_Strict):
    """The whole service, validated at load: the `args` of serve_config.yaml."""

    embedder: EmbedderSpec = Field(default_factory=EmbedderSpec)
    writer: WriterSpec = Field(default_factory=WriterSpec)
    describer: DescriberSpec = Field(default_factory=DescriberSpec)
    painter: PainterSpec = Field(default_factory=PainterSpec)
    guard: GuardSpec | None = Field(
        default_factory=GuardSpec, description="The content-safety model (text guard and image classifier); null: "
        "no Guard deployment, and the content policy is the term list alone.")
    ingress: IngressSpec = Field(default_factory=IngressSpec)
    ingest: IngestSpec = Field(default_factory=IngestSpec, description="Bulk ingestion jobs and their resource caps.")
    storage: StorageArgs = Field(
        default_factory=StorageArgs,
        description="Where the gallery and blobs live and the limits storage enforces (storage.settings); "
        "what is left out comes from ATELIER_* environment variables, and secrets only from there.",
    )
    environment: Literal["production", "local"] = Field("production", description="Shown in /readyz and logs.")

    @model_validator(mode="after")
    def _ingest_follows_the_app(self) -> "AppArgs":
        # Ingested vectors must land in the table search reads: same model id, ingestion's own threads.
        self.ingest = self.ingest.following(self.embedder.model, self.guard.model if self.guard is not None else None)
        return self

    def ingress_args(self) -> dict:
        """What the ingress deployment is bound with (IngressArgs as plain data)."""
        return {"ingress": self.ingress.model_dump(), "storage": self.storage.model_dump(exclude_unset=True),
                "ingest": self.ingest.model_dump()}


class IngressArgs(_Strict):
    """The sections of the args the ingress deployment needs."""

    ingress: IngressSpec = Field(default_factory=IngressSpec)
    storage: StorageArgs = Field(default_factory=StorageArgs)
    ingest: IngestSpec | None = None


def check_file(path: Path) -> list[str]:
    """Problems of a serve config file, or of the serve config a KubeRay RayService manifest embeds
    (`spec.serveConfigV2`, in a file that may hold other Kubernetes objects too), each naming where it
    is and what to do; empty when it is valid."""
    import yaml

    try:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]
    except (OSError, yaml.YAMLError) as exc:
        return [f"{path}: cannot be read as YAML ({exc})"]
    if not docs:
        return [f"{path}: is empty"]
    if not any(isinstance(d, dict) and "kind" in d for d in docs):
        return check_config(docs[0] if len(docs) == 1 else docs, str(path))
    services = [d for d in docs if isinstance(d, dict) and d.get("kind") == "RayService"]
    if not services:
        return [f"{path}: holds Kubernetes objects but no RayService, so no serve config to check"]
    problems = []
    for service in services:
        where = f"{path}: RayService {(service.get('metadata') or {}).get('name')!r}: spec.serveConfigV2"
        text = (service.get("spec") or {}).get("serveConfigV2")
        if not isinstance(text, str):
            problems.append(f"{where}: missing; KubeRay takes the serve config as a YAML string there")
            continue
        try:
            problems += check_config(yaml.safe_load(text), where)
        except yaml.YAMLError as exc:
            problems.append(f"{where}: cannot be read as YAML ({exc})")
    return problems


def check_config(doc, path: str) -> list[str]:
    """Problems of one serve config (a parsed YAML document) against Serve's schema and the app's args."""
    from ray.serve.schema import ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(doc)
    except ValidationError as exc:
        return [f"{path}: {_where(err)}: {err['msg']} (Ray Serve's config schema)" for err in exc.errors()]
    problems = []
    for i, app in enumerate(doc.get("applications") or []):
        if app.get("import_path") != "deployments.app:build_app":
            continue  # another project's application: its args are not ours to judge
        checks = [(f"applications[{i}].args", AppArgs, app.get("args") or {})]
        for j, dep in enumerate(app.get("deployments") or []):
            if "user_config" not in dep:
                continue
            where = f"applications[{i}].deployments[{j}].user_config"
            model = LIVE_SETTINGS.get(dep.get("name"))
            if model is None:
                problems.append(f"{path}: {where}: deployment {dep.get('name')!r} has no live settings; only "
                                f"{', '.join(LIVE_SETTINGS)} take a user_config")
                continue
            checks.append((where, model, dep["user_config"] or {}))
        for where, model, value in checks:
            try:
                model.model_validate(value)
            except ValidationError as exc:
                for err in exc.errors():
                    hint = ("unknown key: check its spelling against deployments/config.py and storage/settings.py"
                            if err["type"] == "extra_forbidden" else err["msg"])
                    problems.append(f"{path}: {where}.{_where(err)}: {hint}")
    return problems


def _where(err: dict) -> str:
    return ".".join(str(p) for p in err.get("loc", ())) or "(top level)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.config",
                                     description="Validate serve config files (Serve's schema and the app's args), "
                                                 "or the serveConfigV2 of KubeRay RayService manifests.")
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    failed = False
    for path in args.files:
        problems = check_file(path)
        for line in problems:
            print(line, file=sys.stderr)
        if not problems:
            print(f"{path}: ok")
        failed = failed or bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
