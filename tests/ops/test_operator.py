"""The service as an operator runs it (issue 13): started by the README's command (`ray start` +
`serve deploy`, token auth on), then worked from a "second shell" with only what the README says:
Ray's CLI, the dashboard's REST API, `ray job submit`, the ingest CLI, live settings rolled out with
`serve deploy`, and a stop that leaves other Ray clusters (this suite's own) running."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Operator:
    """A local service started with `python -m deployments.local up` on its own ports and data."""

    def __init__(self, tmp: Path, kit: Path):
        self.tmp, self.kit = tmp, kit
        self.gcs, self.dashboard_port, self.http = _free_port(), _free_port(), _free_port()
        # This suite's own cluster already holds the agent's default port (52365): without a port of
        # its own the head's job agent cannot start, and `ray job submit` finds "No available agent".
        self.agent = _free_port()
        self.stopped = False
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.base = f"http://127.0.0.1:{self.http}"
        self.config = tmp / "serve_config.yaml"
        self.write_config(lambda app: None)
        # What the service's processes get: its own key and secret files (the local start makes the key).
        base_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # not this suite's cluster
        self.env = {**{k: v for k, v in base_env.items() if k != "ATELIER_KEYS_URI"},
                    "ATELIER_URL_SECRET_FILE": str(tmp / "url_secret")}
        # A second shell has only the README's one line.
        self.shell = {**self.env, "RAY_AUTH_MODE": "token"}

    def write_config(self, edit, path: Path | None = None) -> Path:
        config = yaml.safe_load((ROOT / "serve_config.local.yaml").read_text())
        config["http_options"]["port"] = self.http
        app = config["applications"][0]
        for role in ("embedder", "writer", "describer", "painter"):
            app["args"][role]["model"]["model"] = str(self.kit / role)
        app["args"]["storage"].update(lancedb_uri=str(self.tmp / "lancedb"), blob_root=str(self.tmp / "blobs"))
        app["args"]["painter"]["model"]["sizes"] = {"small": "64x64", "medium": "96x96", "large": "128x128"}
        edit(app)
        path = path or self.config
        path.write_text(yaml.safe_dump(config, allow_unicode=True))
        return path

    def local(self, command: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "deployments.local", command, "--config", str(self.config),
                               "--kit", str(self.kit), "--port", str(self.gcs),
                               "--dashboard-port", str(self.dashboard_port), "--agent-port", str(self.agent)],
                              cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=900)

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / args[0]), *args[1:]], cwd=ROOT, env=self.shell, capture_output=True,
                              text=True, timeout=timeout)

    def applications(self) -> dict:
        token = (Path.home() / ".ray" / "auth_token").read_text().strip()
        request = urllib.request.Request(self.dashboard + "/api/serve/applications/",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.loads(r.read())["applications"]

    def replica_ids(self) -> dict[str, set[str]]:
        deployments = self.applications()["atelier"]["deployments"]
        return {name: {r["replica_id"] for r in d["replicas"] if r["state"] == "RUNNING"}
                for name, d in deployments.items()}

    def wait_running(self, done=lambda: True, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            app = self.applications().get("atelier", {})
            if app.get("status") == "RUNNING" and all(
                    d["status"] == "HEALTHY" for d in app.get("deployments", {}).values()) and done():
                return
            time.sleep(1)
        raise TimeoutError(f"the application did not settle: {self.applications().get('atelier', {}).get('status')}")

    def key(self) -> str:
        return (self.tmp / "local_demo_key").read_text().strip()


@pytest.fixture(scope="module")
def operator(tiny_kit, tmp_path_factory):
    op = Operator(tmp_path_factory.mktemp("operator"), tiny_kit)
    started = op.local("up")
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
    assert "export RAY_AUTH_MODE=token" in started.stdout and op.key() in started.stdout
    op.printed = started.stdout
    yield op
    if not op.stopped:
        op.local("stop")


def test_ray_tools_work_from_a_second_shell(operator):
    config = operator.cli("serve", "config", f"--address={operator.dashboard}")
    assert config.returncode == 0 and "name: atelier" in config.stdout, config.stderr
    status = operator.cli("serve", "status", f"--address={operator.dashboard}")
    assert status.returncode == 0, status.stderr
    apps = yaml.safe_load(status.stdout)["applications"]
    assert apps["atelier"]["status"] == "RUNNING"
    assert {name: d["status"] for name, d in apps["atelier"]["deployments"].items()} == {
        name: "HEALTHY" for name in ("Embedder", "Writer", "Describer", "Painter", "Ingress")}
    assert operator.cli("ray", "status", f"--address=127.0.0.1:{operator.gcs}").returncode == 0
    # The dashboard's REST API answers with the token, and only with it.
    assert "atelier" in operator.applications()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(operator.dashboard + "/api/serve/applications/", timeout=30)
    assert refused.value.code == 401
    job = operator.cli("ray", "job", "submit", f"--address={operator.dashboard}", "--",
                       "python", "-c", "print('hello from a job')")
    assert job.returncode == 0 and "hello from a job" in job.stdout, job.stdout[-2000:] + job.stderr[-2000:]


def test_the_printed_keys_command_adds_a_key_the_running_service_takes_at_once(operator):
    line = next(line for line in operator.printed.splitlines() if "-m deployments.keys" in line)
    argv = line.split("#")[0].split()
    assert argv[0] == ".venv/bin/python" and argv[-2:] == ["add", "USER"]
    added = subprocess.run([sys.executable, *argv[1:-1], "erin"], cwd=ROOT, env=operator.shell,
                           capture_output=True, text=True, timeout=120)
    assert added.returncode == 0, added.stderr
    r = httpx.get(operator.base + "/api/images", headers={"Authorization": f"Bearer {added.stdout.strip()}"},
                  timeout=60)
    assert r.status_code == 200 and r.json()["items"] == []
    assert (operator.tmp / "lancedb" / "api_keys.lance").is_dir()  # beside the gallery, as the config names it


def test_the_readme_prometheus_command_scrapes_the_cluster(operator, tmp_path):
    import shutil

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    # The README's command, with a data folder and port of the test's own.
    prom = subprocess.Popen([shutil.which("prometheus"), "--config.file=deployments/observability/prometheus.yml",
                             f"--web.listen-address=127.0.0.1:{port}", f"--storage.tsdb.path={tmp_path}",
                             "--log.level=warn"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=operator.base, headers={"Authorization": f"Bearer {operator.key()}"},
                          timeout=60) as c:
            deadline = time.monotonic() + 120
            series: list = []
            while not series:
                assert time.monotonic() < deadline, "no ray_atelier_http_requests_total from the local cluster"
                assert c.get("/api/images").status_code == 200
                time.sleep(2)
                try:
                    r = httpx.get(url + "/api/v1/query", params={"query": "ray_atelier_http_requests_total"},
                                  timeout=10)
                    series = r.json()["data"]["result"] if r.status_code == 200 else []
                except httpx.HTTPError:
                    pass
        assert any(s["metric"]["route"] == "GET /api/images" for s in series), series
        rules = httpx.get(url + "/api/v1/rules", timeout=10).json()["data"]["groups"]
        assert rules and rules[0]["name"] == "atelier"
    finally:
        prom.terminate()
        prom.wait(timeout=30)


def test_the_readme_ingest_command_ingests_into_the_running_service(operator, tmp_path):
    import numpy as np
    from PIL import Image

    for i in range(3):
        rng = np.random.default_rng(100 + i)
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(tmp_path / f"p{i}.jpg")
    done = subprocess.run([sys.executable, "-m", "pipelines.ingest", "--address", f"127.0.0.1:{operator.gcs}",
                           "--config", str(operator.config), "--user", "demo", str(tmp_path)],
                          cwd=ROOT, env=operator.shell, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    with httpx.Client(base_url=operator.base, headers={"Authorization": f"Bearer {operator.key()}"},
                      timeout=60) as c:
        jobs = c.get("/api/init/upload").json()["items"]
        assert jobs and jobs[0]["state"] == "succeeded" and jobs[0]["done"] == 3
        assert len(c.get("/api/images").json()["items"]) == 3


def test_live_settings_reconfigure_in_place_and_args_replace_replicas(operator):
    auth = {"Authorization": f"Bearer {operator.key()}"}
    with httpx.Client(base_url=operator.base, headers=auth, timeout=120) as c:
        assert c.get("/api/search", params={"q": "harbour", "k": 1}).status_code == 200
        replicas = operator.replica_ids()

        def impatient(app):
            ingress = next(d for d in app["deployments"] if d["name"] == "Ingress")
            ingress["user_config"]["timeouts"]["search_s"] = 0.001

        deployed = operator.cli("serve", "deploy", str(operator.write_config(impatient)),
                                f"--address={operator.dashboard}")
        assert deployed.returncode == 0, deployed.stderr

        asked = iter(range(10**6))

        def applied() -> bool:  # the running replicas now give search 1 ms (a new text: no cache helps)
            r = c.get("/api/search", params={"q": f"harbour {next(asked)}", "k": 1})
            return r.status_code == 504 and r.json()["error"]["code"] == "timeout"

        operator.wait_running(applied)
        assert operator.replica_ids() == replicas  # reconfigured in place

        def larger_cache(app):
            impatient(app)
            app["args"]["storage"]["vector_cache_mb"] = 64

        deployed = operator.cli("serve", "deploy", str(operator.write_config(larger_cache)),
                                f"--address={operator.dashboard}")
        assert deployed.returncode == 0, deployed.stderr
        operator.wait_running(lambda: operator.replica_ids()["Ingress"].isdisjoint(replicas["Ingress"]))
        now = operator.replica_ids()
        for name, ids in replicas.items():
            assert ids.isdisjoint(now[name]), name  # a new code version: every replica replaced


def test_stop_stops_this_cluster_only(operator):
    import ray

    stopped = operator.local("stop")
    operator.stopped = True
    assert stopped.returncode == 0, stopped.stderr
    for port in (operator.gcs, operator.dashboard_port, operator.http):  # nothing of it listens any more
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    if ray.is_initialized():  # this suite's own cluster, started by ray.init, still answers
        assert ray.get(ray.put(1)) == 1
