"""The ingestion job on the test cluster: the job ledger's heartbeats and attempts, and crash-and-rerun
of the command line (SIGKILL of the driver at about half, then the same command again)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import ray

from tests.support.sample_photos import ROOT, all_rows, job_on_an_unopenable_gallery, jpeg, open_gallery, sha, write_config



def spec(job_id: str, user: str, **ingest):
    from deployments.config import IngestSpec
    from pipelines.spec import JobSpec

    return JobSpec(job_id=job_id, user_id=user, ingest=IngestSpec(**ingest), fingerprint="test").model_dump()


def test_the_ledger_fails_a_silent_driver_and_fences_its_attempt(ray_cluster, tmp_path):
    from pipelines.jobs import ledger

    jobs = ledger({"lancedb_uri": str(tmp_path / "db")})
    job_id = uuid.uuid4().hex
    assert ray.get(jobs.open.remote(spec(job_id, "ledger-user", stale_after_s=1.0)))["action"] == "created"
    assert ray.get(jobs.status.remote(job_id, "someone-else")) is None
    first = ray.get(jobs.begin.remote(job_id))
    assert ray.get(jobs.begin.remote(job_id)) is None  # a live driver holds the job
    assert ray.get(jobs.claim.remote(job_id, first, [("a" * 64, 3), ("b" * 64, 4), ("a" * 64, 9)])) == \
        {"a" * 64: 3, "b" * 64: 4}
    assert ray.get(jobs.claim.remote(job_id, first, [("a" * 64, 9)])) == {"a" * 64: 3}  # a retried task
    counters = {"total": 10, "done": 2, "skipped_duplicates": 1, "failed": 1}
    err = {"name": "x.jpg", "code": "corrupt_image", "message": "bad"}
    assert ray.get(jobs.report.remote(job_id, first, counters, [err])) == "go"
    time.sleep(1.5)  # the driver goes silent
    status = ray.get(jobs.status.remote(job_id, "ledger-user"))
    assert status["state"] == "failed" and "stopped reporting" in status["message"]
    assert (status["done"], status["errors"]) == (2, [err])
    # Running it again is a new attempt; the old driver, should it wake up, is told to stop.
    again = ray.get(jobs.open.remote(spec(job_id, "ledger-user", stale_after_s=1.0)))
    assert again["action"] == "restarted" and again["submission"] == 2
    second = ray.get(jobs.begin.remote(job_id))
    assert second == first + 1
    assert ray.get(jobs.report.remote(job_id, first, counters, [])) == "stop"
    assert ray.get(jobs.cancel.remote(job_id, "ledger-user"))["state"] == "running"
    assert ray.get(jobs.report.remote(job_id, second, counters, [])) == "stop"  # the cancel reaches the driver
    done = ray.get(jobs.finish.remote(job_id, second, "cancelled", counters, []))
    assert done["state"] == "cancelled" and done["finished_at"] >= done["started_at"]


def run_cli(args: list[str], **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "pipelines.ingest", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, **kw)


def test_crash_at_half_then_rerun_holds_exactly_the_distinct_set(ray_cluster, tiny_kit, gcs_address, tmp_path):
    from models.embedder import Embedder, EmbedderConfig
    from pipelines.ingest import spec_from_config
    from pipelines.jobs import ledger
    from storage.intake import ImageIntake

    folder = tmp_path / "camera"
    folder.mkdir()
    photos = {f"IMG_{i:04d}.jpg": jpeg(70_000 + i) for i in range(240)}
    for name, data in photos.items():
        (folder / name).write_bytes(data)
    data_dir = tmp_path / "data"
    config = write_config(tmp_path / "config.yaml", tiny_kit, data_dir, heartbeat_s=0.5, stale_after_s=3,
                          read_batch_size=8, write_batch_size=16)
    args = ["--address", gcs_address, "--config", str(config), "--user", "carol", str(folder)]
    job = spec_from_config(config, "carol", [str(folder)])
    job_id, jobs = job.job_id, ledger(job.storage)

    driver = run_cli(args)
    try:
        deadline = time.monotonic() + 240
        status = None
        while time.monotonic() < deadline:
            status = ray.get(jobs.status.remote(job_id, "carol"))
            if status and status["done"] >= 120 or driver.poll() is not None:
                break
            time.sleep(0.05)
        assert driver.poll() is None, f"the driver ended before the kill: {status}"
        assert status and 120 <= status["done"] < 240, status
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    # The ledger notices the silent driver: the job is failed, not running forever.
    deadline = time.monotonic() + 30
    while (status := ray.get(jobs.status.remote(job_id, "carol")))["state"] == "running":
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    assert status["state"] == "failed" and "stopped reporting" in status["message"]

    rerun = run_cli(args)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out[-2000:]
    final = json.loads(out[out.index("{"):])
    assert final["state"] == "succeeded" and final["total"] == 240 and final["failed"] == 0
    assert final["done"] + final["skipped_duplicates"] == 240 and final["skipped_duplicates"] >= 120

    gallery = open_gallery(tiny_kit, data_dir / "lancedb", data_dir / "blobs")
    rows = all_rows(gallery, "carol")
    hashes = [r["content_hash"] for r in rows]
    assert len(hashes) == len(set(hashes)) == 240  # 0 duplicates
    assert set(hashes) == {sha(d) for d in photos.values()}  # 0 missing
    assert {r["meta"]["name"] for r in rows} == set(photos) and {r["source"] for r in rows} == {"ingest"}

    # Vectors are the ones the interactive path makes: searching by one finds its own image.
    embedder = Embedder(EmbedderConfig(model=str(tiny_kit / "embedder")))
    intake = ImageIntake()
    for name in ("IMG_0000.jpg", "IMG_0123.jpg", "IMG_0239.jpg"):
        vector = embedder.embed_images([intake.decode(photos[name]).model_image])[0]
        best = gallery.search("carol", vector, k=1)[0]
        assert best["content_hash"] == sha(photos[name]) and best["score"] > 0.98, best
    assert np.isfinite(vector).all()


def test_the_gallery_writer_answers_hash_lookups_for_one_user_only(ray_cluster, tmp_path):
    """Ingestion's read tasks ask the writer which hashes a user has; another user's never count."""
    from datetime import datetime, timezone

    from storage.gallery_writer import gallery_writer
    from storage.settings import StorageSettings

    settings = StorageSettings(lancedb_uri=str(tmp_path / "lancedb"), blob_root=str(tmp_path / "blobs"))
    writer = gallery_writer(settings)
    table = ("lookup-test-model", 8)
    rng = np.random.default_rng(7)

    def row(user: str, content: str) -> dict:
        return {"img_id": uuid.uuid4().hex, "user_id": user, "content_hash": sha(content.encode()),
                "image_uri": f"{user}/{content}", "width": 1, "height": 1, "created_at": datetime.now(timezone.utc),
                "source": "ingest", "embed_model": "lookup-test-model", "vector": rng.normal(size=8)}

    try:
        ray.get(writer.upsert.remote(table, [row("ann", "a1"), row("ann", "a2"), row("bob", "b1"), row("bob", "a1")]))
        asked = [sha(c.encode()) for c in ("a1", "a2", "b1", "zz")]
        assert ray.get(writer.existing_hashes.remote(table, "ann", asked)) == {sha(b"a1"), sha(b"a2")}
        assert ray.get(writer.existing_hashes.remote(table, "bob", asked)) == {sha(b"a1"), sha(b"b1")}
        assert ray.get(writer.existing_hashes.remote(table, "' OR 1=1 --", asked)) == set()
    finally:
        ray.kill(writer)


def test_a_gallery_that_cannot_be_opened_fails_the_job_with_its_reason(ray_cluster, tiny_kit, tmp_path):
    """The read tasks no longer wait for the table; a writer that cannot open it still ends the job clearly."""
    from pipelines.jobs import ledger
    from pipelines.run import run_job
    from pipelines.spec import JobSpec

    job, data_dir = job_on_an_unopenable_gallery(tmp_path, tiny_kit, "erin", 4, 90_000,
                                                 read_batch_size=2, write_batch_size=2)
    assert ray.get(ledger(job.storage).open.remote(job.model_dump(), True))["action"] != "conflict"

    status = run_job(JobSpec.model_validate(job.model_dump()), console=False)
    assert status["state"] == "failed", status
    assert "gallery could not be opened" in status["message"] and "another schema" in status["message"], status
    assert status["done"] == 0
    assert not (data_dir / "blobs").exists() or not any(p.is_file() for p in (data_dir / "blobs").rglob("*"))


def test_the_jobs_of_a_user_whose_keys_are_all_revoked_are_cancelled(ray_cluster, tmp_path):
    """Issue 28 C. A job started through the API names the key table; its attempt asks the ledger to cancel it
    once its user has no key left there. Revoking one of two keys (a rotation) leaves it running; revoking
    the last stops the running job at its next heartbeat, and a queued job of that user never begins. An
    operator's job (no key table named) is not the keys' business."""
    from pipelines.attempt import JobAttempt
    from pipelines.jobs import ledger
    from pipelines.spec import JobSpec
    from storage.keys import KeyStore
    from storage.settings import StorageSettings

    keys = KeyStore(str(tmp_path / "keys"))
    keys.add("remy")
    keys.add("remy")
    settings = StorageSettings(lancedb_uri=str(tmp_path / "db"), blob_root=str(tmp_path / "blobs"))
    jobs = ledger(settings.model_dump())

    def job(**extra) -> JobSpec:
        spec = JobSpec(**{**spec_fields(uuid.uuid4().hex, "remy", heartbeat_s=0.2), **extra})
        assert ray.get(jobs.open.remote(spec.model_dump()))["action"] == "created"
        return spec

    running, queued = job(keys_uri=str(tmp_path / "keys")), job(keys_uri=str(tmp_path / "keys"))
    operators = job()
    attempt = JobAttempt(running, settings)
    assert attempt.begin()
    first, second = (k["key_id"] for k in keys.list("remy"))
    keys.revoke("remy", first)
    attempt.cancel_if_revoked()
    attempt.report()
    assert not attempt.stop.is_set()  # the user still has a key
    keys.revoke("remy", second)
    assert attempt.stop.wait(60), "the heartbeat did not stop the job of a user with no key"
    assert attempt.finish("cancelled")["state"] == "cancelled"

    assert not JobAttempt(queued, settings).begin()
    assert ray.get(jobs.status.remote(queued.job_id, "remy"))["state"] == "cancelled"

    theirs = JobAttempt(operators, settings)
    assert theirs.begin()
    theirs.cancel_if_revoked()
    theirs.report()
    assert not theirs.stop.is_set()
    assert theirs.finish("succeeded")["state"] == "succeeded"


def spec_fields(job_id: str, user: str, **ingest) -> dict:
    from deployments.config import IngestSpec

    return {"job_id": job_id, "user_id": user, "ingest": IngestSpec(**ingest), "fingerprint": "test"}


def test_a_bulk_job_checks_its_photos_for_near_duplicates_in_the_gallery_and_among_themselves(ray_cluster, tiny_kit,
                                                                                               tmp_path):
    """Issue 32: a job's photos are compared with the user's gallery and with the job's other photos, as an
    upload is: a resized copy of a stored photo is a same picture, two bursts of it near shots; the pairs stay
    on the rows (GET /api/duplicates groups them) and the job counts the photos stored with one."""
    import yaml

    from pipelines.ingest import spec_from_config
    from pipelines.jobs import ledger
    from pipelines.run import run_job
    from pipelines.spec import JobSpec
    from storage.duplicates import groups
    from tests.support.sample_photos import burst, encoded, scene

    data_dir = tmp_path / "data"
    config = write_config(tmp_path / "config.yaml", tiny_kit, data_dir, read_batch_size=4, write_batch_size=8)
    doc = yaml.safe_load(config.read_text())
    # The tiny random-weight embedder's scale: scene 4's bursts measure 0.91-0.99, other scenes <= 0.55.
    doc["applications"][0]["args"]["storage"]["near_shot_cosine"] = {"default": 0.9}
    config.write_text(yaml.safe_dump(doc))

    def job(name: str, files: dict[str, bytes], on_duplicate: str = "store") -> dict:
        folder = tmp_path / name
        folder.mkdir()
        for file, data in files.items():
            (folder / file).write_bytes(data)
        spec = spec_from_config(config, "nora", [str(folder)], on_duplicate=on_duplicate)
        assert ray.get(ledger(spec.storage).open.remote(spec.model_dump(), True))["action"] != "conflict"
        return run_job(JobSpec.model_validate(spec.model_dump()), console=False)

    first = job("day1", {"beach.jpg": encoded(scene(4), quality=90), "city.jpg": encoded(scene(101), quality=90)})
    assert (first["state"], first["done"], first["near_duplicates"]) == ("succeeded", 2, 0), first
    second = job("day2", {"beach-small.png": encoded(scene(4).resize((160, 120)), "PNG"),
                          "beach-burst1.jpg": encoded(burst(4), quality=90),
                          "beach-burst2.jpg": encoded(burst(4, crop=0.04, light=0.9), quality=88),
                          "forest.jpg": encoded(scene(7), quality=90)})
    assert (second["state"], second["done"], second["near_duplicates"]) == ("succeeded", 4, 3), second

    gallery = open_gallery(tiny_kit, data_dir / "lancedb", data_dir / "blobs")
    rows = {r["img_id"]: r for r in all_rows(gallery, "nora")}
    by_name = {r["meta"]["name"]: i for i, r in rows.items()}
    pairs = gallery.near_pairs("nora")
    kinds = {(rows[a]["meta"]["name"], rows[b]["meta"]["name"]): kind for a, b, kind, _ in pairs}
    assert kinds[("beach-small.png", "beach.jpg")] == "same_picture", kinds
    assert kinds[("beach-burst1.jpg", "beach.jpg")] == "near_shot", kinds
    assert ("beach-burst2.jpg", "beach-burst1.jpg") in kinds or ("beach-burst1.jpg", "beach-burst2.jpg") in kinds
    (group,) = groups(rows, pairs)
    assert {m["img_id"] for m in group["members"]} == {by_name[n] for n in ("beach.jpg", "beach-small.png",
                                                                             "beach-burst1.jpg", "beach-burst2.jpg")}

    # `on_duplicate=skip`: a copy and a burst of stored photos are not kept, counted as skipped duplicates;
    # a photo with none is stored.
    third = job("day3", {"city-copy.png": encoded(scene(101).resize((200, 150)), "PNG"),
                         "beach-burst3.jpg": encoded(burst(4, crop=0.04, light=0.9), quality=80),
                         "field.jpg": encoded(scene(9), quality=90)}, on_duplicate="skip")
    assert (third["state"], third["done"], third["skipped_duplicates"], third["near_duplicates"]) == \
        ("succeeded", 1, 2, 0), third
    names = {r["meta"]["name"] for r in all_rows(gallery, "nora")}
    assert "field.jpg" in names and not names & {"city-copy.png", "beach-burst3.jpg"}, names
