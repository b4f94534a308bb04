"""The service on a real three-node Ray cluster (tests/cluster/conftest.py): placement follows the
config's resource plan, and every ingress replica on every node sees the same gallery."""

from __future__ import annotations

import io
import itertools
import time

import httpx
import pytest

pytestmark = pytest.mark.multinode


def _jpeg(seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_placement_follows_the_resource_plan(multinode):
    """The GPU-share roles run on the node that declares GPUs, the ingress replicas off it (its
    label_selector), spread over the head and the CPU worker; the capacity command agrees."""
    for role in ("Embedder", "Writer", "Describer", "Painter"):
        replicas = multinode.replicas(role)
        assert replicas and {r["node"] for r in replicas} == {"gpu"}, (role, replicas)
        assert all(r["required_resources"].get("GPU", 0) > 0 for r in replicas), replicas
    ingress = multinode.replicas("Ingress")
    assert len(ingress) == 2 and {r["node"] for r in ingress} == {"head", "cpu"}, ingress
    done = multinode.cli("python", "-m", "deployments.capacity", str(multinode.tmp / "serve_config.yaml"),
                         "--nodes", "1x1cpu,1x2gpu+1cpu,1x1cpu")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_replica_on_every_node_sees_an_upload_and_a_delete(multinode):
    store = multinode.key_store()
    _, key = store.add("mallory")
    nodes = {r["node_id"]: r["node"] for r in multinode.replicas("Ingress")}
    seen: dict[str, set[str]] = {}

    def search(c: httpx.Client, img_id: str) -> bool:
        # A new text each time: the answer cache (per replica and in Redis) cannot answer for the gallery.
        r = c.get("/api/search", params={"q": f"a harbour at dawn {next(counter)}", "k": 50})
        assert r.status_code == 200, r.text
        seen.setdefault(r.headers["x-atelier-node"], set()).add(r.headers["x-atelier-replica"])
        return any(hit["img_id"] == img_id for hit in r.json()["results"])

    counter = itertools.count()
    # A fresh connection per request: Serve's proxies on both nodes, and both replicas, get asked.
    with httpx.Client(base_url=multinode.base, headers={"Authorization": f"Bearer {key}"}, timeout=120,
                      limits=httpx.Limits(max_keepalive_connections=0)) as c:
        for i in range(3):
            up = c.post("/api/images", files={"file": (f"m{i}.jpg", _jpeg(500 + i), "image/jpeg")})
            assert up.status_code == 201, up.text
            img_id = up.json()["img_id"]
            # Every search after the 201 finds it, whichever replica answers.
            assert all(search(c, img_id) for _ in range(8))
            assert c.delete(f"/api/images/{img_id}").status_code == 204
            assert not any(search(c, img_id) for _ in range(8))
    # Both replicas, on two nodes, answered.
    assert set(seen) == set(nodes) and len(seen) == 2, (seen, nodes)
    store.revoke("mallory")
