"""The BlobStore contract, run against both backends: a local folder and a real S3-compatible server."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import threading

import pytest
from PIL import Image

from storage.blobs import (
    BlobStore,
    LocalBlobStore,
    S3BlobStore,
    blob_key,
    check_key,
    media_type,
    open_blob_store,
    store_image,
    user_prefix,
)
from storage.errors import InvalidInput, NotFound, Unavailable
from storage.intake import ImageIntake
from storage.settings import StorageSettings

HOSTILE_USER_IDS = ["' OR 1=1 --", "../../etc", "/root", "a/b", "%", "_", "nul\x00id", "用户", "..", "C:\\x", " "]


def key_for(user: str, n: int = 0, variant: str = "original") -> str:
    return blob_key(user, hashlib.sha256(f"{user}-{n}".encode()).hexdigest(), variant, "png")


# The local half of each contract test is a unit test; the S3 half needs the server: integration.
@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> BlobStore:
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    server = request.getfixturevalue("s3_server")
    return S3BlobStore(
        request.getfixturevalue("s3_bucket"),
        "atelier/blobs",
        endpoint_url=server.endpoint_url,
        access_key_id=server.access_key_id,
        secret_access_key=server.secret_access_key,
        region=server.region,
        timeout_s=10,
    )


# ---------------------------------------------------------------- keys


def test_keys_are_built_from_hashes_only():
    digest = "ab" + "0" * 62
    for user in HOSTILE_USER_IDS:
        key = blob_key(user, digest, "display", "jpg")
        assert check_key(key) == key
        assert key.startswith(user_prefix(user)) and key.endswith(f"/ab/{digest}/display.jpg")
        assert ".." not in key and "\x00" not in key and "'" not in key and "%" not in key
    prefixes = {user_prefix(user) for user in HOSTILE_USER_IDS}
    assert len(prefixes) == len(HOSTILE_USER_IDS)  # distinct users never share a folder
    assert blob_key("alice", digest, "original", "png") == blob_key("alice", digest, "original", "png")


@pytest.mark.parametrize("bad", ["", "../" + "a" * 62, "A" * 64, "g" * 64, "a" * 63, "a" * 65, "a" * 64 + "/"])
def test_content_hash_must_be_a_sha256(bad):
    with pytest.raises(InvalidInput) as refused:
        blob_key("alice", bad, "original", "png")
    assert refused.value.code == "invalid_content_hash"


def test_user_id_must_be_a_non_empty_string():
    for bad in ("", None, 42):
        with pytest.raises(InvalidInput):
            user_prefix(bad)


def test_media_type_follows_the_extension_we_chose():
    assert media_type(key_for("a")) == "image/png"
    assert media_type(blob_key("a", "0" * 64, "display", "jpg")) == "image/jpeg"
    assert media_type(blob_key("a", "0" * 64, "display", "webp")) == "image/webp"


BAD_KEYS = ["", "/abs/key", "../up", "a/../b", "a//b", "a/./b", ".hidden", "a/.tmp-x", "a\\b", "a\x00b", "a/", "é", "a b"]


@pytest.mark.parametrize("bad", BAD_KEYS)
def test_every_operation_refuses_a_malformed_key(store, bad):
    for call in (
        lambda: store.put(bad, b"x", "image/png"),
        lambda: store.get(bad),
        lambda: store.exists(bad),
        lambda: store.delete(bad),
        lambda: store.uri(bad),
    ):
        with pytest.raises(ValueError):
            call()
    with pytest.raises(ValueError):
        store.delete_prefix("")  # never "everything"
    with pytest.raises(ValueError):
        store.delete_prefix("u")  # a prefix is a folder: it ends with '/'


# ---------------------------------------------------------------- the contract, both backends


def test_put_get_overwrite_exists_delete(store):
    key = key_for("alice")
    assert not store.exists(key)
    store.put(key, b"first", "image/png")
    assert store.exists(key) and store.get(key) == b"first"
    store.put(key, b"second, longer", "image/png")
    assert store.get(key) == b"second, longer"
    store.delete(key)
    assert not store.exists(key)
    store.delete(key)  # deleting twice is fine: deletes get retried


def test_missing_blob_is_not_found(store):
    with pytest.raises(NotFound) as missing:
        store.get(key_for("alice", 99))
    assert missing.value.status == 404


def test_binary_content_round_trips_exactly(store):
    data = bytes(range(256)) * 4096 + b"\x00\xff"  # 1 MiB and a bit
    key = key_for("alice", 1)
    store.put(key, data, "image/png")
    assert store.get(key) == data


def test_keys_and_delete_prefix_touch_one_user_only(store):
    for user in ("alice", "bob"):
        for n in range(3):
            store.put(key_for(user, n), f"{user}{n}".encode(), "image/png")
            store.put(key_for(user, n, "display"), b"d", "image/jpeg")
    alice = sorted(store.keys(user_prefix("alice")))
    assert alice == sorted(key_for("alice", n, v) for n in range(3) for v in ("original", "display"))
    assert store.delete_prefix(user_prefix("alice")) == 6
    assert list(store.keys(user_prefix("alice"))) == []
    assert sorted(store.keys(user_prefix("bob"))) == sorted(key_for("bob", n, v) for n in range(3) for v in ("original", "display"))
    assert store.get(key_for("bob", 2)) == b"bob2"
    assert store.delete_prefix(user_prefix("carol")) == 0


def test_a_reader_never_sees_a_partial_write(store):
    key = key_for("alice", 7)
    versions = [b"a" * (512 * 1024), b"b" * (768 * 1024)]
    store.put(key, versions[0], "image/png")
    seen: set[bytes] = set()
    errors: list[BaseException] = []
    done = threading.Event()

    def writer():
        try:
            for i in range(30):
                store.put(key, versions[i % 2], "image/png")
        except BaseException as error:  # surfaced below
            errors.append(error)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    while not done.is_set() or reads < 5:
        seen.add(store.get(key))
        reads += 1
    thread.join()
    assert not errors
    assert seen <= set(versions), "a read returned bytes that were never written whole"


def test_uri_names_the_backend(store):
    key = key_for("alice")
    uri = store.uri(key)
    assert uri.endswith(key)
    assert uri.startswith("s3://" if isinstance(store, S3BlobStore) else "file:///")


def test_admitted_image_is_stored_under_its_hash(store):
    data = _png()
    image = ImageIntake().admit(data, filename="photo.png")
    keys = store_image(store, "alice", image)
    assert keys.original == blob_key("alice", hashlib.sha256(data).hexdigest(), "original", "png")
    assert store.get(keys.original) == image.original
    assert store.get(keys.display) == image.display
    assert media_type(keys.display) == image.display_mime
    assert store_image(store, "alice", image) == keys  # same bytes again: same keys, nothing new
    assert len(list(store.keys(user_prefix("alice")))) == 2


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 120, 200)).save(out, "PNG")
    return out.getvalue()


# ---------------------------------------------------------------- local specifics


def test_local_failed_write_leaves_neither_temp_nor_target(tmp_path, monkeypatch):
    store = LocalBlobStore(tmp_path)
    key = key_for("alice")
    store.put(key, b"old", "image/png")

    def broken_rename(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", broken_rename)
    with pytest.raises(OSError, match="disk gone"):
        store.put(key, b"new", "image/png")
    monkeypatch.undo()
    assert store.get(key) == b"old"
    assert [p.name for p in (tmp_path / key).parent.iterdir()] == ["original.png"]


def test_local_delete_prunes_empty_folders(tmp_path):
    store = LocalBlobStore(tmp_path / "root")
    store.put(key_for("alice"), b"x", "image/png")
    store.delete(key_for("alice"))
    assert list((tmp_path / "root").iterdir()) == []


def test_local_symlink_cannot_lead_outside_the_root(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    store = LocalBlobStore(tmp_path / "root")
    (tmp_path / "root" / "u").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="outside"):
        store.put(key_for("alice"), b"x", "image/png")
    assert list(outside.iterdir()) == []


def test_factory_opens_the_local_backend(tmp_path):
    store = open_blob_store(StorageSettings(blob_backend="local", blob_root=str(tmp_path / "b")))
    assert isinstance(store, LocalBlobStore) and store.root == (tmp_path / "b").resolve()


def test_factory_needs_a_bucket_for_s3():
    with pytest.raises(ValueError, match="ATELIER_S3_BUCKET"):
        open_blob_store(StorageSettings(blob_backend="s3"))


# ---------------------------------------------------------------- S3 specifics


def test_factory_opens_s3_from_settings(s3_server, s3_bucket, monkeypatch):
    monkeypatch.setenv("ATELIER_BLOB_BACKEND", "s3")
    monkeypatch.setenv("ATELIER_S3_BUCKET", s3_bucket)
    monkeypatch.setenv("ATELIER_S3_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("ATELIER_S3_ACCESS_KEY_ID", s3_server.access_key_id)
    monkeypatch.setenv("ATELIER_S3_SECRET_ACCESS_KEY", s3_server.secret_access_key)
    store = open_blob_store(StorageSettings())
    assert isinstance(store, S3BlobStore)
    key = key_for("alice")
    store.put(key, b"png bytes", "image/png")
    head = s3_server.client().head_object(Bucket=s3_bucket, Key=f"blobs/{key}")
    assert head["ContentType"] == "image/png" and head["ContentLength"] == len(b"png bytes")


def test_s3_objects_live_under_the_prefix_only(s3_server, s3_bucket):
    store = S3BlobStore(
        s3_bucket,
        "/atelier/blobs/",
        endpoint_url=s3_server.endpoint_url,
        access_key_id=s3_server.access_key_id,
        secret_access_key=s3_server.secret_access_key,
    )
    store.put(key_for("alice"), b"x", "image/png")
    listed = s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert [obj["Key"] for obj in listed] == [f"atelier/blobs/{key_for('alice')}"]


def test_s3_missing_bucket_and_dead_endpoint_are_unavailable(s3_server):
    wrong_bucket = S3BlobStore(
        "no-such-bucket",
        endpoint_url=s3_server.endpoint_url,
        access_key_id=s3_server.access_key_id,
        secret_access_key=s3_server.secret_access_key,
    )
    with pytest.raises(Unavailable) as outage:
        wrong_bucket.put(key_for("alice"), b"x", "image/png")
    assert outage.value.status == 503 and outage.value.code == "blob_store_unavailable"

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    dead = S3BlobStore(
        "bucket", endpoint_url=f"http://127.0.0.1:{dead_port}", access_key_id="k", secret_access_key="s", timeout_s=0.5
    )
    with pytest.raises(Unavailable):
        dead.get(key_for("alice"))
