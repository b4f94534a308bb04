"""The plans' limits over HTTP, in process (issue 29: plans, answers, headers, usage, the openai client).

One service with small plans: a refusal is a 429 in the error shape with Retry-After, every answer of a
limited route carries the IETF RateLimit fields (parsed here by a Structured Fields parser, the draft's
grammar), `/v1` also OpenAI's x-ratelimit fields, and a plan set with the keys CLI counts from the next
request. Shared counters across replicas: tests/integration/test_shared_limits.py.
"""

from __future__ import annotations

import http_sf
import pytest

from http_helpers import png

PLANS = {
    "default": {"requests": {"search": "3/minute", "embeddings": "2/5second", "upload": "100/minute"}},
    "closed": {"requests": {"search": "0/minute", "embeddings": "0/minute"}},
    "wide": {"requests": {"search": "100/minute;1000/day"}},
    "solo": {"concurrent": {"painter": 1, "writer": 1}},
    "metered": {"requests": {"generate": "100/minute"}, "gpu_seconds": {"painter": "5/minute", "writer": "9/hour"}},
    "chatty": {"tokens": "500/hour"},
    "keeper": {"stored_images": 2},
    "crumbs": {"stored_bytes": "100B"},
}


@pytest.fixture(scope="module")
def limited(tiny_models, tmp_path_factory):
    """(client, keys, settings): the whole HTTP surface with the plans above."""
    from fastapi.testclient import TestClient

    from deployments.assemble import in_process_app
    from deployments.config import IngressSpec, IngressTuning
    from deployments.http.auth import key_store
    from deployments.service.models import LocalModels
    from deployments.settings import ServiceSettings
    from storage.settings import StorageSettings

    data = tmp_path_factory.mktemp("limits")
    settings = ServiceSettings(keys_uri=str(data / "lancedb"), url_secret_file=str(data / "url_secret"))
    store = key_store(settings)
    keys = {user: store.add(user)[1] for user in ("erin", "frank", "grace", "heidi", "ivan", "judy", "kim", "lou", "nia", "otto")}
    models = LocalModels(*(tiny_models[r] for r in ("embedder", "writer", "describer", "painter")))
    app = in_process_app(models, ingress=IngressSpec(), settings=settings,
                         storage=StorageSettings(lancedb_uri=str(data / "lancedb"), blob_root=str(data / "blobs")),
                         tuning=IngressTuning.model_validate({"plans": PLANS}))
    with TestClient(app) as client:
        yield client, keys, settings


def _h(limited, user):
    return {"Authorization": f"Bearer {limited[1][user]}"}


def test_a_limit_of_n_admits_exactly_n_then_429_with_when_it_resets(limited):
    client = limited[0]
    answers = [client.get("/api/search", params={"q": "harbour"}, headers=_h(limited, "erin")) for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429], [r.text for r in answers]
    remaining = [http_sf.parse(r.headers["ratelimit"].encode(), tltype="list")[0][1]["r"] for r in answers]
    assert remaining == [2, 1, 0, 0]
    refused = answers[-1]
    error = refused.json()["error"]
    assert error["code"] == "rate_limited" and error["limit"] == "search" and "3 search requests per minute" in \
        error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60 and error["retry_after_s"] == int(refused.headers["retry-after"])
    assert refused.headers.get("x-request-id") and "type" not in error
    # Other routes and other users are not counted against it.
    assert client.get("/api/images", headers=_h(limited, "erin")).status_code == 200
    assert client.get("/api/search", params={"q": "harbour"}, headers=_h(limited, "frank")).status_code == 200


def test_the_ratelimit_fields_parse_by_the_drafts_grammar(limited):
    client = limited[0]
    r = client.post("/api/images", headers=_h(limited, "frank"), files={"file": ("a.png", png(1), "image/png")})
    assert r.status_code == 201, r.text
    [(name, policy)] = http_sf.parse(r.headers["ratelimit-policy"].encode(), tltype="list")
    assert name == "upload" and policy == {"q": 100, "w": 60, "qu": "requests"}
    [(name, state)] = http_sf.parse(r.headers["ratelimit"].encode(), tltype="list")
    assert name == "upload" and state["r"] == 99 and 0 <= state["t"] <= 60
    # A route no plan limits carries none; /v1 routes carry OpenAI's fields as well.
    assert "ratelimit" not in client.get("/api/images", headers=_h(limited, "frank")).headers
    e = client.post("/v1/embeddings", headers=_h(limited, "frank"), json={"input": "a red car"})
    assert e.status_code == 200, e.text
    assert (e.headers["x-ratelimit-limit-requests"], e.headers["x-ratelimit-remaining-requests"]) == ("2", "1")
    assert e.headers["x-ratelimit-reset-requests"].endswith("s")


