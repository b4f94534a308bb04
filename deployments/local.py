"""`python -m deployments.local`: the quickstart, through Ray's own tools.

    python -m deployments.local [up]    # `make serve`
    python -m deployments.local stop    # `make stop`

`up` builds the tiny kit if missing, makes a demo key, starts a local Ray head with `ray start`
(bound to 127.0.0.1, explicit small resources, token auth on, the dashboard on 127.0.0.1:8265),
deploys `serve_config.local.yaml` with `serve deploy` (Serve's declarative path, so `serve config`,
`serve status` and a later `serve deploy` all work), waits until `/readyz` answers 200 and prints
the key and what a second shell needs. The cluster keeps running after it returns; `stop` shuts
Serve down and stops Ray.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from models.configs import MARKER
from storage.settings import StorageSettings

from .http.auth import KeyRing, Unauthorized, key_store
from .http.proxy import PROXY_ENV
from .settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[1]
GCS_PORT = 6379
DASHBOARD_PORT = 8265


def ensure_kit(folder: Path) -> None:
    """The tiny kit's roles (and the Guard's image classifier), built if missing, or rebuilt where an older kit holds another family
    (a `checkpoints/tiny/embedder` from before SigLIP 2 was the default is CLIP's)."""
    import json

    # Only when the kit must be built: the builders import torch, transformers and diffusers, which the
    # launcher (`make serve`, `make stop`) otherwise never loads.
    from models.kit import EMBEDDER_FAMILIES, ROLES, build

    def current(role: str) -> bool:
        marker = folder / role / MARKER
        return marker.is_file() and json.loads(marker.read_text()).get("family") == EMBEDDER_FAMILIES.get(role)

    missing = [r for r in (*ROLES, "guard_image") if not current(r)]  # the Guard's image classifier too
    if missing:
        print(f"building the tiny offline kit ({', '.join(missing)}) in {folder} ...", flush=True)
        for role in missing:
            shutil.rmtree(folder / role, ignore_errors=True)  # no file of another family's checkpoint stays
            build(role, "tiny", folder)


def keys_uri(config: Path) -> str:
    """Where the cluster's key table lives: ATELIER_KEYS_URI, else the gallery's database as the config
    names it; a local folder as an absolute path, since the proxy and the replicas get it from the
    environment."""

    uri = ServiceSettings().keys_uri
    if not uri:
        apps = yaml.safe_load(config.read_text()).get("applications") or [{}]
        uri = ((apps[0].get("args") or {}).get("storage") or {}).get("lancedb_uri") or StorageSettings().lancedb_uri
    return _absolute(uri)


def _absolute(uri: str) -> str:
    """A local folder as an absolute path; an object-store URI as it is."""
    return uri if "://" in uri else str(Path(uri).resolve())


def ensure_demo_key(uri: str) -> str:
    """The local demo user's key, kept in plain text beside the URL secret (data/local_demo_key by
    default) for the quickstart only; made again if the key table no longer holds it."""

    store = key_store(ServiceSettings(keys_uri=uri))
    plain = Path(ServiceSettings().url_secret_file).with_name("local_demo_key")
    if plain.is_file():
        key = plain.read_text().strip()
        try:
            if KeyRing.open(store).user_for(f"Bearer {key}") == "demo":
                return key
        except Unauthorized:
            pass
    _, key = store.add("demo")
    plain.parent.mkdir(parents=True, exist_ok=True)
    plain.write_text(key)
    os.chmod(plain, 0o600)
    return key


def cluster_env(keys: str | None = None) -> dict[str, str]:
    """The environment every process of the local cluster inherits from `ray start`, and the CLI's.

    `RAY_AUTH_MODE=token` is what Ray's CLI needs to send the token `ray start` keeps in
    ~/.ray/auth_token; the rest reaches Serve's proxy and the replicas: the proxy's gate, one torch
    thread per process, this checkout on the import path and this venv's interpreter first on PATH,
    the key table and the URL secret's file by absolute path.
    """
    settings = ServiceSettings()
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {
        **os.environ, **PROXY_ENV,
        "RAY_AUTH_MODE": "token",
        "RAY_USAGE_STATS_ENABLED": "0",  # what --disable-usage-stats says, for the shell's own drivers too
        "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": path,
        # A job's `python` (`ray job submit -- python -m pipelines.ingest ...`) is this venv's.
        "PATH": os.pathsep.join(p for p in (str(Path(sys.executable).parent), os.environ.get("PATH", "")) if p),
        "ATELIER_URL_SECRET_FILE": str(Path(settings.url_secret_file).resolve()),
    }
    if keys:
        env["ATELIER_KEYS_URI"] = keys
    return env


def _ray_bin(name: str) -> str:
    # The CLIs of this venv, whatever PATH says.
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


def run_cli(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([_ray_bin(args[0]), *args[1:]], env=env, cwd=ROOT, check=check, text=True,
                          capture_output=not check)


def ensure_token(env: dict[str, str]) -> None:
    """Token auth needs a token before `ray start` does, and a fresh machine has none: Ray's own
    `ray get-auth-token --generate` writes one to ~/.ray/auth_token, and keeps one that is there.
    Its output (the token) is not echoed; a token made here is made readable by its owner only."""
    home = Path(env.get("HOME") or Path.home())
    made_here = not (home / ".ray" / "auth_token").exists() and not env.get("RAY_AUTH_TOKEN") \
        and not env.get("RAY_AUTH_TOKEN_PATH")
    made = run_cli("ray", "get-auth-token", "--generate", env=env, check=False)
    if made.returncode != 0:
        raise RuntimeError("`ray get-auth-token --generate` failed: " + made.stderr[-2000:])
    if made_here:
        os.chmod(home / ".ray" / "auth_token", 0o600)


def cluster_running(port: int) -> bool:
    """Whether a GCS listens on the port (a TCP connect: `ray status` on a dead address retries for long)."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def wait_ready(url: str, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} did not become ready in {timeout_s:.0f} s")


def up(args) -> int:
    ensure_kit(args.kit)
    keys = keys_uri(args.config)
    key = ensure_demo_key(keys)
    env = cluster_env(keys)
    dashboard = f"http://127.0.0.1:{args.dashboard_port}"
    if cluster_running(args.port):
        print(f"a Ray cluster already runs at 127.0.0.1:{args.port}: deploying onto it", flush=True)
    else:
        ensure_token(env)
        run_cli("ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={args.port}",
                f"--num-cpus={args.num_cpus:g}", "--num-gpus=0", "--include-dashboard=true",
                "--dashboard-host=127.0.0.1", f"--dashboard-port={args.dashboard_port}",
                f"--dashboard-agent-listen-port={args.agent_port}", "--disable-usage-stats",
                *([f"--metrics-export-port={args.metrics_export_port}"] if args.metrics_export_port else []),
                env=env)
    run_cli("serve", "deploy", str(args.config), f"--address={dashboard}", env=env)
    # What `python -m deployments.keys` finds by itself, run from this checkout.
    keys_flag = "" if keys == _absolute(key_store().uri) else f" --uri {keys}"
    http = yaml.safe_load(args.config.read_text()).get("http_options", {})
    base = f"http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}"
    wait_ready(base + "/readyz")
    print(
        f"\natelier is up at {base}  (Ray dashboard: {dashboard})\n"
        f"API key of the local user 'demo':  {key}\n"
        "The models are random-weight stand-ins: their text and images are noise, and answers say so "
        "(\"random_weights\": true).\n\n"
        f"  curl {base}/readyz\n"
        f"  curl -H 'Authorization: Bearer {key}' '{base}/api/search?q=sunset&k=5'\n\n"
        "From any shell (Ray's token auth is on; the CLI finds the token in ~/.ray/auth_token):\n"
        "  export RAY_AUTH_MODE=token\n"
        "  .venv/bin/serve status;  .venv/bin/serve config;  .venv/bin/ray status\n"
        f"  .venv/bin/serve deploy {args.config}      # roll out an edited config\n"
        f"  .venv/bin/ray job submit --address {dashboard} -- python -c 'print(1)'\n"
        f"  .venv/bin/python -m pipelines.ingest --address 127.0.0.1:{args.port} --config {args.config} "
        "--user demo FOLDER_OR_ZIP\n"
        f"  .venv/bin/python -m deployments.keys{keys_flag} add USER     # live: no restart\n"
        "  make stop\n",
        flush=True,
    )
    return 0


def stop(args) -> int:
    env = cluster_env()
    if cluster_running(args.port):
        run_cli("serve", "shutdown", "-y", f"--address=http://127.0.0.1:{args.dashboard_port}", env=env, check=False)
    stopped = stop_cluster(args.port)
    print(f"stopped the Ray cluster at 127.0.0.1:{args.port} ({stopped} processes)", flush=True)
    return 0


def stop_cluster(port: int, grace_s: float = 15) -> int:
    """Stop the Ray cluster whose GCS listens on `port`, and only that one (`ray stop` would stop every
    Ray process of this user, other clusters and test runs included): its daemons are the processes
    that name the port, and everything else of it (workers, agents, dashboard modules) descends from them."""
    import re

    import psutil

    names_port = re.compile(rf"(:|--gcs_server_port=|--port=){port}(?!\d)")
    roots = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if proc.pid != os.getpid() and any("ray" in a for a in cmd[:3]) and any(names_port.search(a) for a in cmd):
            roots.append(proc)
    everything = {p.pid: p for root in roots for p in [root, *_descendants(root)]}
    # The GCS last: terminated with the rest, it outwaits any grace (it stays up while the nodes it serves go,
    # and is killed at the end); after them it exits within seconds. `make stop`: 23 s -> 12 s (6 s of it Serve's
    # own graceful shutdown).
    gcs = [p for p in everything.values() if _name(p) == "gcs_server"]
    _terminate([p for p in everything.values() if p not in gcs], grace_s)
    _terminate(gcs, grace_s)
    return len(everything)


def _terminate(procs: list, grace_s: float) -> None:
    """SIGTERM to each, then SIGKILL to those still there after `grace_s`."""
    import psutil

    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass


def _name(proc) -> str:
    try:
        return proc.name()
    except Exception:  # noqa: BLE001 - gone already
        return ""


def _descendants(proc) -> list:
    try:
        return proc.children(recursive=True)
    except Exception:  # noqa: BLE001 - gone already
        return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.local", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", choices=("up", "stop"), default="up")
    parser.add_argument("--config", type=Path, default=Path("serve_config.local.yaml"))
    parser.add_argument("--kit", type=Path, default=Path("checkpoints/tiny"))
    parser.add_argument("--num-cpus", type=float, default=4,
                        help="logical CPUs Ray may hand out (replicas ask for fractions of one)")
    parser.add_argument("--port", type=int, default=GCS_PORT, help="the head's GCS port")
    parser.add_argument("--dashboard-port", type=int, default=DASHBOARD_PORT)
    parser.add_argument("--agent-port", type=int, default=52365,
                        help="the head's dashboard agent (job submission goes through it); another Ray "
                             "cluster on this machine holds 52365 already")
    parser.add_argument("--metrics-export-port", type=int, default=None,
                        help="the head's Prometheus metrics port (default: Ray picks one and lists it in "
                             "/tmp/ray/prom_metrics_service_discovery.json)")
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # the config's relative paths (checkpoints/tiny, data/) are the checkout's
    return up(args) if args.command == "up" else stop(args)


if __name__ == "__main__":
    sys.exit(main())
