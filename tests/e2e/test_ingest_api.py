"""Bulk ingestion over real HTTP: counting, SSE progress, cancel, retries, zips and other users' jobs."""

from __future__ import annotations

import io
import json
import time
import zipfile

from PIL import Image

from tests.support.sample_photos import all_rows, jpeg, open_gallery, sha

TERMINAL = {"succeeded", "failed", "cancelled"}


def post_files(client, files: list[tuple[str, bytes]], **headers):
    return client.post("/api/init/upload", files=[("files", (n, d, "application/octet-stream")) for n, d in files],
                       headers=headers)


def wait_for(client, job_id: str, states=TERMINAL, timeout=240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/api/init/upload/{job_id}").json()
        if status["state"] in states:
            return status
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not reach {states}: {status}")


def read_events(client, job_id: str) -> list[tuple[str, dict]]:
    """The SSE stream as a browser's EventSource sees it: (event, data) until the server ends it."""
    return [(event, data) for event, _, data in read_sse(client, job_id)]


def read_sse(client, job_id: str, headers: dict | None = None) -> list[tuple[str, str | None, dict]]:
    """(event, id, data) of each event of the job's SSE stream until the server ends it."""
    events, event, ident, data = [], "message", None, []
    with client.stream("GET", f"/api/init/upload/{job_id}/events", headers=headers, timeout=240) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("id:"):
                ident = line[3:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif line == "" and data:
                events.append((event, ident, json.loads("\n".join(data))))
                event, ident, data = "message", None, []
    return events


def corrupt_files() -> list[tuple[str, bytes]]:
    """Ten bad files of different kinds, each with its own name."""
    png = io.BytesIO()
    Image.new("RGB", (20, 20)).save(png, "PNG")
    nested = io.BytesIO()
    with zipfile.ZipFile(nested, "w") as z:
        z.writestr("x.jpg", jpeg(9999))
    return ([(f"cut-{i}.jpg", jpeg(5000 + i)[:200 + 50 * i]) for i in range(4)]
            + [("noise-1.jpg", bytes(range(256)) * 4), ("noise-2.jpg", b"\x00" * 700),
               ("empty.jpg", b""), ("notes.txt", "not a photo".encode()),
               ("nested.zip", nested.getvalue()), ("really-png.gif", png.getvalue())])


def test_counting_300_files_with_sse_progress(service, tiny_kit):
    gallery = open_gallery(tiny_kit, service.data / "lancedb", service.data / "blobs")
    unique = [(f"photo-{i:03d}.jpg", jpeg(i)) for i in range(270)]
    duplicates = [(f"copy-of-{n}", d) for n, d in unique[::27][:10]] + [(f"again/{n}", d) for n, d in unique[5:15]]
    bad = corrupt_files()
    files = unique + duplicates + bad
    assert (len(unique), len(duplicates), len(bad), len(files)) == (270, 20, 10, 300)
    before = gallery.count("alice")
    with service.client("alice") as c:
        r = post_files(c, files)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        with_ids = read_sse(c, job_id)
        events = [(event, data) for event, _, data in with_ids]
        status = c.get(f"/api/init/upload/{job_id}").json()
        # Each progress event's id is its place in the job's log; a reconnect with Last-Event-ID resumes
        # after it (the rest of the log, then done again), and an id that is not one is a 400.
        ids = [ident for event, ident, _ in with_ids if event == "progress"]
        assert len(ids) >= 2 and ids == [str(i) for i in range(len(ids))] and with_ids[-1][1] is None, with_ids
        middle = len(ids) // 2
        resumed = read_sse(c, job_id, headers={"Last-Event-ID": str(middle)})
        assert [(e, i) for e, i, _ in resumed] == [("progress", i) for i in ids[middle + 1:]] + [("done", None)]
        assert [d for _, _, d in resumed] == [d for _, _, d in with_ids[middle + 1:]]
        bad_id = c.get(f"/api/init/upload/{job_id}/events", headers={"Last-Event-ID": "latest"})
        assert bad_id.status_code == 400 and bad_id.json()["error"]["code"] == "invalid_header", bad_id.text

    kinds = [e for e, _ in events]
    assert kinds[-1] == "done" and set(kinds[:-1]) == {"progress"} and len(kinds) >= 2
    seen = [(d["done"], d["skipped_duplicates"], d["failed"]) for e, d in events if e == "progress"]
    for earlier, later in zip(seen, seen[1:]):
        assert all(a <= b for a, b in zip(earlier, later)), seen
    assert events[-1][1]["state"] == "succeeded" and sum(seen[-1]) == 300

    assert status["state"] == "succeeded", status
    assert (status["total"], status["done"], status["skipped_duplicates"], status["failed"]) == (300, 270, 20, 10)
    assert sorted(e["name"] for e in status["errors"]) == sorted(n for n, _ in bad)
    assert {e["code"] for e in status["errors"]} >= {"truncated_image", "empty_file", "not_an_allowed_image",
                                                     "type_mismatch"}
    assert status["started_at"] <= status["finished_at"]
    assert gallery.count("alice") - before == 270
    assert gallery.existing_hashes("alice", [sha(d) for _, d in unique]) == {sha(d) for _, d in unique}

    # The same upload again is the same job: nothing new runs, nothing is duplicated.
    with service.client("alice") as c:
        again = post_files(c, files)
        assert again.status_code == 200 and again.json()["job_id"] == job_id
        assert again.json()["done"] == 270
    assert gallery.count("alice") - before == 270


def test_cancel_leaves_a_consistent_table_and_a_rerun_completes_it(service, tiny_kit):
    gallery = open_gallery(tiny_kit, service.data / "lancedb", service.data / "blobs")
    N = 320  # ten commits of the session's write_batch_size (32): the cancel lands while it runs
    files = [(f"c-{i:03d}.jpg", jpeg(20_000 + i)) for i in range(N)]
    before = gallery.count("bob")
    with service.client("bob") as c:
        r = post_files(c, files)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        running = wait_for(c, job_id, states={"running"} | TERMINAL)
        while running["state"] == "running" and running["done"] == 0:
            running = c.get(f"/api/init/upload/{job_id}").json()
            time.sleep(0.05)
        assert running["state"] == "running", f"the job ended before it could be cancelled: {running}"
        r = c.delete(f"/api/init/upload/{job_id}")
        assert r.status_code == 202
        status = wait_for(c, job_id)
    assert status["state"] == "cancelled" and status["done"] < N, status
    rows = all_rows(gallery, "bob")
    ours = [r for r in rows if r["meta"].get("ingest_job") == job_id]
    # Consistent: exactly the rows the job counted, no duplicate, each with both of its blobs.
    assert len(ours) == status["done"] == gallery.count("bob") - before
    assert len({r["content_hash"] for r in ours}) == len(ours)
    from storage.blobs import LocalBlobStore

    blobs = LocalBlobStore(service.data / "blobs")
    assert all(blobs.exists(r["image_uri"]) and blobs.exists(r["display_uri"]) for r in ours)

    # Uploading the same files again restarts the job: what was stored is skipped, the rest lands.
    with service.client("bob") as c:
        r = post_files(c, files)
        assert r.status_code == 202 and r.json()["job_id"] == job_id
        final = wait_for(c, job_id)
    assert final["state"] == "succeeded" and final["failed"] == 0, final
    assert final["skipped_duplicates"] == status["done"] and final["done"] == N - status["done"]
    assert gallery.count("bob") - before == N


def test_zip_upload_bombs_and_other_users(service):
    photos = {f"album/{i}.jpg": jpeg(40_000 + i) for i in range(5)}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in photos.items():
            z.writestr(name, data)
        z.writestr("../escape.jpg", jpeg(40_100))
        z.writestr("__MACOSX/album/._0.jpg", b"resource fork")
    with service.client("alice") as a, service.client("bob") as b:
        r = a.post("/api/init/upload", files={"file": ("album.zip", buf.getvalue(), "application/zip")},
                   headers={"Idempotency-Key": "album-1"})
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        for call in (b.get(f"/api/init/upload/{job_id}"), b.get(f"/api/init/upload/{job_id}/events"),
                     b.delete(f"/api/init/upload/{job_id}"), a.get("/api/init/upload/not-a-job")):
            assert call.status_code == 404 and call.json()["error"]["code"] == "job_not_found"
        assert job_id not in [j["job_id"] for j in b.get("/api/init/upload").json()["items"]]
        status = wait_for(a, job_id)
        assert (status["state"], status["total"], status["done"], status["failed"]) == ("succeeded", 6, 5, 1)
        assert status["errors"][0]["name"] == "../escape.jpg" and status["errors"][0]["code"] == "invalid_filename"
        # The same key with other bytes is a conflict, not a second job.
        other = a.post("/api/init/upload", files={"file": ("x.jpg", jpeg(1), "image/jpeg")},
                       headers={"Idempotency-Key": "album-1"})
        assert other.status_code == 400 and other.json()["error"]["code"] == "idempotency_conflict"

        bomb = io.BytesIO()
        with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("zeros.jpg", b"\0" * (32 << 20))
        r = a.post("/api/init/upload", files={"file": ("bomb.zip", bomb.getvalue(), "application/zip")})
        assert r.status_code == 413 and r.json()["error"]["code"] == "zip_bomb"
        assert a.post("/api/init/upload", data={"x": "1"}).status_code == 400
        assert a.post("/api/init/upload").status_code == 400


def test_route_body_limits_reach_the_middleware(service):
    """Limits set in the ingress constructor apply (they once landed on a pickled copy of the app)."""
    import numpy as np

    noise = np.random.default_rng(3).integers(0, 255, (1000, 1000, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "PNG")
    assert 2 << 20 < len(buf.getvalue()) < 10 << 20
    with service.client("alice") as c:
        r = c.post("/api/images", files={"file": ("noise.png", buf.getvalue(), "image/png")})
        assert r.status_code == 201, r.text


def test_job_times_are_iso_8601_utc_everywhere(service):
    """API.md: timestamps in /api answers are ISO 8601 UTC (the job ledger keeps Unix seconds)."""
    from datetime import datetime, timedelta

    def utc(value: str) -> datetime:
        stamp = datetime.fromisoformat(value)
        assert stamp.utcoffset() == timedelta(0), value
        return stamp

    with service.client("bob") as c:
        r = c.post("/api/init/upload", files=[("files", ("notes.txt", b"not a photo", "text/plain")),
                                              ("files", ("more.txt", b"still not a photo", "text/plain"))])
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        status = wait_for(c, job_id)
        events = read_events(c, job_id)
        listed = [j for j in c.get("/api/init/upload").json()["items"] if j["job_id"] == job_id][0]
    assert (status["state"], status["failed"]) == ("succeeded", 2)
    assert utc(status["started_at"]) <= utc(status["finished_at"])
    assert utc(listed["finished_at"]) == utc(status["finished_at"])
    assert all(utc(data["finished_at"]) for _, data in events if data.get("finished_at"))



def test_a_small_job_answers_at_once_and_reports_every_file(service, tiny_kit):
    """A few files go through the running Embedder (no Ray Data start-up), under the same ledger: 202
    before any embedding, one progress event per stored, skipped or failed file, the same counting."""
    gallery = open_gallery(tiny_kit, service.data / "lancedb", service.data / "blobs")
    files = ([(f"small-{i}.jpg", jpeg(60_000 + i)) for i in range(5)]
             + [("again.jpg", jpeg(60_000)), ("notes.txt", b"not a photo")])
    with service.client("alice") as c:
        r = post_files(c, files)
        assert r.status_code == 202, r.text
        assert (r.json()["state"], r.json()["done"]) == ("queued", 0)
        job_id = r.json()["job_id"]
        events = read_events(c, job_id)
        status = c.get(f"/api/init/upload/{job_id}").json()
        again = post_files(c, files)
    assert (status["state"], status["total"], status["done"], status["skipped_duplicates"], status["failed"]) == (
        "succeeded", 7, 5, 1, 1), status
    assert [e["name"] for e in status["errors"]] == ["notes.txt"]
    handled = [d["done"] + d["skipped_duplicates"] + d["failed"] for e, d in events if e == "progress"]
    assert sorted(set(handled)) == list(range(8)), handled  # every file moved the counters on its own
    assert all(0 <= b - a <= 1 for a, b in zip(handled, handled[1:])), handled
    ours = [row for row in all_rows(gallery, "alice") if row["meta"].get("ingest_job") == job_id]
    assert len(ours) == 5 and {row["source"] for row in ours} == {"ingest"}
    assert again.status_code == 200 and again.json()["job_id"] == job_id


def test_an_open_progress_stream_ends_with_an_error_once_its_key_is_revoked(service, ray_cluster):
    """Issue 28 C. The job is opened in the ledger by hand and no driver runs it, so it stays queued and its
    stream has nothing else to end it: the stream sends the job's first progress event, the key is revoked
    (the keys CLI's table write), and the stream's next and last event is an `error` saying so."""
    import uuid

    import httpx
    import ray

    from deployments.http.auth import key_store
    from pipelines.config import IngestSpec
    from pipelines.spec import JobSpec

    store = key_store()
    _, key = store.add("rhea")
    job_id = uuid.uuid4().hex
    jobs = ray_cluster.ledger()
    ray.get(jobs.open.remote(JobSpec(job_id=job_id, user_id="rhea", ingest=IngestSpec()).model_dump()))
    events, event, data = [], "message", []
    try:
        with httpx.Client(base_url=service.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
            with c.stream("GET", f"/api/init/upload/{job_id}/events") as r:
                assert r.status_code == 200, r.read()
                for line in r.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif line == "" and data:
                        events.append((event, json.loads("\n".join(data))))
                        event, data = "message", []
                        if len(events) == 1:
                            store.revoke("rhea")
            assert c.get(f"/api/init/upload/{job_id}").status_code == 401
    finally:
        ray.get(jobs.cancel.remote(job_id, "rhea"))
    assert [e for e, _ in events] == ["progress", "error"], events
    assert events[0][1]["state"] == "queued"
    assert events[1][1]["error"]["code"] == "key_revoked", events


def test_an_upload_past_the_plans_storage_is_refused_before_anything_is_staged(service):
    """serve_config.local's `trial` plan keeps 50 images: a zip of 51 photos is a 429 `quota_exceeded` naming the
    limit, no job is made, and a zip that fits is taken; that job's photos then count against the plan (the trial
    plan allows two ingestion uploads an hour: these two)."""
    import httpx

    from deployments.http.auth import key_store, plan_store

    plan_store().assign("ines", "trial")
    key = key_store().add("ines")[1]

    def album(n: int, first: int) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for i in range(n):
                z.writestr(f"album/{i}.jpg", jpeg(first + i))
        return buf.getvalue()

    with httpx.Client(base_url=service.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=240) as ines:
        refused = ines.post("/api/init/upload", files={"file": ("big.zip", album(51, 60_000), "application/zip")})
        assert refused.status_code == 429, refused.text
        error = refused.json()["error"]
        assert (error["code"], error["limit"]) == ("quota_exceeded", "stored-images") and int(
            refused.headers["retry-after"]) >= 1
        assert ines.get("/api/init/upload").json()["items"] == []
        taken = ines.post("/api/init/upload", files={"file": ("small.zip", album(3, 61_000), "application/zip")})
        assert taken.status_code == 202, taken.text
        assert wait_for(ines, taken.json()["job_id"])["state"] == "succeeded"
        usage = {x["limit"]: x for x in ines.get("/api/me/usage").json()["limits"]}
        assert (usage["stored-images"]["quota"], usage["stored-images"]["used"]) == (50, 3), usage
        assert usage["stored-bytes"]["quota"] == 1_000_000_000 and usage["stored-bytes"]["used"] > 0, usage


def test_a_job_with_on_duplicate_skip_keeps_no_copy_of_a_stored_photo(service):
    """Issue 32: a job's `on_duplicate` is an upload's: `skip` counts a re-saved copy of a photo the user has as a
    skipped duplicate and stores the rest; a value it does not know is the caller's 400."""
    import httpx

    from deployments.http.auth import key_store
    from tests.support.sample_photos import encoded, scene

    with httpx.Client(base_url=service.base_url, timeout=120,
                      headers={"Authorization": f"Bearer {key_store().add('olga')[1]}"}) as c:
        assert c.post("/api/images", files={"file": ("dune.jpg", encoded(scene(12), quality=90), "image/jpeg")}
                      ).status_code == 201
        files = [("dune-small.png", encoded(scene(12).resize((160, 120)), "PNG")),
                 ("pier.jpg", encoded(scene(13), quality=90))]
        wrong = c.post("/api/init/upload", data={"on_duplicate": "maybe"},
                       files=[("files", (n, d, "application/octet-stream")) for n, d in files])
        assert wrong.status_code == 400 and wrong.json()["error"]["field"] == "on_duplicate", wrong.text
        r = c.post("/api/init/upload", data={"on_duplicate": "skip"},
                   files=[("files", (n, d, "application/octet-stream")) for n, d in files])
        assert r.status_code == 202, r.text
        status = wait_for(c, r.json()["job_id"])
        stored = {x["content_hash"] for x in c.get("/api/images", params={"limit": 100}).json()["items"]}
    assert (status["state"], status["done"], status["skipped_duplicates"], status["near_duplicates"]) == (
        "succeeded", 1, 1, 0), status
    assert sha(files[1][1]) in stored and sha(files[0][1]) not in stored, stored
