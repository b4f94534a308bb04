"""Deletion that is final: after a user is deleted, the writer's purge leaves none of their values in any
file of the table (data, deletion vectors, indexes, manifests of old versions), also when the writer
restarts before the purge is due, while another process keeps searching the gallery."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import ray
from tests.support.rows import DIM, MODEL, make_row

from storage.gallery import Gallery
from storage.gallery_writer import gallery_writer
from storage.settings import StorageSettings

VICTIM = "victim-7f3a9c"
CAPTION = "zebracrossingsecretcaption"


def _files_holding(root: Path, needles: list[bytes]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits = [n.decode() for n in needles if n in data]
            if hits:
                found[str(path.relative_to(root))] = hits
    return found


def test_a_deleted_user_is_gone_from_every_file_after_the_purge_even_across_a_writer_restart(ray_cluster, tmp_path):
    settings = StorageSettings(lancedb_uri=str(tmp_path / "db"), purge_within_s=3, vector_cache_mb=0)
    writer = gallery_writer(settings, (MODEL, DIM))
    victim_rows = [make_row(VICTIM, i, caption=f"{CAPTION} {i}", description="a red door") for i in range(40)]
    others = [make_row("keeper", i, caption="a quiet harbour") for i in range(40)]
    for batch in (victim_rows[:20], others[:20], victim_rows[20:], others[20:]):
        ray.get(writer.upsert.remote((MODEL, DIM), batch))
    ray.get(writer.optimize.remote((MODEL, DIM)))  # the full-text and scalar indexes now hold the victim's values
    needles = [VICTIM.encode(), CAPTION.encode()] + [r["content_hash"].encode() for r in victim_rows[:3]]
    root = tmp_path / "db"
    before = _files_holding(root, needles)
    # The check below means something only if these values are readable in the raw files at all.
    assert any(VICTIM in hits for hits in before.values()) and any(CAPTION in h for h in before.values()), before
    assert any(n.decode() in h for n in needles[2:] for h in before.values()), before

    reader = Gallery.open(settings, dim=DIM, embed_model=MODEL)
    failures: list[BaseException] = []
    stop = threading.Event()

    def keep_searching():
        probe = np.ones(DIM, dtype=np.float32)
        while not stop.is_set():
            try:
                reader.search("keeper", probe, k=5)
            except Exception as exc:  # noqa: BLE001 - collected and reported below
                failures.append(exc)
            time.sleep(0.02)

    searcher = threading.Thread(target=keep_searching, daemon=True)
    searcher.start()
    assert ray.get(writer.delete_user.remote((MODEL, DIM), VICTIM)) == 40
    # The writer dies before its purge is due; the restarted writer must still run it.
    ray.kill(writer, no_restart=False)
    deadline = time.monotonic() + 120
    while True:
        try:
            status = ray.get(writer.purge_status.remote(), timeout=30)
            if status["pending"] == 0 and status["purges"] >= 1:
                break
        except ray.exceptions.RayError:
            pass  # restarting
        assert time.monotonic() < deadline, "the purge never ran"
        time.sleep(0.5)
    stop.set()
    searcher.join(timeout=30)

    leftover = _files_holding(root, needles)
    assert leftover == {}, f"deleted values still on disk: {leftover}"
    assert failures == [], failures[:3]
    fresh = Gallery.open(settings, dim=DIM, embed_model=MODEL)
    assert fresh.count(VICTIM) == 0 and fresh.count("keeper") == 40
    assert len(fresh.search_text("keeper", "harbour", k=50)) == 40
    assert len(fresh.table.list_versions()) == 1
