"""`python -m deployments.local`: the quickstart. Builds the tiny kit if missing, makes a demo key,
starts Ray (dashboard on 127.0.0.1:8265) and serves serve_config.local.yaml on 127.0.0.1:8000."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import urllib.request
from pathlib import Path

import yaml

from .http.auth import add_key
from .http.proxy import PROXY_ENV
from .models.configs import MARKER
from .settings import ServiceSettings

LOCAL_KEY_FILE = Path("data/local_demo_key")
LOCAL_ADDRESS_FILE = Path("data/local_ray_address")  # for `python -m pipelines.ingest --address ...`


def ensure_kit(folder: Path) -> None:
    from .kit import ROLES, build

    missing = [r for r in ROLES if not (folder / r / MARKER).is_file()]
    if missing:
        print(f"building the tiny offline kit ({', '.join(missing)}) in {folder} ...", flush=True)
        for role in missing:
            build(role, "tiny", folder)


def ensure_demo_key() -> str:
    """The local demo user's key. Kept in plain text under data/ for the quickstart only."""
    settings = ServiceSettings()
    if LOCAL_KEY_FILE.is_file() and Path(settings.keys_file).is_file():
        return LOCAL_KEY_FILE.read_text().strip()
    key = add_key(settings.keys_file, "demo")
    LOCAL_KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
    LOCAL_KEY_FILE.write_text(key)
    os.chmod(LOCAL_KEY_FILE, 0o600)
    return key


def serve_config(path: Path, *, blocking: bool = True) -> None:
    """Deploy every application of a Serve config file the way `serve deploy` would, in this process."""
    from ray import serve

    from .app import build_app
    from .config import AppArgs

    config = yaml.safe_load(path.read_text())
    http = config.get("http_options", {})
    serve.start(http_options={k: http[k] for k in ("host", "port", "request_timeout_s") if k in http})
    for spec in config["applications"]:
        args = AppArgs.model_validate(spec.get("args", {}))
        serve.run(build_app(args), name=spec["name"], route_prefix=spec.get("route_prefix", "/"), blocking=False)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.local", description=__doc__)
    parser.add_argument("--config", type=Path, default=Path("serve_config.local.yaml"))
    parser.add_argument("--kit", type=Path, default=Path("models/tiny"))
    parser.add_argument("--num-cpus", type=float, default=4,
                        help="logical CPUs Ray may hand out (replicas ask for fractions of one)")
    parser.add_argument("--detach", action="store_true", help="return once ready, leaving Ray and Serve running")
    args = parser.parse_args(argv)

    import ray

    ensure_kit(args.kit)
    key = ensure_demo_key()
    # Ray's processes inherit this environment: the gate in Serve's HTTP proxy (deployments.http.proxy).
    os.environ.update(PROXY_ENV)
    ray.init(num_cpus=args.num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=8265,
             namespace="atelier", runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}})
    LOCAL_ADDRESS_FILE.write_text(ray.get_runtime_context().gcs_address + "\n")
    serve_config(args.config)
    http = yaml.safe_load(args.config.read_text()).get("http_options", {})
    base = f"http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}"
    wait_ready(base + "/readyz")
    print(
        f"\natelier is up at {base}  (Ray dashboard: http://127.0.0.1:8265)\n"
        f"API key of the local user 'demo':  {key}\n"
        "The models are random-weight stand-ins: their text and images are noise, and answers say so "
        "(\"random_weights\": true).\n\n"
        f"  curl {base}/readyz\n"
        f"  curl -H 'Authorization: Bearer {key}' '{base}/api/search?q=sunset&k=5'\n"
        f"  .venv/bin/python -m pipelines.ingest --address {LOCAL_ADDRESS_FILE.read_text().strip()} "
        f"--config {args.config} --user demo FOLDER_OR_ZIP\n",
        flush=True,
    )
    if args.detach:
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
