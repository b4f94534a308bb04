"""The Guard model under the content policy over HTTP, in process (issue 30.1, 30.2, 30.4-30.6).

The tiny Guard's scores are random but fixed; the tests make them decisive through configuration, never by
replacing the model: its image classifier counts *both* of its labels as `violent` (so every picture scores
violent = 1.0, and every text about 0.1), and the policy blocks `violent` from 0.99 and allows the rest. So a
generated picture is blocked and never stored, an upload is kept and flagged, and texts pass -- until a test
lowers a threshold, which the service takes from the next request (`tune`, as the ingress's reconfigure does).
"""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

POLICY = {"default": {"action": "allow"}, "categories": {"violent": {"action": "block", "threshold": 0.99}}}
PLANS = {"default": {}, "lenient": {"safety_tolerance": 1.0}}


def _png(colour=(200, 40, 40), side=48) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(out, format="PNG")
    return out.getvalue()


def _app(tiny_models, guard, data, tuning: dict):
    from deployments.assemble import in_process_app
    from deployments.config import IngressSpec, IngressTuning
    from deployments.service.models import LocalModels
    from deployments.settings import ServiceSettings
    from storage.settings import StorageSettings

    settings = ServiceSettings(keys_uri=str(data / "lancedb"), url_secret_file=str(data / "url_secret"))
    models = LocalModels(*(tiny_models[r] for r in ("embedder", "writer", "describer", "painter")), guard=guard)
    app = in_process_app(models, ingress=IngressSpec(), settings=settings,
                         storage=StorageSettings(lancedb_uri=str(data / "lancedb"), blob_root=str(data / "blobs")),
                         tuning=IngressTuning.model_validate(tuning))
    return app, settings


def _keys(settings, *users) -> dict:
    from deployments.http.auth import key_store

    store = key_store(settings)
    return {user: {"Authorization": f"Bearer {store.add(user)[1]}"} for user in users}


@pytest.fixture(scope="module")
def guarded(tiny_models, tiny_kit, tmp_path_factory):
    """(client, headers by user, data folder): the HTTP surface with a tiny Guard and the policy above."""
    from fastapi.testclient import TestClient

    from models import Guard, GuardConfig

    guard = Guard(GuardConfig(model=str(tiny_kit / "guard"), image_model=str(tiny_kit / "guard_image"),
                              image_labels={"normal": "violent", "nsfw": "violent"}, num_threads=1))
    guard.warmup()
    data = tmp_path_factory.mktemp("guard")
    app, settings = _app(tiny_models, guard, data, {"safety": POLICY, "plans": PLANS})
    headers = _keys(settings, "uma", "vic")
    with TestClient(app) as client:
        yield client, headers, data, settings


def _tune(client, **safety):
    from deployments.config import IngressTuning

    client.app.state.service.tune(IngressTuning.model_validate({"safety": {**POLICY, **safety}, "plans": PLANS}))


def _files(folder) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def _count(client, headers) -> int:
    return len(client.get("/api/images", headers=headers, params={"limit": 100}).json()["items"])


def test_a_blocked_picture_is_never_stored_or_returned(guarded):
    client, headers, data, _ = guarded
    painter = client.app.state.service.ctx.models.models["painter"]
    before, painted, blobs = _count(client, headers["uma"]), painter.work_done, _files(data / "blobs")
    body = {"text": "a lighthouse at dusk", "size": "64x64", "steps": 1, "enhance": False, "save_to_gallery": True}
    refused = client.post("/api/generate/image", headers=headers["uma"], json=body)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["categories"]) == ("content_policy", ["violent"]) and "image" in error["message"]
    assert painter.work_done > painted, "the prompt passed, so the Painter ran; its picture is what was blocked"
    assert _count(client, headers["uma"]) == before
    assert _files(data / "blobs") == blobs, "a blocked picture reached the blob store"
    openai = client.post("/v1/images/generations", headers=headers["uma"],
                         json={"prompt": "a lighthouse at dusk", "size": "64x64", "response_format": "b64_json"})
    assert openai.status_code == 400 and openai.json()["error"]["code"] == "content_policy", openai.text


