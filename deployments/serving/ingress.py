"""The ingress deployment: the product's HTTP API (API.md) on each replica, over the model deployments.

The class only assembles: a ProductService over the four deployment handles, and the FastAPI app of
`deployments.http` over that service, built on the replica (`__serve_build_asgi_app__`) once the
constructor has run.
"""

from __future__ import annotations

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.assemble import edge_for, product_service
from deployments.config import IngressArgs, IngressTuning
from deployments.http.app import create_app
from deployments.service.models import ServeModels
from deployments.serving.logs import INGRESS_LOGGING, into_serve_log


WARM_LIBRARY_S = 60.0


@serve.deployment(name="Ingress", logging_config=INGRESS_LOGGING)
@serve.ingress()
class Ingress:
    def __init__(self, embedder: DeploymentHandle, writer: DeploymentHandle, describer: DeploymentHandle,
                 painter: DeploymentHandle, args: dict, scale_to_zero: tuple[str, ...] = (),
                 capacity: dict[str, int] | None = None, guard: DeploymentHandle | None = None):
        into_serve_log()
        config = IngressArgs.model_validate(args)
        storage = config.storage.settings()
        models = ServeModels(embedder, writer, describer, painter, guard=guard, scale_to_zero=tuple(scale_to_zero))
        self.service = product_service(models, ingress=config.ingress,
                                       storage=storage, ingest=config.ingest, in_process=False, capacity=capacity)
        self.edge = edge_for(config.ingress, storage, config.ingest)

    def reconfigure(self, user_config: dict) -> None:
        """The live settings (timeouts, caches, Retry-After, search translation), without a restart."""
        self.service.tune(IngressTuning.model_validate(user_config or {}))

    async def charge(self, user: str, role: str, seconds: float) -> None:
        """GPU seconds a model replica measured for a call of `user`'s that ended without an answer (cancelled,
        failed): charged to their plan's budget here, where the counters are (Redis, or this one replica's)."""
        if self.service.limits is not None:
            await self.service.limits.charge(user, role, seconds)

    async def __serve_build_asgi_app__(self) -> FastAPI:
        import asyncio
        import logging

        import ray

        # The gallery opened before Serve counts this replica ready (Serve awaits this method): a replica
        # that replaces another (a rollout, a lost node) must not make a user's first search wait seconds
        # for LanceDB and jieba, past the route's deadline. It waits for the Embedder's model id and
        # dimension; if no Embedder answers in time, the first request opens it instead.
        try:
            await asyncio.wait_for(self.service.library(), timeout=WARM_LIBRARY_S)
        except Exception as exc:  # noqa: BLE001 - warming is an optimisation; requests open it themselves
            logging.getLogger("atelier.ingress").warning("the gallery was not opened at start (%s: %s); the first "
                                                         "request opens it", type(exc).__name__, exc)

        if self.service.ingest is not None:
            self.service.ingest.start_resuming()  # jobs a restarted job ledger found without a driver

        # Who answered: Serve's replica id and the Ray node it runs on (what `ray list nodes` shows).
        served_by = {"X-Atelier-Replica": serve.get_replica_context().replica_id.unique_id,
                     "X-Atelier-Node": ray.get_runtime_context().get_node_id()}
        return create_app(self.service, self.edge, serve_metrics=True, served_by=served_by)
