"""A real multi-node Ray cluster on this machine (issue 14): a head and two workers, each its own
`ray start --block` in its own process group (so a test can kill a whole node), with Ray's token auth
on and state shared as on a real cluster: LanceDB, the blobs and the key table on an S3-compatible
server (moto's, as a process), the answer cache on a real `redis-server`.

The worker `gpu` declares two GPUs it does not have (Ray schedules by declared resources; the models
fall back to the CPU where torch sees no CUDA); `cpu` declares none. The service is deployed with
`serve deploy` of a production-shaped config: serve_config.yaml's GPU shares, the tiny kit's models,
small CPU fractions. Tests work it as an operator would, from outside: HTTP, the Ray CLI and the
dashboard's state API (no driver joins this cluster: the suite's driver belongs to the other one).

The GCS is fault tolerant, as the KubeRay manifest runs it (`gcsFaultToleranceOptions`): the head keeps the
cluster's tables in a Redis of its own (`RAY_REDIS_ADDRESS`, a second `redis-server` beside the cache's), so a
head killed whole and started again (`restart_head`) finds every node, actor and application again, and the
workers wait for it (`RAY_gcs_rpc_server_reconnect_timeout_s`) instead of exiting.
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
import yaml

from tests.conftest import _free_port as free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
APP = "atelier"


def wait_for(done, timeout_s: float, what, every: float = 1.0):
    """Polls `done` until it returns something truthy, and returns that; `what` (a text, or a function
    that makes one when the wait fails) names what was awaited."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = done()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what() if callable(what) else what} (waited {timeout_s:.0f} s)")
        time.sleep(every)


class Process:
    """A server process in its own process group, stopped (or killed) as a whole."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path):
        self.log = log
        self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL to the process and every descendant at once (a Ray node's workers are the raylet's
        children, in sessions of their own): a node lost whole, as when its machine goes."""
        import psutil

        try:
            tree = psutil.Process(self.proc.pid).children(recursive=True)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, psutil.NoSuchProcess):
            return
        for child in tree:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(tree, timeout=30)
        self.proc.wait(timeout=60)


