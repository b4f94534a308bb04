"""The local graph for benchmarks: serve_config.local.yaml's app (the tiny kit, resources for 2 cores)
on a temp data folder, with Serve's proxy gated as in every deployment. `start` checks that the key it
returns is let in to an empty gallery (benchmarks.checks), so no benchmark times answers for a stranger."""

from __future__ import annotations

import os
import time
from pathlib import Path

from benchmarks.checks import check

ROOT = Path(__file__).resolve().parents[1]


def start(data: Path, port: int = 8123, edit=None, tuning: dict | None = None) -> tuple[str, str]:
    """The local graph on `data`; returns (base URL, an API key). `edit(args)` may change the app's args
    (a dict, as the YAML holds them) before it is deployed; `tuning` is the ingress's live settings (plans,
    timeouts: an IngressTuning's fields), its defaults when left out."""
    import ray
    import yaml
    from ray import serve

    os.environ.update({"ATELIER_KEYS_FILE": str(data / "keys.json"), "ATELIER_KEYS_URI": str(data / "lancedb"),
                       "ATELIER_URL_SECRET_FILE": str(data / "secret")})
    from deployments.app import build_app
    from deployments.config import AppArgs
    try:
        from deployments.http.auth import key_store

        def add_key(_path, user):
            return key_store().add(user)[1]
    except ImportError:  # a checkout from before the key table (issue 13), measured as it was
        from deployments.http.auth import add_key
    from deployments.local import ensure_kit

    kit = ROOT / "checkpoints" / "tiny"
    ensure_kit(kit)
    key = add_key(data / "keys.json", "bench")
    spec = yaml.safe_load((ROOT / "serve_config.local.yaml").read_text())["applications"][0]["args"]
    for role in ("embedder", "writer", "describer", "painter"):
        spec[role]["model"]["model"] = str(kit / role)
    if spec.get("guard"):
        spec["guard"]["model"].update(model=str(kit / "guard"), image_model=str(kit / "guard_image"))
    spec["storage"].update(lancedb_uri=str(data / "lancedb"), blob_root=str(data / "blobs"))
    if edit is not None:
        edit(spec)
    try:
        from deployments.http.proxy import PROXY_ENV
    except ImportError:  # a checkout from before the proxy gate (issue 16), measured as it was
        PROXY_ENV = {}
    os.environ.update(PROXY_ENV)
    env = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "ATELIER_KEYS_FILE": str(data / "keys.json"),
           "ATELIER_KEYS_URI": str(data / "lancedb"), "ATELIER_URL_SECRET_FILE": str(data / "secret")}
    ray.init(address="local", num_cpus=4, include_dashboard=False, namespace="atelier", runtime_env={"env_vars": env},
             log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    if tuning is None:
        app = build_app(AppArgs.model_validate(spec))
    else:  # a checkout from before `compose(tuning=)` cannot take one
        from deployments.app import compose

        app = compose(AppArgs.model_validate(spec), tuning=tuning)
    serve.run(app, name="atelier", route_prefix="/", blocking=False)
    base = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/readyz", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(1)
    else:
        raise RuntimeError("the local graph did not become ready")
    r = httpx.get(base + "/api/images", headers={"Authorization": f"Bearer {key}"}, timeout=60)
    check(r.status_code == 200 and r.json()["items"] == [],
          f"the benchmark's key on a fresh gallery: GET /api/images answered {r.status_code} {r.text[:300]}")
    return base, key
