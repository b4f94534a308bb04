"""One status per kind of mistake, on every route (issue 28.2; API.md "Errors").

A table of the caller's mistakes over real HTTP, at least one row for every route `GET /openapi.json`
lists (a route added without a row fails `test_every_route_has_a_row`): whatever is wrong with what was
sent is a `400` (never FastAPI's `422`), a missing resource a `404`, a wrong method a `405`; every answer
JSON with the field named as sent, and under `/v1` in OpenAI's error shape as well. No row reaches a
model: each is refused at the ingress.
"""

from __future__ import annotations

from typing import NamedTuple

import pytest

JSON = {"content-type": "application/json"}
HI = [{"role": "user", "content": "hi"}]


class Row(NamedTuple):
    route: str  # the operation of /openapi.json this row is for: "METHOD /template"
    method: str
    url: str
    send: dict  # httpx request arguments
    status: int
    code: str
    field: str | None


ROWS = [
    Row("GET /healthz", "POST", "/healthz", {}, 405, "method_not_allowed", None),
    Row("GET /readyz", "PUT", "/readyz", {}, 405, "method_not_allowed", None),
    Row("GET /api/stats", "PUT", "/api/stats", {}, 405, "method_not_allowed", None),
    Row("DELETE /api/me", "GET", "/api/me", {}, 405, "method_not_allowed", None),
    Row("GET /api/me/usage", "POST", "/api/me/usage", {}, 405, "method_not_allowed", None),
    Row("POST /api/text", "POST", "/api/text", {"content": b'{"text": ', "headers": JSON}, 400, "invalid_json", "body"),
    Row("POST /api/text", "POST", "/api/text", {"json": {"text": ""}}, 400, "invalid_request", "text"),
    Row("POST /api/text", "POST", "/api/text", {"json": {"text": "x" * 4001}}, 400, "invalid_request", "text"),
    Row("POST /api/text", "POST", "/api/text", {"json": {"text": "x", "flag": "poem"}}, 400, "invalid_request", "flag"),
    Row("POST /api/text", "POST", "/api/text", {"json": ["x"]}, 400, "invalid_request", "body"),
    Row("POST /api/generate/image", "POST", "/api/generate/image", {"json": {"text": "x", "steps": 0}},
        400, "invalid_request", "steps"),
    Row("POST /api/generate/image", "POST", "/api/generate/image", {"json": {"text": "x", "size": "huge"}},
        400, "invalid_painter_input", "size"),
    Row("POST /api/generate/image", "POST", "/api/generate/image",
        {"json": {"text": "x"}, "headers": {"Idempotency-Key": "k" * 201}}, 400, "invalid_request", "idempotency-key"),
    Row("POST /api/images", "POST", "/api/images", {"data": {"caption": "x"}}, 400, "invalid_request", "file"),
    Row("POST /api/images", "POST", "/api/images", {"files": {"file": ("a.png", b"", "image/png")}},
        400, "empty_file", "file"),
    Row("GET /api/images", "GET", "/api/images?limit=0", {}, 400, "invalid_request", "limit"),
    Row("GET /api/images", "GET", "/api/images?limit=many", {}, 400, "invalid_request", "limit"),
    Row("GET /api/images", "GET", "/api/images?cursor=zzz", {}, 400, "invalid_cursor", "cursor"),
    Row("GET /api/images/{img_id}", "GET", "/api/images/not-an-id", {}, 404, "image_not_found", None),
    Row("GET /api/duplicates", "GET", "/api/duplicates?limit=0", {}, 400, "invalid_request", "limit"),
    Row("GET /api/duplicates", "GET", "/api/duplicates?cursor=zzz", {}, 400, "invalid_cursor", "cursor"),
    Row("POST /api/duplicates/{group}/resolve", "POST", "/api/duplicates/abc/resolve", {"json": {}},
        400, "invalid_input", "keep"),
    Row("POST /api/duplicates/{group}/resolve", "POST", "/api/duplicates/abc/resolve", {"json": {"dismiss": "maybe"}},
        400, "invalid_request", "dismiss"),
    Row("POST /api/duplicates/{group}/resolve", "POST", "/api/duplicates/abc/resolve", {"json": {"keep": "x"}},
        404, "group_not_found", None),
    Row("PATCH /api/images/{img_id}", "PATCH", "/api/images/not-an-id", {"json": {"caption": 5}},
        400, "invalid_request", "caption"),
    Row("PATCH /api/images/{img_id}", "PATCH", "/api/images/not-an-id", {"json": {"caption": "x" * 2001}},
        400, "invalid_request", "caption"),
    Row("PATCH /api/images/{img_id}", "PATCH", "/api/images/not-an-id", {"json": {"caption": "x"}},
        404, "image_not_found", None),
    Row("DELETE /api/images/{img_id}", "DELETE", "/api/images/not-an-id", {}, 404, "image_not_found", None),
    Row("GET /api/images/{img_id}/file", "GET", "/api/images/not-an-id/file?original=maybe", {},
        400, "invalid_request", "original"),
    Row("GET /api/search", "GET", "/api/search", {}, 400, "invalid_request", "q"),
    Row("GET /api/search", "GET", "/api/search?q=x&k=0", {}, 400, "invalid_input", "k"),
    Row("GET /api/search", "GET", "/api/search?q=x&k=ten", {}, 400, "invalid_request", "k"),
    Row("POST /api/search/by-image", "POST", "/api/search/by-image", {"data": {"k": "3"}}, 400, "invalid_request", "file"),
    Row("POST /api/describe", "POST", "/api/describe", {"json": {}}, 400, "invalid_input", "img_id"),
    Row("GET /v1/models", "POST", "/v1/models", {}, 405, "method_not_allowed", None),
    Row("GET /v1/models/{model}", "GET", "/v1/models/gpt-nope", {}, 404, "model_not_found", "model"),
    Row("POST /v1/moderations", "POST", "/v1/moderations", {"json": {}}, 400, "invalid_request", "input"),
    Row("POST /v1/moderations", "POST", "/v1/moderations", {"json": {"input": []}}, 400, "invalid_input", "input"),
    Row("POST /v1/moderations", "POST", "/v1/moderations", {"json": {"input": "x" * 8001}}, 400,
        "invalid_guard_input", "input"),
    Row("POST /v1/moderations", "POST", "/v1/moderations", {"json": {"input": "x", "model": "gpt-4o"}}, 404,
        "model_not_found", "model"),
    Row("POST /v1/embeddings", "POST", "/v1/embeddings", {"content": b"{", "headers": JSON}, 400, "invalid_json", "body"),
    Row("POST /v1/embeddings", "POST", "/v1/embeddings", {"json": {}}, 400, "invalid_request", "input"),
    Row("POST /v1/embeddings", "POST", "/v1/embeddings", {"json": {"input": ""}}, 400, "invalid_embedder_input", "input"),
    Row("POST /v1/embeddings", "POST", "/v1/embeddings", {"json": {"input": "x", "dimensions": 0}},
        400, "invalid_request", "dimensions"),
    Row("POST /v1/images/generations", "POST", "/v1/images/generations", {"json": {"prompt": "x", "n": 5}},
        400, "invalid_request", "n"),
    Row("POST /v1/images/generations", "POST", "/v1/images/generations", {"json": {"prompt": "x", "size": "huge"}},
        400, "invalid_painter_input", "size"),
    Row("POST /v1/chat/completions", "POST", "/v1/chat/completions", {"json": {"messages": []}},
        400, "invalid_request", "messages"),
    Row("POST /v1/chat/completions", "POST", "/v1/chat/completions", {"json": {"messages": HI, "temperature": 3}},
        400, "invalid_request", "temperature"),
    Row("POST /v1/chat/completions", "POST", "/v1/chat/completions", {"json": {"messages": HI, "max_tokens": 100000}},
        400, "invalid_writer_input", "max_tokens"),
    Row("POST /api/init/upload", "POST", "/api/init/upload", {"json": {}}, 400, "invalid_input", "files"),
    Row("POST /api/init/upload", "POST", "/api/init/upload", {"json": {}, "headers": {"Idempotency-Key": "k" * 201}},
        400, "invalid_request", "idempotency-key"),
    Row("GET /api/init/upload", "PUT", "/api/init/upload", {}, 405, "method_not_allowed", None),
    Row("GET /api/init/upload/{job_id}", "GET", "/api/init/upload/no-such-job", {}, 404, "job_not_found", None),
    Row("DELETE /api/init/upload/{job_id}", "DELETE", "/api/init/upload/no-such-job", {}, 404, "job_not_found", None),
    Row("GET /api/init/upload/{job_id}/errors", "GET", "/api/init/upload/no-such-job/errors", {}, 404,
        "job_not_found", None),
    Row("GET /api/init/upload/{job_id}/errors", "GET", "/api/init/upload/no-such-job/errors?limit=0", {}, 400,
        "invalid_request", "limit"),
    Row("GET /api/init/upload/{job_id}/errors", "GET", "/api/init/upload/no-such-job/errors?offset=-1", {}, 400,
        "invalid_request", "offset"),
    Row("DELETE /api/init/upload/{job_id}/rows", "DELETE", "/api/init/upload/no-such-job/rows", {}, 404,
        "job_not_found", None),
    Row("DELETE /api/init/upload/{job_id}/rows", "POST", "/api/init/upload/no-such-job/rows", {}, 405,
        "method_not_allowed", None),
    Row("GET /api/init/upload/{job_id}/events", "GET", "/api/init/upload/no-such-job/events",
        {"headers": {"Last-Event-ID": "abc"}}, 400, "invalid_header", "Last-Event-ID"),
    Row("GET /api/init/upload/{job_id}/events", "GET", "/api/init/upload/no-such-job/events", {}, 404, "job_not_found", None),
]


def test_every_route_has_a_row_and_no_route_answers_422(service):
    with service.client() as c:
        schema = c.get("/openapi.json").json()
    routes = {f"{m.upper()} {p}" for p, ops in schema["paths"].items() for m in ops}
    assert routes == {row.route for row in ROWS}
    for p, ops in schema["paths"].items():
        for m, op in ops.items():
            assert "422" not in op["responses"], (m, p)


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.method} {r.url[:40]} {r.status}" for r in ROWS])
def test_a_mistake_gets_its_one_status(service, row):
    with service.client() as c:
        r = c.request(row.method, row.url, **row.send)
    assert r.status_code == row.status, r.text
    assert r.headers["content-type"].startswith("application/json") and r.headers.get("x-request-id")
    error = r.json()["error"]
    assert error["code"] == row.code and error["message"], error
    assert error.get("field") == row.field, error
    if row.url.startswith("/v1/"):  # OpenAI's error object as well: its clients read `type` and `param`
        kind = "invalid_request_error" if row.status < 500 else "server_error"
        assert error["type"] == kind and error["param"] == row.field, error
    else:
        assert "type" not in error and "param" not in error
