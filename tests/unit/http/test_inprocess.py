"""The fast HTTP tier: the same routers and ProductService as in production, driven in-process.

The four tiny models are the plain model classes loaded in this process (no Ray, no Serve), the
gallery is a real LanceDB in a temp folder, and requests go through FastAPI's test client. Route
logic is covered here in seconds; what needs a cluster (Serve's batching, back-pressure, replicas,
Ray Data ingestion) stays in the e2e tier.
"""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import pytest
from http_helpers import auth as _as, png as _png
from PIL import Image



def test_health_readiness_and_request_ids(surface):
    client, _ = surface
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and set(ready.json()["models"]) == {"embedder", "writer", "describer", "painter"}
    assert client.get("/healthz", headers={"X-Request-ID": "trace-7"}).headers["x-request-id"] == "trace-7"


@pytest.mark.parametrize("method, path", [("GET", "/api/stats"), ("POST", "/api/text"), ("GET", "/api/images"),
                                          ("GET", "/v1/models"), ("POST", "/v1/embeddings"), ("DELETE", "/api/me")])
def test_every_route_needs_a_key(surface, method, path):
    client, _ = surface
    for headers in ({}, {"Authorization": "Bearer nope"}):
        r = client.request(method, path, headers=headers, json={"text": "x", "input": "x"})
        assert r.status_code == 401, (method, path, r.text)
        assert r.json()["error"]["code"] == "unauthorized"


def test_upload_list_get_file_search_delete(surface):
    client, _ = surface
    h = _as(surface, "bob")
    first = client.post("/api/images", headers=h, files={"file": ("a.png", _png(1), "image/png")},
                        data={"caption": "海边的日落"})
    assert first.status_code == 201, first.text
    rec = first.json()
    again = client.post("/api/images", headers=h, files={"file": ("a.png", _png(1), "image/png")})
    assert again.status_code == 200 and again.json()["img_id"] == rec["img_id"]
    other = client.post("/api/images", headers=h, files={"file": ("b.png", _png(2), "image/png")}).json()
    listed = client.get("/api/images", headers=h, params={"limit": 1})
    assert listed.status_code == 200 and len(listed.json()["items"]) == 1 and listed.json()["next_cursor"]
    assert client.get(f"/api/images/{rec['img_id']}", headers=h).json()["caption"] == "海边的日落"
    assert client.get(f"/api/images/{rec['img_id']}", headers=_as(surface, "alice")).status_code == 404
    file = client.get(rec["image_url"])
    assert file.status_code == 200 and file.headers["content-type"].startswith("image/")
    found = client.get("/api/search", headers=h, params={"q": "sunset", "k": 2}).json()
    assert {r["img_id"] for r in found["results"]} == {rec["img_id"], other["img_id"]}
    assert client.get("/api/search", headers=h, params={"q": "sunset", "k": 0}).status_code == 400
    by = client.post("/api/search/by-image", headers=h, files={"file": ("q.png", _png(2), "image/png")},
                     data={"k": "1"})
    assert by.json()["results"][0]["img_id"] == other["img_id"]
    assert client.delete(f"/api/images/{rec['img_id']}", headers=h).status_code == 204
    assert client.get(f"/api/images/{rec['img_id']}", headers=h).status_code == 404
    assert client.get(rec["image_url"]).status_code == 404


def test_text_describe_and_bad_input(surface):
    client, _ = surface
    h = _as(surface)
    r = client.post("/api/text", headers=h, json={"text": "海边的日落", "flag": "prompt_enhancement"})
    assert r.status_code == 200 and r.json()["random_weights"] is True and r.json()["text"]
    assert client.post("/api/text", headers=h, json={"text": ""}).status_code == 400
    described = client.post("/api/describe", headers=h, files={"file": ("p.png", _png(3), "image/png")})
    assert described.status_code == 200, described.text
    assert isinstance(described.json()["description"], str) and described.json()["img_id"] is None
    bad = client.post("/api/images", headers=h, files={"file": ("x.png", b"not an image at all", "image/png")})
    assert bad.status_code in (400, 415) and bad.json()["error"]["code"]


def test_both_surfaces_store_a_generated_image_the_same_way(surface):
    client, _ = surface
    h = _as(surface)
    api = client.post("/api/generate/image", headers=h,
                      json={"text": "a red boat", "size": "64x64", "seed": 11, "enhance": False})
    assert api.status_code == 200, api.text
    v1 = client.post("/v1/images/generations", headers=h,
                     json={"prompt": "a red boat", "size": "64x64", "seed": 12, "response_format": "url"})
    assert v1.status_code == 200, v1.text
    v1_id = v1.json()["data"][0]["url"].split("/api/images/")[1].split("/")[0]
    service = client.app.state.service
    library = asyncio.run(service.library())
    rows = [library.gallery.get("alice", api.json()["img_id"]), library.gallery.get("alice", v1_id)]
    assert [r["source"] for r in rows] == ["generated", "generated"]
    assert [r["caption"] for r in rows] == ["a red boat", "a red boat"]
    assert [r["meta"]["seed"] for r in rows] == [11, 12]
    assert rows[0]["meta"].keys() == rows[1]["meta"].keys() == {
        "prompt_original", "prompt_used", "seed", "size", "model", "steps", "phash"}
    # The same prompt, size and seed on the other surface is the same picture: one row, not two.
    again = client.post("/v1/images/generations", headers=h,
                        json={"prompt": "a red boat", "size": "64x64", "seed": 11, "response_format": "url"})
    assert api.json()["img_id"] in again.json()["data"][0]["url"]
    inline = client.post("/v1/images/generations", headers=h,
                         json={"prompt": "a red boat", "size": "64x64", "seed": 13, "response_format": "b64_json"})
    Image.open(io.BytesIO(base64.b64decode(inline.json()["data"][0]["b64_json"]))).verify()


