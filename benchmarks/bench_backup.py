"""Backup and restore rates (issue 32) against a plain copy of the same files.

    .venv/bin/python -m benchmarks.bench_backup [--photos 10000] [--users 10]

A deployment's data folder is made here: `--photos` photos (640x480 JPEGs of noise, ~100 KB, with their display
copies) of `--users` users, stored as the service stores them (storage.library: intake, blobs, a gallery row
with a random 512-d vector), then optimized as the writer's upkeep does. Then, one after the other, each
measured in photos per second:
- plain copy: `cp -a` of the whole data folder (LanceDB and blobs), then `sync`: the baseline;
- backup: `python -m storage.backup create` (every table at one version, every blob read, hashed and written,
  the manifest last, after a sync);
- verify: every table's digest and every blob's sha256 checked;
- restore: into an empty data folder (verify first, then blobs, then tables).

Answers first (benchmarks.checks): the backup verifies; the restored gallery has every photo's row, and
sampled photos' blobs are byte for byte the originals. Otherwise it exits 3 and writes nothing. The goal is a
backup at least 0.8x a plain copy's rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.checks import check, run
from benchmarks.photos import noise_jpeg
from benchmarks.results_md import publish

SECTION = "## Backup and restore"
MODEL = "bench/embedder"
DIM = 512


def photo(rng) -> bytes:
    return noise_jpeg(rng, quality=70)


async def fill(lib, photos: int, users: int) -> None:
    from storage.blobs import store_image
    from storage.rows import new_row

    rng = np.random.default_rng(0)
    batch = []
    for n in range(photos):
        image = await lib.admit(photo(rng))
        user = f"user{n % users}"
        keys = await asyncio.to_thread(store_image, lib.blobs, user, image)
        vector = rng.standard_normal(DIM).astype(np.float32)
        batch.append(new_row(user_id=user, content_hash=image.content_hash, image_uri=keys.original,
                             display_uri=keys.display, width=image.width, height=image.height, source="ingest",
                             vector=vector / np.linalg.norm(vector), embed_model=MODEL))
        if len(batch) == 1000 or n == photos - 1:
            lib.gallery.upsert(batch)
            batch = []
    lib.gallery.optimize()


def cold() -> bool:
    """Everything written out and the page cache dropped (as root), so that each step reads from the disk:
    otherwise the order of the steps decides what each finds cached. Whether it could be dropped."""
    subprocess.run(["sync"], check=True)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def timed(fn) -> tuple[float, object, bool]:
    dropped = cold()
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out, dropped


def main(argv: list[str] | None = None) -> int:
    from storage.backup import create, restore, verify
    from storage.library import Library
    from storage.settings import StorageSettings

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_backup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="plain copies and backups, alternated; the best of each")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "data"
        source = StorageSettings(lancedb_uri=str(data / "lancedb"), blob_root=str(data / "blobs"))
        lib = Library(source, dim=DIM, embed_model=MODEL, writer="local")
        t0 = time.perf_counter()
        asyncio.run(fill(lib, args.photos, args.users))
        size = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
        print(f"{args.photos} photos stored ({size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr, flush=True)
        plains, backups = [], []
        for n in range(args.rounds):  # alternated: neither always runs first
            plains.append(timed(lambda: (subprocess.run(["cp", "-a", str(data), str(root / f"copy{n}")], check=True),
                                         subprocess.run(["sync"], check=True)))[0])
            seconds, made, dropped = timed(lambda: create(source, str(root / f"backup{n}")))
            backups.append(seconds)
        verified, checked, _ = timed(lambda: verify(source, str(root / "backup0")))
        target = StorageSettings(lancedb_uri=str(root / "restored" / "lancedb"),
                                 blob_root=str(root / "restored" / "blobs"))
        restored, out, _ = timed(lambda: restore(target, str(root / "backup0")))
        plain, backed = min(plains), min(backups)
        check(checked["ok"], f"the backup does not verify: {checked['problems'][:3]}")
        gallery = [n for n in out["tables"] if "gallery__" in n]
        check(len(gallery) == 1 and out["tables"][gallery[0]] == args.photos,
              f"the restored gallery does not hold every photo: {out['tables']}")
        check(made["blobs"] == 2 * args.photos, f"the backup holds {made['blobs']} blobs, not {2 * args.photos}")
        originals = sorted((data / "blobs").rglob("original.*"))
        for path in originals[:: max(1, len(originals) // 50)]:
            copy = root / "restored" / "blobs" / path.relative_to(data / "blobs")
            check(copy.is_file() and copy.read_bytes() == path.read_bytes(), f"{copy} is not the original's bytes")
    rate = {name: args.photos / s for name, s in (("plain", plain), ("backup", backed), ("verify", verified),
                                                  ("restore", restored))}
    lines = [
        SECTION, "",
        f"{args.photos:,} photos of {args.users} users ({size / 2**20:.0f} MiB: 640x480 JPEGs with display copies, "
        f"512-d vectors), local folders on one disk, one run. Machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs. Command: `.venv/bin/python -m benchmarks.bench_backup --photos {args.photos} "
        f"--users {args.users} --rounds {args.rounds}`. Before each step everything is synced and "
        + ("the page cache dropped (each step reads from the disk); " if dropped else "(not root) the page cache kept; ")
        + f"plain copy and backup alternated {args.rounds} times, the best of each: plain "
        + ", ".join(f"{s:.1f}" for s in plains) + " s, backup " + ", ".join(f"{s:.1f}" for s in backups) + " s.",
        "",
        "| step | seconds | photos/s | vs plain copy |",
        "|---|---|---|---|",
        *(f"| {name} | {args.photos / r:.1f} | {r:.0f} | {r / rate['plain']:.2f}x |" for name, r in rate.items()),
        "",
        "Plain copy: `cp -a` of the data folder, then `sync`. Goal (issue 32): the backup at least 0.8x of a plain copy.",
    ]
    publish(SECTION, lines, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
