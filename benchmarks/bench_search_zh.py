"""Chinese-first search end to end: CLIP + the Writer's translation against a bilingual embedder read
directly (issue 15).

    .venv/bin/python -m benchmarks.bench_search_zh [--clients 16] [--queries 64] [--rows 10000] [--no-write]

Each mode is the local service started the README's way (`python -m deployments.local up`, tests'
`Cluster`: `ray start`, token auth, `serve deploy`) with full-size random-weight stand-ins:
  (a) CLIP ViT-B/32 (151 M) + the Writer (Qwen2.5-1.5B shape) translating every Chinese query, as before;
  (b) SigLIP 2 base/16-224 (375 M) reading the query as it is (enhance_search: null, so off).
The Describer and Painter are tiny (search never calls them). The user's gallery holds `--rows` rows in
each model's table (random unit vectors of the model's width and real captions, written before the
service starts: ranking cost does not depend on what the vectors mean). `--clients` clients send
distinct Chinese and English queries (half each) to `GET /api/search?k=10` over HTTP; the answer cache
is off (lru_size 0, no Redis), so every query is embedded, and translated in (a).

In the same run, in this process: text-encode alone (the SigLIP 2 stand-in, one query per call, one
torch thread as its replica has) and gallery-rank alone (`Gallery.search` of the same table with the
same hybrid full-text leg, k=10), each p50 over the same queries. Goal: (b) p50 <= 1.5x their sum,
and (a)/(b) >= 5x at p50.
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

import numpy as np

from benchmarks.results_md import publish
from benchmarks.texts import queries, varied_texts

SECTION = "## Chinese-first search: CLIP + translation against SigLIP 2 direct (issue 15)"
ROOT = Path(__file__).resolve().parents[1]
USER = "bench"


def fill(tmp: Path, model: Path, rows: int) -> None:
    """`rows` rows of USER in `model`'s table (written directly, before any service runs)."""
    from models import EmbedderConfig
    from pipelines.config import embedder_shape
    from storage.gallery import Gallery
    from storage.rows import new_row
    from storage.settings import StorageSettings

    dim, _ = embedder_shape(EmbedderConfig(model=str(model)))
    gallery = Gallery.open(StorageSettings(lancedb_uri=str(tmp / "lancedb")), dim=dim, embed_model=str(model))
    rng = np.random.default_rng(dim)
    captions = varied_texts(600) + [q + "，记录生活" for q in queries(400, "zh", seed=3)]
    for start in range(0, rows, 1000):
        vecs = rng.standard_normal((min(1000, rows - start), dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        gallery.upsert([new_row(user_id=USER, content_hash=f"{start + i:064x}", image_uri=f"u/{start + i}.jpg",
                                display_uri=f"u/{start + i}.d.jpg", width=640, height=480, source="upload",
                                vector=v, embed_model=str(model), caption=captions[(start + i) % len(captions)])
                        for i, v in enumerate(vecs)])
    gallery.optimize()


def drive(base: str, key: str, texts: list[str], clients: int) -> dict:
    import httpx

    async def main() -> dict:
        todo = list(enumerate(texts))
        lat: dict[int, float] = {}
        statuses: dict[int, int] = {}
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=900) as c:
            async def client():
                while todo:
                    i, q = todo.pop(0)
                    t0 = time.perf_counter()
                    r = await c.get("/api/search", params={"q": q, "k": 10})
                    lat[i] = time.perf_counter() - t0
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    if r.status_code == 200 and not r.json()["results"]:
                        statuses[-1] = statuses.get(-1, 0) + 1  # an empty answer for a user with rows
            t0 = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(clients)))
            wall = time.perf_counter() - t0
        ms = sorted(1000 * v for v in lat.values())
        zh = [1000 * lat[i] for i, q in enumerate(texts) if not q.isascii()]
        return {"p50": statistics.median(ms), "p99": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
                "p50_zh": statistics.median(zh), "rps": len(ms) / wall, "statuses": statuses}

    return asyncio.run(main())


def serve_mode(tmp: Path, data: Path, kit: Path, embedder: Path, texts: list[str], clients: int) -> dict:
    from tests.conftest import Cluster

    tmp.mkdir()
    cluster = Cluster(tmp, kit)

    def edit(app):
        args = app["args"]
        args["storage"]["lancedb_uri"] = str(data / "lancedb")  # the gallery filled before, for both modes
        args["embedder"]["model"]["model"] = str(embedder)
        args["writer"]["model"].update(num_threads=2, translate_max_new_tokens=16)
        tuning = next(d for d in app["deployments"] if d["name"] == "Ingress")["user_config"]
        tuning["caches"]["lru_size"] = 0
        tuning["timeouts"].update(search_s=900, writer_s=900, default_s=900)
        tuning["enhance_search"] = None

    cluster.write_config(edit)
    started = cluster.local("up")
    if started.returncode != 0:
        cluster.local("stop")
        raise RuntimeError(started.stdout[-3000:] + started.stderr[-3000:])
    try:
        import httpx

        key = cluster.key()
        for warm in ("warm-up 热身", "warm up"):  # first calls pay for lazy initialisation, not measured
            httpx.get(cluster.base + "/api/search", params={"q": warm, "k": 10},
                      headers={"Authorization": f"Bearer {key}"}, timeout=900)
        return drive(cluster.base, key, texts, clients)
    finally:
        cluster.local("stop")


