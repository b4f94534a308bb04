"""Bulk ingestion checks every new photo with the Guard's image classifier, as an upload is checked (issue 30.2):
each row keeps its verdict, flagged by the content policy of the job, never refused (the photos are the user's).

The tiny classifier is made decisive by configuration, as in tests/unit/http/test_content_guard.py: both of its
labels count as `violent`, so every photo scores violent = 1.0; the job's policy flags `violent` from 0.99."""

from __future__ import annotations

import ray

from tests.support.sample_photos import all_rows, jpeg, open_gallery, write_config


def test_an_ingest_job_stores_each_photos_verdict_flagged_by_the_jobs_policy(ray_cluster, tiny_kit, tmp_path):
    from pipelines.ingest import spec_from_config
    from pipelines.jobs import ledger
    from pipelines.run import run_job
    from pipelines.spec import JobSpec

    folder = tmp_path / "camera"
    folder.mkdir()
    for i in range(6):
        (folder / f"IMG_{i}.jpg").write_bytes(jpeg(81_000 + i))
    data = tmp_path / "data"
    spec = spec_from_config(write_config(tmp_path / "config.yaml", tiny_kit, data), "gina", [str(folder)])
    assert spec.ingest.guard is not None and spec.ingest.guard.image_model == str(tiny_kit / "guard_image")
    guard = spec.ingest.guard.model_copy(update={"image_labels": {"normal": "violent", "nsfw": "violent"}})
    spec = spec.model_copy(update={
        "ingest": spec.ingest.model_copy(update={"guard": guard}),
        "safety": {"default": {"action": "allow"}, "categories": {"violent": {"action": "flag", "threshold": 0.99}}}})
    assert ray.get(ledger(spec.storage).open.remote(spec.model_dump(), True))["action"] != "conflict"
    status = run_job(JobSpec.model_validate(spec.model_dump()), console=False)
    assert status["state"] == "succeeded" and status["done"] == 6, status

    rows = all_rows(open_gallery(tiny_kit, data / "lancedb", data / "blobs"), "gina")
    assert len(rows) == 6
    for row in rows:
        safety = row["meta"]["safety"]
        assert safety["model"] == "atelier-guard-image" and safety["scores"]["violent"] == 1.0, safety
        assert safety["flagged"] == ["violent"] and safety["scores"]["sexual"] == 0.0
