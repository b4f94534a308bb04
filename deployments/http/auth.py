"""Who is calling: bearer keys mapped to user ids (kept hashed), and signed expiring image URLs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path

from storage.errors import AtelierError, NotFound


class Unauthorized(AtelierError):
    code = "unauthorized"
    status = 401


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyRing:
    """API keys as sha256 digests -> user id. The file never holds a usable key."""

    def __init__(self, digests: dict[str, str]):
        self._digests = dict(digests)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "KeyRing":
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"no API key file at {p}; create one with `python -m deployments.keys add USER`")
        data = json.loads(p.read_text())
        return cls({entry["sha256"]: entry["user"] for entry in data.get("keys", [])})

    def user_for(self, authorization: str | None) -> str:
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthorized("send `Authorization: Bearer <key>`")
        presented = _digest(authorization[len("Bearer "):].strip())
        user = None
        # Compare against every digest in constant time, so timing tells nothing about near misses.
        for digest, uid in self._digests.items():
            if hmac.compare_digest(digest, presented):
                user = uid
        if user is None:
            raise Unauthorized("the API key is not valid")
        return user


def add_key(path: str | os.PathLike, user: str) -> str:
    """Create a new key for `user`, store its digest, and return the key (shown once)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(p.read_text()) if p.is_file() else {"keys": []}
    key = "atl_" + secrets.token_urlsafe(32)
    data["keys"].append({"user": user, "sha256": _digest(key)})
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.chmod(tmp, 0o600)
    os.replace(tmp, p)
    return key


def load_secret(value: str | None, path: str | os.PathLike) -> bytes:
    """The URL-signing secret: from the environment, else a file, created on first use."""
    if value:
        return value.encode()
    p = Path(path)
    if not p.is_file():
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(secrets.token_urlsafe(48))
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, p)  # first writer wins when several replicas start at once
        except FileExistsError:
            pass
        tmp.unlink(missing_ok=True)
    return p.read_text().strip().encode()


class UrlSigner:
    """Signed, expiring tokens for image files, so an <img> tag needs no header.

    A token is `<expiry>.<mac>`: the expiry in Unix seconds and an HMAC-SHA256 over the owner, the
    image and the expiry. Nothing in it names the owner (the route looks the owner up by image id
    and checks the mac against it), it works for one image only, and it cannot be made without the
    secret.
    """

    def __init__(self, secret: bytes, ttl_s: int):
        self._key = hashlib.sha256(b"atelier-image-file\x00" + secret).digest()
        self.ttl_s = ttl_s

    def _mac(self, user_id: str, img_id: str, expires: int) -> str:
        message = json.dumps([user_id, img_id, expires], separators=(",", ":")).encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:24]).decode()

    def sign(self, user_id: str, img_id: str) -> str:
        expires = int(time.time()) + self.ttl_s
        return f"{expires}.{self._mac(user_id, img_id, expires)}"

    def verify(self, token: str, img_id: str, user_id: str | None) -> str:
        """`user_id` if the token was issued to that user for this image and has not expired; any problem
        (an unknown owner included) is a plain 404, so the answer tells nothing."""
        expires_text, _, mac = (token or "").partition(".")
        valid = False
        if user_id is not None and expires_text.isdigit() and len(expires_text) <= 12 and mac:
            expected = self._mac(user_id, img_id, int(expires_text))
            valid = hmac.compare_digest(expected.encode(), mac.encode()) and int(expires_text) >= time.time()
        if not valid:
            raise NotFound("no such image", code="image_not_found")
        return user_id
