"""Issue 32, undo an import: `DELETE /api/init/upload/{job_id}/rows` removes exactly what a bulk job stored
(rows, vectors, blobs) and nothing the user stored otherwise; the job says `undone`, and the same upload
again runs it anew."""

from __future__ import annotations

import hashlib
import io
import time
import zipfile
from pathlib import Path

import httpx

from tests.support.sample_photos import jpeg

USER = "uma-4d2e9b"


def _blob_files(service, data: bytes) -> list[Path]:
    """The files of one stored photo in the service's blob folder (its original and display copies)."""
    from storage.blobs import user_prefix

    digest = hashlib.sha256(data).hexdigest()
    folder = service.data / "blobs" / user_prefix(USER) / digest[:2] / digest
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


def _ended(c: httpx.Client, job: str) -> dict:
    deadline = time.monotonic() + 180
    while (status := c.get(f"/api/init/upload/{job}").json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, status
        time.sleep(0.3)
    return status


def test_an_undone_import_removes_exactly_its_photos_and_their_files(service):
    from deployments.http.auth import key_store

    own = [jpeg(83_000 + i) for i in range(20)]
    imported = [jpeg(84_000 + i) for i in range(30)]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i, data in enumerate(imported):
            z.writestr(f"holiday/{i:02d}.jpg", data)
        for i, data in enumerate(own[:5]):  # already in the gallery: skipped by the job, so not the job's
            z.writestr(f"holiday/mine-{i}.jpg", data)
    key = key_store().add(USER)[1]
    with httpx.Client(base_url=service.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
        for i, data in enumerate(own):
            assert c.post("/api/images", files={"file": (f"own-{i}.jpg", data, "image/jpeg")}).status_code == 201
        r = c.post("/api/init/upload", files={"file": ("holiday.zip", buf.getvalue(), "application/zip")})
        assert r.status_code == 202, r.text
        job = r.json()["job_id"]
        # Not while it runs: cancel first, or wait for its end.
        early = c.delete(f"/api/init/upload/{job}/rows")
        if early.status_code != 200:  # (a job this small may be over already)
            assert early.status_code == 409 and early.json()["error"]["code"] == "job_active", early.text
        status = _ended(c, job)
        assert status["state"] == "succeeded" and status["done"] + status["skipped_duplicates"] == 35, status
        assert status["skipped_duplicates"] >= 5, status
        before = {i["img_id"] for i in c.get("/api/images", params={"limit": 100}).json()["items"]}
        assert len(before) == 50
        assert all(_blob_files(service, d) for d in own + imported)
        with service.client("bob") as other:  # another user's job id is no job of theirs
            assert other.delete(f"/api/init/upload/{job}/rows").status_code == 404

        undone = c.delete(f"/api/init/upload/{job}/rows")
        assert undone.status_code == 200, undone.text
        assert undone.json()["removed"] == 30 and undone.json()["status"]["state"] == "undone", undone.json()
        left = c.get("/api/images", params={"limit": 100}).json()["items"]
        assert len(left) == 20 and {i["source"] for i in left} == {"upload"}
        assert {i["img_id"] for i in left} < before
        assert not any(_blob_files(service, d) for d in imported)  # their files are gone from disk
        assert all(_blob_files(service, d) for d in own)
        hits = c.get("/api/search", params={"q": "holiday", "k": 50}).json()["results"]
        assert {h["img_id"] for h in hits} <= {i["img_id"] for i in left}
        assert c.get(f"/api/init/upload/{job}").json()["state"] == "undone"
        again = c.delete(f"/api/init/upload/{job}/rows")  # undoing twice removes nothing more
        assert again.status_code == 200 and again.json()["removed"] == 0

        # The same upload again runs the job anew and stores the 30 again.
        rerun = c.post("/api/init/upload", files={"file": ("holiday.zip", buf.getvalue(), "application/zip")})
        assert rerun.status_code == 202 and rerun.json()["job_id"] == job, rerun.text
        assert _ended(c, job)["state"] == "succeeded"
        assert len(c.get("/api/images", params={"limit": 100}).json()["items"]) == 50
        assert c.delete("/api/init/upload/" + "0" * 32 + "/rows").status_code == 404
    key_store().revoke(USER)
