"""Who is calling: bearer keys mapped to user ids (kept hashed), and signed expiring image URLs."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

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
    """Signed, expiring tokens for image files, so an <img> tag needs no header."""

    def __init__(self, secret: bytes, ttl_s: int):
        self._s = URLSafeTimedSerializer(secret, salt="atelier-image-file")
        self.ttl_s = ttl_s

    def sign(self, user_id: str, img_id: str) -> str:
        return self._s.dumps([user_id, img_id])

    def verify(self, token: str, img_id: str) -> str:
        """The user id the token was issued to; any problem is a plain 404 (no oracle)."""
        try:
            user_id, signed_img = self._s.loads(token, max_age=self.ttl_s)
        except (BadSignature, SignatureExpired, ValueError, TypeError):
            raise NotFound("no such image") from None
        if signed_img != img_id:
            raise NotFound("no such image")
        return user_id
