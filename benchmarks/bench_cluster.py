"""Search through one ingress replica against two on two Ray nodes (issue 14), on the three-node cluster
the multinode tests start (tests/multinode/conftest.py: three `ray start` nodes on this machine, LanceDB
and blobs on moto's S3, Redis), with the tiny kit's models.

    .venv/bin/python -m benchmarks.bench_cluster [--clients 16] [--requests 400] [--no-write]

One run, same cluster, same gallery: the ingress at 1 replica, then at 2 (on the head and the `cpu`
worker), each measured over HTTP with unique queries (no answer cache can help). On one 2-core machine
the nodes share the same two cores: this shows what a second replica on another node costs or gives
when the box is the limit, not the speed-up of a real second machine.

Answers are checked before the section is written (benchmarks.checks): every upload 201, every search
200 with k distinct hits from the user's gallery, the second replica on a second node and both nodes
answering; a wrong answer exits 3 and writes nothing.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import platform
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.checks import check, check_statuses, run
from benchmarks.results_md import publish

SECTION = "## Search through one ingress replica against two on two nodes (issue 14)"
K = 10


def measure(base: str, key: str, clients: int, requests: int, tag: str, hits: int) -> dict:
    """`requests` unique searches by `clients` clients; every answer must be 200 with `hits` distinct hits."""
    texts = iter(range(requests))
    lat: list[float] = []
    codes: dict[int, int] = {}
    served: set[str] = set()
    wrong: list[str] = []

    def one(i: int, c: httpx.Client) -> None:
        t0 = time.perf_counter()
        r = c.get("/api/search", params={"q": f"{tag} a harbour at dawn {i}", "k": K})
        lat.append(time.perf_counter() - t0)
        codes[r.status_code] = codes.get(r.status_code, 0) + 1
        served.add(r.headers.get("x-atelier-node", "?"))
        ids = [h["img_id"] for h in r.json()["results"]] if r.status_code == 200 else []
        if r.status_code == 200 and not (len(ids) == len(set(ids)) == hits):
            wrong.append(f"query {i}: {len(ids)} hits ({len(set(ids))} distinct), expected {hits}")

    def worker() -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=120,
                          limits=httpx.Limits(max_keepalive_connections=0)) as c:
            for i in texts:
                one(i, c)

    start = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(worker) for _ in range(clients)]:
            f.result()
    wall = time.perf_counter() - start
    check_statuses(f"{tag}: searches", codes, {200: requests})
    check(len(lat) == requests, f"{tag}: {len(lat)} searches timed of {requests}")
    check(not wrong, f"{tag}: {len(wrong)} wrong answers, e.g. {wrong[:3]}")
    lat.sort()
    return {"p50": statistics.median(lat), "p99": lat[int(0.99 * (len(lat) - 1))], "rps": len(lat) / wall,
            "codes": codes, "nodes": len(served)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_cluster")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from models.kit import ROLES, build
    from tests.multinode.conftest import MultiNode
    from tests.support.sample_photos import jpeg

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    kit = tmp / "kit"
    for role in ROLES:
        build(role, "tiny", kit, seed=0)
    cluster = MultiNode(tmp, kit)
    try:
        cluster.start()
        config = cluster.write_config(tmp / "one.yaml", lambda app: app["args"]["ingress"]["deployment"].update(num_replicas=1))
        cluster.deploy(config)
        _, key = cluster.key_store().add("bench")
        with httpx.Client(base_url=cluster.base, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
            for i in range(args.images):
                r = c.post("/api/images", files={"file": (f"b{i}.jpg", jpeg(10_000 + i), "image/jpeg")})
                check(r.status_code == 201, f"upload {i} answered {r.status_code}: {r.text[:200]}")
        hits = min(K, args.images)
        measure(cluster.base, key, args.clients, 32, "warm1", hits)
        one = measure(cluster.base, key, args.clients, args.requests, "one", hits)
        cluster.deploy(cluster.write_config(tmp / "two.yaml"))
        time.sleep(5)
        placed = sorted(r["node"] for r in cluster.replicas("Ingress"))
        check(len(placed) == len(set(placed)) == 2, f"the two ingress replicas are on nodes {placed}")
        measure(cluster.base, key, args.clients, 32, "warm2", hits)
        two = measure(cluster.base, key, args.clients, args.requests, "two", hits)
    finally:
        cluster.stop()
    check(two["nodes"] == 2, f"{two['nodes']} node(s) answered the two replicas' searches")

    def row(name: str, m: dict) -> str:
        return (f"| {name} | {m['p50'] * 1000:.0f} | {m['p99'] * 1000:.0f} | {m['rps']:.1f} | "
                f"{', '.join(f'{k}: {v}' for k, v in sorted(m['codes'].items()))} | {m['nodes']} |")

    lines = [
        SECTION, "",
        f"Machine: {platform.machine()}, {__import__('os').cpu_count()} cores, no GPU; three Ray nodes as processes "
        "on it (tests/multinode/conftest.py), tiny kit, LanceDB and blobs on moto's S3, Redis. "
        f"{args.images} images in the user's gallery, {args.clients} clients, {args.requests} unique queries each run.",
        f"Command: `.venv/bin/python -m benchmarks.bench_cluster --clients {args.clients} --requests {args.requests}`",
        "",
        "| ingress | p50 ms | p99 ms | req/s | statuses | nodes that answered |",
        "|---|---|---|---|---|---|",
        row("1 replica", one),
        row(f"2 replicas ({' + '.join(placed)})", two),
        "",
        f"p50 ratio, two replicas / one: **{two['p50'] / one['p50']:.2f}x**; throughput ratio: "
        f"**{two['rps'] / one['rps']:.2f}x**. Every node here shares the same 2 cores, so a second "
        "ingress replica can spread the work but not add CPU: this shows distribution and its overhead, "
        "not the speed-up of a second machine. Both runs are slow in absolute terms (S3 is moto's "
        "single-process server, and every search checks the table version and reads its top rows there); "
        "where the time goes was not profiled.",
    ]
    publish(SECTION, lines, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
