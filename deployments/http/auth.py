"""Who is calling: bearer keys mapped to user ids (kept hashed), and signed expiring image URLs."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from pathlib import Path

from storage.errors import AtelierError, NotFound
from storage.keys import KeyStore, digest
from storage.settings import StorageSettings

from deployments.settings import ServiceSettings

log = logging.getLogger("atelier.auth")


class Unauthorized(AtelierError):
    code = "unauthorized"
    status = 401


class BadHeader(AtelierError):
    code = "invalid_header"
    status = 400


# RFC 9110 11.1: the scheme is case-insensitive; RFC 6750 2.1: exactly one space, then a b64token.
_BEARER = re.compile(r"(?i:bearer) ([A-Za-z0-9\-._~+/]+=*)")


class KeyRing:
    """API keys as sha256 digests -> user id, following the cluster's key table (`storage.keys`).

    Each lookup asks the table for its latest version and re-reads it when it moved, so a key added or
    revoked with `python -m deployments.keys` counts from the next request, on every replica and proxy,
    without a restart. A table that cannot be read keeps the keys last read (and logs why). A ring made
    from a plain dict (`KeyRing({digest: user})`) is fixed.
    """

    def __init__(self, digests: dict[str, str], store: KeyStore | None = None):
        self._digests = dict(digests)
        self._store = store
        self._dataset = None
        self._version: int | None = None
        self._lock = threading.Lock()

    @classmethod
    def open(cls, store: KeyStore) -> "KeyRing":
        ring = cls({}, store)
        ring._follow()
        return ring

    @property
    def remote(self) -> bool:
        return self._store is not None and self._store.remote

    def _follow(self) -> None:
        if self._store is None:
            return
        with self._lock:
            try:
                if self._dataset is None:
                    self._dataset = self._store.dataset()
                latest = self._dataset.latest_version
                if latest == self._version:
                    return
                self._dataset = self._dataset.checkout_version(latest)
                self._digests = self._store.read(self._dataset)
                self._version = latest
            except Exception as exc:  # noqa: BLE001 - a store hiccup must not lock everyone out
                log.warning("the API key table at %s could not be read (%s: %s); keeping the %d keys read before",
                            self._store.uri, type(exc).__name__, exc, len(self._digests))

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
        # A dict lookup by the digest of a 256-bit random secret: its timing says nothing usable
        # about the key (finding a near miss would need a sha256 preimage).
        user = self._digests.get(digest(match[1]))
        if user is None:
            raise Unauthorized("the API key is not valid")
        return user

    async def authenticate(self, authorization: str | bytes | None) -> str:
        """`user_for` from async code: a table in an object store is checked off the event loop."""
        if self.remote:
            return await asyncio.to_thread(self.user_for, authorization)
        return self.user_for(authorization)


def key_store(settings=None) -> KeyStore:
    """The cluster's key table, where the environment says (`ServiceSettings.keys_uri`)."""
    settings = settings or ServiceSettings()
    storage = StorageSettings()
    return KeyStore(settings.keys_uri or storage.lancedb_uri, table=settings.keys_table,
                    storage_options=storage.lancedb_storage_options)


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
