"""Gallery, search, describe and account routes of API.md over real HTTP (tiny models, real LanceDB)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image



def png(seed: int, size=(48, 40)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def upload(c, data: bytes, name="photo.png", caption=None):
    form = {"caption": caption} if caption else None
    return c.post("/api/images", files={"file": (name, data, "image/png")}, data=form)


def test_upload_is_idempotent_and_readable(service):
    with service.client("alice") as c:
        first = upload(c, png(1), caption="海边的日落")
        assert first.status_code == 201, first.text
        rec = first.json()
        assert set(rec) >= {"img_id", "image_url", "width", "height", "content_hash", "created_at"}
        assert (rec["width"], rec["height"]) == (48, 40) and rec["caption"] == "海边的日落"
        again = upload(c, png(1), name="other-name.png")
        assert again.status_code == 200 and again.json()["img_id"] == rec["img_id"]
        got = c.get(f"/api/images/{rec['img_id']}")
        assert got.status_code == 200 and got.json()["content_hash"] == rec["content_hash"]
        # The caption is the user's to edit, through the gallery writer's actor (issue 28.5).
        edited = c.patch(f"/api/images/{rec['img_id']}", json={"caption": "黄昏的海边"})
        assert edited.status_code == 200 and edited.json()["caption"] == "黄昏的海边", edited.text
        assert c.get(f"/api/images/{rec['img_id']}").json()["caption"] == "黄昏的海边"
        # The signed URL works without a key, like an <img> tag.
        with service.client(user=None) as anon:
            f = anon.get(rec["image_url"])
            assert f.status_code == 200 and f.headers["content-type"].startswith("image/")
            Image.open(io.BytesIO(f.content)).verify()
            assert anon.get(rec["image_url"] + "x").status_code == 404
            assert anon.get(f"/api/images/{rec['img_id']}/file").status_code == 401


def test_list_is_newest_first_with_a_cursor(service):
    with service.client("alice") as c:
        ids = [upload(c, png(100 + i)).json()["img_id"] for i in range(5)]
        seen, cursor = [], None
        while True:
            page = c.get("/api/images", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
            seen += [item["img_id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert seen.index(ids[-1]) < seen.index(ids[0])
        assert len(seen) == len(set(seen)) and set(ids) <= set(seen)


def test_another_users_image_is_404_everywhere(service):
    with service.client("alice") as a, service.client("bob") as b:
        rec = upload(a, png(7)).json()
        img = rec["img_id"]
        assert b.get(f"/api/images/{img}").status_code == 404
        assert b.delete(f"/api/images/{img}").status_code == 404
        assert b.patch(f"/api/images/{img}", json={"caption": "mine now"}).status_code == 404
        assert b.post("/api/describe", json={"img_id": img}).status_code == 404
        assert img not in [r["img_id"] for r in b.get("/api/search", params={"q": "photo", "k": 50}).json()["results"]]
        assert a.get(f"/api/images/{img}").status_code == 200


def test_delete_removes_row_and_file(service):
    with service.client("alice") as c:
        rec = upload(c, png(9)).json()
        assert c.delete(f"/api/images/{rec['img_id']}").status_code == 204
        assert c.get(f"/api/images/{rec['img_id']}").status_code == 404
        with service.client(user=None) as anon:
            assert anon.get(rec["image_url"]).status_code == 404
        assert c.delete(f"/api/images/{rec['img_id']}").status_code == 404


@pytest.mark.parametrize(
    "data, name, status, code",
    [
        (b"<html><body>hi</body></html>", "x.png", 415, "not_an_allowed_image"),
        (b"", "x.png", 400, "empty_file"),
        (png(3)[:-30], "x.png", 400, "truncated_image"),
    ],
)
def test_bad_uploads_are_refused_and_store_nothing(service, data, name, status, code):
    with service.client("alice") as c:
        before = len(c.get("/api/images", params={"limit": 100}).json()["items"])
        r = upload(c, data, name=name)
        assert r.status_code == status, r.text
        assert r.json()["error"]["code"] == code
        assert len(c.get("/api/images", params={"limit": 100}).json()["items"]) == before


def test_upload_over_the_limit_is_413_while_streaming(service):
    with service.client("alice") as c:
        r = upload(c, b"\x89PNG\r\n\x1a\n" + b"0" * (11 * 1024 * 1024))
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "too_large"


def test_search_text_chinese_and_by_image(service):
    with service.client("bob") as c:
        recs = [upload(c, png(200 + i), caption=cap).json()
                for i, cap in enumerate(["海边的日落", "a dog in the park", "城市夜景"])]
        r = c.get("/api/search", params={"q": "dog", "k": 3})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["query"] == {"text": "dog", "embedded": "dog", "english": None}
        scores = [h["score"] for h in body["results"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
        assert {h["img_id"] for h in body["results"]} == {rec["img_id"] for rec in recs}
        zh = c.get("/api/search", params={"q": "日落", "k": 2}).json()
        # The local embedder (SigLIP 2's stand-in) reads Chinese: embedded as it is, no Writer call, not degraded.
        assert zh["query"] == {"text": "日落", "embedded": "日落", "english": None} and zh["degraded"] is False
        assert len(zh["results"]) == 2
        by = c.post("/api/search/by-image", files={"file": ("q.png", png(201), "image/png")}, data={"k": "1"})
        assert by.status_code == 200, by.text
        assert by.json()["results"][0]["img_id"] == recs[1]["img_id"]
        assert c.get("/api/search", params={"q": "dog", "k": 0}).status_code == 400
        assert c.get("/api/search", params={"q": "dog", "k": 1000}).status_code == 400
        assert c.get("/api/search").status_code == 400


def test_describe_file_and_saved_image(service):
    with service.client("alice") as c:
        r = c.post("/api/describe", files={"file": ("p.png", png(31), "image/png")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert isinstance(body["description"], str) and isinstance(body["caption_zh"], str)
        assert body["random_weights"] is True
        rec = upload(c, png(32), caption="我自己写的").json()
        r = c.post("/api/describe", json={"img_id": rec["img_id"]})
        assert r.status_code == 200, r.text
        saved = c.get(f"/api/images/{rec['img_id']}").json()
        assert saved["description"] == r.json()["description"]
        # The model's post text has its own field; the user's caption is never overwritten (API.md).
        assert saved["post_text"] == r.json()["caption_zh"]
        assert saved["caption"] == "我自己写的"
        assert c.post("/api/describe", json={"nope": 1}).status_code == 400
        assert c.post("/api/describe", files={"file": ("x.png", b"GIF87a-not", "image/png")}).status_code in (400, 415)


def test_generate_into_gallery_and_idempotency_key(service):
    with service.client("alice") as c:
        body = {"text": "a red boat", "size": "small", "seed": 5}
        first = c.post("/api/generate/image", json=body, headers={"Idempotency-Key": "gen-1"})
        assert first.status_code == 200, first.text
        ans = first.json()
        assert ans["img_id"] and ans["size"] == "64x64"
        rec = c.get(f"/api/images/{ans['img_id']}").json()
        assert rec["source"] == "generated"
        retry = c.post("/api/generate/image", json=body, headers={"Idempotency-Key": "gen-1"})
        # The first answer again; its link to the kept image signed afresh (a replay may come a day later).
        assert {k: v for k, v in retry.json().items() if k != "image_url"} == \
            {k: v for k, v in ans.items() if k != "image_url"}
        assert c.get(retry.json()["image_url"]).status_code == 200
        clash = c.post("/api/generate/image", json={**body, "seed": 6}, headers={"Idempotency-Key": "gen-1"})
        assert clash.status_code == 400 and clash.json()["error"]["code"] == "idempotency_conflict"


def test_delete_me_removes_only_the_callers_data(service):
    with service.client("alice") as a, service.client("bob") as b:
        upload(a, png(50))
        bobs = upload(b, png(51)).json()
        assert a.delete("/api/me").status_code == 204
        assert a.get("/api/images").json()["items"] == []
        assert b.get(f"/api/images/{bobs['img_id']}").status_code == 200
        assert upload(a, png(50)).status_code == 201
