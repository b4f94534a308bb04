"""`make stop`, then `make serve` on the same data folder (issue 31, point 4), last on the suite's cluster.

- `make stop` (`python -m deployments.local stop`) ends the Ray cluster at its port and nothing else: another
  Ray head started beside it (as `up` starts one) keeps running.
- After `make serve` (`python -m deployments.local up`) with the same config and data, a finished job's status
  and its errors, the job list, an idempotent generation's replay and the user's gallery are answered as
  before. Before issue 31 the job and idempotency ledgers were in memory only: the job answered 404 and the
  retried generation made a second image.

It stops the suite's own cluster, so it runs after every other test on it (tests/conftest.py), the model
switch of test_backfill.py included: the cluster comes back on the config it ran, and stops for good after."""

from __future__ import annotations

import socket
import tempfile
import time

import httpx
import pytest

from tests.conftest import _free_port
from tests.e2e.ops.test_operator import Operator
from tests.support.sample_photos import jpeg

LAST_ON_THE_CLUSTER = 2
USER = "rosa-5e1f0a"


def _finished(c: httpx.Client, job: str) -> dict:
    deadline = time.monotonic() + 180
    while (status := c.get(f"/api/init/upload/{job}").json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, status
        time.sleep(0.3)
    return status


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


def _other_head(operator) -> int:
    """A second Ray head on this machine (token auth, no resources), in a session folder of its own (short:
    Unix socket paths in it are capped at 107 bytes); its GCS port."""
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="atl-stop-", dir="/tmp")
    started = operator.cli("ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=0",
                           "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}")
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    return port


def test_make_stop_then_make_serve_on_the_same_data_answers_jobs_and_replays_as_before(ray_cluster):
    import ray

    from deployments.http.auth import key_store
    from deployments.local import stop_cluster

    files = [("files", (f"trip-{i}.jpg", jpeg(71_000 + i), "image/jpeg")) for i in range(6)]
    files.append(("files", ("broken.jpg", b"not a jpeg", "image/jpeg")))
    key = key_store().add(USER)[1]
    headers = {"Authorization": f"Bearer {key}"}
    body = {"text": "a lighthouse at dusk", "size": "small", "seed": 11}
    with httpx.Client(base_url=ray_cluster.base, headers=headers, timeout=120) as c:
        r = c.post("/api/init/upload", files=files)
        assert r.status_code == 202, r.text
        job = r.json()["job_id"]
        status = _finished(c, job)
        assert status["state"] == "succeeded" and status["done"] == 6 and status["failed"] == 1, status
        errors = c.get(f"/api/init/upload/{job}/errors").json()
        assert errors["total"] == 1 and errors["items"][0]["name"] == "broken.jpg", errors
        generated = c.post("/api/generate/image", json=body, headers={"Idempotency-Key": "restart-1"})
        assert generated.status_code == 200, generated.text
        jobs = c.get("/api/init/upload").json()
        gallery = c.get("/api/images", params={"limit": 100}).json()["items"]
        assert len(gallery) == 7

    operator = Operator(ray_cluster)
    other = _other_head(operator)
    try:
        ray.shutdown()  # this driver is not part of what `make stop` stops
        stopped = ray_cluster.local("stop")
        assert stopped.returncode == 0, stopped.stdout[-2000:] + stopped.stderr[-2000:]
        assert not _listening(ray_cluster.gcs) and not _listening(ray_cluster.dashboard_port)
        with pytest.raises(httpx.TransportError):
            httpx.get(ray_cluster.base + "/readyz", timeout=5)
        # The other head was not this cluster's: it still runs, and `ray status` reaches it.
        assert _listening(other)
        alive = operator.cli("ray", "status", f"--address=127.0.0.1:{other}", timeout=120)
        assert alive.returncode == 0, alive.stdout[-2000:] + alive.stderr[-2000:]
    finally:
        stop_cluster(other, grace_s=5)

    started = ray_cluster.local("up")
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
    with httpx.Client(base_url=ray_cluster.base, headers=headers, timeout=120) as c:
        assert c.get(f"/api/init/upload/{job}").json() == status
        assert c.get(f"/api/init/upload/{job}/errors").json() == errors
        assert c.get("/api/init/upload").json() == jobs
        replay = c.post("/api/generate/image", json=body, headers={"Idempotency-Key": "restart-1"})
        assert replay.status_code == 200, replay.text
        # The first answer again (its link signed afresh), and no second image in the gallery.
        assert {k: v for k, v in replay.json().items() if k != "image_url"} == \
            {k: v for k, v in generated.json().items() if k != "image_url"}
        assert c.get(replay.json()["image_url"]).status_code == 200
        after = c.get("/api/images", params={"limit": 100}).json()["items"]
        assert [i["img_id"] for i in after] == [i["img_id"] for i in gallery]
        # The same upload again is the same job, known and finished: nothing is stored twice.
        again = c.post("/api/init/upload", files=files)
        assert again.status_code == 200 and again.json()["job_id"] == job, again.text
