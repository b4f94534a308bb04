"""Issue 32, backup and restore (storage/backup.py) of a deployment served in process (tiny models, real
LanceDB, real files): a backup taken while uploads go on restores into an empty data folder that answers every
search the same (same ids, same order) and every image's bytes the same, each photo there with its blobs or not
at all; `verify` catches a corrupted blob and `restore` refuses it; a user deleted after the backup stays
deleted (the erasure log) unless the operator names them."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.support.sample_photos import encoded, scene

USERS = ("ana", "ben", "cy")


def surface(tiny_models, data: Path, keys: bool):
    from deployments.assemble import in_process_app
    from deployments.config import IngressSpec
    from deployments.http.auth import key_store
    from deployments.service.models import LocalModels
    from deployments.settings import ServiceSettings
    from storage.settings import StorageSettings

    settings = ServiceSettings(keys_uri=str(data / "lancedb"), url_secret_file=str(data / "url_secret"))
    made = {u: key_store(settings).add(u)[1] for u in USERS} if keys else {}
    storage = StorageSettings(lancedb_uri=str(data / "lancedb"), blob_root=str(data / "blobs"))
    models = LocalModels(*(tiny_models[r] for r in ("embedder", "writer", "describer", "painter")))
    return in_process_app(models, ingress=IngressSpec(), storage=storage, settings=settings), storage, made


def upload(c, key: str, seed: int, caption: str = ""):
    r = c.post("/api/images", files={"file": (f"{seed}.jpg", encoded(scene(seed), quality=90), "image/jpeg")},
               data={"caption": caption, "on_duplicate": "ignore"}, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 201, r.text
    return r.json()["img_id"]


def answers(c, key: str) -> dict:
    """Everything a user can read: their listing, searches by text (English, Chinese) and by image, each
    image's original bytes."""
    auth = {"Authorization": f"Bearer {key}"}
    ids = [i["img_id"] for i in c.get("/api/images", params={"limit": 100}, headers=auth).json()["items"]]
    out = {"list": ids}
    for q in ("a red square", "海边的日落"):
        r = c.get("/api/search", params={"q": q, "k": 50}, headers=auth)
        assert r.status_code == 200, r.text
        out[q] = [(h["img_id"], round(h["score"], 5)) for h in r.json()["results"]]
    r = c.post("/api/search/by-image", files={"file": ("q.jpg", encoded(scene(7)), "image/jpeg")}, data={"k": 50},
               headers=auth)
    out["by-image"] = [(h["img_id"], round(h["score"], 5)) for h in r.json()["results"]]
    out["bytes"] = {i: c.get(f"/api/images/{i}/file", params={"original": "true"}, headers=auth).content for i in ids}
    return out


@pytest.fixture(scope="module")
def served(tiny_models, tmp_path_factory):
    """The source deployment with three users' photos, a backup taken while ana keeps uploading, then cy's
    deletion: (client, storage settings, keys, backup folder, the ids stored while the backup ran)."""
    from fastapi.testclient import TestClient

    from storage.backup import create

    data = tmp_path_factory.mktemp("source")
    app, storage, keys = surface(tiny_models, data, keys=True)
    dest = str(tmp_path_factory.mktemp("backups") / "b1")
    with TestClient(app) as c:
        for n, user in enumerate(USERS):
            for seed in range(3 + n):
                upload(c, keys[user], 10 * n + seed, caption="海边的日落" if seed == 0 else "")
        during: list[str] = []
        stop = threading.Event()

        def keep_uploading():
            seed = 500
            while not stop.is_set() and seed < 530:
                during.append(upload(c, keys["ana"], seed))
                seed += 1

        uploader = threading.Thread(target=keep_uploading)
        uploader.start()
        try:
            while len(during) < 2 and uploader.is_alive():  # the backup starts among uploads
                threading.Event().wait(0.05)
            made = create(storage, dest)
            started = len(during)
            while len(during) < started + 2 and uploader.is_alive():  # and ends among them
                threading.Event().wait(0.05)
        finally:
            stop.set()
            uploader.join()
        assert made["blobs"] > 0 and len(during) >= 4, (made, during)
        assert c.delete("/api/me", headers={"Authorization": f"Bearer {keys['cy']}"}).status_code == 204
        yield c, storage, keys, dest, during


def test_a_backup_under_uploads_restores_every_answer_and_leaves_erased_users_out(served, tiny_models, tmp_path):
    from fastapi.testclient import TestClient

    from storage.backup import restore, verify

    c, storage, keys, dest, during = served
    assert verify(storage, dest)["ok"]
    target = tmp_path / "restored"
    app, restored_storage, _ = surface(tiny_models, target, keys=False)
    out = restore(restored_storage, dest, erasures=[storage.lancedb_uri])
    assert out["erased_left_out"] == 1, out
    with TestClient(app) as r:
        after = {u: answers(r, keys[u]) for u in ("ana", "ben")}  # the keys came back with the backup
        assert r.get("/api/images", headers={"Authorization": f"Bearer {keys['cy']}"}).status_code == 401
    # ana's photos: those stored before the backup's version (every one of them with its bytes), none after.
    kept = set(after["ana"]["list"])
    assert set(during[:2]) <= kept and not set(during[-2:]) & kept
    assert set(after["ana"]["bytes"]) == kept and all(after["ana"]["bytes"].values())
    # The source as it was at the backup: ana's later uploads taken away; then every answer is the same.
    auth = {"Authorization": f"Bearer {keys['ana']}"}
    for img_id in set(during) - kept:
        assert c.delete(f"/api/images/{img_id}", headers=auth).status_code == 204
    before = {u: answers(c, keys[u]) for u in ("ana", "ben")}
    assert after == before
    # Nothing of cy in the restored folder: no row, no blob; no blob without its row for anyone.
    from storage.blobs import user_prefix

    assert not (target / "blobs" / user_prefix("cy")).exists()
    originals = {p for p in (target / "blobs").rglob("original.*")}
    assert len(originals) == len(kept) + len(before["ben"]["list"])


