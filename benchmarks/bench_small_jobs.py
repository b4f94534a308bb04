"""A small bulk job against single uploads, on the local service (issue 12, "small jobs that feel instant").

    .venv/bin/python -m benchmarks.bench_small_jobs [--files 10] [--rounds 3] [--no-write]

Starts the local graph (serve_config.local.yaml: the tiny kit, resources for 2 cores) on a temp data
folder, then per round, with photos nobody uploaded before:
  (a) POST /api/init/upload with N files, timed from the POST to the job's `succeeded`;
  (b) N single POST /api/images, one after another, timed in all.
The goal is (a) no slower than (b). Numbers go to benchmarks/RESULTS.md ("Small bulk jobs").
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.local_graph import start
from benchmarks.results_md import publish

SECTION = "## Small bulk jobs"


def photo(seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def one_job(client, files: list[bytes]) -> float:
    t0 = time.perf_counter()
    r = client.post("/api/init/upload", files=[("files", (f"p{i}.jpg", d, "image/jpeg")) for i, d in enumerate(files)])
    r.raise_for_status()
    job_id = r.json()["job_id"]
    while True:
        status = client.get(f"/api/init/upload/{job_id}").json()
        if status["state"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.05)
    took = time.perf_counter() - t0
    if status["state"] != "succeeded" or status["done"] != len(files):
        raise RuntimeError(f"the job ended {status}")
    return took


def singles(client, files: list[bytes]) -> float:
    t0 = time.perf_counter()
    for i, data in enumerate(files):
        r = client.post("/api/images", files={"file": (f"s{i}.jpg", data, "image/jpeg")})
        if r.status_code != 201:
            raise RuntimeError(f"upload answered {r.status_code}: {r.text}")
    return time.perf_counter() - t0


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
            singles(c, [photo(10_000 + i) for i in range(3)])  # warm-up: first embeds, the writer, the cache
            for r in range(args.rounds):
                seed = 1000 * (r + 1)
                jobs.append(one_job(c, [photo(seed + i) for i in range(args.files)]))
                single.append(singles(c, [photo(seed + 500 + i) for i in range(args.files)]))
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
    sys.exit(main())
