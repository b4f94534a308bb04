"""The head node lost under search load, as a searching client sees it (issue 31), on the three-node cluster the
multinode tests start (tests/multinode/conftest.py: three `ray start` nodes on this machine, the GCS fault tolerant
on a Redis of its own, LanceDB and blobs on moto's S3, the answer cache on Redis), with the tiny kit's models.

    .venv/bin/python -m benchmarks.bench_head_loss [--clients 8] [--before-s 20] [--down-s 10] [--images 50]

One timeline: `--before-s` of searches with every node up (the baseline), then every process of the head killed at
once (the GCS, the dashboard, Serve's controller, the service's ledgers, an ingress replica and its proxy), `--down-s`
of searches with the head gone (the outage), the head started again on the same address, GCS port and Redis, and
searches on until `serve status` shows every deployment healthy and a search started after that answered 200 (the
recovery). For each phase: requests answered 200, 503 (each must carry Retry-After), anything else, and transport
failures (a connection the lost head's proxy held); searches answered per second; and the outage's rate of 200s as
a ratio of the baseline's. Unique queries: no answer cache helps.

Answers are checked before anything is written (benchmarks.checks): every 200 holds k distinct hits of the user's
gallery, no 500 at any time, every 503 says when to retry, a search answers 200 after the recovery; a wrong answer
exits 3 and writes nothing.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from benchmarks.checks import check, run
from benchmarks.results_md import publish

SECTION = "## The head node lost under search load (issue 31)"
K = 5


class Searchers:
    """`clients` threads searching until stopped; each answer kept as (started, outcome, retry_after, hits)."""

    def __init__(self, base: str, key: str, clients: int, hits: int):
        self.base, self.key, self.hits = base, key, hits
        self.results: list[tuple[float, int | str, str | None, bool]] = []
        self._stop = threading.Event()
        self._count = itertools.count()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]
        for t in self._threads:
            t.start()

    def _client(self) -> None:
        with httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.key}"}, timeout=60,
                          limits=httpx.Limits(max_keepalive_connections=0)) as c:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    r = c.get("/api/search", params={"q": f"a harbour at night {next(self._count)}", "k": K})
                    ids = [h["img_id"] for h in r.json()["results"]] if r.status_code == 200 else []
                    good = r.status_code != 200 or len(ids) == len(set(ids)) == self.hits
                    self.results.append((started, r.status_code, r.headers.get("retry-after"), good))
                except httpx.HTTPError as exc:
                    self.results.append((started, type(exc).__name__, None, True))

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=120)

    def phase(self, start: float, end: float) -> dict:
        rows = [r for r in self.results if start <= r[0] < end]
        outcomes = Counter(r[1] for r in rows)
        return {"outcomes": outcomes, "seconds": end - start, "ok_per_s": outcomes[200] / max(end - start, 1e-9),
                "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_head_loss")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--before-s", type=float, default=20.0)
    parser.add_argument("--down-s", type=float, default=10.0)
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from models.kit import STAND_INS, build
    from tests.multinode.conftest import MultiNode, wait_for
    from tests.support.sample_photos import jpeg

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-head-loss-"))
    kit = tmp / "kit"
    for role in STAND_INS:
        build(role, "tiny", kit, seed=0)
    cluster = MultiNode(tmp, kit)
    try:
        cluster.start()
        cluster.deploy(cluster.write_config(tmp / "serve_config.yaml"))
        _, key = cluster.key_store().add("bench")
        cluster.plan_store().assign("bench", "load")
        with httpx.Client(base_url=cluster.base, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
            for i in range(args.images):
                r = c.post("/api/images", files={"file": (f"b{i}.jpg", jpeg(30_000 + i), "image/jpeg")})
                check(r.status_code == 201, f"upload {i} answered {r.status_code}: {r.text[:200]}")
        hits = min(K, args.images)
        searchers = Searchers(cluster.base, key, args.clients, hits)
        try:
            start = time.monotonic()
            time.sleep(args.before_s)
            killed = cluster.kill_node("head")
            time.sleep(args.down_s)
            restart = time.monotonic()
            cluster.restart_head()
            head_back = time.monotonic()
            wait_for(cluster.serve_healthy, 600, "every deployment healthy again", every=2)
            healthy = time.monotonic()
            wait_for(lambda: any(r[0] >= healthy and r[1] == 200 for r in searchers.results), 120,
                     "a search answered 200 after the recovery")
            recovered = max(healthy, next(r[0] for r in searchers.results if r[0] >= healthy and r[1] == 200))
            time.sleep(5)
            end = time.monotonic()
        finally:
            searchers.stop()
    finally:
        cluster.stop()

    phases = {"before the loss": searchers.phase(start, killed), "head down": searchers.phase(killed, restart),
              "head restarting": searchers.phase(restart, recovered), "after recovery": searchers.phase(recovered, end)}
    every = [r for p in phases.values() for r in p["rows"]]
    check(all(r[3] for r in every), "a search answered 200 without k distinct hits of the user's gallery")
    check(not any(r[1] == 500 for r in every), "a search answered 500")
    check(all(r[2] for r in every if r[1] == 503), "a 503 without Retry-After")
    check(phases["before the loss"]["outcomes"][200] > 0, "no search answered before the loss")
    check(phases["after recovery"]["outcomes"][200] > 0, "no search answered after the recovery")

    def row(name: str, p: dict) -> str:
        o = p["outcomes"]
        other = sum(v for k, v in o.items() if k not in (200, 503) and isinstance(k, int))
        failed = sum(v for k, v in o.items() if isinstance(k, str))
        return f"| {name} | {p['seconds']:.1f} | {o[200]} | {o[503]} | {other} | {failed} | {p['ok_per_s']:.1f} |"

    base_rate = phases["before the loss"]["ok_per_s"]
    lines = [
        SECTION, "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, no GPU; three Ray nodes as processes on it "
        "(tests/multinode/conftest.py), the GCS on a Redis of its own (GCS fault tolerance), tiny kit, LanceDB and "
        f"blobs on moto's S3. {args.images} images in the user's gallery, {args.clients} clients searching with "
        "unique queries throughout.",
        f"Command: `.venv/bin/python -m benchmarks.bench_head_loss --clients {args.clients} --before-s "
        f"{args.before_s:g} --down-s {args.down_s:g} --images {args.images}`",
        "",
        "| phase | seconds | 200 | 503 | other | failed (transport) | 200/s |",
        "|---|---|---|---|---|---|---|",
        *(row(name, p) for name, p in phases.items()),
        "",
        f"The head was down {restart - killed:.1f} s; it was back (dashboard up, one head alive) "
        f"{head_back - killed:.1f} s after the kill and every deployment healthy with searches answered again "
        f"{recovered - killed:.1f} s after it. Searches answered per second while the head was down, as a ratio of "
        f"before: **{phases['head down']['ok_per_s'] / base_rate:.2f}x**; while it restarted: "
        f"**{phases['head restarting']['ok_per_s'] / base_rate:.2f}x**. The three nodes share two cores, so a "
        "restarting head also takes CPU from the workers that keep serving; transport failures are requests whose "
        "connection the lost head's proxy held.",
    ]
    publish(SECTION, lines, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
