"""What a user can trust, at the HTTP surface (in-process): their caption stays theirs, signed URLs say
nothing about them, the schema needs a key, errors speak one language, and a failing Writer costs a
query once."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from http_helpers import CountingWriter, auth, png



def _upload(client, headers, seed, caption=None):
    r = client.post("/api/images", headers=headers, files={"file": ("p.png", png(seed), "image/png")},
                    data={"caption": caption} if caption else None)
    assert r.status_code in (200, 201), r.text
    return r.json()


def test_describe_keeps_the_users_caption_and_saves_the_post_text(surface):
    client, _ = surface
    h = auth(surface)
    rec = _upload(client, h, 101, caption="我写的标题")
    r = client.post("/api/describe", headers=h, json={"img_id": rec["img_id"]})
    assert r.status_code == 200, r.text
    saved = client.get(f"/api/images/{rec['img_id']}", headers=h).json()
    assert saved["caption"] == "我写的标题"
    assert saved["post_text"] == r.json()["caption_zh"] and saved["description"] == r.json()["description"]


def _decoded_pieces(token: str) -> list[bytes]:
    out = []
    for piece in token.replace("-", "+").replace("_", "/").split("."):
        try:
            out.append(base64.b64decode(piece + "=" * (-len(piece) % 4)))
        except (binascii.Error, ValueError):
            pass
    return out


def test_signed_urls_are_opaque_bound_and_unforgeable(surface):
    client, keys = surface
    user = "alice"
    rec = _upload(client, auth(surface, user), 102)
    url = rec["image_url"]
    assert url.startswith("http://testserver/api/images/")  # absolute, as API.md says
    sig = parse_qs(urlsplit(url).query)["sig"][0]
    assert user not in url and all(user.encode() not in piece for piece in _decoded_pieces(sig))
    assert client.get(url).status_code == 200
    other = _upload(client, auth(surface, user), 103)
    moved = url.replace(rec["img_id"], other["img_id"])
    assert client.get(moved).status_code == 404  # bound to one image
    expires, _, mac = sig.partition(".")
    forged = f"{int(expires) + 3600}.{mac}"
    r = client.get(url.replace(sig, forged))
    assert r.status_code == 404 and r.json()["error"]["code"] == "image_not_found"
    assert client.get(url.replace(sig, f"{expires}.{'A' * len(mac)}")).status_code == 404


def test_a_signed_url_expires(monkeypatch):
    from deployments.http.auth import UrlSigner
    from storage.errors import NotFound

    signer = UrlSigner(b"secret", ttl_s=60)
    token = signer.sign("alice", "a" * 32)
    assert signer.verify(token, "a" * 32, "alice") == "alice"
    with pytest.raises(NotFound):
        signer.verify(token, "a" * 32, "bob")
    later = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(NotFound):
        signer.verify(token, "a" * 32, "alice")


def test_the_schema_needs_a_key_and_no_cdn_pages_are_served(surface):
    client, _ = surface
    assert client.get("/openapi.json").status_code == 401
    schema = client.get("/openapi.json", headers=auth(surface))
    assert schema.status_code == 200 and "/api/search" in schema.json()["paths"]
    for page in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        # A stranger learns nothing, not even whether the page exists; a user finds nothing there.
        assert client.get(page).status_code == 401
        r = client.get(page, headers=auth(surface))
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_one_code_per_condition_and_a_useful_field_for_bad_json(surface):
    client, _ = surface
    h = auth(surface)
    missing = "0" * 32
    for r in (client.get(f"/api/images/{missing}", headers=h), client.delete(f"/api/images/{missing}", headers=h),
              client.get(f"/api/images/{missing}/file?sig=1.abc"), client.get("/api/images/not-an-id", headers=h)):
        assert r.status_code == 404 and r.json()["error"]["code"] == "image_not_found", r.text
    bad = client.post("/api/text", headers={**h, "Content-Type": "application/json"}, content=b'{"text": "x",')
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_json" and bad.json()["error"]["field"] == "body"


def test_a_failed_translation_is_remembered_briefly_and_logged_once(tiny_models, tmp_path, caplog):
    from deployments.assemble import product_service
    from deployments.config import IngressSpec
    from deployments.service.models import LocalModels
    from storage.settings import StorageSettings

    writer = CountingWriter(tiny_models["writer"], fail=True)
    models = LocalModels(tiny_models["embedder"], writer, tiny_models["describer"], tiny_models["painter"])
    service = product_service(models, ingress=IngressSpec(), storage=StorageSettings(lancedb_uri=str(tmp_path)),
                              ingest=None, in_process=True)

    async def twice():
        return [await service.texts.english("海边的日落", user="alice") for _ in range(3)]

    with caplog.at_level(logging.WARNING, logger="atelier.service"):
        answers = asyncio.run(twice())
    assert answers == [("海边的日落", True)] * 3
    assert writer.calls == 1
    lines = [r.getMessage() for r in caplog.records if "translate" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and "Traceback" not in lines[0], lines
    asyncio.run(service.texts.english("城市夜景", user="alice"))  # another text is asked: only the failed one is remembered
    assert writer.calls == 2