def test_openai_models_embeddings_and_chat(surface):
    client, _ = surface
    h = _as(surface)
    ids = {m["role"]: m["id"] for m in client.get("/v1/models", headers=h).json()["data"]}
    assert set(ids) == {"embedder", "writer", "describer", "painter"}
    emb = client.post("/v1/embeddings", headers=h, json={"input": ["一只橘猫", "a cat"], "model": ids["embedder"]})
    vecs = np.asarray([d["embedding"] for d in emb.json()["data"]])
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    assert client.post("/v1/embeddings", headers=h, json={"input": "x", "model": "gpt-4o"}).status_code == 404
    chat = client.post("/v1/chat/completions", headers=h,
                       json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "temperature": 0})
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["finish_reason"] in ("stop", "length")
    with client.stream("POST", "/v1/chat/completions", headers=h,
                       json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "temperature": 0,
                             "stream": True}) as streamed:
        lines = [line for line in streamed.iter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    image = "data:image/png;base64," + base64.b64encode(_png(4)).decode()
    vision = client.post("/v1/chat/completions", headers=h, json={"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": image}}]}],
        "max_tokens": 6})
    assert vision.status_code == 200, vision.text
    refused = client.post("/v1/chat/completions", headers=h, json={"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://example.com/x.png"}}]}]})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "url_not_allowed"


def test_ingest_routes_say_plainly_they_need_the_cluster(surface):
    client, _ = surface
    r = client.get("/api/init/upload", headers=_as(surface))
    assert r.status_code == 503 and r.json()["error"]["code"] == "ingest_unavailable"
    assert int(r.headers["retry-after"]) >= 1


def test_a_generation_s_original_is_fetched_as_png(surface):
    """Issue 28.8: the file route gives the display copy, and with `original=true` the PNG the Painter made,
    to the owner's key and to the signed URL alike; nobody else's key opens either."""
    client, keys = surface
    h = _as(surface)
    made = client.post("/api/generate/image", headers=h,
                       json={"text": "a lighthouse at dusk", "size": "64x64", "seed": 21, "enhance": False})
    assert made.status_code == 200, made.text
    img_id, url = made.json()["img_id"], made.json()["image_url"]
    path = url.split("://", 1)[1].split("/", 1)[1]
    original = client.get(f"/api/images/{img_id}/file", params={"original": "true"}, headers=h)
    assert original.status_code == 200 and original.headers["content-type"] == "image/png"
    assert original.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert Image.open(io.BytesIO(original.content)).size == (64, 64)
    signed = client.get("/" + path + "&original=true")
    assert signed.status_code == 200 and signed.content == original.content
    assert client.get(f"/api/images/{img_id}/file", headers=h).status_code == 200  # the display copy
    other = client.get(f"/api/images/{img_id}/file", params={"original": "true"},
                       headers={"Authorization": f"Bearer {keys['bob']}"})
    assert other.status_code == 404, other.text


def test_a_caption_is_edited_by_patch_and_by_a_re_upload_that_says_what_it_did(surface):
    """Issue 28.5: PATCH sets the user's own caption (never the model's texts) through the one writer, and the
    full-text leg of a search finds the new words from the next request; a re-upload of the same bytes with
    a caption sets it too and says `updated` or `unchanged`; another user's id is a 404 and a field the
    user may not edit a 400."""
    client, _ = surface
    h = _as(surface, "bob")
    rec = client.post("/api/images", headers=h, files={"file": ("c.png", _png(31), "image/png")},
                      data={"caption": "an old harbour"}).json()
    img = rec["img_id"]
    for n in range(3):  # other images, so the text leg has something to tell apart
        client.post("/api/images", headers=h, files={"file": (f"o{n}.png", _png(40 + n), "image/png")},
                    data={"caption": f"a field of flowers {n}"})
    patched = client.patch(f"/api/images/{img}", headers=h, json={"caption": "斑马独角兽 zebracorn"})
    assert patched.status_code == 200, patched.text
    assert patched.json()["caption"] == "斑马独角兽 zebracorn" and patched.json()["img_id"] == img
    assert client.get(f"/api/images/{img}", headers=h).json()["caption"] == "斑马独角兽 zebracorn"
    for q in ("zebracorn", "斑马独角兽"):
        found = client.get("/api/search", headers=h, params={"q": q, "k": 4}).json()["results"]
        assert found[0]["img_id"] == img and found[0]["caption"] == "斑马独角兽 zebracorn", (q, found)

    again = client.post("/api/images", headers=h, files={"file": ("c.png", _png(31), "image/png")},
                        data={"caption": "a new harbour"})
    assert again.status_code == 200 and again.json()["img_id"] == img
    assert (again.json()["caption"], again.json()["caption_change"]) == ("a new harbour", "updated")
    same = client.post("/api/images", headers=h, files={"file": ("c.png", _png(31), "image/png")},
                       data={"caption": "a new harbour"})
    assert (same.status_code, same.json()["caption_change"]) == (200, "unchanged")
    bare = client.post("/api/images", headers=h, files={"file": ("c.png", _png(31), "image/png")})
    assert bare.json()["caption"] == "a new harbour" and "caption_change" not in bare.json()

    assert client.patch(f"/api/images/{img}", headers=_as(surface, "alice"), json={"caption": "mine"}).status_code == 404
    assert client.get(f"/api/images/{img}", headers=h).json()["caption"] == "a new harbour"
    for body in ({"description": "a model's text"}, {"caption": "x" * 2001}, {}):
        r = client.patch(f"/api/images/{img}", headers=h, json=body)
        assert r.status_code == 400 and r.json()["error"]["code"], (body, r.text)