def test_verify_catches_a_corrupted_blob_and_restore_refuses_it(served, tmp_path):
    import shutil

    from storage.backup import restore, verify
    from storage.settings import StorageSettings

    _, storage, _, dest, _ = served
    broken = tmp_path / "broken"
    shutil.copytree(dest, broken)
    blob = sorted((broken / "blobs").rglob("display.*"))[0]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    checked = verify(storage, str(broken))
    assert not checked["ok"] and any("corrupted" in p and blob.name in p for p in checked["problems"]), checked
    # The operator's command says the same, and exits 1 (0 for the sound backup).
    import json
    import subprocess
    import sys

    cli = [sys.executable, "-m", "storage.backup", "verify"]
    bad = subprocess.run([*cli, str(broken)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "corrupted" in bad.stdout, bad.stdout + bad.stderr
    good = subprocess.run([*cli, dest], capture_output=True, text=True, timeout=120)
    assert good.returncode == 0 and json.loads(good.stdout)["ok"], good.stdout + good.stderr
    empty = StorageSettings(lancedb_uri=str(tmp_path / "t" / "lancedb"), blob_root=str(tmp_path / "t" / "blobs"))
    from storage.errors import InvalidInput

    with pytest.raises(InvalidInput, match="does not verify"):
        restore(empty, str(broken))
    assert not list((tmp_path / "t" / "blobs").rglob("*.*"))  # nothing written before the refusal
    with pytest.raises(InvalidInput, match="already holds a backup"):
        from storage.backup import create

        create(storage, dest)


def test_an_erased_user_comes_back_only_when_the_operator_names_them(served, tmp_path):
    from storage.backup import restore
    from storage.erasures import ErasureLog, user_digest
    from storage.errors import InvalidInput
    from storage.settings import StorageSettings

    _, storage, _, dest, _ = served
    assert user_digest("cy") in ErasureLog(storage.lancedb_uri).digests()
    target = StorageSettings(lancedb_uri=str(tmp_path / "t" / "lancedb"), blob_root=str(tmp_path / "t" / "blobs"))
    out = restore(target, dest, erasures=[storage.lancedb_uri], restore_erased=["cy"])
    assert out["erased_left_out"] == 0 and out["erased_restored"] == 1, out
    import lancedb

    (gallery,) = [n for n in lancedb.connect(target.lancedb_uri).table_names() if n.startswith("gallery__")]
    assert lancedb.connect(target.lancedb_uri).open_table(gallery).count_rows("user_id = 'cy'") == 5
    assert user_digest("cy") not in ErasureLog(target.lancedb_uri).digests()  # the operator let them back
    with pytest.raises(InvalidInput, match="empty deployment"):
        restore(target, dest)  # a deployment with data is never restored over


def test_a_backup_goes_to_an_s3_prefix_and_comes_back(served, s3_server, s3_bucket, tmp_path):
    """The same backup written under s3://bucket/prefix (moto's S3 server), verified there, and restored from
    there into an empty folder: the same tables and blobs as a folder's backup of the same source."""
    from storage.backup import create, restore, verify
    from storage.settings import StorageSettings

    _, storage, _, _, _ = served
    s3 = {"s3_endpoint_url": s3_server.endpoint_url, "s3_access_key_id": s3_server.access_key_id,
          "s3_secret_access_key": s3_server.secret_access_key, "s3_region": s3_server.region}
    source = StorageSettings(**{**storage.model_dump(), **s3})
    where = f"s3://{s3_bucket}/backups/b2"
    made = create(source, where)
    local = create(source, str(tmp_path / "b2"))
    assert made["tables"] == local["tables"] and made["blobs"] == local["blobs"] > 0, (made, local)
    keys = s3_server.client().list_objects_v2(Bucket=s3_bucket, Prefix="backups/b2/")
    assert any(o["Key"] == "backups/b2/manifest.json" for o in keys["Contents"])
    assert verify(source, where)["ok"]
    target = StorageSettings(lancedb_uri=str(tmp_path / "t" / "lancedb"), blob_root=str(tmp_path / "t" / "blobs"), **s3)
    out = restore(target, where)
    gallery = [n for n in made["tables"] if "gallery__" in n]
    assert out["blobs"] == made["blobs"] and [out["tables"][n] for n in gallery] == [made["tables"][n] for n in gallery]
    # cy was deleted before this backup: their key's row stays out too (the erasure log is in the backup).
    assert out["erased_left_out"] == 1 and out["tables"]["lancedb/api_keys"] == made["tables"]["lancedb/api_keys"] - 1
