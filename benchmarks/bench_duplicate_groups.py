"""`GET /api/duplicates` of a large gallery (issue 32): how long one user's groups take to list.

    .venv/bin/python -m benchmarks.bench_duplicate_groups [--size 100000] [--every 20] [--calls 10]

The HTTP surface runs in this process over the tiny kit (as benchmarks.bench_duplicates). One user's gallery of
`--size` rows (random vectors and hashes) in which every `--every`-th photo was found a same picture of the one
before it at upload (its row keeps the pair in `meta.near`, as the upload's check leaves it): size / every
groups of two. Timed, `--calls` times: after an upload (a distinct scene, checked as uploads are),
`GET /api/duplicates?limit=20` (the first page) and the next page (`?limit=100` from its cursor); after a caption
edit, the first page.

Answers first (benchmarks.checks): the first page holds 20 groups of two photos with a keeper each and a cursor
to go on; the first pages after the upload (photos from the cache) and after the edit (from the table) are the
same groups; the user has exactly size / every groups. Otherwise it exits 3 and writes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # as the service's processes run (benchmarks.bench_duplicates)

import numpy as np  # noqa: E402 - after the thread count, which numpy's BLAS reads when it loads

from benchmarks.bench_duplicates import TINY_NEAR_SHOT, USER, kit, photo, served_cache_mb, unit  # noqa: E402
from benchmarks.checks import check, run  # noqa: E402
from benchmarks.results_md import publish  # noqa: E402

SECTION = "## Duplicate groups of a large gallery"


def fill(lib, size: int, every: int) -> None:
    from storage.rows import new_row

    rng = np.random.default_rng(1)
    for start in range(0, size, 5000):
        n = min(5000, size - start)
        vectors = unit(rng, n, lib.gallery.dim)
        rows = []
        for i in range(n):
            meta = {"phash": f"{int(rng.integers(0, 2**63)):016x}"}
            if (start + i) % every == every - 1:
                meta["near"] = [[rows[-1]["img_id"], "same_picture", 1]]
            rows.append(new_row(user_id=USER, content_hash=f"{start + i:064x}", image_uri=f"u/x/{start + i}.jpg",
                                display_uri="", width=320 + (start + i) % 2, height=240, source="upload",
                                vector=vectors[i], embed_model=lib.embed_model, meta=meta))
        lib.gallery.upsert(rows)
    lib.gallery.optimize()


def main(argv: list[str] | None = None) -> int:
    from fastapi.testclient import TestClient
    from PIL import Image

    from deployments.assemble import in_process_app
    from deployments.config import IngressSpec
    from deployments.http.auth import key_store
    from deployments.service.models import LocalModels
    from deployments.settings import ServiceSettings
    from storage.library import Library
    from storage.settings import StorageSettings

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_duplicate_groups", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    took: dict[str, list[float]] = {"upload": [], "next": [], "edit": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        roles = kit(tmp / "kit")
        probe = roles["embedder"].image_vector(Image.new("RGB", (8, 8)))
        storage = StorageSettings(lancedb_uri=str(tmp / "lancedb"), blob_root=str(tmp / "blobs"),
                                  vector_cache_mb=served_cache_mb(),
                                  near_shot_cosine={"default": 0.95, probe.model: TINY_NEAR_SHOT})
        lib = Library(storage, dim=len(probe.values), embed_model=probe.model, writer="local")
        t0 = time.perf_counter()
        fill(lib, args.size, args.every)
        print(f"{args.size} rows written in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        settings = ServiceSettings(keys_uri=str(tmp / "lancedb"), url_secret_file=str(tmp / "url_secret"))
        auth = {"Authorization": f"Bearer {key_store(settings).add(USER)[1]}"}
        app = in_process_app(LocalModels(*(roles[r] for r in ("embedder", "writer", "describer", "painter"))),
                             ingress=IngressSpec(), storage=storage, settings=settings)
        with TestClient(app) as c:
            first = c.get("/api/duplicates", params={"limit": 20}, headers=auth)
            check(first.status_code == 200, f"GET /api/duplicates answered {first.status_code}: {first.text[:200]}")
            page = first.json()
            check(len(page["groups"]) == 20 and page["next_cursor"] is not None, "the first page is not 20 groups")
            check(all(len(g["members"]) == 2 and g["keep"] in {m["img_id"] for m in g["members"]}
                      for g in page["groups"]), "a group is not two photos with a keeper among them")
            some = page["groups"][0]["members"][0]["img_id"]

            def listed(what: str, limit: int, cursor: str | None = None) -> dict:
                t = time.perf_counter()
                r = c.get("/api/duplicates", params={"limit": limit, **({"cursor": cursor} if cursor else {})},
                          headers=auth)
                took[what].append(time.perf_counter() - t)
                check(r.status_code == 200 and len(r.json()["groups"]) == limit, f"limit {limit}: {r.text[:200]}")
                return r.json()

            for n in range(args.calls):
                # A write first, so the first page computes the groups (the next pages of that listing reuse
                # them): a new photo (the usual write), then a caption edit (this replica drops its cached view
                # of the user: the photos the pairs name are read from the table).
                up = c.post("/api/images", files={"file": ("p.jpg", photo(7000 + n), "image/jpeg")}, headers=auth)
                check(up.status_code == 201 and up.json()["near_duplicates"] == [],
                      f"the upload answered {up.status_code}: {up.text[:200]}")
                cached = listed("upload", 20)
                listed("next", 100, cached["next_cursor"])
                check(c.patch(f"/api/images/{some}", json={"caption": f"edit {n}"}, headers=auth).status_code == 200,
                      "the caption edit failed")
                read = listed("edit", 20)
                # The same groups whether their photos came from the replica's cached view or from the table.
                check([(g["group"], [m["img_id"] for m in g["members"]], g["keep"]) for g in cached["groups"]] ==
                      [(g["group"], [m["img_id"] for m in g["members"]], g["keep"]) for g in read["groups"]],
                      "the cached view and the table list different groups")
        groups = asyncio.run(lib.duplicate_groups(USER))
        check(len(groups) == args.size // args.every, f"{len(groups)} groups, not {args.size // args.every}")
    lines = [
        SECTION, "",
        f"One user's gallery of {args.size:,} photos, every {args.every}th a same picture of the one before "
        f"({args.size // args.every:,} groups of two); `GET /api/duplicates` over the in-process HTTP surface "
        f"(tiny kit, no Ray), {args.calls} calls per page size. Machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs. Command: `.venv/bin/python -m benchmarks.bench_duplicate_groups --size {args.size} "
        f"--every {args.every} --calls {args.calls}`.",
        "",
        "| page | p50, ms | max, ms |",
        "|---|---|---|",
        *(f"| {what} | {statistics.median(t) * 1000:.0f} | {max(t) * 1000:.0f} |"
          for what, t in zip(("the first page after an upload (limit=20)", "its next page (limit=100)",
                              "the first page after a caption edit (limit=20)"), took.values())),
        "",
        "The first page after the table moved reads the user's rows that keep pairs, takes the photos they name "
        "from the replica's cached view of the user (proven still in the table; from the table when the view is "
        "not there, as after this replica's own caption edit), and groups them. The listing's next pages reuse "
        "those groups while the table has not moved (storage.library `duplicate_groups`). serve_config.yaml's "
        "vector cache size; OMP_NUM_THREADS=1, as the service's processes.",
    ]
    publish(SECTION, lines, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
