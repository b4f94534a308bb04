"""The in-process HTTP tier's fixtures: the four tiny models loaded once as plain classes, and the whole
HTTP surface over them (FastAPI's test client; no Ray, no Serve)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_models(tiny_kit) -> dict:
    """The four roles' tiny checkpoints loaded and warmed up in this process."""
    import torch

    from models import (Describer, DescriberConfig, Embedder, EmbedderConfig, Painter, PainterConfig,
                                    Writer, WriterConfig)

    torch.set_num_threads(1)
    models = {}
    for cls, cfg, extra in ((Embedder, EmbedderConfig, {}), (Writer, WriterConfig, {"min_new_tokens": 4}),
                            (Describer, DescriberConfig, {"min_new_tokens": 4}),
                            (Painter, PainterConfig, {"default_steps": 1,
                                                      "sizes": {"small": "64x64", "medium": "96x96"}})):
        model = cls(cfg(model=str(tiny_kit / cls.role), num_threads=1, **extra))
        model.warmup()
        models[cls.role] = model
    return models


@pytest.fixture(scope="session")
def surface(tiny_models, tmp_path_factory):
    """(client, keys): the whole HTTP surface over the tiny models, in this process."""
    from fastapi.testclient import TestClient

    from deployments.assemble import in_process_app
    from deployments.config import IngressSpec
    from deployments.http.auth import key_store
    from deployments.service.models import LocalModels
    from deployments.settings import ServiceSettings
    from storage.settings import StorageSettings

    data = tmp_path_factory.mktemp("inprocess")
    settings = ServiceSettings(keys_uri=str(data / "lancedb"), url_secret_file=str(data / "url_secret"))
    store = key_store(settings)
    keys = {user: store.add(user)[1] for user in ("alice", "bob")}
    models = LocalModels(*(tiny_models[r] for r in ("embedder", "writer", "describer", "painter")))
    app = in_process_app(models, ingress=IngressSpec(),
                         storage=StorageSettings(lancedb_uri=str(data / "lancedb"), blob_root=str(data / "blobs")),
                         settings=settings)
    with TestClient(app) as client:
        yield client, keys
