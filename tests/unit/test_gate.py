"""The gate's rules in-process (the e2e tier checks them in Serve's proxy and replica): the proxy's own
plain-text errors become JSON, and the key ring follows its file."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from deployments.http.auth import KeyRing, add_key
from deployments.http.gate import Gate, clean_headers, needs_key


def _proxy_like_app():
    # Serve's proxy answers overload, timeouts and unknown routes itself, in plain text.
    async def busy(request):
        return PlainTextResponse("Request dropped due to backpressure", status_code=503)

    async def slow(request):
        return PlainTextResponse("Request timed out", status_code=408)

    return Starlette(routes=[Route("/busy", busy), Route("/slow", slow)])


def test_plain_text_errors_of_the_proxy_become_json_with_retry_after(tmp_path):
    key = add_key(tmp_path / "keys.json", "alice")
    app = Gate(_proxy_like_app(), keys=KeyRing.load(tmp_path / "keys.json"), json_errors=True)
    with TestClient(app) as client:
        auth = {"Authorization": f"Bearer {key}"}
        r = client.get("/busy", headers=auth)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json() == {"error": {"code": "unavailable", "message": "Request dropped due to backpressure"}}
        assert client.get("/slow", headers=auth).json()["error"]["code"] == "timeout"
        r = client.get("/nowhere", headers=auth)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert len(r.headers.get_list("x-request-id")) == 1


def test_a_key_added_to_the_file_counts_at_once(tmp_path):
    path = tmp_path / "keys.json"
    first = add_key(path, "alice")
    ring = KeyRing.load(path)
    second = add_key(path, "bob")  # another process, later: no restart, no reload call
    assert ring.user_for(f"Bearer {first}") == "alice" and ring.user_for(f"Bearer {second}") == "bob"
    path.write_text("{ not json")  # a broken file keeps the keys read before
    assert ring.user_for(f"Bearer {second}") == "bob"


def test_which_requests_need_a_key():
    assert not needs_key("GET", "/healthz", b"") and not needs_key("GET", "/readyz", b"")
    assert needs_key("POST", "/healthz", b"")
    assert not needs_key("GET", "/api/images/abc/file", b"sig=1.x")
    assert needs_key("GET", "/api/images/abc/file", b"") and needs_key("GET", "/api/images/abc/file", b"xsig=1")
    assert needs_key("GET", "/api/images/a/b/file", b"sig=1.x")
    assert needs_key("GET", "/docs", b"") and needs_key("GET", "/openapi.json", b"")


def test_clean_headers_keep_one_safe_id_and_drop_serve_controls():
    headers, rid = clean_headers([(b"x-request-id", b"ok-1"), (b"x-request-timeout-seconds", b"0"),
                                  (b"X-Request-Disconnect-Disabled", b"?1"), (b"serve-multiplexed-model-id", b"m"),
                                  (b"x-session-id", b"s"), (b"accept", b"*/*")])
    assert rid == "ok-1" and headers == [(b"accept", b"*/*"), (b"x-request-id", b"ok-1")]
    _, rid = clean_headers([(b"x-request-id", b"a"), (b"x-request-id", b"b")])
    assert rid not in ("a", "b") and len(rid) == 32
