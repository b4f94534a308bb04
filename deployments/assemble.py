"""Wiring: a ProductService and its HTTP app from the typed config, over Serve handles or in-process models.

The Serve ingress (`deployments.serving.ingress`) and the in-process test tier both assemble the
service here, so they differ only in how the models, the gallery writer and the ledgers are reached.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from deployments.config import IngressSpec, IngressTuning
from deployments.http.app import create_app
from deployments.http.auth import KeyRing, PlanBook, UrlSigner, key_store, load_secret, plan_store
from deployments.http.edge import Edge
from deployments.service import Policy, ProductService, state
from deployments.service.cache import AnswerCache
from deployments.service.ingest import IngestDesk, upload_body_limit
from deployments.service.limits import PlanLimits
from deployments.service.models import LocalModels, ServeModels
from deployments.settings import ServiceSettings
from pipelines.config import IngestSpec
from pipelines.spec import absolute_storage
from storage.library import Library
from storage.settings import SECRET_FIELDS, StorageSettings


def edge_for(ingress: IngressSpec, storage: StorageSettings, ingest: IngestSpec | None,
             settings: ServiceSettings | None = None) -> Edge:
    """Keys, URL signing and body limits of the HTTP edge."""
    settings = settings or ServiceSettings()
    secret = load_secret(settings.url_secret.get_secret_value() if settings.url_secret else None,
                         settings.url_secret_file)
    # Each route's body limit is what its largest valid request needs; everything else (small JSON,
    # GET, DELETE) gets the 64 KiB default. Checked against Content-Length before any byte is read,
    # and again while a chunked body streams in.
    upload = storage.max_upload_bytes + 256 * 1024  # multipart framing on top of the file
    text = 1 << 20
    limits = {"/api/images": upload, "/api/search/by-image": upload, "/api/describe": upload,
              "/v1/embeddings": text,
              # One image per conversation as a base64 data URI (4/3 of its bytes) and the messages.
              "/v1/chat/completions": -(-storage.max_upload_bytes * 4 // 3) + text}
    if ingest is not None:
        limits["/api/init/upload"] = upload_body_limit(ingest)
    return Edge(keys=KeyRing.open(key_store(settings)), signer=UrlSigner(secret, ingress.signed_url_ttl_s),
                body_limits=dict(sorted(limits.items(), key=lambda kv: -len(kv[0]))), default_body_limit=64 * 1024,
                max_upload_bytes=storage.max_upload_bytes, max_search_k=storage.search_max_k,
                public_url=settings.public_base())


def product_service(models: ServeModels | LocalModels, *, ingress: IngressSpec, storage: StorageSettings,
                    ingest: IngestSpec | None, in_process: bool,
                    tuning: IngressTuning | None = None, settings: ServiceSettings | None = None,
                    capacity: dict[str, int] | None = None) -> ProductService:
    """The service over `models`; `in_process` keeps the gallery writer and the ledgers in this process.
    `tuning` is the live settings to start with (the ingress's reconfigure() applies later ones); `capacity`
    the calls each role takes at once (`deployments.app.capacity`: the plans' fair share)."""
    tuning = tuning or IngressTuning()
    # Idempotency records written through beside the gallery (issue 31): a retry after a restart of the ledger,
    # the head or the whole service gets the first answer.
    durable = absolute_storage(storage).model_dump(mode="json", exclude=set(SECRET_FIELDS))  # secrets: from env
    stats, idempotency = state.in_process(durable) if in_process else state.shared(durable)

    async def open_library(dim: int, embed_model: str) -> Library:
        # Opening warms the gallery (indexes, jieba's dictionary): off the event loop.
        return await asyncio.to_thread(Library, storage, dim=dim, embed_model=embed_model,
                                       writer="local" if in_process else "actor")

    keys = settings or ServiceSettings()
    desk = None if (ingest is None or in_process) else \
        IngestDesk(ingest, storage, keys=(keys.keys_uri or storage.lancedb_uri, keys.keys_table))
    service = ProductService(
        models,
        policy=Policy.of(tuning),
        cache=AnswerCache(lru_size=tuning.caches.lru_size, ttl_s=tuning.caches.ttl_s, redis_url=ingress.redis_url),
        library_factory=open_library, stats=stats, idempotency=idempotency, ingest=desk,
        limits=PlanLimits(PlanBook.open(plan_store(keys, storage)).plan_of, plans=tuning.plans,
                          redis_url=ingress.redis_url, capacity=capacity),
    )
    service.tune(tuning)  # the live settings the service does not take in its constructor (the term list)
    if desk is not None:
        desk.attach(service.photos.keep_ingested, service.photos.room)  # small jobs run through the service, like single uploads
    return service


def in_process_app(models: ServeModels | LocalModels, *, ingress: IngressSpec, storage: StorageSettings,
                   settings: ServiceSettings | None = None, tuning: IngressTuning | None = None) -> FastAPI:
    """The whole HTTP surface in this process (no Ray): the fast test tier drives it with a test client."""
    service = product_service(models, ingress=ingress, storage=storage, ingest=None, in_process=True, tuning=tuning,
                              settings=settings)
    return create_app(service, edge_for(ingress, storage, None, settings), echo_request_id=True)