class MultiNode:
    BUCKET = "atelier-multinode"

    def __init__(self, tmp: Path, kit: Path, workers: tuple[str, ...] = ("gpu", "cpu"), head_gpus: int = 0):
        self.tmp, self.kit = tmp, kit
        self.workers, self.head_gpus = workers, head_gpus
        # Ray's session folder of its own (short: Unix socket paths in it are capped at 107 bytes): not
        # /tmp/ray, where the suite's cluster keeps the Prometheus discovery file the README points at.
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="atelier-mn-", dir="/tmp"))
        self.ray_tmps = [self.ray_tmp]
        self.procs: list[Process] = []
        self.nodes: dict[str, Process] = {}
        self.pools: dict[str, str] = {}
        self.gcs, self.dashboard_port, self.http = free_port(), free_port(), free_port()
        self.s3_port, self.redis_port, self.gcs_redis_port = free_port(), free_port(), free_port()
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.base = f"http://127.0.0.1:{self.http}"
        self.s3 = f"http://127.0.0.1:{self.s3_port}"
        self.lancedb = f"s3://{self.BUCKET}/lancedb"
        self.token = secrets.token_hex(32)
        self.storage_options = {"aws_endpoint": self.s3, "allow_http": "true", "aws_region": "us-east-1",
                                "aws_access_key_id": "atelier-test", "aws_secret_access_key": "atelier-test-secret"}
        from deployments.http.proxy import PROXY_ENV

        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("RAY_ADDRESS", "ATELIER_", "RAY_AUTH_TOKEN"))}
        self.env = {
            **base, **PROXY_ENV,
            # Ray's token auth, with this cluster's own token on every node and in every CLI call.
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
            "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(ROOT), "PATH": f"{BIN}{os.pathsep}{base.get('PATH', '')}",
            # A lost node is declared dead after ~3 s of missed health checks (Ray's default is ~30 s).
            "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
            # While the head is gone, the workers (raylets, Serve's replicas and proxies) wait for its GCS this
            # long before giving up, and Serve's and the GCS client's calls give up on it within seconds.
            "RAY_gcs_rpc_server_reconnect_timeout_s": "180", "RAY_SERVE_KV_TIMEOUT_S": "5",
            "RAY_gcs_server_request_timeout_seconds": "5",
            # State on S3: credentials and the endpoint from the environment, as in the KubeRay manifest.
            "ATELIER_S3_ACCESS_KEY_ID": "atelier-test", "ATELIER_S3_SECRET_ACCESS_KEY": "atelier-test-secret",
            "ATELIER_LANCEDB_STORAGE_OPTIONS": json.dumps(self.storage_options),
            "ATELIER_KEYS_URI": self.lancedb,
            "ATELIER_URL_SECRET": secrets.token_hex(16),
        }

    # -- servers ---------------------------------------------------------------------------------
    def start(self) -> None:
        self.procs.append(Process([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.s3_port)],
                                  self.env, self.tmp / "moto.log"))
        redis = shutil.which("redis-server")
        assert redis, "redis-server: `make deps` installs it"
        for port, log in ((self.redis_port, "redis.log"), (self.gcs_redis_port, "redis-gcs.log")):
            self.procs.append(Process([redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no"], self.env, self.tmp / log))
        wait_for(lambda: all(self._listening(p) for p in (self.s3_port, self.redis_port, self.gcs_redis_port)), 60,
                 "moto and both redis servers")
        import boto3

        boto3.client("s3", endpoint_url=self.s3, aws_access_key_id="atelier-test",
                     aws_secret_access_key="atelier-test-secret", region_name="us-east-1").create_bucket(Bucket=self.BUCKET)
        self.start_node("head")
        wait_for(self._dashboard_up, 120, "the head's dashboard")
        # One node at a time: two raylets registering at once on one address time out on 2 cores.
        for count, name in enumerate(self.workers, start=2):
            self.start_node(name)
            wait_for(lambda: len(self.alive_nodes()) == count or not self.nodes[name].alive(), 120,
                     f"node {name} alive")
            assert self.nodes[name].alive(), f"`ray start` of node {name} exited: see {self.nodes[name].log}"

    @staticmethod
    def _listening(port: int) -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    def _dashboard_up(self) -> bool:
        try:
            urllib.request.urlopen(self.dashboard + "/api/version", timeout=2).close()
            return True
        except urllib.error.HTTPError:
            return True  # 401 without the token: it is up
        except OSError:
            return False

    def start_node(self, name: str, pool: str | None = None) -> None:
        """Start node `name` of pool `pool` (head, gpu or cpu; default: the name) without waiting for it."""
        pool = self.pools[name] = pool or name
        ports = [f"--{p}={free_port()}" for p in (
            "node-manager-port", "object-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
            "metrics-export-port", "runtime-env-agent-port")]
        common = ["--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats", f"--temp-dir={self.ray_tmp}",
                  "--object-store-memory=100000000", f"--labels=atelier/node={name},atelier/pool={pool}", *ports]
        if name == "head":
            argv = ["ray", "start", "--head", f"--port={self.gcs}", "--num-cpus=1", f"--num-gpus={self.head_gpus}",
                    "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={free_port()}", *common]
        else:
            gpus = 2 if pool == "gpu" else 0
            argv = ["ray", "start", f"--address=127.0.0.1:{self.gcs}", "--num-cpus=1", f"--num-gpus={gpus}", *common]
        env = self.env
        if name == "head":  # GCS fault tolerance: the cluster's tables in Redis, under this cluster's namespace
            env = {**env, "RAY_REDIS_ADDRESS": f"127.0.0.1:{self.gcs_redis_port}",
                   "RAY_external_storage_namespace": f"atelier-{self.token[:12]}"}
        log = self.tmp / f"node-{name}-{sum(1 for p in self.tmp.glob(f'node-{name}-*.log')) + 1}.log"
        self.nodes[name] = Process([str(BIN / argv[0]), *argv[1:]], env, log)

    def restart_head(self) -> None:
        """A new head after the old one was lost: the same GCS port, node address, token and Redis (what a
        restarted head pod keeps), so the workers reconnect and the GCS reloads its tables; a fresh temp folder,
        as a new pod has (in the old one, `ray start` would take the workers' processes, which name the GCS's
        address on this one machine, for a GCS still running there)."""
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="atelier-mn-", dir="/tmp"))
        self.ray_tmps.append(self.ray_tmp)
        self.start_node("head")
        wait_for(self._dashboard_up, 180, "the restarted head's dashboard")
        wait_for(lambda: sorted(self.alive_nodes().values()).count("head") == 1, 180, "one head alive")

    def replace_node(self, lost: str) -> str:
        """What KubeRay does for a lost worker pod: a new node of the same group (pool), under a new name
        (`gpu-2`, `gpu-3`...), joins the cluster. Returns its name once it is alive."""
        pool = self.pools[lost]
        name = f"{pool}-{sum(1 for p in self.pools.values() if p == pool) + 1}"
        self.start_node(name, pool)
        wait_for(lambda: name in self.alive_nodes().values() or not self.nodes[name].alive(), 120,
                 f"node {name} alive")
        assert self.nodes[name].alive(), f"`ray start` of node {name} exited: see {self.nodes[name].log}"
        return name

    def kill_node(self, *names: str) -> float:
        """Lose nodes whole and at once (SIGKILL to every process of each); the time they were gone."""
        import concurrent.futures as cf

        with cf.ThreadPoolExecutor(len(names)) as pool:
            list(pool.map(lambda n: self.nodes[n].kill(), names))
        return time.monotonic()

    def node_of(self, actor: dict) -> str:
        return self.alive_nodes().get(actor["node_id"], "?")

    def stop(self) -> None:
        import concurrent.futures as cf

        # The nodes go together and at once, every process of each (a graceful `ray stop` of a node
        # takes ~30 s here, and nothing of this throwaway cluster needs it).
        with cf.ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda node: node.kill(), self.nodes.values()))
        for proc in self.procs:
            proc.kill()
        for folder in self.ray_tmps:
            shutil.rmtree(folder, ignore_errors=True)

    # -- the operator's view ---------------------------------------------------------------------
    def api(self, path: str):
        request = urllib.request.Request(self.dashboard + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.loads(r.read())

    def state(self, kind: str, **filters) -> list[dict]:
        """Ray's state API through the dashboard (`ray list KIND`), filtered by equality."""
        query = "&".join(f"filter_keys={k}&filter_predicates=%3D&filter_values={v}" for k, v in filters.items())
        data = self.api(f"/api/v0/{kind}?detail=1&limit=10000&{query}")
        return data["data"]["result"]["result"]

    def alive_nodes(self) -> dict[str, str]:
        """node id -> our node name, of the nodes alive."""
        try:
            nodes = self.state("nodes", state="ALIVE")
        except OSError:
            return {}
        return {n["node_id"]: n["labels"].get("atelier/node", "?") for n in nodes}

    def replicas(self, deployment: str) -> list[dict]:
        """The ALIVE replica actors of one deployment, with the name of the node each runs on."""
        names = self.alive_nodes()
        actors = self.state("actors", class_name=f"ServeReplica:{APP}:{deployment}", state="ALIVE")
        return [{**a, "node": names.get(a["node_id"], "?")} for a in actors]

    def cli(self, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=ROOT, env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def serve_healthy(self) -> bool:
        """`serve status` as an operator runs it: the application RUNNING and every deployment HEALTHY."""
        out = self.cli("serve", "status", f"--address={self.dashboard}", timeout=60)
        app = (yaml.safe_load(out.stdout) or {}).get("applications", {}).get(APP, {}) if out.returncode == 0 else {}
        deployments = app.get("deployments", {})
        return app.get("status") == "RUNNING" and bool(deployments) and \
            all(d.get("status") == "HEALTHY" for d in deployments.values())

    def application(self) -> dict:
        return self.api("/api/serve/applications/")["applications"].get(APP, {})

    def deploy(self, config: Path) -> None:
        done = self.cli("serve", "deploy", str(config), f"--address={self.dashboard}")
        assert done.returncode == 0, done.stdout + done.stderr
        wait_for(lambda: self.application().get("status") == "RUNNING", 600, "the application RUNNING", every=2)

    def write_config(self, path: Path, edit=lambda app: None) -> Path:
        """serve_config.yaml's plan (GPU shares, the deployments section) with the tiny kit, small CPU
        fractions, state on S3 and Redis, two ingress replicas."""
        config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
        config["http_options"].update(host="127.0.0.1", port=self.http)
        app = config["applications"][0]
        args = app["args"]
        args["environment"] = "local"
        args["guard"]["model"].update(image_model=str(self.kit / "guard_image"))
        for role in ("embedder", "writer", "describer", "painter", "guard"):
            args[role]["model"]["model"] = str(self.kit / role)
            spec = args[role]["deployment"]
            spec["ray_actor_options"]["num_cpus"] = 0.05
            spec["autoscaling"] = {"min_replicas": 1, "max_replicas": 1}
            spec["max_queued_requests"] = max(spec["max_queued_requests"], 8)
        args["painter"]["model"]["sizes"] = {"small": "64x64", "medium": "96x96", "large": "128x128"}
        ingress = args["ingress"]["deployment"]
        ingress.update(num_replicas=2, autoscaling=None, max_ongoing_requests=64, max_queued_requests=256)
        ingress["ray_actor_options"].update(num_cpus=0.05, memory=None)  # its label_selector stays
        args["ingress"]["redis_url"] = f"redis://127.0.0.1:{self.redis_port}/0"
        args["storage"] = {"lancedb_uri": self.lancedb, "blob_backend": "s3", "s3_bucket": self.BUCKET,
                           "s3_prefix": "blobs", "s3_endpoint_url": self.s3, "vector_cache_mb": 16,
                           "writer_label_selector": args["storage"]["writer_label_selector"]}
        args["ingest"].update(max_cpus=0.4, max_gpus=0.2, read_tasks=2, read_num_cpus=0.05, embed_actors=2,
                              embed_num_cpus=0.05, embed_num_gpus=0.05, batch_size=8, write_batch_size=16,
                              display_max_side=128, heartbeat_s=1.0, stale_after_s=10)
        # Deadlines a busy two-core box cannot reach (three nodes, moto, a bulk job): these tests look for
        # 500s and hangs (the clients give up at 60 s), and a search slowed past 15 s by the box alone is a
        # 504 they would read as a fault (one did, under the whole suite).
        tuning = next(d for d in app["deployments"] if d["name"] == "Ingress")["user_config"]
        tuning["timeouts"].update(default_s=45, search_s=45, writer_s=45)
        # A plan small enough to spend in a test (test_a_plans_limit_holds_across_both_ingress_replicas).
        tuning["plans"]["tiny"] = {"requests": {"search": "5/minute"}, "gpu_seconds": {"writer": "600/day"}}
        # No limits, for the clients that load the cluster through a node's loss (what they test is the loss).
        tuning["plans"]["load"] = {}
        edit(app)
        path.write_text(yaml.safe_dump(config, allow_unicode=True))
        return path

    def key_store(self):
        from storage.keys import KeyStore

        return KeyStore(self.lancedb, storage_options=self.storage_options)

    def plan_store(self):
        from storage.keys import PlanStore

        return PlanStore(self.lancedb, storage_options=self.storage_options)


# Package-scoped: one cluster for test_multinode.py and then test_outage.py (which loses its head last); it goes
# as soon as their tests are done, not at the end of the whole run.
@pytest.fixture(scope="package")
def multinode(tiny_kit, tmp_path_factory) -> MultiNode:
    cluster = MultiNode(tmp_path_factory.mktemp("multinode"), tiny_kit)
    try:
        cluster.start()
        cluster.deploy(cluster.write_config(cluster.tmp / "serve_config.yaml"))
        yield cluster
    except BaseException:
        for log in sorted(cluster.tmp.glob("*.log")):
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
        raise
    finally:
        cluster.stop()
