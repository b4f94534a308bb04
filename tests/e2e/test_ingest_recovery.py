"""Issue 31: a bulk ingest whose driver is lost together with the job ledger (what losing the head node does to
both) is resumed from what the ledger stored: the restarted ledger reads the job back as running, hears nothing
from its driver, and queues a new submission that an ingress replica starts; the job ends `succeeded` with every
file counted once and each photo stored once. Its errors are paged."""

from __future__ import annotations

import io
import time
import zipfile

import httpx
import ray

from tests.support.sample_photos import jpeg

USER = "ines-2b7c1d"


def test_a_job_that_lost_its_driver_and_its_ledger_is_resumed_and_counts_every_file_once(service, ray_cluster):
    from deployments.http.auth import key_store
    from pipelines.submit import submission_id
    from storage.placement import NAMESPACE

    distinct, repeats = 60, 4
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(distinct):
            z.writestr(f"walk/{i:03d}.jpg", jpeg(61_000 + i))
        for i in range(repeats):
            z.writestr(f"walk/again-{i}.jpg", jpeg(61_000 + i))
        z.writestr("walk/" + "x" * 600 + ".jpg", b"not a jpeg")
    key = key_store().add(USER)[1]
    with httpx.Client(base_url=service.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        r = c.post("/api/init/upload", files={"file": ("walk.zip", buf.getvalue(), "application/zip")})
        assert r.status_code == 202, r.text
        job = r.json()["job_id"]
        deadline = time.monotonic() + 120
        while not ((before := c.get(f"/api/init/upload/{job}").json())["state"] == "running" and before["done"]):
            assert before["state"] in ("queued", "running") and time.monotonic() < deadline, before
            time.sleep(0.02)
        # The driver and the ledger go at once, as with the head node: the driver for good, the ledger restarted.
        ray.kill(ray.get_actor(submission_id(job, 1), namespace=NAMESPACE), no_restart=True)
        ray.kill(ray_cluster.ledger(), no_restart=False)
        deadline = time.monotonic() + 240
        while (final := c.get(f"/api/init/upload/{job}")).status_code != 200 or \
                final.json()["state"] in ("queued", "running"):
            assert final.status_code in (200, 503) and time.monotonic() < deadline, final.text
            time.sleep(0.5)
        final = final.json()
        print(f"at the loss: {before}; at the end: {final}")
        assert final["state"] == "succeeded", final
        # Every file counted once: the files the lost attempt stored are skipped as known by the resumed one.
        assert final["total"] == distinct + repeats + 1 and final["failed"] == 1, final
        assert final["done"] + final["skipped_duplicates"] == distinct + repeats, final
        assert final["errors_total"] == 1 and len(final["errors"][0]["name"]) <= 256
        page = c.get(f"/api/init/upload/{job}/errors", params={"offset": 0, "limit": 10}).json()
        assert page == {"items": final["errors"], "total": 1, "next_offset": None}
        ids = [i["img_id"] for i in c.get("/api/images", params={"limit": 100}).json()["items"]]
        assert len(ids) == len(set(ids)) == distinct
    with service.client("bob") as other:
        assert other.get(f"/api/init/upload/{job}/errors").status_code == 404
    key_store().revoke(USER)
