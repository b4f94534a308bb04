"""Issue 3 benchmark: one user's vector search in the gallery at 100k and 1M 512-d rows (100 users),
ANN index against a flat scan, recall@10 against numpy, and upsert rows/s; never run by pytest.

    .venv/bin/python -m benchmarks.bench_gallery                     # 100k then 1M; writes a section of RESULTS.md
    .venv/bin/python -m benchmarks.bench_gallery --rows 100000 --no-write
    .venv/bin/python -m benchmarks.bench_gallery --rows 1000000 --run 64 --no-write   # users' rows in runs of 64

Tables are kept under benchmarks/data/gallery/ (git-ignored) and reused when complete (--rebuild to
start again). Vectors are clustered unit vectors (1000 clusters, a 32-d spread per cluster, small
isotropic noise), made chunk by chunk from fixed seeds, so truth is recomputed without storing them.

Answers are checked before the section is written (benchmarks.checks): the table holds every row, each
search answers k distinct hits of the searched user only, the exact paths (flat, the vector cache) find
the true top 10 (recall@10 >= 0.99), and the probes' rows are all stored and all deleted again;
otherwise it exits 3 and writes nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python benchmarks/bench_gallery.py`
    sys.path.insert(0, str(REPO))

import pyarrow as pa  # noqa: E402

from benchmarks import results_md  # noqa: E402
from benchmarks.checks import check, check_hits, run  # noqa: E402

from storage.gallery import VECTOR_INDEX, Gallery  # noqa: E402
from storage.schema import arrow_schema, dedup_key  # noqa: E402
from storage.settings import StorageSettings  # noqa: E402

DATA = REPO / "benchmarks" / "data" / "gallery"
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION = "## Gallery search (issue 3)"
MODEL = "bench/clip-like"
CHUNK = 10_000  # rows per generated chunk: chunk i is the same in every run
K = 10


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Corpus:
    """Clustered unit vectors, as image embeddings are, made deterministically chunk by chunk."""

    def __init__(self, dim: int, clusters: int = 1000, spread_rank: int = 32, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.dim, self.seed = dim, seed
        self.centers = _unit(rng.standard_normal((clusters, dim)))
        # Each cluster spreads along its own few directions, plus a little noise in all of them:
        # neighbours are then clearly nearer than the rest of their cluster (not a uniform ball).
        self.spread = rng.standard_normal((clusters, spread_rank, dim)).astype(np.float32) / np.sqrt(dim)

    def chunk(self, index: int, n: int = CHUNK) -> np.ndarray:
        return self._points(np.random.default_rng([self.seed, 1, index]), n)

    def _points(self, rng, n: int) -> np.ndarray:
        labels = rng.integers(0, len(self.centers), n)
        z = rng.standard_normal((n, self.spread.shape[1])).astype(np.float32) * (0.7 / np.sqrt(self.spread.shape[1]))
        x = self.centers[labels] + np.einsum("nr,nrd->nd", z, self.spread[labels])
        x += 0.15 * rng.standard_normal((n, self.dim)).astype(np.float32) / np.sqrt(self.dim)
        return _unit(x)

    def image_queries(self, n: int) -> np.ndarray:
        """Like a stored image (search by image)."""
        return self._points(np.random.default_rng([self.seed, 2]), n)

    def text_queries(self, n: int) -> np.ndarray:
        """Off the images' manifold, as a CLIP text vector is (cosine ~0.4 to its best images)."""
        rng = np.random.default_rng([self.seed, 3])
        near = self.centers[rng.integers(0, len(self.centers), n)]
        return _unit(near + 1.6 * _unit(rng.standard_normal((n, self.dim))))


def _unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


RUN = 1  # rows a user gets in a row before the next user's (--run): 1 interleaves users row by row


def user_of(i: int, users: int) -> str:
    return f"user{(i // RUN) % users:03d}"


def content_hash(i: int, user: str | None = None) -> str:
    return hashlib.sha256(f"{user or ''}{i}".encode()).hexdigest()


def rows_of(start: int, vectors: np.ndarray, users: int, user: str | None = None) -> list[dict]:
    return [{"img_id": f"{start + j:032x}", "user_id": user or user_of(start + j, users),
             "content_hash": content_hash(start + j, user),
             "image_uri": f"bench/{start + j}", "width": 512, "height": 512, "source": "ingest", "vector": v}
            for j, v in enumerate(vectors)]


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


