"""The service as an operator runs it (issue 13): the suite's cluster is started by the README's command
(`python -m deployments.local up`: `ray start` + `serve deploy`, token auth on); these tests work it
from a "second shell" with only what the README says: Ray's CLI, the dashboard's REST API, `ray job
submit`, the keys and ingest CLIs, Prometheus and live settings rolled out with `serve deploy`. `make stop`
and `make serve` again are test_restart.py's, last."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import _free_port

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent


class Operator:
    """A second shell on the suite's cluster (tests/conftest.py `Cluster`, started with `python -m
    deployments.local up`): Ray's CLI with only `RAY_AUTH_MODE=token`, and the dashboard's REST API."""

    def __init__(self, cluster):
        self.cluster = cluster

    def __getattr__(self, name):
        return getattr(self.cluster, name)

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / args[0]), *args[1:]], cwd=ROOT, env=self.shell, capture_output=True,
                              text=True, timeout=timeout)

    def applications(self) -> dict:
        token = self.token_file.read_text().strip()  # the README's $(cat ~/.ray/auth_token), in its home
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


@pytest.fixture(scope="module")
def operator(ray_cluster):
    return Operator(ray_cluster)


def test_the_start_printed_the_key_and_how_a_second_shell_authenticates(operator):
    assert "export RAY_AUTH_MODE=token" in operator.printed and operator.key() in operator.printed
    # Its home had no Ray token (a fresh machine): the start made one, readable by its owner only,
    # and did not echo it.
    token = operator.token_file.read_text().strip()
    assert token and token not in operator.printed
    assert operator.token_file.stat().st_mode & 0o077 == 0
    r = httpx.get(operator.base + "/api/images", headers={"Authorization": f"Bearer {operator.key()}"}, timeout=60)
    assert r.status_code == 200


def test_ray_tools_work_from_a_second_shell(operator):
    config = operator.cli("serve", "config", f"--address={operator.dashboard}")
    assert config.returncode == 0 and "name: atelier" in config.stdout, config.stderr
    status = operator.cli("serve", "status", f"--address={operator.dashboard}")
    assert status.returncode == 0, status.stderr
    apps = yaml.safe_load(status.stdout)["applications"]
    assert apps["atelier"]["status"] == "RUNNING"
    assert {name: d["status"] for name, d in apps["atelier"]["deployments"].items()} == {
        name: "HEALTHY" for name in ("Embedder", "Writer", "Describer", "Painter", "Guard", "Ingress")}
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
            # Until this route's series is scraped: others (other routes, other nodes) may come first.
            while not any(s["metric"].get("route") == "GET /api/images" for s in series):
                assert time.monotonic() < deadline, ("no GET /api/images in ray_atelier_http_requests_total "
                                                     "from the local cluster", series)
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


def test_live_settings_reconfigure_in_place(operator):
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
            # Past its deadline a search is a 504, or a 503 when no model replica even took it in that time.
            return (r.status_code, r.json()["error"]["code"] if r.status_code >= 400 else None) in \
                {(504, "timeout"), (503, "unavailable")}

        try:
            operator.wait_running(applied)
        except BaseException:  # the suite's service must not keep a 1 ms search for the tests after this one
            operator.cli("serve", "deploy", str(operator.write_config(lambda app: None)), f"--address={operator.dashboard}")
            raise
        assert operator.replica_ids() == replicas  # reconfigured in place
        # The live settings as they were, reconfigured in place again. (An args edit replacing every replica is
        # tests/e2e/ops/test_backfill.py's model switch: one rollout of the whole app shows both.)
        deployed = operator.cli("serve", "deploy", str(operator.write_config(lambda app: None)),
                                f"--address={operator.dashboard}")
        assert deployed.returncode == 0, deployed.stderr
        operator.wait_running(lambda: c.get("/api/search", params={"q": f"harbour {next(asked)}", "k": 1})
                              .status_code == 200)
        assert operator.replica_ids() == replicas
