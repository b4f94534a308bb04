"""Concurrent writers of overlapping content keep exactly the distinct set: nothing lost, nothing
duplicated, and each image reported as created exactly once (201 once, 200 afterwards)."""

from __future__ import annotations

import hashlib
import multiprocessing
import random
import threading
from collections import Counter

import numpy as np

from storage.gallery import Gallery
from storage.settings import StorageSettings


DIM = 16
MODEL = "test/embedder"
USERS = ("alice", "bob")


def writer_rows(writer: int, n: int, pool: int) -> list[dict]:
    """n uploads drawn from a shared pool of `pool` images per user, so writers overlap heavily."""
    rnd = random.Random(writer)
    rows = []
    for _ in range(n):
        user, item = rnd.choice(USERS), rnd.randrange(pool)
        content = hashlib.sha256(f"{user}/{item}".encode()).hexdigest()
        vec = np.random.default_rng(item).standard_normal(DIM).astype(np.float32)
        rows.append({"user_id": user, "content_hash": content, "image_uri": f"{user}/{item}", "width": 8,
                     "height": 8, "source": "ingest", "caption": f"item {item}", "vector": vec})
    return rows


def write_all(settings: StorageSettings, rows: list[dict], batch: int) -> list[tuple[str, str, bool]]:
    """Upsert rows in batches through this writer's own Gallery; (key, img_id, created) per row."""
    gallery = Gallery.open(settings, dim=DIM, embed_model=MODEL)
    seen = []
    for i in range(0, len(rows), batch):
        chunk = rows[i:i + batch]
        result = gallery.upsert(chunk)
        for row, stored, created in zip(chunk, result["rows"], result["created"]):
            assert (stored["user_id"], stored["content_hash"]) == (row["user_id"], row["content_hash"])
            seen.append((f"{row['user_id']}/{row['content_hash']}", stored["img_id"], created))
    return seen


def _process_writer(uri: str, writer: int, n: int, pool: int, batch: int, out) -> None:
    out.put(write_all(StorageSettings(lancedb_uri=uri), writer_rows(writer, n, pool), batch))


def check_exactly_distinct(settings: StorageSettings, reports: list[list[tuple[str, str, bool]]]) -> None:
    expected = {key for report in reports for key, _, _ in report}
    table = Gallery.open(settings, dim=DIM, embed_model=MODEL).table.to_arrow()
    stored = Counter(f"{u}/{h}" for u, h in zip(table["user_id"].to_pylist(), table["content_hash"].to_pylist()))
    assert set(stored) == expected, "rows lost or invented"
    assert max(stored.values()) == 1, f"duplicated: {[k for k, c in stored.items() if c > 1][:5]}"
    assert len(set(table["img_id"].to_pylist())) == table.num_rows
    # Every writer was told the one stored img_id, and exactly one of them created each image.
    img_of = dict(zip((f"{u}/{h}" for u, h in zip(table["user_id"].to_pylist(), table["content_hash"].to_pylist())),
                      table["img_id"].to_pylist()))
    created = Counter()
    for report in reports:
        for key, img_id, was_created in report:
            assert img_id == img_of[key]
            created[key] += was_created
    assert all(created[key] == 1 for key in expected), "an image was reported created twice or never"


def test_eight_threads_of_500_overlapping_rows(tmp_path):
    settings = StorageSettings(lancedb_uri=str(tmp_path / "db"), optimize_every_rows=100_000,
                               optimize_every_commits=1_000_000)
    Gallery.open(settings, dim=DIM, embed_model=MODEL)
    reports: list = [None] * 8
    errors: list = []
    start = threading.Barrier(8)

    def run(w: int) -> None:
        try:
            rows = writer_rows(w, 500, pool=300)
            start.wait()
            reports[w] = write_all(settings, rows, batch=50)
        except BaseException as exc:  # surfaced below; a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert all(r is not None and len(r) == 500 for r in reports)
    check_exactly_distinct(settings, reports)


def test_processes_without_a_shared_lock_still_keep_one_row_per_image(tmp_path):
    """Separate processes share no lock: the table's primary key makes LanceDB detect the race."""
    settings = StorageSettings(lancedb_uri=str(tmp_path / "db"), optimize_every_rows=100_000,
                               optimize_every_commits=1_000_000)
    Gallery.open(settings, dim=DIM, embed_model=MODEL)
    ctx = multiprocessing.get_context("spawn")  # LanceDB's runtime threads do not survive fork
    out = ctx.Queue()
    procs = [ctx.Process(target=_process_writer, args=(settings.lancedb_uri, 100 + w, 200, 120, 20, out))
             for w in range(3)]
    for p in procs:
        p.start()
    reports = [out.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    check_exactly_distinct(settings, reports)
