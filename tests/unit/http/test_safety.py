"""The operator's term list over HTTP, in process (issue 30.3): a listed term, Chinese or English, full-width or
in any case, refuses a generation or a prompt enhancement before the Writer or the Painter runs (their work
counters unchanged), with the categories and never the terms; the list is read again when its file changes."""

from __future__ import annotations

import os

import pytest

TERMS = "# the operator's list\n[violence]\n血腥\ngore\n[weapons]\nbomb\n"


@pytest.fixture(scope="module")
def guarded(tiny_models, tmp_path_factory):
    """(client, headers, terms file): the whole HTTP surface with a term list that is re-read on every request."""
    from fastapi.testclient import TestClient

    from deployments.assemble import in_process_app
    from deployments.config import IngressSpec, IngressTuning
    from deployments.http.auth import key_store
    from deployments.service.models import LocalModels
    from deployments.settings import ServiceSettings
    from storage.settings import StorageSettings

    data = tmp_path_factory.mktemp("safety")
    terms = data / "terms.txt"
    terms.write_text(TERMS, encoding="utf-8")
    settings = ServiceSettings(keys_uri=str(data / "lancedb"), url_secret_file=str(data / "url_secret"))
    key = key_store(settings).add("rita")[1]
    models = LocalModels(*(tiny_models[r] for r in ("embedder", "writer", "describer", "painter")))
    app = in_process_app(models, ingress=IngressSpec(), settings=settings,
                         storage=StorageSettings(lancedb_uri=str(data / "lancedb"), blob_root=str(data / "blobs")),
                         tuning=IngressTuning.model_validate({"safety": {"terms_file": str(terms), "reload_s": 0}}))
    with TestClient(app) as client:
        yield client, {"Authorization": f"Bearer {key}"}, terms


def _work(client) -> tuple[int, int]:
    models = client.app.state.service.ctx.models.models
    return models["writer"].work_done, models["painter"].work_done


@pytest.mark.parametrize("route,body,field", [
    ("/api/generate/image", {"text": "一个很血腥的场面", "size": "64x64", "steps": 2}, "text"),
    ("/v1/images/generations", {"prompt": "a ＧｏＲＥ scene at dusk", "size": "64x64"}, "prompt"),
    ("/api/text", {"text": "a BOMB in a harbour", "flag": "prompt_enhancement"}, "text"),
])
def test_a_listed_term_refuses_the_prompt_before_any_model_runs(guarded, route, body, field):
    client, headers, _ = guarded
    before = _work(client)
    refused = client.post(route, headers=headers, json=body)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == "content_policy" and error["field" if route.startswith("/api") else "param"] == field
    assert error["categories"] in (["violence"], ["weapons"]) and error["categories"][0] in error["message"]
    assert not any(term in refused.text.lower() for term in ("血腥", "gore", "bomb"))  # never the list's terms
    assert _work(client) == before, "the Writer or the Painter ran for a refused prompt"


def test_a_clean_prompt_paints_and_a_changed_list_counts_from_the_next_request(guarded):
    client, headers, terms = guarded
    body = {"text": "a red kite over the sea", "size": "64x64", "steps": 2, "enhance": False,
            "save_to_gallery": False}
    assert client.post("/api/generate/image", headers=headers, json=body).status_code == 200
    terms.write_text(TERMS + "[toys]\nkite\n", encoding="utf-8")
    os.utime(terms, ns=(os.stat(terms).st_atime_ns, os.stat(terms).st_mtime_ns + 1_000_000))
    refused = client.post("/api/generate/image", headers=headers, json=body)
    assert refused.status_code == 400 and refused.json()["error"]["categories"] == ["toys"], refused.text
    terms.write_text(TERMS, encoding="utf-8")
    assert client.post("/api/generate/image", headers=headers, json=body).status_code == 200


def test_a_model_answer_with_a_listed_term_is_withheld_and_a_stream_is_cut(guarded):
    """What a model writes is checked before it is sent: the random-weight Writer's answer to a fixed seed is
    first taken as it is; once a word of it is listed, the same request is a 400 `content_policy`, and the
    same answer streamed ends with an error event instead of `[DONE]`."""
    import json

    client, headers, terms = guarded
    body = {"messages": [{"role": "user", "content": "describe a quiet harbour"}], "max_tokens": 12, "seed": 3}
    first = client.post("/v1/chat/completions", headers=headers, json=body)
    assert first.status_code == 200, first.text
    said = first.json()["choices"][0]["message"]["content"]
    words = [w for w in said.split() if len(w) >= 2 and "#" not in w and not w.startswith("[")]
    assert words, f"the Writer said nothing to list: {said!r}"
    try:
        terms.write_text(TERMS + f"[test]\n{words[-1]}\n", encoding="utf-8")
        os.utime(terms, ns=(os.stat(terms).st_atime_ns, os.stat(terms).st_mtime_ns + 1_000_000))
        withheld = client.post("/v1/chat/completions", headers=headers, json=body)
        assert withheld.status_code == 400, withheld.text
        error = withheld.json()["error"]
        assert (error["code"], error["categories"]) == ("content_policy", ["test"]) and words[-1] not in withheld.text
        with client.stream("POST", "/v1/chat/completions", headers=headers, json={**body, "stream": True}) as r:
            assert r.status_code == 200
            events = [line[5:].strip() for line in r.iter_lines() if line.startswith("data:")]
        assert "[DONE]" not in events
        last = json.loads(events[-1])
        assert last["error"]["code"] == "content_policy", events
        sent = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
        assert words[-1].casefold() not in sent.casefold()
    finally:
        terms.write_text(TERMS, encoding="utf-8")
        os.utime(terms, ns=(os.stat(terms).st_atime_ns, os.stat(terms).st_mtime_ns + 2_000_000))
