"""The object store down (issue 31's fault matrix): the blobs on an S3 endpoint nobody answers. An upload is a 503
with Retry-After and leaves nothing half-written (no row without its files); reading the gallery still answers;
once a store answers again, the same upload is stored. The HTTP surface in this process, the store as configured."""

from __future__ import annotations

import socket


def test_an_object_store_that_does_not_answer_is_a_503_with_retry_after_and_nothing_half_written(
        tiny_models, tmp_path, s3_server, s3_bucket):
    from fastapi.testclient import TestClient

    from deployments.assemble import in_process_app
    from deployments.config import IngressSpec
    from deployments.http.auth import key_store
    from deployments.service.models import LocalModels
    from deployments.settings import ServiceSettings
    from storage.settings import StorageSettings
    from tests.support.sample_photos import jpeg

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    settings = ServiceSettings(keys_uri=str(tmp_path / "lancedb"), url_secret_file=str(tmp_path / "url_secret"))
    models = LocalModels(*(tiny_models[r] for r in ("embedder", "writer", "describer", "painter")))

    def app(endpoint: str):
        storage = StorageSettings(lancedb_uri=str(tmp_path / "lancedb"), blob_backend="s3", s3_bucket=s3_bucket,
                                  s3_endpoint_url=endpoint, s3_access_key_id=s3_server.access_key_id,
                                  s3_secret_access_key=s3_server.secret_access_key, blob_timeout_s=0.5)
        return TestClient(in_process_app(models, ingress=IngressSpec(), settings=settings, storage=storage))

    auth = {"Authorization": f"Bearer {key_store(settings).add('oskar')[1]}"}
    photo = {"file": ("p.jpg", jpeg(4242), "image/jpeg")}
    with app(f"http://127.0.0.1:{dead}") as down:
        r = down.post("/api/images", headers=auth, files=photo)
        assert r.status_code == 503 and r.headers.get("retry-after"), (r.status_code, r.text)
        assert r.json()["error"]["code"] == "blob_store_unavailable"
        listed = down.get("/api/images", headers=auth)
        assert listed.status_code == 200 and listed.json()["items"] == []  # no row without its files
    with app(s3_server.endpoint_url) as up:
        assert up.post("/api/images", headers=auth, files=photo).status_code == 201
        assert len(up.get("/api/images", headers=auth).json()["items"]) == 1
