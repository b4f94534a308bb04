"""The gate's rules in-process (the e2e tier checks them in Serve's proxy and replica): the proxy's own
plain-text errors become JSON, and the key ring follows the key table."""

from __future__ import annotations

import pytest

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from deployments.http.auth import KeyRing, Unauthorized
from storage.errors import InvalidInput, NotFound
from storage.keys import KeyStore, digest
from deployments.http.gate import Gate, clean_headers, needs_key


def _proxy_like_app():
    # Serve's proxy answers overload, timeouts and unknown routes itself, in plain text.
    async def busy(request):
        return PlainTextResponse("Request dropped due to backpressure", status_code=503)

    async def lost(request):  # a RayActorError: the replica (or its node) died under the request
        return PlainTextResponse("Internal Server Error", status_code=500)

    async def slow(request):
        return PlainTextResponse("Request timed out", status_code=408)

    async def silent(scope, receive, send):  # Serve's proxy sends nothing at all for a lost replica
        return None

    app = Starlette(routes=[Route("/busy", busy), Route("/slow", slow), Route("/lost", lost)])

    async def proxy(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/silent":
            return await silent(scope, receive, send)
        return await app(scope, receive, send)

    return proxy


def test_plain_text_errors_of_the_proxy_become_json_with_retry_after(tmp_path):
    store = KeyStore(str(tmp_path / "lancedb"))
    _, key = store.add("alice")
    app = Gate(_proxy_like_app(), keys=KeyRing.open(store), json_errors=True)
    with TestClient(app) as client:
        auth = {"Authorization": f"Bearer {key}"}
        r = client.get("/busy", headers=auth)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json() == {"error": {"code": "unavailable", "message": "Request dropped due to backpressure"}}
        assert client.get("/slow", headers=auth).json()["error"]["code"] == "timeout"
        r = client.get("/nowhere", headers=auth)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert len(r.headers.get_list("x-request-id")) == 1
        # A replica lost under the request: Serve's proxy says 500 in plain text, or nothing at all.
        for path in ("/lost", "/silent"):
            r = client.get(path, headers=auth)
            assert r.status_code == 503 and r.headers["retry-after"] == "1", path
            assert r.json()["error"]["code"] == "unavailable" and "lost" in r.json()["error"]["message"]


def test_the_gate_reports_what_it_refuses_and_nothing_else(tmp_path):
    store = KeyStore(str(tmp_path / "lancedb"))
    _, key = store.add("alice")
    refused: list[tuple[int, str]] = []
    app = Gate(_proxy_like_app(), keys=KeyRing.open(store), json_errors=True,
               on_refusal=lambda status, code: refused.append((status, code)))
    with TestClient(app) as client:
        assert client.get("/busy").status_code == 401
        assert client.get("/busy", headers=[("Authorization", f"Bearer {key}")] * 2).status_code == 400
        assert client.get("/busy", headers={"Authorization": f"Bearer {key}"}).status_code == 503  # not the gate's
    assert [status for status, _ in refused] == [401, 400]
    assert all(code for _, code in refused)


def test_the_ring_follows_the_key_table_written_by_another_store(tmp_path):
    uri = str(tmp_path / "lancedb")
    _, first = KeyStore(uri).add("alice")
    ring = KeyRing.open(KeyStore(uri))
    other = KeyStore(uri)  # another process's view, later: no restart, no reload call
    bob_id, second = other.add("bob")
    assert ring.user_for(f"Bearer {first}") == "alice" and ring.user_for(f"Bearer {second}") == "bob"
    other.revoke("bob", bob_id)
    with pytest.raises(Unauthorized):
        ring.user_for(f"Bearer {second}")
    assert ring.user_for(f"Bearer {first}") == "alice"


def test_the_key_table_keeps_digests_only_and_refuses_bad_ids(tmp_path):
    store = KeyStore(str(tmp_path / "lancedb"))
    key_id, key = store.add("o'brien")  # a quote in a user id is a literal, not SQL
    assert key.startswith(f"atl_{key_id}_")
    stored = store.table().to_arrow().to_pylist()
    assert [r["sha256"] for r in stored] == [digest(key)] and key not in repr(stored)
    assert [r["key_id"] for r in store.list("o'brien")] == [key_id] and "sha256" not in store.list()[0]
    with pytest.raises(InvalidInput):
        store.revoke("o'brien", "x' OR '1'='1")
    with pytest.raises(NotFound):
        store.revoke("o'brien", "0" * 12)
    assert store.revoke("o'brien", key_id) == 1 and store.list() == []


def test_which_requests_need_a_key():
    assert not needs_key("GET", "/healthz", b"") and not needs_key("GET", "/readyz", b"")
    assert needs_key("POST", "/healthz", b"")
    assert not needs_key("GET", "/api/images/abc/file", b"sig=1.x")
    assert needs_key("GET", "/api/images/abc/file", b"") and needs_key("GET", "/api/images/abc/file", b"xsig=1")
    assert needs_key("GET", "/api/images/a/b/file", b"sig=1.x")
    assert needs_key("GET", "/docs", b"") and needs_key("GET", "/openapi.json", b"")
    # The web console's page and files hold no user data; its calls to /api carry the key.
    assert not needs_key("GET", "/", b"") and not needs_key("GET", "/console/app.js", b"")
    assert needs_key("POST", "/", b"") and needs_key("GET", "/consoles", b"") and needs_key("GET", "/api/me", b"")


def test_clean_headers_keep_one_safe_id_and_drop_serve_controls():
    headers, rid = clean_headers([(b"x-request-id", b"ok-1"), (b"x-request-timeout-seconds", b"0"),
                                  (b"X-Request-Disconnect-Disabled", b"?1"), (b"serve-multiplexed-model-id", b"m"),
                                  (b"x-session-id", b"s"), (b"accept", b"*/*")])
    assert rid == "ok-1" and headers == [(b"accept", b"*/*"), (b"x-request-id", b"ok-1")]
    _, rid = clean_headers([(b"x-request-id", b"a"), (b"x-request-id", b"b")])
    assert rid not in ("a", "b") and len(rid) == 32