def test_a_plans_tolerance_loosens_the_threshold(guarded, tmp_path):
    from deployments.keys import main as keys_cli

    client, headers, _, settings = guarded
    assert keys_cli(["--uri", settings.keys_uri, "plan", "vic", "lenient"]) == 0
    body = {"text": "a lighthouse at dusk", "size": "64x64", "steps": 1, "enhance": False, "save_to_gallery": False}
    painted = client.post("/api/generate/image", headers=headers["vic"], json=body)
    assert painted.status_code == 200, painted.text
    assert painted.json()["safety"]["scores"]["violent"] == 1.0 and painted.json()["safety"]["flagged"] == []


def test_an_upload_is_kept_with_its_verdict_and_flagged(guarded):
    client, headers, _, _ = guarded
    up = client.post("/api/images", headers=headers["uma"], files={"file": ("red.png", _png(), "image/png")})
    assert up.status_code in (200, 201), up.text
    row = client.get(f"/api/images/{up.json()['img_id']}", headers=headers["uma"]).json()
    safety = row["safety"]
    assert safety["flagged"] == ["violent"] and safety["scores"]["violent"] == 1.0
    assert safety["model"] == "atelier-guard-image" and set(safety["scores"]) >= {"sexual", "violent"}
    # The filters: listing and search leave it out (`unflagged`) or keep only it (`flagged`).
    img_id = up.json()["img_id"]

    def listed(safety):
        return [r["img_id"] for r in client.get("/api/images", headers=headers["uma"],
                                               params={"safety": safety, "limit": 1}).json()["items"]]

    assert img_id in listed("any") and img_id in listed("flagged") and img_id not in listed("unflagged")
    found = client.get("/api/search", headers=headers["uma"], params={"q": "red", "k": 5, "safety": "flagged"})
    assert found.status_code == 200 and [h["img_id"] for h in found.json()["results"]] == [img_id], found.text
    assert found.json()["results"][0]["safety"]["flagged"] == ["violent"]
    unflagged = client.get("/api/search", headers=headers["uma"], params={"q": "red", "k": 5, "safety": "unflagged"})
    assert img_id not in [h["img_id"] for h in unflagged.json()["results"]]
    assert client.get("/api/images", headers=headers["uma"], params={"safety": "odd"}).status_code == 400


def test_the_guard_cuts_an_answer_and_a_stream_with_an_error_event(guarded):
    client, headers, _, _ = guarded
    body = {"messages": [{"role": "user", "content": "describe a quiet harbour"}], "max_tokens": 8, "seed": 3}
    assert client.post("/v1/chat/completions", headers=headers["uma"], json=body).status_code == 200
    _tune(client, categories={"violent": {"action": "block", "threshold": 0.0}})
    try:
        withheld = client.post("/v1/chat/completions", headers=headers["uma"], json=body)
        assert withheld.status_code == 400 and withheld.json()["error"]["categories"] == ["violent"], withheld.text
        with client.stream("POST", "/v1/chat/completions", headers=headers["uma"], json={**body, "stream": True}) as r:
            assert r.status_code == 200
            events = [line[5:].strip() for line in r.iter_lines() if line.startswith("data:")]
        assert "[DONE]" not in events and json.loads(events[-1])["error"]["code"] == "content_policy", events
        enhance = client.post("/api/text", headers=headers["uma"], json={"text": "a kite", "flag": "prompt_enhancement"})
        assert enhance.status_code == 400 and enhance.json()["error"]["field"] == "text", enhance.text
    finally:
        _tune(client)


