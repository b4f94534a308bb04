"""The answer cache: per-replica LRU, then a real redis-server shared by two "replicas"."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from deployments.service.cache import AnswerCache
from tests.support.redis_server import RedisServer


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


class Counter:
    def __init__(self, value):
        self.calls, self.value = 0, value

    async def __call__(self):
        self.calls += 1
        return self.value


def test_second_replica_is_served_from_redis(redis_url):
    async def run():
        a = AnswerCache(lru_size=16, ttl_s=60, redis_url=redis_url)
        b = AnswerCache(lru_size=16, ttl_s=60, redis_url=redis_url)
        key = AnswerCache.key("embed_text", "clip-x", "海边的日落", user="alice")
        vec = np.arange(8, dtype=np.float32) / 7
        model = Counter(vec)
        first = await a.get_or_compute(key, model)
        second = await b.get_or_compute(key, model)  # another replica: empty LRU, Redis hit
        third = await b.get_or_compute(key, model)   # now its own LRU
        assert model.calls == 1
        np.testing.assert_array_equal(second, vec)
        np.testing.assert_array_equal(third, first)
        text_key = AnswerCache.key("enhance", "qwen-x", "a cat", user="alice")
        writer = Counter("a fluffy cat, soft light")
        assert await a.get_or_compute(text_key, writer) == await b.get_or_compute(text_key, writer)
        assert writer.calls == 1
        # A different model id is a different key: no stale answers after a model swap.
        other = Counter(np.zeros(8, dtype=np.float32))
        await b.get_or_compute(AnswerCache.key("embed_text", "clip-y", "海边的日落", user="alice"), other)
        assert other.calls == 1

    asyncio.run(run())


def test_redis_down_falls_back_to_the_model():
    async def run():
        cache = AnswerCache(lru_size=0, ttl_s=60, redis_url="redis://127.0.0.1:1/0")
        model = Counter("answer")
        assert await cache.get_or_compute("k", model) == "answer"
        assert await cache.get_or_compute("k", model) == "answer"
        assert model.calls == 2  # no LRU, no Redis: the model answers each time

    asyncio.run(run())


def test_lru_alone():
    async def run():
        cache = AnswerCache(lru_size=2, ttl_s=60)
        model = Counter("x")
        for _ in range(3):
            await cache.get_or_compute("k", model)
        assert model.calls == 1

    asyncio.run(run())
