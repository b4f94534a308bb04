"""A small bulk job against single uploads, on the local service (issue 12, "small jobs that feel instant").

    .venv/bin/python -m benchmarks.bench_small_jobs [--files 10] [--rounds 3] [--no-write]

Starts the local graph (serve_config.local.yaml: the tiny kit, resources for 2 cores) on a temp data
folder, then per round, with photos nobody uploaded before:
  (a) POST /api/init/upload with N files, timed from the POST to the job's `succeeded`;
  (b) N single POST /api/images, one after another, timed in all.
The goal is (a) no slower than (b). Numbers go to benchmarks/RESULTS.md ("Small bulk jobs") once the
answers are checked (benchmarks.checks): each job accepted 202 and ended `succeeded` with done = total =
N, nothing skipped or failed; each upload 201 (new); and the gallery, listed at the end, holds every
photo sent exactly once. Otherwise it exits 3 and writes nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.checks import check, check_stored, run
from benchmarks.local_graph import start
from benchmarks.photos import noise_jpeg
from benchmarks.results_md import publish

SECTION = "## Small bulk jobs"


def photo(seed: int) -> bytes:
    return noise_jpeg(seed)


def one_job(client, files: list[bytes]) -> float:
    t0 = time.perf_counter()
    r = client.post("/api/init/upload", files=[("files", (f"p{i}.jpg", d, "image/jpeg")) for i, d in enumerate(files)])
    check(r.status_code == 202, f"POST /api/init/upload answered {r.status_code}: {r.text[:300]}")
    job_id = r.json()["job_id"]
    while True:
        polled = client.get(f"/api/init/upload/{job_id}")
        check(polled.status_code == 200, f"the job's status answered {polled.status_code}: {polled.text[:300]}")
        status = polled.json()
        if status["state"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.05)
    took = time.perf_counter() - t0
    n = len(files)
    got = {k: status.get(k) for k in ("state", "total", "done", "skipped_duplicates", "failed")}
    check(got == {"state": "succeeded", "total": n, "done": n, "skipped_duplicates": 0, "failed": 0},
          f"the job of {n} photos ended {got}")
    return took


def singles(client, files: list[bytes]) -> float:
    t0 = time.perf_counter()
    for i, data in enumerate(files):
        r = client.post("/api/images", files={"file": (f"s{i}.jpg", data, "image/jpeg")})
        check(r.status_code == 201, f"upload answered {r.status_code} (201: stored anew): {r.text[:300]}")
    return time.perf_counter() - t0


def gallery_hashes(client) -> list[str]:
    """The content hash of every row of the caller's gallery, page by page (duplicates kept)."""
    hashes, cursor = [], None
    while True:
        r = client.get("/api/images", params={"limit": 100, **({"cursor": cursor} if cursor else {})})
        check(r.status_code == 200, f"GET /api/images answered {r.status_code}: {r.text[:300]}")
        page = r.json()
        hashes += [item["content_hash"] for item in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            return hashes


def main(argv: list[str] | None = None) -> int:
    import httpx

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_small_jobs", description=__doc__)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--label", default="this code", help="what the row of the table names")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        base, key = start(Path(tmp))
        jobs, single = [], []
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=300) as c:
            sent = [photo(10_000 + i) for i in range(3)]
            singles(c, sent)  # warm-up: first embeds, the writer, the cache
            for r in range(args.rounds):
                seed = 1000 * (r + 1)
                files = [photo(seed + i) for i in range(args.files)]
                jobs.append(one_job(c, files))
                sent += files
                files = [photo(seed + 500 + i) for i in range(args.files)]
                single.append(singles(c, files))
                sent += files
            check_stored("the user's gallery", [hashlib.sha256(d).hexdigest() for d in sent], gallery_hashes(c))
    job_p50, single_p50 = statistics.median(jobs), statistics.median(single)
    lines = [
        SECTION, "",
        f"{args.files} photos (640x480 JPEG) per round, {args.rounds} rounds, on the local service "
        "(serve_config.local.yaml: tiny kit, 2 cores); fresh photos every round.",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs. "
        f"Command: `.venv/bin/python -m benchmarks.bench_small_jobs --files {args.files} --rounds {args.rounds}`.",
        "",
        "| run | (a) job, POST to succeeded, s (each round) | (b) single uploads in sequence, s (each round) | (a)/(b) at p50 |",
        "|---|---|---|---|",
        f"| {args.label} | {', '.join(f'{t:.2f}' for t in jobs)} | {', '.join(f'{t:.2f}' for t in single)} | "
        f"{job_p50 / single_p50:.2f}x |",
        "",
        "Goal (issue 12): (a) no slower than (b), i.e. (a)/(b) <= 1.",
    ]
    publish(SECTION, lines, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