def test_moderations_with_the_official_client(guarded):
    from openai import OpenAI

    client, headers, _, _ = guarded
    key = headers["uma"]["Authorization"].split()[1]
    oa = OpenAI(base_url="http://testserver/v1", api_key=key, http_client=client, max_retries=0)
    texts = oa.moderations.create(input=["a quiet harbour", "一只猫在窗台上"])
    assert len(texts.results) == 2 and texts.model == "atelier-guard"
    first = texts.results[0]
    assert first.flagged is False and 0.0 < first.category_scores.violence < 0.99
    assert first.category_applied_input_types.violence == ["text"]
    data_uri = "data:image/png;base64," + base64.b64encode(_png()).decode()
    mixed = oa.moderations.create(input=[{"type": "text", "text": "a red square"},
                                         {"type": "image_url", "image_url": {"url": data_uri}}])
    [result] = mixed.results
    assert result.flagged is True and result.categories.violence is True and result.category_scores.violence == 1.0
    assert result.category_applied_input_types.violence == ["image", "text"]
    refused = client.post("/v1/moderations", headers=headers["uma"], json={"input": "x", "model": "gpt-4o"})
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"
    too_long = client.post("/v1/moderations", headers=headers["uma"], json={"input": ["ok", "x" * 8001]})
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "invalid_guard_input", too_long.text
    assert "input[1]" in too_long.json()["error"]["message"]


@pytest.fixture(scope="module")
def down(tiny_models, tmp_path_factory):
    """The HTTP surface with a Guard that cannot answer: its checkpoint folder is gone (it never loaded)."""
    from fastapi.testclient import TestClient

    from models import Guard, GuardConfig

    data = tmp_path_factory.mktemp("guard-down")
    guard = Guard(GuardConfig(model=str(data / "no-such-guard"), image_model=None, num_threads=1))
    app, settings = _app(tiny_models, guard, data, {"safety": POLICY})
    with TestClient(app) as client:
        yield client, _keys(settings, "wes")["wes"]


def test_a_guard_that_is_down_fails_closed_then_open_when_the_policy_says(down):
    from deployments.config import IngressTuning

    client, headers = down
    writer = client.app.state.service.ctx.models.models["writer"]
    before = writer.work_done
    body = {"text": "a kite over the sea", "flag": "prompt_enhancement"}
    closed = client.post("/api/text", headers=headers, json=body)
    assert closed.status_code == 503 and closed.json()["error"]["code"] == "guard_unavailable", closed.text
    assert int(closed.headers["retry-after"]) >= 1 and writer.work_done == before
    assert client.get("/readyz").json()["not_ready"] == ["guard"]
    moderation = client.post("/v1/moderations", headers=headers, json={"input": "hello"})
    assert moderation.status_code == 503, moderation.text

    client.app.state.service.tune(IngressTuning.model_validate({"safety": {**POLICY, "on_guard_down": "open"}}))
    opened = client.post("/api/text", headers=headers, json=body)
    assert opened.status_code == 200 and opened.json()["degraded"] is True, opened.text
    assert opened.headers["x-atelier-safety"] == "degraded" and writer.work_done > before
    assert client.get("/readyz").status_code == 200
    assert client.post("/v1/moderations", headers=headers, json={"input": "hello"}).status_code == 503


def test_a_guard_without_an_image_model_checks_texts_only(tiny_models, tiny_kit, tmp_path):
    """`image_model: null` is a Guard that checks no images, not a Guard that is down: pictures and uploads are
    kept unchecked (no 503), and a moderation with an image is the caller's 400."""
    from fastapi.testclient import TestClient

    from models import Guard, GuardConfig

    guard = Guard(GuardConfig(model=str(tiny_kit / "guard"), image_model=None, num_threads=1))
    guard.warmup()
    app, settings = _app(tiny_models, guard, tmp_path, {"safety": POLICY})
    headers = _keys(settings, "xia")["xia"]
    with TestClient(app) as client:
        body = {"text": "a lighthouse at dusk", "size": "64x64", "steps": 1, "enhance": False, "save_to_gallery": True}
        painted = client.post("/api/generate/image", headers=headers, json=body)
        assert painted.status_code == 200 and painted.json()["safety"] is None, painted.text
        assert client.get(f"/api/images/{painted.json()['img_id']}", headers=headers).json()["safety"] is None
        data_uri = "data:image/png;base64," + base64.b64encode(_png()).decode()
        image = client.post("/v1/moderations", headers=headers,
                            json={"input": [{"type": "image_url", "image_url": {"url": data_uri}}]})
        assert image.status_code == 400 and image.json()["error"]["param"] == "input", image.text
        assert client.post("/v1/moderations", headers=headers, json={"input": "a harbour"}).status_code == 200
