"""Issue 28.8: a degraded answer's log line says what happened and what the answer is instead."""

from __future__ import annotations

import logging


def test_a_degraded_text_at_its_deadline_says_so_in_its_log_line(tiny_models, tmp_path, caplog):
    """The Writer's deadline (timeouts.writer_s) set far below what one enhancement takes: `/api/text`
    answers the original text with degraded=true, and its one log line names the deadline and what was
    answered, not a painting that /api/text never does."""
    from fastapi.testclient import TestClient

    from deployments.assemble import in_process_app
    from deployments.config import IngressSpec, IngressTuning
    from deployments.http.auth import key_store
    from deployments.service.models import LocalModels
    from deployments.settings import ServiceSettings
    from storage.settings import StorageSettings

    settings = ServiceSettings(keys_uri=str(tmp_path / "lancedb"), url_secret_file=str(tmp_path / "url_secret"))
    _, key = key_store(settings).add("dana")
    models = LocalModels(*(tiny_models[r] for r in ("embedder", "writer", "describer", "painter")))
    app = in_process_app(models, ingress=IngressSpec(), settings=settings,
                         storage=StorageSettings(lancedb_uri=str(tmp_path / "lancedb"), blob_root=str(tmp_path / "blobs")),
                         tuning=IngressTuning(timeouts={"writer_s": 0.001}))
    with TestClient(app) as c, caplog.at_level(logging.WARNING, "atelier.service"):
        r = c.post("/api/text", json={"text": "a cat asleep on a red sofa", "flag": "prompt_enhancement"},
                   headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    assert (r.json()["text"], r.json()["degraded"]) == ("a cat asleep on a red sofa", True)
    rid = r.headers["x-request-id"]
    [line] = [rec.getMessage() for rec in caplog.records if rid in rec.getMessage()]
    assert "no answer within the Writer's 0.001 s" in line and "answering with the original text" in line, line
    assert "paint" not in line, line