def test_a_plan_set_with_the_keys_cli_counts_from_the_next_request(limited):
    from deployments.keys import main as keys_cli

    client, _, settings = limited
    h = _h(limited, "grace")
    assert client.get("/api/search", params={"q": "x"}, headers=h).status_code == 200
    assert keys_cli(["--uri", settings.keys_uri, "plan", "grace", "closed"]) == 0
    closed = client.get("/api/search", params={"q": "x"}, headers=h)
    assert closed.status_code == 429 and closed.json()["error"]["code"] == "rate_limited"
    assert keys_cli(["--uri", settings.keys_uri, "plan", "grace", "wide"]) == 0
    wide = client.get("/api/search", params={"q": "x"}, headers=h)
    assert wide.status_code == 200
    names = [name for name, _ in http_sf.parse(wide.headers["ratelimit-policy"].encode(), tltype="list")]
    assert names == ["search-minute", "search-day"]
    usage = client.get("/api/me/usage", headers=h).json()
    assert usage["plan"] == "wide"
    assert {(x["limit"], x["quota"], x["used"]) for x in usage["limits"]} == {("search-minute", 100, 1),
                                                                              ("search-day", 1000, 1)}


def test_the_openai_client_backs_off_on_429_and_succeeds(limited):
    from openai import OpenAI

    client = limited[0]
    statuses = []
    client.event_hooks = {"request": [], "response": [lambda r: statuses.append(r.status_code)]}
    try:
        openai = OpenAI(base_url="http://testserver/v1", api_key=limited[1]["heidi"], http_client=client,
                        max_retries=4)
        for text in ("one", "two", "three", "four"):  # the plan allows 2 per 5 seconds
            assert len(openai.embeddings.create(input=text, model="atelier-embedder").data) == 1
    finally:
        client.event_hooks = {"request": [], "response": []}
    assert statuses.count(429) >= 1 and statuses.count(200) == 4, statuses


def test_a_refusal_under_v1_is_openais_rate_limit_error(limited):
    from deployments.keys import main as keys_cli

    client, _, settings = limited
    assert keys_cli(["--uri", settings.keys_uri, "plan", "ivan", "closed"]) == 0
    refused = client.post("/v1/embeddings", headers=_h(limited, "ivan"), json={"input": "x"})
    assert refused.status_code == 429 and refused.headers["x-ratelimit-remaining-requests"] == "0"
    error = refused.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("rate_limit_error", "rate_limited", None)


def test_calls_at_once_per_role_are_held_to_the_plan(limited):
    """A user whose painter slot is taken (here by the test, in the app's own event loop, as a running
    generation of theirs would) is refused the next generation: 429, which limit, Retry-After; another user
    is not; the slot given back, the same request paints. n above the plan's slots is the caller's mistake."""
    from deployments.keys import main as keys_cli

    client, _, settings = limited
    assert keys_cli(["--uri", settings.keys_uri, "plan", "judy", "solo"]) == 0
    h, body = _h(limited, "judy"), {"prompt": "a red kite", "size": "64x64", "response_format": "b64_json"}
    limits = client.app.state.service.limits

    async def take():
        slot = limits.hold("judy", "painter")
        await slot.__aenter__()
        return slot

    slot = client.portal.call(take)
    try:
        refused = client.post("/v1/images/generations", headers=h, json=body)
        assert refused.status_code == 429, refused.text
        error = refused.json()["error"]
        assert (error["code"], error["type"], error["limit"]) == ("rate_limited", "rate_limit_error", "concurrent-painter")
        assert "1 painter call at once" in error["message"] and int(refused.headers["retry-after"]) >= 1
        usage = client.get("/api/me/usage", headers=h).json()
        assert {(x["limit"], x["quota"], x["used"], x["left"]) for x in usage["limits"]} == {
            ("concurrent-painter", 1, 1, 0), ("concurrent-writer", 1, 0, 1)}
        # Another user's generation is not held by judy's slot; a text of judy's takes the writer, not the painter.
        assert client.post("/v1/images/generations", headers=_h(limited, "erin"), json=body).status_code == 200
    finally:
        client.portal.call(slot.__aexit__, None, None, None)
    assert client.post("/v1/images/generations", headers=h, json=body).status_code == 200
    too_many = client.post("/v1/images/generations", headers=h, json={**body, "n": 2})
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "n", too_many.text
    # Every call given its slot back: none held after the answers.
    usage = client.get("/api/me/usage", headers=h).json()
    assert [x["used"] for x in usage["limits"] if x["limit"].startswith("concurrent-")] == [0, 0]


