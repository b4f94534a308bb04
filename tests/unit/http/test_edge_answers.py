"""The edge's answers to what callers get wrong (issue 28, over the in-process HTTP surface): a body that
is not text is a 400 naming its field on every JSON route, a bug's 500 names the request id, refused
input names the field as the caller sent it, health answers HEAD, and the stats list only operations."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient
from http_helpers import auth as _as

_ESCAPED = '"\\ud800"'  # JSON text: an escaped lone surrogate
_RAW = '"\udfff"'  # written out as raw bytes below (surrogatepass): ED BF BF, invalid UTF-8 of a surrogate


def _body(template: str, text: str) -> bytes:
    return template.replace("@", text).encode("utf-8", "surrogatepass")


@pytest.mark.parametrize("path, template, field", [
    ("/v1/embeddings", '{"input": @}', "input"),
    ("/v1/embeddings", '{"input": ["ok", @]}', "input[1]"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": @}]}', "messages[0].content"),
    ("/api/text", '{"text": @}', "text"),
    ("/api/generate/image", '{"text": @, "enhance": false}', "text"),
    ("/api/describe", '{"img_id": @}', "img_id"),
    ("/v1/images/generations", '{"prompt": "a cat", @: 1}', "\\ud800"),
])
@pytest.mark.parametrize("text", [_ESCAPED, _RAW], ids=["escaped", "raw"])
def test_a_lone_surrogate_is_a_400_naming_its_field_on_every_json_route(surface, path, template, field, text):
    client, _ = surface
    r = client.post(path, content=_body(template, text),
                    headers={**_as(surface), "Content-Type": "application/json", "X-Request-ID": "surrogate-1"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_text" and "surrogate" in error["message"], error
    assert error["field"] == (field.replace("ud800", "udfff") if text == _RAW else field), error
    assert r.headers["x-request-id"] == "surrogate-1"


def test_a_body_that_is_not_utf8_is_a_400(surface):
    client, _ = surface
    r = client.post("/v1/embeddings", content=b'{"input": "\xff"}',
                    headers={**_as(surface), "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "body", r.text


def test_a_bug_answers_500_with_the_request_id_in_its_body_and_log_line(surface, caplog):
    """A route that fails (a bug of ours, made on purpose over the real app and service): the 500 and its
    log line name the request's id, which the edge had cleared before the error handler ran."""
    from deployments.http.app import create_app

    client, _ = surface
    app = create_app(client.app.state.service, client.app.state.edge, echo_request_id=True)

    @app.get("/api/broken")
    async def broken():
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as c, caplog.at_level(logging.ERROR, "atelier.http"):
        r = c.get("/api/broken", headers={**_as(surface), "X-Request-ID": "bug-500-1"})
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error", r.text
    assert "bug-500-1" in r.json()["error"]["message"] and r.headers["x-request-id"] == "bug-500-1"
    [line] = [rec for rec in caplog.records if rec.name == "atelier.http"]
    assert "bug-500-1" in line.getMessage() and line.exc_info is not None


@pytest.mark.parametrize("path, body, field", [
    ("/v1/embeddings", {"input": ""}, "input"),
    ("/v1/embeddings", {"input": ["a cat", " "]}, "input"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2048}, "max_tokens"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 2048},
     "max_completion_tokens"),
    ("/api/generate/image", {"text": "x", "size": "huge"}, "size"),
    ("/v1/images/generations", {"prompt": "x", "size": "100x100"}, "size"),
])
def test_refused_input_names_the_field_the_caller_sent(surface, path, body, field):
    client, _ = surface
    r = client.post(path, json=body, headers=_as(surface))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["field"] == field, error


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_answers_head(surface, path):
    client, _ = surface
    r = client.head(path, headers={"X-Request-ID": "head-1"})
    assert r.status_code == client.get(path).status_code == 200, r.text
    assert r.content == b"" and r.headers["x-request-id"] == "head-1"


def test_stats_list_only_operations_that_exist(surface):
    client, _ = surface
    assert client.delete("/api/stats", headers=_as(surface)).status_code == 405
    assert client.put("/v1/embeddings", headers=_as(surface)).status_code == 405
    assert client.get("/api/no-such-route", headers=_as(surface)).status_code == 404
    assert client.get("/api/images", headers=_as(surface)).status_code == 200
    ops = client.get("/api/stats", headers=_as(surface)).json()["operations"]
    assert "GET /api/images" in ops
    assert not {"DELETE /api/stats", "PUT /v1/embeddings"} & set(ops), sorted(ops)
