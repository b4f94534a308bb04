"""Fixtures shared by the whole suite: the tiny model kit, built once per test run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Two cores for everything: keep torch from spawning a thread per core in every process.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite's cluster runs with Ray's token auth, as the README starts it: this process joins it as a
# driver, and Ray reads the mode when it is imported.
os.environ["RAY_AUTH_MODE"] = "token"
# No usage reports from this driver, as from the cluster (`--disable-usage-stats`): with them on, Ray Data
# runs a thread in the driver that polls a Prometheus on localhost:9090 until the interpreter exits.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def tiny_kit(tmp_path_factory) -> Path:
    """All four roles' tiny random-weight checkpoints (the Embedder in its three families), built from code."""
    import torch

    from models.kit import STAND_INS, build

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("kit")
    for role in STAND_INS:
        build(role, "tiny", out, seed=0)
    return out


_GIVEN: set[int] = set()


def _free_port() -> int:
    """A port free now, and not handed out before in this run, between Ray's worker ports
    (10002-19999) and the kernel's ephemeral range: a port the kernel picks for `bind(0)` comes from
    the range outgoing connections take theirs from, so it can be gone before a server binds it (a
    raylet failing "Address already in use" on one did)."""
    import random
    import socket

    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768
    while True:
        port = random.randint(20000, ephemeral - 1)
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port


class Cluster:
    """This run's Ray cluster, started the README's way: `python -m deployments.local up` (`ray start`
    with token auth, a dashboard, `serve deploy` of serve_config.local.yaml pointed at the test kit, a
    temp data folder and free ports). The suite's driver joins it; tests/ops works it from a "second
    shell" with only what the README says, and its last test stops it (`make stop`)."""

    def __init__(self, tmp: Path, kit: Path):
        self.tmp, self.kit = tmp, kit
        self.gcs, self.dashboard_port, self.http = _free_port(), _free_port(), _free_port()
        # Ports of its own: another Ray cluster on this machine (`make serve`) may hold the defaults.
        self.agent, self.metrics_port = _free_port(), _free_port()
        self.stopped = False
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.base = f"http://127.0.0.1:{self.http}"
        self.config = tmp / "serve_config.yaml"
        self.write_config(lambda app: None)
        base_env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "ATELIER_KEYS_URI")}
        # What the service's processes get (the local start adds the rest); workers report metrics
        # every second instead of every ten, for tests/e2e/ops/test_observability.py's Prometheus.
        # A home of its own, with no ~/.ray/auth_token yet: the start must make the token, as on a
        # fresh machine, and nothing here touches the token of a `make serve` on this machine.
        self.home = tmp / "home"
        self.home.mkdir()
        self.token_file = self.home / ".ray" / "auth_token"
        base_env.pop("RAY_AUTH_TOKEN", None)
        base_env.pop("RAY_AUTH_TOKEN_PATH", None)
        # Shorter waits where a test waits on them: a head that never ends is answered 408 after 3 s (10 s in
        # production), and replicas and handles push autoscaling metrics every 2 s (10 s), so a scale to zero
        # is seen within a short look-back window.
        self.env = {**base_env, "HOME": str(self.home), "ATELIER_URL_SECRET_FILE": str(tmp / "url_secret"),
                    "RAY_metrics_report_interval_ms": "1000", "ATELIER_HEADER_TIMEOUT_S": "3",
                    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "2",
                    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "2"}
        # A second shell has only the README's one line.
        self.shell = {**self.env, "RAY_AUTH_MODE": "token"}
        self.printed = ""

    def write_config(self, edit, path: Path | None = None) -> Path:
        import yaml

        root = Path(__file__).resolve().parents[1]
        config = yaml.safe_load((root / "serve_config.local.yaml").read_text())
        config["http_options"]["port"] = self.http
        app = config["applications"][0]
        for role in ("embedder", "writer", "describer", "painter"):
            app["args"][role]["model"]["model"] = str(self.kit / role)
        app["args"]["guard"]["model"].update(model=str(self.kit / "guard"), image_model=str(self.kit / "guard_image"))
        app["args"]["storage"].update(lancedb_uri=str(self.tmp / "lancedb"), blob_root=str(self.tmp / "blobs"))
        app["args"]["painter"]["model"]["sizes"] = {"small": "64x64", "medium": "96x96", "large": "128x128"}
        edit(app)
        path = path or self.config
        path.write_text(yaml.safe_dump(config, allow_unicode=True))
        return path

    def local(self, command: str):
        import subprocess
        import sys

        root = Path(__file__).resolve().parents[1]
        return subprocess.run([sys.executable, "-m", "deployments.local", command, "--config", str(self.config),
                               "--kit", str(self.kit), "--port", str(self.gcs),
                               "--dashboard-port", str(self.dashboard_port), "--agent-port", str(self.agent),
                               "--metrics-export-port", str(self.metrics_port)],
                              cwd=root, env=self.env, capture_output=True, text=True, timeout=900)

    def key(self) -> str:
        return (self.tmp / "local_demo_key").read_text().strip()

    def ledger(self):
        """The service's job ledger (the one of its gallery), as the ingress finds it."""
        from pipelines.jobs import ledger

        return ledger({"lancedb_uri": str((self.tmp / "lancedb").resolve())})


