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
from storage.keys import KeyStore, PlanStore, digest
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


class Following:
    """The latest version of a small table every proxy and replica reads (`storage.keys.SmallTable`), in memory.

    Each `latest()` asks the table for its latest version and re-reads it when it moved, so a change made
    with `python -m deployments.keys` counts from the next request, on every replica and proxy, without a
    restart. A table that cannot be read keeps what was read last (and logs why). Made without a store,
    the value is fixed.
    """

    def __init__(self, value, store=None, read=None, what: str = "table"):
        self._value, self._store, self._read, self._what = value, store, read, what
        self._dataset = None
        self._version: int | None = None
        self._lock = threading.Lock()

    @property
    def remote(self) -> bool:
        return self._store is not None and self._store.remote

    def latest(self):
        if self._store is None:
            return self._value
        with self._lock:
            try:
                if self._dataset is None:
                    self._dataset = self._store.dataset()
                latest = self._dataset.latest_version
                if latest != self._version:
                    self._dataset = self._dataset.checkout_version(latest)
                    self._value = self._read(self._dataset)
                    self._version = latest
            except Exception as exc:  # noqa: BLE001 - a store hiccup must not lock everyone out
                log.warning("the %s at %s could not be read (%s: %s); keeping the %d rows read before",
                            self._what, self._store.uri, type(exc).__name__, exc, len(self._value))
            return self._value

    async def latest_async(self):
        """`latest` from async code: a table in an object store is checked off the event loop."""
        return await asyncio.to_thread(self.latest) if self.remote else self.latest()


class KeyRing:
    """API keys as sha256 digests -> user id, following the cluster's key table (`storage.keys`, `Following`).
    A ring made from a plain dict (`KeyRing({digest: user})`) is fixed."""

    def __init__(self, digests: dict[str, str], store: KeyStore | None = None):
        self._keys = Following(dict(digests), store, KeyStore.read, "API key table")

    @classmethod
    def open(cls, store: KeyStore) -> "KeyRing":
        ring = cls({}, store)
        ring._keys.latest()
        return ring

    @property
    def remote(self) -> bool:
        return self._keys.remote

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
        # A dict lookup by the digest of a 256-bit random secret: its timing says nothing usable
        # about the key (finding a near miss would need a sha256 preimage).
        user = self._keys.latest().get(digest(match[1]))
        if user is None:
            raise Unauthorized("the API key is not valid")
        return user

    async def authenticate(self, authorization: str | bytes | None) -> str:
        """`user_for` from async code: a table in an object store is checked off the event loop."""
        if self.remote:
            return await asyncio.to_thread(self.user_for, authorization)
        return self.user_for(authorization)


class PlanBook:
    """Which plan each user is on, following the cluster's plan table (`storage.keys.PlanStore`, `Following`):
    `python -m deployments.keys plan USER PLAN` counts from the user's next request. Made without a store,
    every user is on `default` (or on the plans given)."""

    def __init__(self, plans: dict[str, str] | None = None, store: PlanStore | None = None):
        self._plans = Following(dict(plans or {}), store, PlanStore.read, "plan table")

    @classmethod
    def open(cls, store: PlanStore) -> "PlanBook":
        book = cls({}, store)
        book._plans.latest()
        return book

    async def plan_of(self, user: str) -> str:
        return (await self._plans.latest_async()).get(user, "default")


def key_store(settings=None) -> KeyStore:
    """The cluster's key table, where the environment says (`ServiceSettings.keys_uri`)."""
    settings = settings or ServiceSettings()
    storage = StorageSettings()
    return KeyStore(settings.keys_uri or storage.lancedb_uri, table=settings.keys_table,
                    storage_options=storage.lancedb_storage_options)


def plan_store(settings=None, storage: StorageSettings | None = None) -> PlanStore:
    """The cluster's plan table, beside the key table (`ServiceSettings.plans_table`; the key table's
    location, else the gallery's database)."""
    settings = settings or ServiceSettings()
    storage = storage or StorageSettings()
    return PlanStore(settings.keys_uri or storage.lancedb_uri, table=settings.plans_table,
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
