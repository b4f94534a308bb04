"""Backfill throughput against bulk ingestion of the same photos with the same model (issue 15).

    .venv/bin/python -m benchmarks.bench_backfill [--photos 1000] [--no-write]

On this 2-core box both jobs run at about 3.7 images/s, so the default 1,000 photos take about 10
minutes (500 took 5); the full-size SigLIP 2 stand-in is built first if benchmarks/data/kit-full lacks it.

One run, one machine, the full-size SigLIP 2 stand-in (benchmarks/data/kit-full/embedder, built if
missing) on a local Ray cluster of this machine's cores:
  (a) `python -m pipelines.ingest` of N distinct 640x480 JPEGs from a folder into a fresh gallery;
  (b) `python -m pipelines.backfill --to` the same checkpoint under another path (a symlink: another
      model id, so another table, at exactly the same model cost), re-embedding the N stored images.
Both use the same job settings (read tasks, one embedding actor, batch sizes); the ratio (b)/(a) is
what re-reading the blobs and the writer's checked copy cost against reading, checking and storing
new files. Rates are each job's own: images stored over its run time.

Before the section is written the counts are checked (benchmarks.checks), from the jobs' own reports and
from the two tables read afterwards: each holds the user's N photos once (by content hash against the
files sent), none missing, none duplicated, nothing failed, skipped or gone; otherwise it exits 3 and
writes nothing.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.checks import check, check_stored, run as checked, stored_hashes
from benchmarks.results_md import publish

SECTION = "## Backfill: a live model switch against bulk ingestion (issue 15)"
ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / "benchmarks" / "data" / "kit-full"
USER = "bench"


def _photo(path: Path, seed: int) -> None:
    from tests.support.sample_photos import jpeg

    path.write_bytes(jpeg(seed, size=(640, 480)))


def config(tmp: Path, model: Path, cores: int) -> Path:
    doc = yaml.safe_load((ROOT / "serve_config.local.yaml").read_text())
    args = doc["applications"][0]["args"]
    args["embedder"]["model"]["model"] = str(model)
    args["storage"].update(lancedb_uri=str(tmp / "lancedb"), blob_root=str(tmp / "blobs"))
    args["ingest"].update(max_cpus=float(cores), read_tasks=2, read_num_cpus=0.25, embed_actors=1,
                          embed_num_cpus=1.0, embed_threads=cores, batch_size=16, write_batch_size=64)
    path = tmp / "serve_config.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    return path


def run(args: list[str], cwd: Path) -> dict:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"{args[0]} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout[out.stdout.index("{"):])


def table_hashes(tmp: Path, model: str) -> list[str]:
    """USER's content hashes in `model`'s table of the run's gallery, one per row."""
    from models import EmbedderConfig
    from pipelines.config import embedder_shape
    from storage.gallery import Gallery
    from storage.settings import StorageSettings

    dim, _ = embedder_shape(EmbedderConfig(model=model))
    return stored_hashes(Gallery.open(StorageSettings(lancedb_uri=str(tmp / "lancedb")), dim=dim, embed_model=model),
                         USER)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_backfill")
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--no-write", action="store_true")
    a = parser.parse_args(argv)
    from benchmarks.bench_embedders import ensure

    cores = os.cpu_count() or 2
    model = ensure("embedder")
    tmp = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    again = tmp / "embedder_again"
    again.symlink_to(model, target_is_directory=True)
    photos = tmp / "photos"
    photos.mkdir()
    with cf.ProcessPoolExecutor(cores) as pool:
        list(pool.map(_photo, [photos / f"IMG_{i:05d}.jpg" for i in range(a.photos)], range(70_000, 70_000 + a.photos),
                      chunksize=64))
    sent = [hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(photos.iterdir())]  # the intake's content hash
    check(len(sent) == a.photos, f"{len(sent)} photos made of {a.photos}")
    cfg = config(tmp, model, cores)
    local = ["--num-cpus", str(cores)]
    ingest = run(["pipelines.ingest", "--config", str(cfg), "--user", USER, *local, str(photos)], tmp)
    got = {k: ingest.get(k) for k in ("state", "total", "done", "skipped_duplicates", "failed")}
    check(got == {"state": "succeeded", "total": a.photos, "done": a.photos, "skipped_duplicates": 0, "failed": 0},
          f"the bulk ingest of {a.photos} photos ended {got}")
    check_stored("the bulk ingest's table", sent, table_hashes(tmp, str(model)))
    ingest_s = ingest["finished_at"] - ingest["started_at"]  # the job ledger's Unix times
    t0 = time.perf_counter()
    backfill = run(["pipelines.backfill", "--config", str(cfg), "--to", str(again), *local], tmp)
    wall = time.perf_counter() - t0
    got = {k: backfill.get(k) for k in ("state", "source_rows", "copied", "already", "gone", "failed", "missing",
                                        "duplicated")}
    check(got == {"state": "succeeded", "source_rows": a.photos, "copied": a.photos, "already": 0, "gone": 0,
                  "failed": 0, "missing": 0, "duplicated": 0}, f"the backfill of {a.photos} photos ended {got}")
    check_stored("the backfill's table", sent, table_hashes(tmp, backfill["target"]))
    check_stored("the bulk ingest's table after the backfill", sent, table_hashes(tmp, backfill["source"]))
    check(ingest_s > 0 and backfill["seconds"] > 0, f"job times {ingest_s} s and {backfill['seconds']} s")
    ingest_rate, backfill_rate = a.photos / ingest_s, backfill["copied"] / backfill["seconds"]
    lines = [
        SECTION, "",
        f"Machine: {platform.machine()}, {cores} cores, no GPU; a local Ray cluster of {cores} CPUs per job; the "
        "full-size SigLIP 2 base/16-224 stand-in (375 M parameters, random weights, float32 on the CPU), one "
        f"embedding actor with {cores} torch threads, batches of 16, the same settings for both jobs. Scale: "
        f"{a.photos} distinct 640x480 JPEGs of one user.",
        f"Command: `.venv/bin/python -m benchmarks.bench_backfill --photos {a.photos}`", "",
        "| job | images | seconds | images/s |", "|---|---|---|---|",
        f"| (a) bulk ingest of {a.photos} new 640x480 JPEGs (`pipelines.ingest`) | {ingest['done']} | {ingest_s:.1f} | "
        f"{ingest_rate:.2f} |",
        f"| (b) backfill of the stored {a.photos} into another model's table (`pipelines.backfill`) | "
        f"{backfill['copied']} | {backfill['seconds']:.1f} | {backfill_rate:.2f} |", "",
        f"Backfill rate / ingest rate: **{backfill_rate / ingest_rate:.2f}x** (backfill wall time with its "
        f"driver's start: {wall:.1f} s). Checked before this was written: the ingest ended `succeeded` with "
        f"done {a.photos}, 0 skipped, 0 failed; the backfill `succeeded` in {backfill['passes']} pass(es) with "
        f"copied {a.photos}, missing 0, duplicated 0, 0 failed or gone; and both tables, read afterwards, hold "
        f"each of the {a.photos} photos' content hashes exactly once. Both jobs spend nearly all their time in the image tower (B/16 at 224 px "
        "on two cores); the model is the same checkpoint under a second path, so the ratio is what the two "
        "pipelines cost around it.",
    ]
    publish(SECTION, lines, write=not a.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(checked(main))
