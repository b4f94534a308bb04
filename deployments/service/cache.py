"""Two-level cache of model answers to text: an LRU per replica, then Redis shared by all replicas.

Keys are the model id plus a hash of the caller's user id and the input, so a model swap never serves
stale answers and one user's answer is never another's: a shared entry would tell user B, by its
speed and its exact text, what user A sent in the last hour (README, "Caches").
Redis is an optimisation, never a dependency: when it fails, the model is asked.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from typing import Awaitable, Callable

import numpy as np
from cachetools import TTLCache

log = logging.getLogger("atelier.cache")


class AnswerCache:
    def __init__(self, *, lru_size: int, ttl_s: float, redis_url: str | None = None):
        self.ttl_s = ttl_s
        self.lru: TTLCache | None = TTLCache(maxsize=lru_size, ttl=ttl_s) if lru_size else None
        self.redis = None
        self.counts: Counter = Counter()  # "hit" / "miss" per kind of answer, for tests and operators
        if redis_url:
            import redis.asyncio as aioredis

            self.redis = aioredis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)

    def resize(self, *, lru_size: int, ttl_s: float) -> None:
        """New limits for the LRU (emptied only when they change)."""
        if (self.lru.maxsize if self.lru is not None else 0, self.ttl_s) == (lru_size, ttl_s):
            return
        self.ttl_s = ttl_s
        self.lru = TTLCache(maxsize=lru_size, ttl=ttl_s) if lru_size else None

    @staticmethod
    def key(kind: str, model_id: str, text: str, *, user: str) -> str:
        """The entry of `user`'s answer to `text`: hashed together, so no key names a user or a text."""
        scoped = hashlib.sha256(user.encode("utf-8") + b"\x00" + text.encode("utf-8")).hexdigest()
        return f"atelier:{kind}:{model_id}:{scoped}"

    async def get_or_compute(self, key: str, compute: Callable[[], Awaitable],
                             keep: Callable[[object], bool] = lambda value: True):
        """The cached answer for `key`, else `compute()`'s, kept for next time when `keep(answer)`."""
        kind = key.split(":")[1] if key.count(":") >= 2 else key
        if self.lru is not None and key in self.lru:
            self.counts[f"{kind}.hit"] += 1
            return self.lru[key]
        if self.redis is not None:
            try:
                raw = await self.redis.get(key)
            except Exception as exc:  # noqa: BLE001 - fall through to the model
                log.warning("redis cache unavailable: %s", exc)
                raw = None
            if raw is not None:
                value = decode(raw)
                self.counts[f"{kind}.hit"] += 1
                if self.lru is not None:
                    self.lru[key] = value
                return value
        self.counts[f"{kind}.miss"] += 1
        value = await compute()
        if not keep(value):
            return value
        if self.lru is not None:
            self.lru[key] = value
        if self.redis is not None:
            try:
                await self.redis.set(key, encode(value), ex=max(1, int(self.ttl_s)))
            except Exception as exc:  # noqa: BLE001
                log.warning("redis cache unavailable: %s", exc)
        return value


def encode(value) -> bytes:
    """Redis's copy: a vector's numbers (its key names its model), or a text."""
    values = getattr(value, "values", None)  # a models.vector.Vector
    if isinstance(values, np.ndarray):
        value = values
    if isinstance(value, np.ndarray):
        return b"v" + np.asarray(value, dtype=np.float32).tobytes()
    return b"s" + str(value).encode("utf-8")


def decode(raw: bytes):
    if raw[:1] == b"v":
        return np.frombuffer(raw[1:], dtype=np.float32).copy()
    return raw[1:].decode("utf-8")
