"""Issue 32, near-duplicates on upload, over the in-process HTTP surface (tiny models, real LanceDB): a
re-encoded and resized copy is the *same picture* (perceptual hash), a burst shot of the same scene (a small
crop and a brightness change) a *near shot* (embedding cosine, at the tiny embedder's own threshold), a
different photo neither; `on_duplicate=skip` keeps none of them, and another user's photos are never compared."""

from __future__ import annotations

import pytest

from tests.support.sample_photos import burst, encoded, scene

TINY_NEAR_SHOT = 0.9  # the tiny random-weight embedder's scale for scene 4: its bursts 0.91-0.99, other scenes <= 0.55
SCENE, OTHER = 4, 101


@pytest.fixture(scope="module")
def client(tiny_models, tmp_path_factory):
    """The in-process surface with the near-shot threshold set for the tiny embedder only (others: 0.999)."""
    from fastapi.testclient import TestClient

    from deployments.assemble import in_process_app
    from deployments.config import IngressSpec
    from deployments.http.auth import key_store
    from deployments.service.models import LocalModels
    from deployments.settings import ServiceSettings
    from storage.settings import StorageSettings

    tiny = tiny_models["embedder"].image_vector(scene(0)).model  # the embedding model id rows carry
    data = tmp_path_factory.mktemp("near")
    settings = ServiceSettings(keys_uri=str(data / "lancedb"), url_secret_file=str(data / "url_secret"))
    store = key_store(settings)
    keys = {user: store.add(user)[1] for user in ("nia", "oto", "pia", "qi")}
    models = LocalModels(*(tiny_models[r] for r in ("embedder", "writer", "describer", "painter")))
    storage = StorageSettings(lancedb_uri=str(data / "lancedb"), blob_root=str(data / "blobs"),
                              near_shot_cosine={"default": 0.999, tiny: TINY_NEAR_SHOT})
    app = in_process_app(models, ingress=IngressSpec(), storage=storage, settings=settings)
    with TestClient(app) as c:
        yield c, keys, data


def upload(c, key: str, data: bytes, name: str = "p.jpg", **form):
    mime = "image/png" if name.endswith(".png") else "image/jpeg"
    return c.post("/api/images", files={"file": (name, data, mime)}, data=form,
                  headers={"Authorization": f"Bearer {key}"})


def test_a_copy_is_the_same_picture_a_burst_a_near_shot_and_another_photo_neither(client):
    c, keys, _ = client
    first = upload(c, keys["nia"], encoded(scene(SCENE), quality=90))
    assert first.status_code == 201 and first.json()["near_duplicates"] == [], first.text
    original = first.json()["img_id"]

    copy = upload(c, keys["nia"], encoded(scene(SCENE).resize((160, 120)), "PNG"), "copy.png")
    assert copy.status_code == 201, copy.text  # other bytes: stored, and said to be a copy
    (same,) = [d for d in copy.json()["near_duplicates"] if d["img_id"] == original]
    assert same["kind"] == "same_picture" and same["distance"] <= 4, copy.json()["near_duplicates"]

    other = upload(c, keys["nia"], encoded(scene(OTHER), quality=90), "other.jpg")
    assert other.status_code == 201 and other.json()["near_duplicates"] == [], other.json()["near_duplicates"]

    shot = upload(c, keys["nia"], encoded(burst(SCENE), quality=90), "burst.jpg")
    assert shot.status_code == 201, shot.text
    kinds = {d["img_id"]: d for d in shot.json()["near_duplicates"]}
    assert kinds[original]["kind"] == "near_shot" and kinds[original]["distance"] <= 1 - TINY_NEAR_SHOT, kinds
    assert other.json()["img_id"] not in kinds

    listed = c.get("/api/images", params={"limit": 100}, headers={"Authorization": f"Bearer {keys['nia']}"})
    assert len(listed.json()["items"]) == 4
    # Asked to skip them: a second burst of the same scene is not kept; the closest photo is answered.
    skipped = upload(c, keys["nia"], encoded(burst(SCENE, crop=0.05, light=0.9), quality=85), "again.jpg",
                     on_duplicate="skip")
    assert skipped.status_code == 200, skipped.text
    assert skipped.json()["img_id"] == skipped.json()["near_duplicates"][0]["img_id"]
    listed = c.get("/api/images", params={"limit": 100}, headers={"Authorization": f"Bearer {keys['nia']}"})
    assert len(listed.json()["items"]) == 4
    # Asked not to compare: a copy is kept and nothing is said of it (null: not checked, unlike []).
    unchecked = upload(c, keys["nia"], encoded(scene(SCENE).resize((200, 150)), "PNG"), "third.png",
                       on_duplicate="ignore")
    assert unchecked.status_code == 201 and unchecked.json()["near_duplicates"] is None, unchecked.text
    again = upload(c, keys["nia"], encoded(scene(SCENE).resize((200, 150)), "PNG"), "third.png")
    assert again.status_code == 200 and again.json()["img_id"] == unchecked.json()["img_id"], again.text

    # Another user's gallery is never compared: the same copy is new to them.
    theirs = upload(c, keys["oto"], encoded(scene(SCENE).resize((160, 120)), "PNG"), "copy.png")
    assert theirs.status_code == 201 and theirs.json()["near_duplicates"] == []
    bad = upload(c, keys["oto"], encoded(scene(3)), on_duplicate="drop")
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "on_duplicate", bad.text


