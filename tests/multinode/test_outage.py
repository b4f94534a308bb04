"""Issue 31: the head node lost under load and started again (after tests/multinode/test_multinode.py, on the same
cluster). Every process of the head is killed at once (the GCS, the dashboard, Serve's controller, the service's
ledgers, the bulk ingest's driver) while eight clients search, a bulk ingest of 210 files runs, and a client holds an
idempotent generation; a new head then starts against the same GCS Redis, as a restarted head pod does.

Expected: searches started during the outage are answered 200, or 503 with Retry-After (never a 500); after the
recovery every deployment is healthy, the job ends `succeeded` with every file counted once and each photo stored
once (its driver was lost with the head: the restarted job ledger resumes it), the generation retried with the same
Idempotency-Key answers with the first image (one in the gallery), and /api/stats still has the counts from before.
"""

from __future__ import annotations

import itertools
import threading
import time

import httpx

from tests.multinode.conftest import wait_for
from tests.multinode.test_multinode import Traffic, list_images, trip_zip

DOWN_S = 4  # the head stays down this long before it is started again (the workers keep serving meanwhile)
GENERATION = {"text": "a lighthouse in fog", "size": "small", "steps": 1, "enhance": False, "seed": 31,
              "save_to_gallery": True}


class Retries(threading.Thread):
    """A client retrying one generation (the same Idempotency-Key and body) every second until it is answered 200:
    each answer kept as (seconds from the start, status, Retry-After)."""

    def __init__(self, base: str, auth: dict):
        super().__init__(daemon=True)
        self.base, self.auth = base, auth
        self.answers: list[tuple[float, int | str, str | None]] = []
        self.img_id = None

    def run(self) -> None:
        start = time.monotonic()
        with httpx.Client(base_url=self.base, headers={**self.auth, "Idempotency-Key": "head-loss-1"}, timeout=60,
                          limits=httpx.Limits(max_keepalive_connections=0)) as c:
            while time.monotonic() - start < 280:
                try:
                    r = c.post("/api/generate/image", json=GENERATION)
                    self.answers.append((time.monotonic() - start, r.status_code, r.headers.get("retry-after")))
                    if r.status_code == 200:
                        self.img_id = r.json()["img_id"]
                        return
                except httpx.TransportError as exc:
                    self.answers.append((time.monotonic() - start, type(exc).__name__, None))
                time.sleep(1)


def test_losing_the_head_under_load_loses_no_job_no_idempotent_answer_and_no_stats(multinode):
    store = multinode.key_store()
    _, key = store.add("hana")
    multinode.plan_store().assign("hana", "load")
    auth = {"Authorization": f"Bearer {key}"}
    distinct, repeats = 200, 10
    with httpx.Client(base_url=multinode.base, headers=auth, timeout=120) as c:
        first = c.post("/api/generate/image", headers={"Idempotency-Key": "head-loss-1"}, json=GENERATION)
        assert first.status_code == 200, first.text
        img_id = first.json()["img_id"]
        r = c.post("/api/init/upload", files={"file": ("trip.zip", trip_zip(distinct, repeats), "application/zip")})
        assert r.status_code == 202, r.text
        job = r.json()["job_id"]
        wait_for(lambda: c.get(f"/api/init/upload/{job}").json()["done"] > 0, 300, "the job storing its first photos")
        before = c.get(f"/api/init/upload/{job}").json()
        stats = c.get("/api/stats").json()["operations"]

    counter = itertools.count()
    traffic = Traffic(multinode.base, key, 8,
                      lambda c: c.get("/api/search", params={"q": f"a harbour at night {next(counter)}", "k": 5}))
    retries = Retries(multinode.base, auth)
    try:
        time.sleep(2)
        kill_started = time.monotonic()
        killed_at = multinode.kill_node("head")
        retries.start()  # the client whose first answer was lost retries its generation across the outage
        time.sleep(DOWN_S)
        outage = time.monotonic()
        multinode.restart_head()
        head_back = time.monotonic()
        wait_for(multinode.serve_healthy, 300, "every deployment healthy again (serve status)", every=3)
        recovered = time.monotonic()
        wait_for(lambda: any(r[0] >= recovered and r[2] == 200 for r in traffic.results), 120,
                 "a search answered 200 after the recovery")
    finally:
        traffic.stop()
        retries.join(timeout=300)
    in_flight = traffic.report("head lost", kill_started, killed_at, recovered)
    print(f"head down {outage - killed_at:.1f} s before its restart, back {head_back - killed_at:.1f} s and "
          f"every deployment healthy {recovered - killed_at:.1f} s after the kill; generation retries "
          f"(seconds from the kill, status): {[(round(t, 1), s) for t, s, _ in retries.answers]}")
    during = [r for r in traffic.results if r[0] >= killed_at and r not in in_flight]
    assert during and {r[2] for r in during} <= {200, 503}, traffic.outcomes(killed_at)
    assert all(r[3] for r in during if r[2] == 503), "a 503 without Retry-After"
    assert retries.answers and retries.answers[-1][1] == 200, retries.answers
    assert {s for _, s, _ in retries.answers} <= {200, 503}, retries.answers
    assert all(r for _, s, r in retries.answers if s == 503), "a 503 without Retry-After"
    assert retries.img_id == img_id  # the first answer, never a second image

    with httpx.Client(base_url=multinode.base, headers=auth, timeout=120) as c:
        final = wait_for(lambda: (s := c.get(f"/api/init/upload/{job}")).status_code == 200 and
                         s.json()["state"] not in ("queued", "running") and s.json(), 600, "the job ending")
        print(f"ingest: {before['done']} of {distinct} stored before the loss; final {final}")
        assert final["state"] == "succeeded", final
        assert final["total"] == distinct + repeats and final["failed"] == 0, final
        assert final["done"] + final["skipped_duplicates"] == distinct + repeats, final
        replay = c.post("/api/generate/image", headers={"Idempotency-Key": "head-loss-1"}, json=GENERATION)
        assert replay.status_code == 200 and replay.json()["img_id"] == img_id, replay.text
        stored = list_images(c)
        assert len(stored) == distinct + 1 and img_id in stored  # the trip once, and one generated image
        after = c.get("/api/stats").json()["operations"]
        for op, counts in stats.items():
            assert after[op]["count"] >= counts["count"], (op, counts, after.get(op))
    store.revoke("hana")
