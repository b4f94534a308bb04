"""One-row upserts (one upload each) into a fresh gallery: p50 per 200 rows as the table grows,
with compaction every N inserting commits; never run by pytest. It prints, never writes RESULTS.md, and
exits 3 (benchmarks.checks) unless the table holds every row sent, once.

    .venv/bin/python -m benchmarks.bench_upserts --every-commits 1000000   # rows-only compaction (every 5,000 rows)
    .venv/bin/python -m benchmarks.bench_upserts --every-commits 50        # the default
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid

import numpy as np

from benchmarks.checks import check, run
from storage.gallery import Gallery
from storage.settings import StorageSettings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1200)
    p.add_argument("--every-commits", type=int, default=StorageSettings().optimize_every_commits)
    p.add_argument("--dim", type=int, default=512)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-upserts-") as folder:
        settings = StorageSettings(lancedb_uri=folder, optimize_every_commits=args.every_commits)
        gallery = Gallery.open(settings, dim=args.dim, embed_model="bench/one-row")
        rng = np.random.default_rng(0)
        times, t0 = [], time.perf_counter()
        for i in range(args.rows):
            row = {"img_id": uuid.uuid4().hex, "user_id": "u1", "content_hash": f"{i:064x}", "image_uri": f"bench/{i}",
                   "width": 1, "height": 1, "source": "upload", "vector": rng.standard_normal(args.dim).astype(np.float32)}
            t = time.perf_counter()
            gallery.upsert([row])
            times.append(time.perf_counter() - t)
            if (i + 1) % 200 == 0 or i + 1 == args.rows:
                last = times[-200:]
                print(f"rows {i + 1}: p50 of the last {len(last)} {1000 * np.median(last):.0f} ms, "
                      f"max {1000 * max(last):.0f} ms", flush=True)
        check(gallery.count("u1") == gallery.count() == args.rows,
              f"the table holds {gallery.count()} rows ({gallery.count('u1')} of u1) of {args.rows} sent")
        print(f"every {args.every_commits} commits: {args.rows} rows in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    raise SystemExit(run(main))
