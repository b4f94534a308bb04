"""Fixtures shared by the whole suite: the tiny model kit, built once per test run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Two cores for everything: keep torch from spawning a thread per core in every process.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_kit(tmp_path_factory) -> Path:
    """All four roles' tiny random-weight checkpoints, built from code (no hub)."""
    import torch

    from deployments.kit import ROLES, build

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("kit")
    for role in ROLES:
        build(role, "tiny", out, seed=0)
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """One small real Ray cluster for the whole run; explicit CPUs, no dashboard."""
    import ray

    from deployments.http.proxy import PROXY_ENV

    secrets_dir = tmp_path_factory.mktemp("secrets")
    env = {
        **PROXY_ENV,  # the gate in Serve's HTTP proxy, as every deployment runs it
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "ATELIER_KEYS_URI": str(secrets_dir / "lancedb"),  # the key table; the gallery is elsewhere
        "ATELIER_URL_SECRET_FILE": str(secrets_dir / "url_secret"),
    }
    os.environ.update(env)
    # Logical CPUs, not cores: every replica, actor and task asks for a fraction of one. address="local":
    # a cluster of its own, even when `ray start` (make serve, tests/ops) left a cluster file behind.
    # Metrics: the node's export port is fixed, so tests/ops/test_observability.py's Prometheus can
    # scrape it, and workers report every second instead of every ten.
    metrics_port = _free_port()
    ray.init(address="local", num_cpus=4, num_gpus=0, include_dashboard=False, namespace="atelier",
             runtime_env={"env_vars": env}, log_to_driver=False, _metrics_export_port=metrics_port,
             _system_config={"metrics_report_interval_ms": 1000})
    yield {"secrets": secrets_dir, "env": env, "metrics_port": metrics_port}
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def local_args(kit: Path, data: Path, **overrides):
    """serve_config.local.yaml's args, pointed at a test kit and a test data folder."""
    import yaml

    from deployments.config import AppArgs

    root = Path(__file__).resolve().parents[1]
    spec = yaml.safe_load((root / "serve_config.local.yaml").read_text())["applications"][0]["args"]
    for role in ("embedder", "writer", "describer", "painter"):
        spec[role]["model"]["model"] = str(kit / role)
    spec["storage"] = {"lancedb_uri": str(data / "lancedb"), "blob_root": str(data / "blobs")}
    spec["painter"]["model"]["sizes"] = {"small": "64x64", "medium": "96x96", "large": "128x128"}
    for path, value in overrides.items():
        node = spec
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return AppArgs.model_validate(spec)


class Service:
    """A deployed application and the keys of two users, for tests over real HTTP."""

    def __init__(self, base_url: str, keys: dict[str, str], data: Path):
        self.base_url, self.keys, self.data = base_url, keys, data

    def client(self, user: str | None = "alice", **kw):
        import httpx

        headers = {"Authorization": f"Bearer {self.keys[user]}"} if user else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=120, **kw)


@pytest.fixture(scope="session")
def service(ray_cluster, tiny_kit, tmp_path_factory) -> Service:
    """The local graph (tiny models, real LanceDB and blobs in a temp folder) served over HTTP."""
    import httpx
    from ray import serve

    from deployments.app import build_app
    from deployments.http.auth import key_store

    store = key_store()  # ATELIER_KEYS_URI, as the proxy and the replicas read it
    keys = {user: store.add(user)[1] for user in ("alice", "bob")}
    data = tmp_path_factory.mktemp("data")
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(local_args(tiny_kit, data)), name="atelier", route_prefix="/", blocking=False)
    base = f"http://127.0.0.1:{port}"
    import time

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/readyz", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(1)
    else:
        raise RuntimeError("the local graph did not become ready")
    return Service(base, keys, data)


def serve_log_records(deployment: str, app: str | None = None, request_id: str | None = None,
                      timeout_s: float = 30) -> list[dict]:
    """The JSON records of a deployment's replica logs on this cluster (Serve writes them under the
    session's logs/serve/), optionally one request's; waits up to `timeout_s` for at least one."""
    import json
    import time

    import ray

    folder = Path(ray._private.worker.global_worker.node.get_session_dir_path()) / "logs" / "serve"
    deadline = time.monotonic() + timeout_s
    while True:
        records = []
        for path in folder.glob(f"replica_*{deployment}*.log"):
            for line in path.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if (app is None or record.get("application") == app) and \
                        (request_id is None or record.get("request_id") == request_id):
                    records.append(record)
        if records or time.monotonic() > deadline:
            return records
        time.sleep(0.5)