def alone(tmp: Path, model: Path, texts: list[str]) -> dict:
    """Text-encode alone and gallery-rank alone, in this process, p50 ms."""
    import torch

    from models import Embedder, EmbedderConfig
    from storage.gallery import Gallery
    from storage.settings import StorageSettings

    torch.set_num_threads(1)
    e = Embedder(EmbedderConfig(model=str(model), num_threads=1, device="cpu"))
    e.warmup()
    enc, vectors = [], []
    for q in texts:
        t0 = time.perf_counter()
        vectors.append(e.embed_texts([q])[0])
        enc.append(1000 * (time.perf_counter() - t0))
    gallery = Gallery.open(StorageSettings(lancedb_uri=str(tmp / "lancedb"), vector_cache_mb=128), dim=e.dim,
                           embed_model=str(model))
    gallery.warm_up()
    gallery.search(USER, vectors[0], k=10, text=texts[0])
    rank = []
    for q, v in zip(texts, vectors):
        t0 = time.perf_counter()
        gallery.search(USER, v, k=10, text=q)
        rank.append(1000 * (time.perf_counter() - t0))
    return {"encode_p50": statistics.median(enc), "rank_p50": statistics.median(rank)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_search_zh")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--no-write", action="store_true")
    a = parser.parse_args(argv)
    from benchmarks.bench_embedders import KIT, ensure
    from models.kit import build
    from deployments.local import ensure_kit

    siglip, clip = ensure("embedder"), ensure("embedder_clip")
    if not (KIT / "writer" / "atelier_stand_in.json").is_file():
        print("building the full-size writer stand-in ...", file=sys.stderr, flush=True)
        build("writer", "full", KIT)
    tiny = ROOT / "checkpoints" / "tiny"
    ensure_kit(tiny)
    tmp = Path(tempfile.mkdtemp(prefix="bench-search-zh-"))
    kit = tmp / "kit"
    kit.mkdir()
    for role, target in (("embedder", siglip), ("writer", KIT / "writer"), ("describer", tiny / "describer"),
                         ("painter", tiny / "painter")):
        (kit / role).symlink_to(target, target_is_directory=True)
    data = tmp / "data"
    data.mkdir()
    for model in (clip, siglip):
        fill(data, model, a.rows)
    n = a.queries // 2
    texts = [q for pair in zip(queries(n, "zh", seed=21), queries(n, "en", seed=21)) for q in pair]
    direct = serve_mode(tmp / "b", data, kit, siglip, texts, a.clients)
    translated = serve_mode(tmp / "a", data, kit, clip, texts, a.clients)
    base = alone(data, siglip, texts)
    budget = base["encode_p50"] + base["rank_p50"]

    def row(name, r):
        st = ", ".join(f"{'empty' if k == -1 else k}: {v}" for k, v in sorted(r["statuses"].items()))
        return f"| {name} | {r['p50']:.0f} | {r['p99']:.0f} | {r['p50_zh']:.0f} | {r['rps']:.2f} | {st} |"

    lines = [
        SECTION, "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, no GPU; the local service (`deployments.local up`, "
        "serve_config.local.yaml's resources: one replica per role) with full-size random-weight stand-ins for the "
        f"embedders and the Writer (2 torch threads, 16 new tokens per translation: a real model's short answer), "
        f"tiny ones for the Describer and Painter. {a.rows:,} rows in the user's gallery per model (random unit "
        f"vectors, real captions), {a.clients} clients, {len(texts)} distinct queries (half Chinese), k=10, answer "
        "cache off.",
        f"Command: `.venv/bin/python -m benchmarks.bench_search_zh --clients {a.clients} --queries {a.queries} "
        f"--rows {a.rows}`", "",
        "| mode | p50 ms | p99 ms | p50 ms, Chinese queries | req/s | statuses |", "|---|---|---|---|---|---|",
        row("(a) CLIP ViT-B/32 + Writer translation (as before)", translated),
        row("(b) SigLIP 2 base/16-224, the query as it is", direct), "",
        f"In the same run, in-process: SigLIP 2 text-encode alone p50 {base['encode_p50']:.1f} ms, gallery-rank "
        f"alone (hybrid, k=10, {a.rows:,} rows) p50 {base['rank_p50']:.1f} ms: sum {budget:.1f} ms.", "",
        f"- (b) p50 / (encode + rank): **{direct['p50'] / budget:.2f}x** (goal <= 1.5x).",
        f"- (a) p50 / (b) p50: **{translated['p50'] / direct['p50']:.1f}x** (goal >= 5x); Chinese queries alone: "
        f"{translated['p50_zh'] / direct['p50_zh']:.1f}x.",
    ]
    publish(SECTION, lines, write=not a.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