def test_every_route_class_has_routes_and_every_limited_route_exists(limited):
    from typing import get_args

    from deployments.config import RouteClass
    from deployments.http.limits import ROUTE_CLASSES

    client = limited[0]
    schema = client.get("/openapi.json", headers=_h(limited, "erin")).json()
    served = {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops}
    assert set(ROUTE_CLASSES) <= served
    assert set(ROUTE_CLASSES.values()) == set(get_args(RouteClass))


def test_gpu_seconds_are_charged_after_the_run_and_a_call_that_cannot_fit_is_refused_before_it_starts(limited):
    """A plan's GPU-second budget: each generation is charged what the Painter measured (here in process: its
    thread's compute, one whole device); the answer's RateLimit fields show the budget in `gpu-seconds`; with
    less left than a generation of that size took, the next is refused (429 `quota_exceeded`, OpenAI's
    `insufficient_quota`) before the Painter does any work."""
    from deployments.keys import main as keys_cli

    client, _, settings = limited
    assert keys_cli(["--uri", settings.keys_uri, "plan", "kim", "metered"]) == 0
    h, body = _h(limited, "kim"), {"prompt": "a red kite", "size": "64x64", "response_format": "b64_json"}
    painter = client.app.state.service.ctx.models.models["painter"]
    service_limits = client.app.state.service.limits

    def used():
        rows = {x["limit"]: x for x in client.get("/api/me/usage", headers=h).json()["limits"]}
        return rows["gpu-painter"]

    before = painter.work_done
    first = client.post("/v1/images/generations", headers=h, json=body)
    assert first.status_code == 200, first.text
    policies = dict(http_sf.parse(first.headers["ratelimit-policy"].encode(), tltype="list"))
    assert policies["gpu-painter"] == {"q": 5, "w": 60, "qu": "gpu-seconds"}, policies
    row = used()
    assert row["unit"] == "gpu-seconds" and row["quota"] == 5 and 0 < row["used"] < 5, row
    assert row["used"] + row["left"] == pytest.approx(5, abs=0.002)
    assert painter.work_done > before
    # Spend what is left but a millisecond (as other calls of kim's would): less than a generation of this
    # size took, so the next one is refused before it starts.
    client.portal.call(service_limits.charge, "kim", "painter", row["left"] - 0.001)
    before = painter.work_done
    refused = client.post("/v1/images/generations", headers=h, json=body)
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["type"], error["limit"]) == ("quota_exceeded", "insufficient_quota", "gpu-painter")
    assert "GPU seconds" in error["message"] and 1 <= int(refused.headers["retry-after"]) <= 60
    assert painter.work_done == before, "a refused generation must not reach the Painter"
    # A route of another role is not held by the painter's budget; the writer's has its own window.
    assert client.post("/api/text", headers=h, json={"text": "a red kite", "flag": "description"}).status_code == 200
    writer = {x["limit"]: x for x in client.get("/api/me/usage", headers=h).json()["limits"]}["gpu-writer"]
    assert writer["quota"] == 9 and writer["window_s"] == 3600 and writer["used"] > 0, writer


