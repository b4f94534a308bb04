"""`ray job submit --working-dir . -- python -m pipelines.ingest ...` against a real Ray job server:
the suite's cluster (tests/conftest.py), started as the README starts it, with its dashboard's Jobs
API and Ray's token auth on, submitted to from a second shell that has only `RAY_AUTH_MODE=token`."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path


from tests.support.sample_photos import ROOT, jpeg, open_gallery, write_config

BIN = Path(sys.executable).parent


def test_ray_job_submit_runs_the_module_unchanged(ray_cluster, tiny_kit, tmp_path):
    address, env = ray_cluster.dashboard, ray_cluster.shell
    folder = tmp_path / "shoebox"
    folder.mkdir()
    for i in range(30):
        (folder / f"scan-{i:02d}.jpg").write_bytes(jpeg(90_000 + i))
    (folder / "broken.jpg").write_bytes(jpeg(1)[:100])
    data = tmp_path / "data"
    config = write_config(tmp_path / "config.yaml", tiny_kit, data)
    command = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", ".",
               "--submission-id", f"atelier-ingest-test-{secrets.token_hex(4)}", "--",
               "python", "-m", "pipelines.ingest", "--user", "dave", "--config", str(config), str(folder)]
    deadline = time.monotonic() + 120
    while True:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
        logs = done.stdout + done.stderr
        # The dashboard answers before its job agent has registered; then nothing was submitted yet.
        if "No available agent to submit job" not in logs or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert done.returncode == 0, logs[-3000:]
    assert "succeeded" in logs
    status = json.loads(logs[logs.rindex('{\n  "job_id"'):logs.rindex("}") + 1])
    assert (status["state"], status["total"], status["done"], status["failed"]) == ("succeeded", 31, 30, 1)
    assert status["errors"][0]["name"] == "broken.jpg"
    assert open_gallery(tiny_kit, data / "lancedb", data / "blobs").count("dave") == 30
