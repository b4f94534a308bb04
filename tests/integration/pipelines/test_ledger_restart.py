"""Issue 31: the job ledger's records outlive its actor (as they do the head node and the whole cluster: they are
on disk beside the gallery), stay bounded however many files fail with however long names, and go with their user.
A restart is Ray's own: the actor killed, restarted by Ray (`max_restarts=-1`), its records read back."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import ray

from tests.integration.pipelines.test_ingest_job import spec

USER = "lena-4f1e0b"


def restarted(jobs, job_id: str):
    """Kill the ledger's process; Ray starts it again under the same name, which then reads its records back."""
    ray.kill(jobs, no_restart=False)
    deadline = time.monotonic() + 120
    while True:
        try:
            return ray.get(jobs.status.remote(job_id, USER), timeout=30)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            assert time.monotonic() < deadline, "the job ledger did not come back"
            time.sleep(0.5)


def files_holding(root: Path, needle: bytes) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_a_restarted_ledger_knows_every_job_bounds_their_errors_and_forgets_a_deleted_user(ray_cluster, tmp_path):
    from pipelines.jobs import ledger
    from pipelines.job_records import NAME_CHARS, SHOWN_ERRORS

    storage = {"lancedb_uri": str(tmp_path / "db"), "blob_root": str(tmp_path / "blobs")}
    jobs = ledger(storage)
    done, live, lost = uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex
    # A finished job whose 150 files failed, each under a 2,000-character name (a probe's zip had 9,999).
    assert ray.get(jobs.open.remote(spec(done, USER)))["action"] == "created"
    attempt = ray.get(jobs.begin.remote(done))
    errors = [{"name": f"{i:03d}-" + "n" * 2000 + ".jpg", "code": "corrupt_image", "message": "m" * 900}
              for i in range(150)]
    for part in range(3):
        counters = {"total": 150, "done": 0, "skipped_duplicates": 0, "failed": 50 * (part + 1)}
        assert ray.get(jobs.report.remote(done, attempt, counters, errors[50 * part: 50 * (part + 1)])) == "go"
    ended = ray.get(jobs.finish.remote(done, attempt, "succeeded", counters, []))
    assert ended["errors_total"] == 150 and len(ended["errors"]) == SHOWN_ERRORS
    assert max(len(e["name"]) for e in ended["errors"]) <= NAME_CHARS
    events = ray.get(jobs.progress.remote(done, USER, 0))
    # A running job whose driver lives through the restart (this test plays it: it reports after).
    assert ray.get(jobs.open.remote(spec(live, USER, stale_after_s=60)))["action"] == "created"
    running = ray.get(jobs.begin.remote(live))
    assert ray.get(jobs.report.remote(live, running, {"total": 9, "done": 4}, [])) == "go"
    # A running job whose driver is lost with the ledger (what losing the head node does to both): never heard
    # from again, it is queued as a new submission for an ingress replica to start (test_outage.py does that).
    lost_spec = {**spec(lost, USER, stale_after_s=1), "files": [{"name": "a.jpg", "url": "file:///nowhere/a.jpg"}]}
    assert ray.get(jobs.open.remote(lost_spec))["action"] == "created"
    lost_attempt = ray.get(jobs.begin.remote(lost))
    assert ray.get(jobs.report.remote(lost, lost_attempt, {"total": 1}, [])) == "go"

    assert restarted(jobs, done) == ended  # the status, its first errors and their count, as before
    again = ray.get(jobs.progress.remote(done, USER, 0))
    assert again["next"] == events["next"] and again["events"][-1] == events["events"][-1]
    pages, offset = [], 0
    while offset is not None:  # every entry, in order, from the paged read
        page = ray.get(jobs.errors.remote(done, USER, offset, 64))
        assert page["total"] == 150
        pages += page["items"]
        offset = page["next_offset"]
    assert [e["name"][:3] for e in pages] == [f"{i:03d}" for i in range(150)]
    assert all(len(e["name"]) <= NAME_CHARS and len(e["message"]) <= 500 for e in pages)
    assert ray.get(jobs.errors.remote(done, "mallory", 0, 10)) is None  # another user's job does not exist
    # Found again: the live driver's next report is taken, its job still running with its counters.
    assert ray.get(jobs.report.remote(live, running, {"total": 9, "done": 6}, [])) == "go"
    status = ray.get(jobs.status.remote(live, USER))
    assert (status["state"], status["done"]) == ("running", 6)
    time.sleep(1.2)  # past the lost job's stale_after_s since the restart
    taken = ray.get(jobs.take_resumes.remote())
    assert [(s["job_id"], submission) for s, submission in taken] == [(lost, 2)]
    assert ray.get(jobs.take_resumes.remote()) == []  # handed out once
    assert ray.get(jobs.status.remote(lost, USER))["state"] == "queued"
    assert ray.get(jobs.begin.remote(lost)) != lost_attempt  # the resumed driver's attempt; the old one is fenced
    assert ray.get(jobs.report.remote(lost, lost_attempt, {"total": 1}, [])) != "go"
    assert [j["job_id"] for j in ray.get(jobs.list.remote(USER))] == [lost, live, done]

    # DELETE /api/me's part: every record and error entry of the user's gone from every file, every version.
    assert files_holding(tmp_path / "db", USER.encode())  # they were there
    assert ray.get(jobs.forget_user.remote(USER)) == 3
    assert files_holding(tmp_path / "db", USER.encode()) == []
    assert restarted(jobs, done) is None and ray.get(jobs.list.remote(USER)) == []