@pytest.fixture(scope="session")
def ray_cluster(tiny_kit, tmp_path_factory) -> Cluster:
    """One small real Ray cluster for the whole run, started as the README starts it, with the
    service deployed; this process joins it as a driver."""
    import ray

    from storage.placement import NAMESPACE

    cluster = Cluster(tmp_path_factory.mktemp("cluster"), tiny_kit)
    started = cluster.local("up")
    if started.returncode != 0:
        cluster.local("stop")
        raise RuntimeError("`python -m deployments.local up` failed:\n" + started.stdout[-3000:] + started.stderr[-3000:])
    cluster.printed = started.stdout
    # The key table and URL secret the cluster reads, for the fixtures' own keys; the token for the driver.
    os.environ.update({"ATELIER_KEYS_URI": str(cluster.tmp / "lancedb"),
                       "ATELIER_URL_SECRET_FILE": str(cluster.tmp / "url_secret"),
                       "RAY_AUTH_TOKEN_PATH": str(cluster.token_file)})
    os.environ.pop("RAY_ADDRESS", None)
    _SESSION_CLUSTER.append(cluster)
    try:
        ray.init(address=f"127.0.0.1:{cluster.gcs}", namespace=NAMESPACE, log_to_driver=False)
        yield cluster
    finally:  # whatever failed, the cluster does not outlive the run
        _stop_session_cluster()


_SESSION_CLUSTER: list[Cluster] = []
_LAST_CLUSTER_TEST = pytest.StashKey[str]()


def _stop_session_cluster() -> None:
    """Stop the session's cluster, once: its processes, and only its, without a graceful `serve shutdown`
    first (nothing is left to drain; `make stop` itself is tests/e2e/ops/test_operator.py's, on a head of its
    own)."""
    import ray

    from deployments.local import stop_cluster

    ray.shutdown()
    while _SESSION_CLUSTER:
        cluster = _SESSION_CLUSTER.pop()
        if not cluster.stopped:
            stop_cluster(cluster.gcs, grace_s=5)
            cluster.stopped = True


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """The session's cluster goes right after the last test that uses it, not at the end of the run: the
    tiers after it (multinode starts three Ray nodes of its own, unit needs none) have both cores."""
    yield
    if nextitem is not None and item.nodeid == item.config.stash.get(_LAST_CLUSTER_TEST, None):
        _stop_session_cluster()


def local_args(kit: Path, data: Path, **overrides):
    """serve_config.local.yaml's args, pointed at a test kit and a test data folder."""
    import yaml

    from deployments.config import AppArgs

    root = Path(__file__).resolve().parents[1]
    spec = yaml.safe_load((root / "serve_config.local.yaml").read_text())["applications"][0]["args"]
    for role in ("embedder", "writer", "describer", "painter"):
        spec[role]["model"]["model"] = str(kit / role)
    spec["guard"]["model"].update(model=str(kit / "guard"), image_model=str(kit / "guard_image"))
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
def service(ray_cluster) -> Service:
    """The service the cluster runs (tiny models, real LanceDB and blobs in a temp folder) over HTTP,
    with keys for two users."""
    from deployments.http.auth import key_store

    store = key_store()  # ATELIER_KEYS_URI: the table the proxy and the replicas read
    keys = {user: store.add(user)[1] for user in ("alice", "bob")}
    return Service(ray_cluster.base, keys, ray_cluster.tmp)


TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "integration", "e2e", "browser", "multinode")


def pytest_collection_modifyitems(config, items):
    """A test's tier is its folder under tests/ (unit, integration, e2e, browser, multinode): its marker is set here
    from the path, never by hand, and a test file outside those folders stops the run."""
    for item in items:
        tier = Path(str(item.path)).resolve().relative_to(TESTS).parts[0]
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: a test lives in one of tests/{{{','.join(TIERS)}}}/, its tier")
        item.add_marker(tier)
    # A module that leaves the session's cluster changed for good says when it runs after every other test on
    # that cluster (`LAST_ON_THE_CLUSTER = n`, in the order of n): a model switch that stays, a restart.
    def last(item) -> int:
        return getattr(getattr(item, "module", None), "LAST_ON_THE_CLUSTER", 0)

    ending = sorted((i for i in items if last(i)), key=last)
    if ending:
        rest = [i for i in items if not last(i)]
        users = [n for n, i in enumerate(rest) if "ray_cluster" in getattr(i, "fixturenames", ())]
        at = users[-1] + 1 if users else len(rest)
        items[:] = rest[:at] + ending + rest[at:]


def pytest_collection_finish(session):
    """Which test is the last to use the session's cluster, in the order the run has settled on."""
    users = [item.nodeid for item in session.items if "ray_cluster" in getattr(item, "fixturenames", ())]
    if users:
        session.config.stash[_LAST_CLUSTER_TEST] = users[-1]


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
