"""`ray job submit --working-dir . -- python -m pipelines.ingest ...` against a real Ray job server.

The session's test cluster runs without a dashboard (so without the Jobs API); this test starts a
second small head with one (`ray start --head --block`, 2 logical CPUs, its own ports and temp
folder) in its own process group, and removes exactly that group afterwards.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sample_photos import ROOT, jpeg, open_gallery, write_config

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def job_server():
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(PATH=f"{BIN}:{env.get('PATH', '')}", OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0")
    # Token auth on, with this test's own token: as a job server should run, and the same on every
    # machine (unset, Ray turns it on only where a ~/.ray/auth_token happens to exist).
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    temp = tempfile.mkdtemp(prefix="rjs", dir="/tmp")  # short: Ray's socket paths live under it
    dashboard = free_port()
    # Every port its own: the session's cluster (and any other Ray on the machine) already holds the
    # defaults, and a job agent that cannot bind 52365 never registers ("No available agent").
    ports = [f"--{name}={free_port()}" for name in (
        "port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
        "runtime-env-agent-port", "node-manager-port", "object-manager-port", "ray-client-server-port")]
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", *ports, "--num-cpus=2", "--num-gpus=0",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         f"--temp-dir={temp}", "--object-store-memory=200000000", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert head.poll() is None, "ray start --head exited"
            try:
                urllib.request.urlopen(address + "/api/version", timeout=2).close()
                break
            except urllib.error.HTTPError:
                break  # it answers (401 without Ray's auth token): the server is up
            except OSError:
                pass
            assert time.monotonic() < deadline, "the job server did not come up"
            time.sleep(1)
        yield address, env
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):  # only this head's own process group
            try:
                os.killpg(head.pid, sig)
            except ProcessLookupError:
                break
            try:
                head.wait(timeout=40)  # SIGTERM: `ray start --block` stops its processes
            except subprocess.TimeoutExpired:
                continue
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_job_submit_runs_the_module_unchanged(job_server, tiny_kit, tmp_path):
    address, env = job_server
    folder = tmp_path / "shoebox"
    folder.mkdir()
    for i in range(30):
        (folder / f"scan-{i:02d}.jpg").write_bytes(jpeg(90_000 + i))
    (folder / "broken.jpg").write_bytes(jpeg(1)[:100])
    data = tmp_path / "data"
    config = write_config(tmp_path / "config.yaml", tiny_kit, data)
    command = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", ".",
               "--submission-id", "atelier-ingest-test-1", "--",
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
