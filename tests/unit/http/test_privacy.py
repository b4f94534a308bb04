"""What one user's requests tell another, over real HTTP (in-process): cached answers are the caller's
own, absolute URLs never come from the request's `Host` header, and stats and replica names are the
caller's and the operator's business only."""

from __future__ import annotations

import socket
import threading
import time
import uuid

import httpx
import pytest
from http_helpers import auth, png


def _counts(client) -> dict:
    return dict(client.app.state.service.ctx.cache.counts)


def _delta(before: dict, after: dict, key: str) -> int:
    return after.get(key, 0) - before.get(key, 0)


@pytest.mark.parametrize("kind", ["enhance", "embed_text"])
def test_one_users_cached_answer_is_never_anothers(surface, kind):
    """Alice's second ask is answered from the cache; Bob asking the same text is not (the cache's own
    counters say so, not a clock), so nothing in his answer depends on what Alice sent."""
    client, _ = surface
    text = f"a lighthouse in a storm {uuid.uuid4().hex[:8]}"

    def ask(user):
        before = _counts(client)
        if kind == "enhance":
            r = client.post("/api/text", headers=auth(surface, user), json={"text": text, "flag": "prompt_enhancement"})
        else:
            r = client.get("/api/search", headers=auth(surface, user), params={"q": text, "k": 1})
        assert r.status_code == 200, r.text
        after = _counts(client)
        return _delta(before, after, f"{kind}.hit"), _delta(before, after, f"{kind}.miss")

    assert ask("alice") == (0, 1)
    assert ask("alice") == (1, 0)  # the cache works for its owner
    assert ask("bob") == (0, 1)    # ... and only for its owner
    assert ask("bob") == (1, 0)


def test_links_do_not_come_from_the_host_header(surface):
    client, _ = surface
    r = client.post("/api/images", headers={**auth(surface), "Host": "evil.example", "X-Forwarded-Proto": "https",
                                            "X-Forwarded-Host": "evil.example"},
                    files={"file": ("p.png", png(4401), "image/png")})
    assert r.status_code in (200, 201), r.text
    url = r.json()["image_url"]
    assert "evil.example" not in url and url.startswith("http://testserver/api/images/"), url


def test_links_use_the_configured_public_url(tiny_models, tmp_path):
    from fastapi.testclient import TestClient

    from deployments.assemble import in_process_app
    from deployments.config import IngressSpec
    from deployments.http.auth import key_store
    from deployments.service.models import LocalModels
    from deployments.settings import ServiceSettings
    from storage.settings import StorageSettings

    settings = ServiceSettings(keys_uri=str(tmp_path / "lancedb"), url_secret_file=str(tmp_path / "url_secret"),
                               public_url="https://photos.example.com/")
    _, key = key_store(settings).add("carol")
    models = LocalModels(*(tiny_models[r] for r in ("embedder", "writer", "describer", "painter")))
    app = in_process_app(models, ingress=IngressSpec(), settings=settings,
                         storage=StorageSettings(lancedb_uri=str(tmp_path / "lancedb"), blob_root=str(tmp_path / "b")))
    with TestClient(app) as client:
        r = client.post("/api/images", headers={"Authorization": f"Bearer {key}", "Host": "evil.example"},
                        files={"file": ("p.png", png(4402), "image/png")})
        assert r.status_code in (200, 201), r.text
        url = r.json()["image_url"]
        assert url.startswith("https://photos.example.com/api/images/"), url
        assert client.get(url.removeprefix("https://photos.example.com")).status_code == 200


def _serve(app, settings):
    """`app` behind a real uvicorn on 127.0.0.1, started with the options Serve's proxy gets (proxy.py)."""
    import uvicorn

    from deployments.http.proxy import uvicorn_options

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning",
                                           **uvicorn_options(settings)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    return server, thread, sock.getsockname()[1]


