"""Idempotency records and stats outlive the service (issue 31.1): a generation retried with the same Idempotency-Key
after a restart is answered from disk -- the same picture, no second image in the gallery, no Painter call --, a
user's /api/stats counts are there after it, and a user's deletion removes their records and stats from every version
of the tables, and their images.

A restart here is a second in-process app over the same data folder: new ledgers, nothing kept in memory."""

from __future__ import annotations

import time

import pytest


def _settings(data):
    from deployments.settings import ServiceSettings

    return ServiceSettings(keys_uri=str(data / "lancedb"), url_secret_file=str(data / "url_secret"))


def _app(tiny_models, data):
    from deployments.assemble import in_process_app
    from deployments.config import IngressSpec
    from deployments.service.models import LocalModels
    from storage.settings import StorageSettings

    settings = _settings(data)
    models = LocalModels(*(tiny_models[r] for r in ("embedder", "writer", "describer", "painter")))
    return in_process_app(models, ingress=IngressSpec(), settings=settings,
                          storage=StorageSettings(lancedb_uri=str(data / "lancedb"), blob_root=str(data / "blobs"))), \
        settings


@pytest.fixture()
def restartable(tiny_models, tmp_path):
    """start() -> a TestClient of a fresh service over the same data folder; the key of user `ola`."""
    from fastapi.testclient import TestClient

    from deployments.http.auth import key_store

    clients = []

    def start():
        app, settings = _app(tiny_models, tmp_path)
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    first = start()
    key = key_store(_settings(tmp_path)).add("ola")[1]
    yield start, first, {"Authorization": f"Bearer {key}"}, tmp_path
    for client in clients:
        client.__exit__(None, None, None)


BODY = {"text": "a lighthouse at dusk", "size": "64x64", "steps": 1, "enhance": False, "seed": 11}


def test_a_retry_after_a_restart_gets_the_first_answer_and_no_second_image(restartable):
    start, first, headers, _ = restartable
    painter = first.app.state.service.ctx.models.models["painter"]
    inline = first.post("/api/generate/image", headers={**headers, "Idempotency-Key": "k-inline"},
                        json={**BODY, "save_to_gallery": False})
    kept = first.post("/api/generate/image", headers={**headers, "Idempotency-Key": "k-kept"},
                      json={**BODY, "save_to_gallery": True})
    assert inline.status_code == kept.status_code == 200, (inline.text, kept.text)
    assert inline.json()["image_url"].startswith("data:image/png;base64,") and kept.json()["img_id"]

    again = start()  # a new service over the same folder: no ledger of the first in memory
    painted = painter.work_done
    replay_inline = again.post("/api/generate/image", headers={**headers, "Idempotency-Key": "k-inline"},
                               json={**BODY, "save_to_gallery": False})
    replay_kept = again.post("/api/generate/image", headers={**headers, "Idempotency-Key": "k-kept"},
                             json={**BODY, "save_to_gallery": True})
    assert replay_inline.json() == inline.json()
    assert replay_kept.json()["img_id"] == kept.json()["img_id"]
    assert again.get(replay_kept.json()["image_url"].replace("http://testserver", "")).status_code == 200
    assert painter.work_done == painted, "a replayed request ran the Painter again"
    items = again.get("/api/images", headers=headers).json()["items"]
    assert [i["img_id"] for i in items] == [kept.json()["img_id"]]
    reused = again.post("/api/generate/image", headers={**headers, "Idempotency-Key": "k-kept"},
                        json={**BODY, "seed": 12})
    assert reused.status_code == 400 and reused.json()["error"]["code"] == "idempotency_conflict"


def test_deleting_a_user_removes_their_records_from_every_version_and_their_images(restartable):
    import lance

    from storage.ledgers import idempotency_prefix

    start, first, headers, data = restartable
    for i in range(3):
        assert first.post("/api/generate/image", headers={**headers, "Idempotency-Key": f"d-{i}"},
                          json={**BODY, "seed": 20 + i, "save_to_gallery": False}).status_code == 200
    blobs = data / "blobs" / idempotency_prefix("ola")
    assert len(list(blobs.rglob("*.png"))) == 3
    time.sleep(2.1)  # the next call writes the stats (every 2 s at most)
    assert first.get("/api/stats", headers=headers).status_code == 200
    stats = data / "lancedb" / "atelier_stats.lance"
    assert lance.dataset(str(stats)).count_rows("user_id = 'ola'") == 1
    assert first.delete("/api/me", headers=headers).status_code in (200, 204)
    for uri in (str(data / "lancedb" / "atelier_idempotency.lance"), str(stats)):
        for version in lance.dataset(uri).versions():
            old = lance.dataset(uri, version=version["version"])
            assert old.count_rows("user_id = 'ola'") == 0, (uri, version)
    assert not list(blobs.rglob("*.png"))


def test_a_users_stats_outlive_a_restart(restartable):
    from storage.ledgers import StatsStore

    start, first, headers, data = restartable
    for q in ("harbour", "海边", "lighthouse"):
        assert first.get("/api/search", params={"q": q}, headers=headers).status_code == 200
    assert first.get("/api/search", params={"q": ""}, headers=headers).status_code == 400
    before = first.get("/api/stats", headers=headers).json()["operations"]
    assert before["GET /api/search"]["count"] == 4 and before["GET /api/search"]["errors"] == 0
    time.sleep(2.1)  # the next call writes what changed (every 2 s at most): every call before it
    assert first.get("/api/stats", headers=headers).status_code == 200
    assert StatsStore(str(data / "lancedb")).get("ola")["GET /api/search"]["count"] == 4
    after = start().get("/api/stats", headers=headers).json()["operations"]
    assert after["GET /api/search"] == before["GET /api/search"]
    assert after["GET /api/stats"]["count"] >= 1
