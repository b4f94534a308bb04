"""Who is calling: bearer keys mapped to user ids (kept hashed), and signed expiring image URLs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
from pathlib import Path

from storage.errors import AtelierError, NotFound

log = logging.getLogger("atelier.auth")


class Unauthorized(AtelierError):
    code = "unauthorized"
    status = 401


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class BadHeader(AtelierError):
    code = "invalid_header"
    status = 400


# RFC 9110 11.1: the scheme is case-insensitive; RFC 6750 2.1: exactly one space, then a b64token.
_BEARER = re.compile(r"(?i:bearer) ([A-Za-z0-9\-._~+/]+=*)")


class KeyRing:
    """API keys as sha256 digests -> user id. The file never holds a usable key.

    Loaded from a file, the ring follows it: a key added or removed with `python -m deployments.keys`
    counts from the next request, on every replica and proxy, without a restart (one `stat` per lookup;
    a file that cannot be read keeps the keys last read).
    """

    def __init__(self, digests: dict[str, str], path: str | os.PathLike | None = None):
        self._digests = dict(digests)
        self._path = Path(path) if path is not None else None
        self._seen: tuple | None = None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "KeyRing":
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"no API key file at {p}; create one with `python -m deployments.keys add USER`")
        ring = cls({}, p)
        ring._follow()
        return ring

    def _follow(self) -> None:
        if self._path is None:
            return
        try:
            st = os.stat(self._path)
            seen = (st.st_ino, st.st_mtime_ns, st.st_size)
            if seen == self._seen:
                return
            data = json.loads(self._path.read_text())
            self._digests = {entry["sha256"]: entry["user"] for entry in data.get("keys", [])}
            self._seen = seen
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("API key file %s could not be read (%s); keeping the %d keys read before",
                        self._path, type(exc).__name__, len(self._digests))

    def user_for(self, authorization: str | bytes | None) -> str:
        """The user of an `Authorization: Bearer <key>` value; `Unauthorized` for anything else."""
        if isinstance(authorization, bytes):
            try:
                authorization = authorization.decode("ascii")
            except UnicodeDecodeError:
                raise Unauthorized("the Authorization header is not ASCII; send `Authorization: Bearer <key>`") \
                    from None
        match = _BEARER.fullmatch(authorization or "")
        if match is None:
            raise Unauthorized("send `Authorization: Bearer <key>`")
        self._follow()
        presented = _digest(match[1])
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
