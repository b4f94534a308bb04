"""The near-duplicate check's cost per upload (issue 32): `POST /api/images` with the check against the same
upload without it, at gallery sizes.

    .venv/bin/python -m benchmarks.bench_duplicates [--sizes 10000,100000] [--uploads 40]

The whole HTTP surface runs in this process (deployments.assemble.in_process_app, as the fast test tier runs
it: auth, limits, intake, the Embedder, the gallery writer, LanceDB; no Ray), over the tiny random-weight kit
built here from code (its Embedder makes 48-d vectors), with serve_config.yaml's vector cache size and one
BLAS thread (OMP_NUM_THREADS=1, as the service's processes run). For each
size, one user's gallery is filled with that many rows (random unit vectors and random perceptual hashes,
written through the gallery's own writer, then optimized as the writer's upkeep does), then photos (320x240
JPEGs of distinct scenes) are uploaded in pairs, one with `on_duplicate=ignore` (no check) and one with
`on_duplicate=store` (the check: the photo's pHash and a ranking of the user's nearest photos in the replica's
vector cache, kept up to date with the replica's own writes). The per-upload
p50 of each and their ratio; the goal is that the check adds at most 10% to an upload's p50.

Answers first (benchmarks.checks): every upload stored anew (201), `near_duplicates` null without the check
and empty with it (the scenes are distinct); a planted copy of a new photo (another row with its pHash, its
embedding nudged) is found as a `same_picture` and a planted burst (a row with its embedding, another hash) as a
`near_shot`; the gallery ends with every row once. Otherwise it exits 3 and writes nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

# One BLAS thread, as every process of the service runs (deployments/local.py, Ray's workers): numpy's default of a
# thread per core leaves them spinning after each ranking, on the cores the rest of the upload needs.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402 - after the thread count, which numpy's BLAS reads when it loads

from benchmarks.checks import check, run
from benchmarks.results_md import publish
from tests.support.sample_photos import encoded, scene

SECTION = "## Near-duplicate check per upload"
USER = "bench-dup"


# The tiny kit's embedder has random weights: two different scenes reach cosine 0.99 under it (300 scenes: 237
# pairs above 0.95), so with a real model's threshold its uploads would find "near shots" a real model never
# would. Set at 0.999 for it, the uploads below find nothing, as most uploads to a real gallery do, and what
# is measured is the check itself: the ranking, the comparisons, the pHash.
TINY_NEAR_SHOT = 0.999


def photo(seed: int) -> bytes:
    """A distinct photo (a scene of coloured shapes, 320x240 JPEG): an upload with nothing like it in the gallery,
    as most are. The tiny embedder maps JPEGs of noise all alike, which would make every upload a near shot."""
    return encoded(scene(seed), quality=85)


def unit(rng, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def row(model: str, n: int, vector, phash: str) -> dict:
    from storage.rows import new_row

    return new_row(user_id=USER, content_hash=f"{n:064x}", image_uri=f"u/x/{n}.jpg", display_uri="", width=320,
                   height=240, source="ingest", vector=vector, embed_model=model, meta={"phash": phash})


def fill(lib, size: int, seed: int) -> None:
    """`size` rows of the user through the gallery's writer, in batches (their blob keys are never read)."""
    rng = np.random.default_rng(seed)
    for start in range(0, size, 5000):
        n = min(5000, size - start)
        vectors = unit(rng, n, lib.gallery.dim)
        lib.gallery.upsert([row(lib.embed_model, seed * 10**9 + start + i, vectors[i],
                                f"{int(rng.integers(0, 2**63)):016x}") for i in range(n)])
    lib.gallery.optimize()  # what the writer's upkeep does as a gallery grows: indexes, compaction


def kit(out: Path) -> dict:
    """The tiny kit built and its four roles loaded, as the in-process test tier loads them."""
    import torch

    from models import (Describer, DescriberConfig, Embedder, EmbedderConfig, Painter, PainterConfig, Writer,
                        WriterConfig)
    from models.kit import build

    torch.set_num_threads(1)
    roles = {}
    for cls, cfg in ((Embedder, EmbedderConfig), (Writer, WriterConfig), (Describer, DescriberConfig),
                     (Painter, PainterConfig)):
        build(cls.role, "tiny", out, seed=0)
        roles[cls.role] = cls(cfg(model=str(out / cls.role), num_threads=1))
        roles[cls.role].warmup()
    return roles