@pytest.mark.parametrize("trusted, scheme", [("", "http"), ("10.9.8.7", "http"), ("127.0.0.1", "https")])
def test_forwarded_headers_count_only_from_a_trusted_proxy(surface, trusted, scheme):
    """Over a real socket: `X-Forwarded-Proto` from 127.0.0.1 changes the links' scheme only when
    127.0.0.1 is a configured proxy (uvicorn alone believes anyone on 127.0.0.1)."""
    from deployments.settings import ServiceSettings

    client, keys = surface
    server, thread, port = _serve(client.app, ServiceSettings(trusted_proxies=trusted))
    try:
        r = httpx.post(f"http://127.0.0.1:{port}/api/images", timeout=60,
                       headers={"Authorization": f"Bearer {keys['alice']}", "Host": "evil.example",
                                "X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"},
                       files={"file": ("p.png", png(4403), "image/png")})
    finally:
        server.should_exit = True
        thread.join(10)
    assert r.status_code in (200, 201), r.text
    assert r.json()["image_url"].startswith(f"{scheme}://127.0.0.1:{port}/api/images/"), r.json()["image_url"]


def test_stats_show_the_callers_own_calls_only(surface):
    client, _ = surface
    assert client.post("/api/text", headers=auth(surface, "alice"), json={"text": "stats of mine"}).status_code == 200
    assert client.get("/api/images/not-a-real-id", headers=auth(surface, "alice")).status_code == 404
    mine = client.get("/api/stats", headers=auth(surface, "alice")).json()["operations"]
    theirs = client.get("/api/stats", headers=auth(surface, "bob")).json()["operations"]
    assert mine["POST /api/text"]["count"] >= 1 and "GET /api/images/{img_id}" in mine
    before = theirs.get("POST /api/text", {"count": 0})["count"]
    assert client.post("/api/text", headers=auth(surface, "alice"), json={"text": "more of mine"}).status_code == 200
    after = client.get("/api/stats", headers=auth(surface, "bob")).json()["operations"]
    assert after.get("POST /api/text", {"count": 0})["count"] == before  # Alice's call is not in Bob's view
    assert client.get("/api/stats", headers=auth(surface, "alice")).json()["operations"]["POST /api/text"]["count"] \
        == mine["POST /api/text"]["count"] + 1


def test_replica_names_only_on_authenticated_answers(tiny_models, tmp_path):
    from fastapi.testclient import TestClient

    from deployments.assemble import edge_for, product_service
    from deployments.config import IngressSpec
    from deployments.http.app import create_app
    from deployments.http.auth import key_store
    from deployments.service.models import LocalModels
    from deployments.settings import ServiceSettings
    from storage.settings import StorageSettings

    settings = ServiceSettings(keys_uri=str(tmp_path / "lancedb"), url_secret_file=str(tmp_path / "url_secret"))
    _, key = key_store(settings).add("dave")
    storage = StorageSettings(lancedb_uri=str(tmp_path / "lancedb"), blob_root=str(tmp_path / "b"))
    models = LocalModels(*(tiny_models[r] for r in ("embedder", "writer", "describer", "painter")))
    service = product_service(models, ingress=IngressSpec(), storage=storage, ingest=None, in_process=True)
    app = create_app(service, edge_for(IngressSpec(), storage, None, settings), echo_request_id=True,
                     served_by={"X-Atelier-Replica": "replica-1", "X-Atelier-Node": "node-1"})
    with TestClient(app) as client:
        for r in (client.get("/healthz"), client.get("/readyz"), client.get("/api/stats"),
                  client.get("/api/stats", headers={"Authorization": "Bearer nope"}),
                  client.get("/api/images/x/file", params={"sig": "1.AAAA"})):
            assert "x-atelier-node" not in r.headers and "x-atelier-replica" not in r.headers, (r.url, r.headers)
        for r in (client.get("/api/stats", headers={"Authorization": f"Bearer {key}"}),
                  client.get("/api/images/not-a-real-id", headers={"Authorization": f"Bearer {key}"})):
            assert (r.headers["x-atelier-node"], r.headers["x-atelier-replica"]) == ("node-1", "replica-1")