def test_chat_tokens_are_charged_per_answer_and_a_spent_budget_refuses_the_next_prompt(limited):
    """A plan's chat tokens: an answer's prompt and completion tokens (the usage the answer reports) are charged;
    a streamed answer's when it ends; with fewer left than the next prompt, a 429 `quota_exceeded` before the
    Writer runs. The answers carry the budget in the RateLimit fields, unit `tokens`."""
    import time

    from deployments.keys import main as keys_cli

    client, _, settings = limited
    assert keys_cli(["--uri", settings.keys_uri, "plan", "lou", "chatty"]) == 0
    h = _h(limited, "lou")
    body = {"messages": [{"role": "user", "content": "write a haiku about a harbour"}], "max_tokens": 8, "seed": 1}

    def tokens():
        return {x["limit"]: x for x in client.get("/api/me/usage", headers=h).json()["limits"]}["tokens"]

    answered = client.post("/v1/chat/completions", headers=h, json=body)
    assert answered.status_code == 200, answered.text
    spent = answered.json()["usage"]["total_tokens"]
    assert spent > 0 and tokens()["used"] == spent, (tokens(), answered.json()["usage"])
    policies = dict(http_sf.parse(answered.headers["ratelimit-policy"].encode(), tltype="list"))
    assert policies["tokens"] == {"q": 500, "w": 3600, "qu": "tokens"}, policies
    # Streamed: charged once the stream has ended (the prompt's tokens and the answer's).
    with client.stream("POST", "/v1/chat/completions", headers=h, json={**body, "stream": True}) as streamed:
        assert streamed.status_code == 200
        assert "[DONE]" in "".join(streamed.iter_text())
    deadline = time.monotonic() + 30
    while tokens()["used"] == spent:
        assert time.monotonic() < deadline, "the streamed answer was never charged"
        time.sleep(0.05)
    assert tokens()["used"] > spent
    # Spent but 2 tokens: the next prompt (more than 2 tokens) is refused before the Writer runs.
    service = client.app.state.service
    client.portal.call(service.limits.charge_tokens, "lou", int(tokens()["left"]) - 2)
    writer = service.ctx.models.models["writer"]
    before = writer.work_done
    refused = client.post("/v1/chat/completions", headers=h, json=body)
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["type"], error["limit"]) == ("quota_exceeded", "insufficient_quota", "tokens")
    assert "chat tokens" in error["message"] and int(refused.headers["retry-after"]) >= 1
    assert writer.work_done == before


def test_a_full_gallery_refuses_the_next_image_until_the_user_deletes_one(limited):
    """A plan's stored images: the upload past it is a 429 `quota_exceeded` and nothing is stored; a generation
    to be kept is refused before the Painter runs (one not kept still paints); the same bytes again are the
    stored row, not a new image; once one is deleted there is room again. Stored bytes the same way."""
    from deployments.keys import main as keys_cli

    client, _, settings = limited
    assert keys_cli(["--uri", settings.keys_uri, "plan", "nia", "keeper"]) == 0
    h = _h(limited, "nia")

    def upload(seed: int):
        return client.post("/api/images", headers=h, files={"file": (f"{seed}.png", png(seed), "image/png")})

    first, second = upload(501), upload(502)
    assert (first.status_code, second.status_code) == (201, 201), (first.text, second.text)
    refused = upload(503)
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["limit"]) == ("quota_exceeded", "stored-images") and "delete" in error["message"]
    assert int(refused.headers["retry-after"]) >= 1
    assert len(client.get("/api/images", headers=h).json()["items"]) == 2
    assert upload(501).status_code == 200  # already stored: the same row, no new image
    painter = client.app.state.service.ctx.models.models["painter"]
    before = painter.work_done
    body = {"text": "a kite", "size": "64x64", "steps": 2, "enhance": False}
    kept = client.post("/api/generate/image", headers=h, json={**body, "save_to_gallery": True})
    assert kept.status_code == 429 and kept.json()["error"]["limit"] == "stored-images", kept.text
    assert painter.work_done == before
    assert client.post("/api/generate/image", headers=h, json={**body, "save_to_gallery": False}).status_code == 200
    rows = {x["limit"]: x for x in client.get("/api/me/usage", headers=h).json()["limits"]}
    assert (rows["stored-images"]["quota"], rows["stored-images"]["used"], rows["stored-images"]["left"]) == (2, 2, 0)
    assert client.delete(f"/api/images/{first.json()['img_id']}", headers=h).status_code == 204
    assert upload(503).status_code == 201
    # Bytes: 100 bytes hold no photo; nothing is written for the refused one.
    assert keys_cli(["--uri", settings.keys_uri, "plan", "otto", "crumbs"]) == 0
    tiny = client.post("/api/images", headers=_h(limited, "otto"), files={"file": ("t.png", png(7), "image/png")})
    assert tiny.status_code == 429 and tiny.json()["error"]["limit"] == "stored-bytes", tiny.text
    rows = {x["limit"]: x for x in client.get("/api/me/usage", headers=_h(limited, "otto")).json()["limits"]}
    assert (rows["stored-bytes"]["quota"], rows["stored-bytes"]["used"]) == (100, 0)