def test_the_groups_are_listed_with_a_keeper_and_resolved_finally(client):
    """A photo, its copy and its burst are one group (another photo and an unchecked copy in none); resolving it
    keeps the chosen photo and deletes the others from disk."""
    c, keys, data = client
    auth = {"Authorization": f"Bearer {keys['pia']}"}
    for photo, name, form in ((encoded(scene(SCENE), quality=90), "a.jpg", {}),
                              (encoded(scene(SCENE).resize((160, 120)), "PNG"), "copy.png", {}),
                              (encoded(scene(OTHER), quality=90), "other.jpg", {}),
                              (encoded(burst(SCENE), quality=90), "burst.jpg", {}),
                              (encoded(scene(SCENE).resize((200, 150)), "PNG"), "third.png", {"on_duplicate": "ignore"})):
        assert upload(c, keys["pia"], photo, name, **form).status_code == 201
    listed = c.get("/api/duplicates", headers=auth)
    assert listed.status_code == 200, listed.text
    (group,) = listed.json()["groups"]
    members = {m["img_id"]: m for m in group["members"]}
    assert len(members) == 3 and listed.json()["next_cursor"] is None
    kinds = {p["kind"] for p in group["pairs"]}
    assert kinds == {"same_picture", "near_shot"}, group["pairs"]
    # The keeper: the largest (the original and the burst are both 320 wide), then the oldest: the original.
    oldest = min(members.values(), key=lambda m: m["created_at"])
    assert group["keep"] == oldest["img_id"] and "oldest" in group["why"], group
    assert c.get("/api/duplicates", headers={"Authorization": f"Bearer {keys['oto']}"}).json()["groups"] == []
    assert len(c.get("/api/images", params={"limit": 100}, headers=auth).json()["items"]) == 5
    paged = c.get("/api/duplicates", params={"limit": 1, "cursor": "1"}, headers=auth)
    assert paged.status_code == 200 and paged.json()["groups"] == []
    assert c.get("/api/duplicates", params={"cursor": "x"}, headers=auth).status_code == 400

    # Another user cannot resolve it; a photo outside the group cannot be the keeper.
    other = c.post(f"/api/duplicates/{group['group']}/resolve", json={"keep": group["keep"]},
                   headers={"Authorization": f"Bearer {keys['oto']}"})
    assert other.status_code == 404 and other.json()["error"]["code"] == "group_not_found", other.text
    outside = c.post(f"/api/duplicates/{group['group']}/resolve", json={"keep": "f" * 32}, headers=auth)
    assert outside.status_code == 400 and outside.json()["error"]["field"] == "keep", outside.text

    files = {p for p in (data / "blobs").rglob("*") if p.is_file()}
    resolved = c.post(f"/api/duplicates/{group['group']}/resolve", json={"keep": group["keep"]}, headers=auth)
    assert resolved.status_code == 200, resolved.text
    gone = set(members) - {group["keep"]}
    assert resolved.json() == {"group": group["group"], "kept": group["keep"], "deleted": sorted(gone)}, resolved.text
    for img_id in gone:
        assert c.get(f"/api/images/{img_id}", headers=auth).status_code == 404
    assert c.get(f"/api/images/{group['keep']}", headers=auth).status_code == 200
    left = {p for p in (data / "blobs").rglob("*") if p.is_file()}
    assert len(files - left) == 2 * len(gone) and not left - files  # each deleted photo's original and display
    assert c.get("/api/duplicates", headers=auth).json()["groups"] == []
    again = c.post(f"/api/duplicates/{group['group']}/resolve", json={"keep": group["keep"]}, headers=auth)
    assert again.status_code == 404


def test_a_dismissed_group_is_not_proposed_again_until_it_changes(client):
    from storage.dismissals import Dismissals

    c, keys, data = client
    auth = {"Authorization": f"Bearer {keys['qi']}"}
    for photo, name in ((encoded(scene(SCENE), quality=90), "a.jpg"), (encoded(scene(SCENE).resize((160, 120)), "PNG"), "b.png")):
        assert upload(c, keys["qi"], photo, name).status_code == 201
    (group,) = c.get("/api/duplicates", headers=auth).json()["groups"]
    both = c.post(f"/api/duplicates/{group['group']}/resolve", json={"keep": group["keep"], "dismiss": True}, headers=auth)
    assert both.status_code == 400 and both.json()["error"]["field"] == "keep", both.text
    dismissed = c.post(f"/api/duplicates/{group['group']}/resolve", json={"dismiss": True}, headers=auth)
    assert dismissed.status_code == 200 and dismissed.json() == {"group": group["group"], "dismissed": True}
    assert c.get("/api/duplicates", headers=auth).json()["groups"] == []
    assert len(c.get("/api/images", headers=auth).json()["items"]) == 2  # nothing deleted
    # A third copy makes it another group (other members, another name): proposed again.
    assert upload(c, keys["qi"], encoded(scene(SCENE).resize((200, 150)), "PNG"), "c.png").status_code == 201
    (again,) = c.get("/api/duplicates", headers=auth).json()["groups"]
    assert again["group"] != group["group"] and len(again["members"]) == 3
    # Deleting the user deletes their dismissals too.
    dismissals = Dismissals(str(data / "lancedb"))
    assert dismissals.of("qi") == {group["group"]}
    assert c.delete("/api/me", headers=auth).status_code == 204
    assert dismissals.of("qi") == set()
