"""The text and generation routes of API.md over real HTTP against the local graph (tiny models)."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image



def test_health_and_readiness_need_no_key(service):
    with service.client(user=None) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        r = c.get("/readyz")
        assert r.status_code == 200
        assert r.json()["models"] == {"embedder": True, "writer": True, "describer": True, "painter": True,
                                      "guard": True}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}])
def test_every_api_route_needs_a_valid_key(service, headers):
    with service.client(user=None) as c:
        for method, path in [("POST", "/api/text"), ("GET", "/api/stats"), ("POST", "/api/generate/image")]:
            r = c.request(method, path, headers=headers, json={"text": "x"})
            assert r.status_code == 401, (method, path)
            assert r.json()["error"]["code"] == "unauthorized"


def test_request_id_is_echoed_or_made(service):
    with service.client() as c:
        assert c.get("/healthz", headers={"X-Request-ID": "trace-123"}).headers["x-request-id"] == "trace-123"
        assert len(c.get("/healthz").headers["x-request-id"]) >= 16
        assert c.get("/api/nothing-here").headers["x-request-id"]


def test_prompt_enhancement_and_post_text(service):
    with service.client() as c:
        r = c.post("/api/text", json={"text": "海边的日落", "flag": "prompt_enhancement"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["text"] and body["random_weights"] is True and body["degraded"] is False
        r = c.post("/api/text", json={"text": "a dog running on the beach", "flag": "description"})
        assert r.status_code == 200 and r.json()["text"]


@pytest.mark.parametrize(
    "body, status, code",
    [
        ({"text": ""}, 400, "invalid_request"),
        ({"text": "hi", "flag": "poem"}, 400, "invalid_request"),
        ({"txt": "hi"}, 400, "invalid_request"),
        ({"text": "x" * 4001}, 400, "invalid_request"),
    ],
)
def test_text_bad_input(service, body, status, code):
    with service.client() as c:
        r = c.post("/api/text", json=body)
        assert r.status_code == status
        assert r.json()["error"]["code"] == code


def test_generate_without_gallery_returns_an_inline_image(service):
    with service.client() as c:
        r = c.post("/api/generate/image",
                   json={"text": "a lighthouse", "size": "small", "seed": 3, "save_to_gallery": False})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["size"] == "64x64" and body["seed"] == 3 and body["img_id"] is None
        assert body["prompt"]["original"] == "a lighthouse" and body["prompt"]["used"]
        assert body["random_weights"] is True and body["generation_time"] > 0
        png = base64.b64decode(body["image_url"].split(",", 1)[1])
        assert Image.open(io.BytesIO(png)).size == (64, 64)


@pytest.mark.parametrize(
    "body, field",
    [({"text": "a cat", "size": "500x512"}, "size"), ({"text": "a cat", "size": "giant"}, "size"),
     ({"text": "a cat", "steps": 0}, None)],
)
def test_generate_bad_input_is_4xx_before_any_work(service, body, field):
    with service.client() as c:
        r = c.post("/api/generate/image", json=body)
        assert r.status_code == 400
        err = r.json()["error"]
        if field:
            assert err["field"] == field and len(err["message"]) > 20


def test_oversized_json_body_is_413_json(service):
    with service.client() as c:
        r = c.post("/api/text", content=b'{"text": "' + b"a" * (2 << 20) + b'"}',
                   headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "too_large"


def test_stats_cover_the_calls_made(service):
    with service.client() as c:
        c.post("/api/text", json={"text": "stats please"})
        ops = c.get("/api/stats").json()["operations"]
        text = ops["POST /api/text"]
        assert text["count"] >= 1
        assert set(text) == {"count", "errors", "client_closed", "avg_s", "min_s", "max_s", "p50_s", "p95_s"}
        assert text["min_s"] <= text["p50_s"] <= text["max_s"]