# -- one table size -----------------------------------------------------------------------------------
def bulk_append(gallery: Gallery, corpus: Corpus, start: int, rows: int, users: int) -> float:
    """Rows start..rows appended as Arrow in the gallery's schema, a chunk per commit, without
    Gallery.upsert's per-row validation and key lookups (only to build a big table in time)."""
    t0, schema = time.perf_counter(), arrow_schema(corpus.dim)
    now = pa.scalar(int(time.time() * 1e6), type=pa.timestamp("us", tz="UTC"))
    for c in range(start // CHUNK, (rows + CHUNK - 1) // CHUNK):
        idx = range(c * CHUNK, min(rows, (c + 1) * CHUNK))
        vecs = corpus.chunk(c)[: len(idx)]
        users_ = [user_of(i, users) for i in idx]
        hashes = [content_hash(i) for i in idx]
        n = len(idx)
        cols = {"img_id": [f"{i:032x}" for i in idx], "user_id": users_, "content_hash": hashes,
                "image_uri": [f"bench/{i}" for i in idx], "display_uri": [""] * n, "width": [512] * n,
                "height": [512] * n, "source": ["ingest"] * n, "caption": [""] * n, "description": [""] * n,
                "embed_model": [MODEL] * n, "meta": ["{}"] * n, "search_text": [""] * n,
                "dedup_key": [dedup_key(u, h) for u, h in zip(users_, hashes)]}
        arrays = []
        for f in schema:
            if f.name == "vector":
                arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), corpus.dim))
            elif f.name == "created_at":
                arrays.append(pa.array([now.value] * n, type=f.type))
            else:
                arrays.append(pa.array(cols[f.name], type=f.type))
        gallery.table.add(pa.Table.from_arrays(arrays, schema=schema))
        if (c + 1) * CHUNK % 100_000 == 0:
            log(f"appended up to {(c + 1) * CHUNK:,} rows")
    return time.perf_counter() - t0


