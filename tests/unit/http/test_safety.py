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
