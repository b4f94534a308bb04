"""Issue 32, rollback of a bad write: the gallery's versions listed with what wrote them, a chosen one restored
(LanceDB's restore) with the blobs of the rows it took away deleted, and a rollback past a user's deletion
refused (real LanceDB and blob folder in a temp dir; the command line run as an operator runs it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from storage.blobs import blob_key, open_blob_store
from storage.errors import InvalidInput
from storage.gallery_writer import GalleryWrites
from storage.settings import StorageSettings
from tests.support.rows import DIM, MODEL, sha

ROOT = Path(__file__).resolve().parents[3]
OTHER = ("tiny/other-model", 6)


def _stored(settings: StorageSettings, user: str, n: int, dim: int = DIM, model: str = MODEL) -> dict:
    """A row whose two blobs exist, as an upload leaves them."""
    blobs, digest = open_blob_store(settings), sha(user, n)
    keys = blob_key(user, digest, "original", "png"), blob_key(user, digest, "display", "jpg")
    for key in keys:
        blobs.put(key, f"{user}-{n}".encode(), "application/octet-stream")
    return {"user_id": user, "content_hash": digest, "image_uri": keys[0], "display_uri": keys[1], "width": 8,
            "height": 8, "source": "ingest", "embed_model": model,
            "vector": np.random.default_rng(n).standard_normal(dim).astype(np.float32)}


def _files(settings: StorageSettings, rows: list[dict]) -> list[bool]:
    blobs = open_blob_store(settings)
    return [blobs.exists(r["image_uri"]) and blobs.exists(r["display_uri"]) for r in rows]


def test_a_bad_write_is_rolled_back_with_its_files_and_a_deletion_is_never_undone(tmp_path):
    from pipelines.versions import gallery_tables, list_versions, rollback

    settings = StorageSettings(lancedb_uri=str(tmp_path / "db"), blob_root=str(tmp_path / "blobs"),
                               purge_within_s=3600)
    writes = GalleryWrites(settings)
    good = writes.upsert((MODEL, DIM), [_stored(settings, "ida", n) for n in range(5)])["rows"]
    table = writes.gallery((MODEL, DIM)).table
    before_bad = table.version
    bad = writes.upsert((MODEL, DIM), [_stored(settings, "ida", n) for n in range(10, 13)])["rows"]
    # One of the bad rows is in the other model's table too (a backfill copied it): its files stay.
    writes.copy_rows((MODEL, DIM), OTHER, [{**bad[0], "embed_model": OTHER[0],
                                             "vector": np.ones(OTHER[1], dtype=np.float32)}])
    name = table.name
    assert len(gallery_tables(settings)) == 2

    listed = list_versions(settings)[name]
    assert listed[0]["version"] == table.version and listed[0]["change"] == 3, listed
    # An upsert is a merge-insert (`Update`); the table's set-up wrote indexes and config; nothing deleted.
    assert listed[0]["operation"] == "Update" and "Delete" not in {v["operation"] for v in listed}, listed

    latest = table.version
    done = rollback(settings, name, before_bad)
    assert (done["rows_removed"], done["blobs_deleted"]) == (3, 4), done
    assert done["version"] == latest + 1 and done["undone"][0]["change"] == 3  # the restore is a new version
    table.checkout_latest()
    assert writes.gallery((MODEL, DIM)).count("ida") == 5
    assert _files(settings, good) == [True] * 5
    assert _files(settings, bad) == [True, False, False]  # the first one is still the other model's row
    assert list_versions(settings)[name][0]["operation"] == "Restore"

    # A user deletes an image: no rollback may reach past that deletion, the restore above included.
    assert writes.delete((MODEL, DIM), "ida", good[0]["img_id"])
    with pytest.raises(InvalidInput, match="deleted rows"):
        rollback(settings, name, before_bad)
    with pytest.raises(InvalidInput, match="earlier versions"):
        rollback(settings, name, table.version + 5)
    with pytest.raises(InvalidInput, match="no gallery table"):
        rollback(settings, "gallery__nope", 1)
    table.checkout_latest()
    assert writes.gallery((MODEL, DIM)).count("ida") == 4


def test_the_command_lists_and_refuses_as_an_operator_sees_it(tmp_path):
    settings = StorageSettings(lancedb_uri=str(tmp_path / "db"), blob_root=str(tmp_path / "blobs"))
    writes = GalleryWrites(settings)
    row = writes.upsert((MODEL, DIM), [_stored(settings, "jo", 1)])["rows"][0]
    writes.upsert((MODEL, DIM), [_stored(settings, "jo", 2)])
    writes.delete((MODEL, DIM), "jo", row["img_id"])
    config = yaml.safe_load((ROOT / "serve_config.local.yaml").read_text())
    config["applications"][0]["args"]["storage"] = {"lancedb_uri": settings.lancedb_uri,
                                                    "blob_root": settings.blob_root}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipelines.versions", *args, "--config", str(path)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    listed = run("list")
    assert listed.returncode == 0, listed.stderr
    (name, versions), = json.loads(listed.stdout).items()
    assert versions[0]["operation"] == "Delete" and versions[0]["change"] == -1, versions
    refused = run("restore", "--table", name, "--version", str(versions[1]["version"]))
    assert refused.returncode == 2 and "deleted rows" in refused.stderr, refused.stderr