def load(gallery: Gallery, corpus: Corpus, rows: int, users: int, batch: int) -> dict:
    """Every row through Gallery.upsert, `batch` rows per call, as a bulk writer would."""
    t0, done, slow = time.perf_counter(), 0, []
    while done < rows:
        n = min(batch, rows - done)
        vecs = np.concatenate([corpus.chunk(c) for c in range(done // CHUNK, (done + n - 1) // CHUNK + 1)])
        offset = done - (done // CHUNK) * CHUNK
        t = time.perf_counter()
        gallery.upsert(rows_of(done, vecs[offset:offset + n], users))
        slow.append(time.perf_counter() - t)
        done += n
        if done % 50_000 == 0 or done == rows:
            log(f"loaded {done:,} rows, {done / (time.perf_counter() - t0):,.0f} rows/s, "
                f"last batch {slow[-1]:.2f}s, slowest {max(slow):.2f}s")
    total = time.perf_counter() - t0
    return {"rows": rows, "batch": batch, "seconds": round(total, 1), "rows_per_s": round(rows / total),
            "batch_p50_s": round(percentile(slow, 50), 3), "batch_max_s": round(max(slow), 2)}


def small_upserts(gallery: Gallery, dim: int) -> dict:
    """Rows/s of the real write paths on the full table: one upload (1 row), one ingestion commit (64)."""
    rng = np.random.default_rng(99)
    out = {}
    for batch, calls in ((1, 40), (64, 10)):
        vecs = _unit(rng.standard_normal((batch * calls, dim)))
        rows = rows_of(10**9 + batch * 10**6, vecs, 1, user="writer-probe")
        times = []
        for i in range(calls):
            t = time.perf_counter()
            gallery.upsert(rows[i * batch:(i + 1) * batch])
            times.append(time.perf_counter() - t)
        out[f"batch_{batch}"] = {"rows_per_s": round(batch * calls / sum(times), 1),
                                 "p50_ms": round(1000 * percentile(times, 50), 1)}
    sent = sum(batch * calls for batch, calls in ((1, 40), (64, 10)))
    check(gallery.count("writer-probe") == sent, f"small upserts: {gallery.count('writer-probe')} rows stored of {sent}")
    gallery.delete_user("writer-probe")
    check(gallery.count("writer-probe") == 0, "small upserts: the probe's rows outlived delete_user")
    return out


def vector_cache(gallery: Gallery, truth, queries: np.ndarray, dim: int) -> dict:
    """What the default (cached) path costs when it is not a plain hit: a user's first search, which
    loads the user's vectors, and a search right after another user's write moved the table version."""
    user_ids = list(truth)
    loads = []
    for n, user in enumerate(user_ids):
        gallery._vectors.drop(user)
        t = time.perf_counter()
        hits = gallery.search(user, queries[n], k=K)
        loads.append(time.perf_counter() - t)
        check_hits(f"{user}'s first search", hits, K)
    rows = rows_of(2 * 10**9, _unit(np.random.default_rng(7).standard_normal((20, dim))), 1, user="cache-probe")
    after = []
    for i, row in enumerate(rows):
        gallery.upsert([row])
        t = time.perf_counter()
        hits = gallery.search(user_ids[i % len(user_ids)], queries[i], k=K)
        after.append(time.perf_counter() - t)
        check_hits("a search after another user's write", hits, K)
    check(gallery.count("cache-probe") == len(rows), f"cache probe: {gallery.count('cache-probe')} rows of {len(rows)}")
    gallery.delete_user("cache-probe")
    check(gallery.count("cache-probe") == 0, "cache probe: the probe's rows outlived delete_user")
    return {"load_p50_ms": round(1000 * percentile(loads, 50), 1), "load_max_ms": round(1000 * max(loads), 1),
            "after_write_p50_ms": round(1000 * percentile(after, 50), 1),
            "after_write_p95_ms": round(1000 * percentile(after, 95), 1),
            "mb_per_user": round(gallery._vectors.get(user_ids[0]).nbytes / 2**20, 1)}


def truth_for(corpus: Corpus, rows: int, users: int, user_ids: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each probed user's vectors and img_ids, regenerated from the seeds."""
    wanted = {u: ([], []) for u in user_ids}
    for c in range((rows + CHUNK - 1) // CHUNK):
        vecs = corpus.chunk(c)[: rows - c * CHUNK]
        idx = np.arange(c * CHUNK, c * CHUNK + len(vecs))
        for u in user_ids:
            m = ((idx // RUN) % users) == int(u[4:])
            wanted[u][0].append(vecs[m])
            wanted[u][1].append(idx[m])
    return {u: (np.concatenate(v), np.concatenate(i)) for u, (v, i) in wanted.items()}


def measure(gallery: Gallery, truth, queries: np.ndarray, exact: bool | None) -> dict:
    """p50/p95 latency and recall@10 of one way of searching, over queries spread across users."""
    user_ids = list(truth)
    for q in queries[:5]:  # warm the page cache and the index's partitions
        gallery.search(user_ids[0], q, k=K, exact=exact)
    times, cpu, recalls = [], [], []
    for n, q in enumerate(queries):
        user = user_ids[n % len(user_ids)]
        vecs, idx = truth[user]
        best = idx[np.argsort(-(vecs @ q))[:K]]
        t, c = time.perf_counter(), time.process_time()
        hits = gallery.search(user, q, k=K, exact=exact)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)  # every thread of this process: less hostage to other load
        check_hits(f"search {n} of {user} (exact={exact})", hits, K)
        check({h["user_id"] for h in hits} == {user}, f"search {n} of {user} answered rows of {[h['user_id'] for h in hits]}")
        recalls.append(len({f"{i:032x}" for i in best} & {h["img_id"] for h in hits}) / K)
    if exact is not False:  # a flat scan, or the vector cache ranking in numpy: exact, so it finds the truth
        check(np.mean(recalls) >= 0.99, f"exact={exact} search found the true top {K} at recall {np.mean(recalls):.3f}")
    return {"p50_ms": round(1000 * percentile(times, 50), 1), "p95_ms": round(1000 * percentile(times, 95), 1),
            "cpu_p50_ms": round(1000 * percentile(cpu, 50), 1), "recall_at_10": round(float(np.mean(recalls)), 3), "min_recall": round(float(np.min(recalls)), 2)}


def run_size(args, rows: int) -> dict:
    corpus = Corpus(args.dim)
    path = DATA / (f"{rows}x{args.dim}" + (f"-run{RUN}" if RUN > 1 else ""))
    base = StorageSettings(lancedb_uri=str(path), ann_max_iterations=args.max_iterations,
                           ann_num_partitions=args.partitions, ann_num_sub_vectors=args.sub_vectors,
                           optimize_every_rows=args.optimize_every)
    marker = path / "complete.json"
    result: dict = {"rows": rows, "dim": args.dim, "users": args.users, "run": RUN}
    if args.rebuild or not marker.exists():
        shutil.rmtree(path, ignore_errors=True)
        # The index is trained once on every row (ann_min_rows out of reach while loading).
        loading = base.model_copy(update={"ann_min_rows": 10**12})
        gallery = Gallery.open(loading, dim=args.dim, embed_model=MODEL)
        log(f"{rows:,} rows: loading")
        through_upsert = min(rows, args.upsert_rows)
        result["load"] = load(gallery, corpus, through_upsert, args.users, args.batch)
        if rows > through_upsert:
            result["load"]["bulk_rows"] = rows - through_upsert
            result["load"]["bulk_s"] = round(bulk_append(gallery, corpus, through_upsert, rows, args.users), 1)
            t = time.perf_counter()
            gallery.optimize()  # compacts the appended chunks and folds them into the scalar/FTS indexes
            result["load"]["bulk_optimize_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        gallery.upkeep.build_ann_index()
        result["index_build_s"] = round(time.perf_counter() - t, 1)
        log(f"index built in {result['index_build_s']}s")
        t = time.perf_counter()
        gallery.optimize()
        result["optimize_s"] = round(time.perf_counter() - t, 1)
        seg = gallery.table.to_lance().stats.index_stats(VECTOR_INDEX)["indices"][0]
        result["index"] = {"type": seg["index_type"], "partitions": seg["num_partitions"],
                           "sub_vectors": seg["sub_index"].get("num_sub_vectors"),
                           "max_iterations": base.ann_max_iterations}
        marker.write_text(json.dumps({k: result[k] for k in ("load", "index_build_s", "optimize_s", "index")}))
    else:
        result.update(json.loads(marker.read_text()))
        result["reused"] = True
    gallery = Gallery.open(base, dim=args.dim, embed_model=MODEL)
    check(gallery.count() == rows, f"the table holds {gallery.count()} rows of {rows}")
    check(VECTOR_INDEX in {ix.name for ix in gallery.table.list_indices()}, f"the table has no {VECTOR_INDEX} index")

    user_ids = [user_of(i * RUN, args.users) for i in range(args.probe_users)]  # distinct users
    truth = truth_for(corpus, rows, args.users, user_ids)
    result["rows_per_user"] = int(np.mean([len(v[1]) for v in truth.values()]))
    sets = {"image": corpus.image_queries(args.queries), "text": corpus.text_queries(args.queries)}
    searches: dict = {}
    for name, queries in sets.items():
        searches[f"flat/{name}"] = measure(gallery, truth, queries, exact=True)
        log(f"flat {name}: {searches[f'flat/{name}']}")
        for nprobes, refine in args.grid:
            gallery.settings = base.model_copy(update={"ann_nprobes": nprobes, "ann_refine_factor": refine})
            key = f"ann nprobes={nprobes} refine={refine}/{name}"
            searches[key] = measure(gallery, truth, queries, exact=False)
            log(f"{key}: {searches[key]}")
        gallery.settings = base
        searches[f"gallery default (vector cache)/{name}"] = measure(gallery, truth, queries, exact=None)
    result["searches"] = searches
    result["vector_cache"] = vector_cache(gallery, truth, sets["image"], args.dim)
    log(f"vector cache: {result['vector_cache']}")
    result["default_path"] = "ann" if gallery._use_ann(user_ids[0]) else "flat"
    result["default_settings"] = {"ann_nprobes": base.ann_nprobes, "ann_refine_factor": base.ann_refine_factor,
                                  "flat_search_max_rows": base.flat_search_max_rows,
                                  "vector_cache_mb": base.vector_cache_mb}
    result["small_upserts"] = small_upserts(gallery, args.dim)
    log(f"small upserts: {result['small_upserts']}")
    (DATA / f"results-{rows}.json").write_text(json.dumps(result, indent=1))
    return result


# -- report -------------------------------------------------------------------------------------------
def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) // 2**20
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gb": mem, "python": platform.python_version(),
            "lancedb": version("lancedb"), "pylance": version("pylance"), "pyarrow": version("pyarrow"),
            "numpy": version("numpy"), "load_avg_at_start": round(os.getloadavg()[0], 1)}


def render(results: list[dict], info: dict, command: str) -> str:
    lines = [SECTION, "",
             f"Machine: {info['nproc']} cores ({info['cpu']}), {info['ram_gb']} GB RAM, shared with other "
             f"test runs (load average {info['load_avg_at_start']} at start); Python {info['python']}, "
             f"lancedb {info['lancedb']}, pylance {info['pylance']}, pyarrow {info['pyarrow']}, numpy {info['numpy']}.",
             f"Command: `{command}`", ""]
    for r in results:
        ix = r["index"]
        load = r.get("load", {})
        layout = (f"rows stored in runs of {r['run']} per user, as ingestion commits them" if r.get("run", 1) > 1
                  else "users interleaved row by row")
        lines += [f"### {r['rows']:,} rows x {r['dim']}-d, {r['users']} users ({r['rows_per_user']:,} rows per user; "
                  f"{layout})", "",
                  f"- Load through `Gallery.upsert`, {load.get('batch')} rows a call: {load.get('rows_per_s'):,} rows/s "
                  f"({load.get('seconds')} s for {load.get('rows'):,} rows; slowest call {load.get('batch_max_s')} s)"
                  + (f", then {load['bulk_rows']:,} rows appended as Arrow in {load['bulk_s']} s and optimized in "
                     f"{load['bulk_optimize_s']} s (to build the table in time; upsert's validation skipped). "
                     if load.get("bulk_rows") else ". ") +
                  f"{ix['type']} index ({ix['partitions']} partitions, {ix['sub_vectors']} sub-vectors, "
                  f"{ix['max_iterations']} k-means iterations) built in {r.get('index_build_s')} s, optimize "
                  f"{r.get('optimize_s')} s" + (" (table reused from an earlier run)." if r.get("reused") else "."),
                  f"- Upserts into the full table: 1 row a call {r['small_upserts']['batch_1']['rows_per_s']} rows/s "
                  f"(p50 {r['small_upserts']['batch_1']['p50_ms']} ms), 64 rows a call "
                  f"{r['small_upserts']['batch_64']['rows_per_s']} rows/s (p50 {r['small_upserts']['batch_64']['p50_ms']} ms).",
                  f"- The gallery's default path: the replica's vector cache (vector_cache_mb="
                  f"{r['default_settings'].get('vector_cache_mb')}; {r['vector_cache']['mb_per_user']} MB for this user). "
                  f"A user's first search loads the user's vectors: p50 {r['vector_cache']['load_p50_ms']} ms "
                  f"(max {r['vector_cache']['load_max_ms']} ms). A search right after a write by another user "
                  f"(the table version moved; two counts through the user_id index): p50 "
                  f"{r['vector_cache']['after_write_p50_ms']} / p95 {r['vector_cache']['after_write_p95_ms']} ms. "
                  f"Without the cache the pick is **{r['default_path']}** "
                  f"(flat_search_max_rows={r['default_settings']['flat_search_max_rows']}, "
                  f"nprobes={r['default_settings']['ann_nprobes']}, refine_factor={r['default_settings']['ann_refine_factor']}).",
                  "", "| search (k=10, one user) | image-like queries: p50 / p95 ms (CPU p50 ms) | recall@10 (min) | "
                  "text-like queries: p50 / p95 ms (CPU p50 ms) | recall@10 (min) |", "|---|---|---|---|---|"]
        names = sorted({k.rsplit("/", 1)[0] for k in r["searches"]}, key=lambda n: (not n.startswith("flat"),
                                                                                      n.startswith("gallery"), n))
        for n in names:
            cells = []
            for qs in ("image", "text"):
                s = r["searches"][f"{n}/{qs}"]
                cells += [f"{s['p50_ms']} / {s['p95_ms']} ({s.get('cpu_p50_ms')})", f"{s['recall_at_10']} ({s['min_recall']})"]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_section(text: str) -> None:
    results_md.write_section(SECTION, text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--probe-users", type=int, default=5, help="users whose searches are timed")
    p.add_argument("--queries", type=int, default=100, help="queries per query set")
    p.add_argument("--batch", type=int, default=5000, help="rows per upsert while loading")
    p.add_argument("--upsert-rows", type=int, default=100_000,
                   help="rows loaded through Gallery.upsert; the rest are appended as Arrow (see bulk_append)")
    p.add_argument("--optimize-every", type=int, default=StorageSettings().optimize_every_rows)
    p.add_argument("--max-iterations", type=int, default=StorageSettings().ann_max_iterations)
    p.add_argument("--partitions", type=int, default=None)
    p.add_argument("--sub-vectors", type=int, default=None)
    p.add_argument("--grid", type=lambda s: tuple(int(x) for x in s.split(",")), nargs="+",
                   default=[(10, 10), (20, 10), (20, 30), (40, 30)], help="nprobes,refine_factor pairs to time")
    p.add_argument("--run", type=int, default=1,
                   help="rows per user in a row: 1 interleaves users row by row (the worst case for a user's "
                        "scan); 64 is how ingestion commits them")
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--no-write", action="store_true", help="print the section instead of writing RESULTS.md")
    args = p.parse_args()
    global RUN
    RUN = args.run
    DATA.mkdir(parents=True, exist_ok=True)
    info = machine()
    results = []
    for rows in args.rows:
        results.append(run_size(args, rows))
    command = ".venv/bin/python -m benchmarks.bench_gallery " + " ".join(sys.argv[1:])
    text = render(results, info, command.strip())
    (DATA / "results-latest.json").write_text(json.dumps({"machine": info, "results": results}, indent=1))
    if args.no_write:
        print(text)
    else:
        write_section(text)
        log(f"wrote the section to {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    raise SystemExit(run(main))