def timed() -> list[float]:
    """Seconds of each call of the service's near-duplicate check (every Library's), appended as they end."""
    from storage.library import Library

    seconds: list[float] = []
    check = getattr(Library.near_duplicates, "untimed", Library.near_duplicates)  # one timer, not one per size

    async def near_duplicates(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return await check(self, *args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - t)

    near_duplicates.untimed = check
    Library.near_duplicates = near_duplicates
    return seconds


def served_cache_mb() -> int:
    """The replica's vector cache as serve_config.yaml sizes it (a 100k-photo user fits it; StorageSettings'
    smaller default, for a laptop, would send that user's check to the table instead)."""
    import yaml

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "serve_config.yaml").read_text())
    return int(config["applications"][0]["args"]["storage"]["vector_cache_mb"])


def measure(size: int, uploads: int, roles: dict, tmp: Path, seed: int) -> dict:
    from fastapi.testclient import TestClient
    from PIL import Image

    from deployments.assemble import in_process_app
    from deployments.config import IngressSpec
    from deployments.http.auth import key_store
    from deployments.service.models import LocalModels
    from deployments.settings import ServiceSettings
    from storage.duplicates import perceptual_hash
    from storage.library import Library
    from storage.settings import StorageSettings

    embedder = roles["embedder"]
    probe = embedder.image_vector(Image.new("RGB", (8, 8)))
    model, dim = probe.model, len(probe.values)
    storage = StorageSettings(lancedb_uri=str(tmp / "lancedb"), blob_root=str(tmp / "blobs"),
                              vector_cache_mb=served_cache_mb(),
                              near_shot_cosine={"default": 0.95, model: TINY_NEAR_SHOT})
    lib = Library(storage, dim=dim, embed_model=model, writer="local")
    t0 = time.perf_counter()
    fill(lib, size, seed)
    print(f"{size} rows written and optimized in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    settings = ServiceSettings(keys_uri=str(tmp / "lancedb"), url_secret_file=str(tmp / "url_secret"))
    key = key_store(settings).add(USER)[1]
    app = in_process_app(LocalModels(*(roles[r] for r in ("embedder", "writer", "describer", "painter"))),
                         ingress=IngressSpec(), storage=storage, settings=settings)
    auth = {"Authorization": f"Bearer {key}"}
    took: dict[str, list[float]] = {"ignore": [], "store": []}
    check_s = timed()  # the check's own step in each upload (Library.near_duplicates), to tell it from the rest
    with TestClient(app) as c:
        def upload(data: bytes, mode: str, label: str | None = None) -> dict:
            t = time.perf_counter()
            r = c.post("/api/images", files={"file": ("p.jpg", data, "image/jpeg")}, data={"on_duplicate": mode},
                       headers=auth)
            took.setdefault(label or mode, []).append(time.perf_counter() - t)
            check(r.status_code == 201, f"an upload ({mode}) answered {r.status_code}: {r.text[:200]}")
            return r.json()

        for i in range(3):  # the first calls load the user and warm the path: not counted
            upload(photo(seed * 1000 + 900 + i), "store")
        took = {"ignore": [], "store": []}
        del check_s[:]
        for i in range(uploads):
            for mode in ("ignore", "store"):
                got = upload(photo(seed * 1000 + 2 * i + (mode == "store")), mode)
                check(got["near_duplicates"] == (None if mode == "ignore" else []),
                      f"near_duplicates with {mode}: {got}")
        # Uploads that do find something: a new photo, then a smaller re-encoded copy of it, a same picture of the
        # row this replica has just written, which the check proves (by key: no search took it yet) before it
        # reports it. Timed: the copies.
        checks_before = len(check_s)
        copies = max(1, uploads // 3)
        for i in range(copies):
            original = scene(seed * 1000 + 5000 + i)
            stored = upload(encoded(original, quality=85), "store", "original")
            got = upload(encoded(original.resize((240, 180)), quality=70), "store", "copy")
            check([(d["img_id"], d["kind"]) for d in got["near_duplicates"]] == [(stored["img_id"], "same_picture")],
                  f"a copy was not found as the same picture of its original: {got['near_duplicates']}")
        copy_checks = check_s[checks_before:][1::2]
        # The check's answers: a planted copy and a planted burst of a new photo are found, with their reasons.
        data = photo(seed * 1000 + 999)
        image = lib.intake.decode(data)
        phash, vector = perceptual_hash(image.model_image), embedder.image_vector(image.model_image).values
        far = f"{int(phash, 16) ^ 0xFFFF_FFFF_0000_0000:016x}"  # 32 bits away: not the same picture
        rng = np.random.default_rng(seed)
        copy = np.asarray(vector, np.float32) + 0.02 * unit(rng, 1, dim)[0]  # a copy's embedding: all but the same
        planted = lib.gallery.upsert([row(model, 10**12, copy / np.linalg.norm(copy), phash),
                                      row(model, 10**12 + 1, np.asarray(vector, np.float32), far)])["rows"]
        near = {d["img_id"]: d["kind"] for d in upload(data, "store")["near_duplicates"]}
        check(near.get(planted[0]["img_id"]) == "same_picture", f"the planted copy was not found as one: {near}")
        check(near.get(planted[1]["img_id"]) == "near_shot", f"the planted burst was not found as one: {near}")
        check(lib.gallery.count(USER) == size + 3 + 2 * uploads + 2 * copies + 3,
              "the gallery does not hold every row once")
    took["store"].pop()  # the planted photo's upload
    check_s.pop()
    return {"plain": statistics.median(took["ignore"]), "checked": statistics.median(took["store"]),
            "check": statistics.median(check_s[:checks_before]), "copy": statistics.median(took["copy"]),
            "copy_check": statistics.median(copy_checks), "dim": dim}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_duplicates", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="gallery sizes (rows of the one user), comma-separated")
    parser.add_argument("--uploads", type=int, default=40, help="uploads with and without the check, per size")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        roles = kit(Path(tmp) / "kit")
        for n, size in enumerate(int(s) for s in args.sizes.split(",")):
            rows.append((size, measure(size, args.uploads, roles, Path(tmp) / f"g{n}", seed=n + 1)))
    dim = rows[0][1]["dim"]
    lines = [
        SECTION, "",
        f"`POST /api/images` over the in-process HTTP surface (tiny random-weight kit, its Embedder's {dim}-d "
        f"vectors; no Ray), one user's gallery of each size (random vectors and hashes), {args.uploads} uploads "
        "with the check (`on_duplicate=store`) and without it (`ignore`), interleaved; 320x240 JPEGs of distinct "
        "scenes, the random-weight embedder's near-shot cosine set at 0.999 (it maps different scenes as close as "
        "0.99), so the uploads find nothing, as most do; serve_config.yaml's vector cache size; OMP_NUM_THREADS=1, as "
        "the service's processes.",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs. Command: "
        f"`.venv/bin/python -m benchmarks.bench_duplicates --sizes {args.sizes} --uploads {args.uploads}`.",
        "",
        "| photos in the gallery | upload p50, ms | upload + check p50, ms | with / without | the check's own step "
        "p50, ms |",
        "|---|---|---|---|---|",
        *(f"| {size:,} | {g['plain'] * 1000:.1f} | {g['checked'] * 1000:.1f} | {g['checked'] / g['plain']:.2f}x | "
          f"{g['check'] * 1000:.1f} |" for size, g in rows),
        "",
        "An upload that finds something: a re-encoded copy (240x180) of the photo uploaded just before it, reported "
        f"as its `same_picture` (proven first: by key, as no search took that row yet); {args.uploads // 3 or 1} "
        "copies per size.",
        "",
        "| photos in the gallery | upload p50 without the check, ms | a copy's upload p50, ms | ratio | "
        "its check's p50, ms |",
        "|---|---|---|---|---|",
        *(f"| {size:,} | {g['plain'] * 1000:.1f} | {g['copy'] * 1000:.1f} | {g['copy'] / g['plain']:.2f}x | "
          f"{g['copy_check'] * 1000:.1f} |" for size, g in rows),
        "",
        "Goal (issue 32): the check adds at most 10% to an upload's p50 (with / without <= 1.10).",
    ]
    publish(SECTION, lines, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
