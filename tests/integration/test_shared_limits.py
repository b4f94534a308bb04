"""The plans' counters shared through a real redis-server by two "replicas" (two `PlanLimits`, as two ingress
replicas hold): a limit of N admits exactly N across both, and Redis going away mid-test gives no error,
only counts kept in each replica until it is back (issue 29.2); calls at once per role the same, and a slot
its replica never gave back frees itself at its lease (issue 29.5)."""

from __future__ import annotations

import asyncio

import pytest

from deployments.config import Plan
from deployments.service.limits import PlanLimits, RateLimited
from tests.support.redis_server import RedisServer

PLANS = {"default": Plan(requests={"search": "7/minute", "generate": "2/minute"}, concurrent={"painter": 3}),
         "pro": Plan(requests={"search": "50/minute"})}


@pytest.fixture
def redis(tmp_path):
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def replicas(url: str, plans_of: dict | None = None, n: int = 2, **kw) -> list[PlanLimits]:
    async def plan_of(user):
        return (plans_of or {}).get(user, "default")

    return [PlanLimits(plan_of, plans=PLANS, redis_url=url, retry_shared_s=0.3, **kw) for _ in range(n)]


async def _take(limits: PlanLimits, user: str, role: str = "painter"):
    """A slot held until the caller exits it, or None when the plan's slots are all held."""
    slot = limits.hold(user, role)
    try:
        await slot.__aenter__()
    except RateLimited as exc:
        assert exc.limit == f"concurrent-{role}"
        return None
    return slot


async def _admit(limits: PlanLimits, user: str, route_class: str) -> bool:
    try:
        await limits.admit(user, route_class)
        return True
    except RateLimited:
        return False


def test_a_limit_of_n_admits_exactly_n_across_replicas(redis):
    async def main():
        a, b = replicas(redis.url)
        # 40 requests at once, half through each replica: exactly the plan's 7 get in.
        outcomes = await asyncio.gather(*(_admit(a if i % 2 else b, "alice", "search") for i in range(40)))
        assert sum(outcomes) == 7
        # Another user, and another route class of the same user, have counts of their own.
        assert await _admit(a, "bob", "search") and await _admit(b, "alice", "generate")
        usage = await b.usage("alice")
        search = next(x for x in usage["limits"] if x["limit"] == "search")
        assert (search["quota"], search["used"], search["left"]) == (7, 7, 0) and 0 < search["resets_in_s"] <= 60

    asyncio.run(main())


def test_redis_down_counts_in_each_replica_then_shares_again(redis):
    async def main():
        a, b = replicas(redis.url)
        assert await _admit(a, "carol", "generate")
        redis.stop()
        # No error: each replica counts alone (degraded), so the limit is per replica while Redis is away.
        first = await a.admit("carol", "generate")
        assert first.degraded
        assert await _admit(a, "carol", "generate") is True  # a's own count: 2 of 2
        assert await _admit(a, "carol", "generate") is False
        assert (await b.admit("carol", "generate")).degraded
        redis.start()  # an empty Redis (no persistence): counting starts again there
        await asyncio.sleep(0.4)  # past retry_shared_s: the next call tries Redis again
        back = await a.admit("carol", "generate")
        assert not back.degraded
        assert await _admit(b, "carol", "generate") is True  # 2 of 2 in Redis, across both replicas
        assert await _admit(a, "carol", "generate") is False

    asyncio.run(main())


def test_the_plan_is_read_on_every_request(redis):
    plans = {}

    async def main():
        (a,) = replicas(redis.url, plans, n=1)
        outcomes = [await _admit(a, "dave", "search") for _ in range(8)]
        assert outcomes == [True] * 7 + [False]
        plans["dave"] = "pro"  # `python -m deployments.keys plan dave pro`, as the PlanBook reads it
        assert await _admit(a, "dave", "search")
        assert (await a.usage("dave"))["plan"] == "pro"
        plans["dave"] = "gold"  # a plan the settings do not define: the default's limits
        assert not await _admit(a, "dave", "search")

    asyncio.run(main())


def test_calls_at_once_hold_across_replicas_and_come_back(redis):
    async def main():
        a, b = replicas(redis.url)
        # 12 calls at once, half through each replica, none ending: exactly the plan's 3 hold a slot.
        slots = await asyncio.gather(*(_take(a if i % 2 else b, "erin") for i in range(12)))
        held = [s for s in slots if s is not None]
        assert len(held) == 3
        franks = await _take(a, "frank")
        assert franks is not None  # another user's slots are their own
        usage = next(x for x in (await b.usage("erin"))["limits"] if x["limit"] == "concurrent-painter")
        assert (usage["quota"], usage["used"], usage["left"]) == (3, 3, 0)
        await held[0].__aexit__(None, None, None)  # one call ends: one more gets in, on either replica
        again = await _take(b, "erin")  # kept: a slot nobody refers to any more is given back when collected
        assert again is not None and await _take(a, "erin") is None
        for slot in held[1:]:
            await slot.__aexit__(None, None, None)
        assert (await a.usage("erin"))["limits"][-1]["used"] == 1

    asyncio.run(main())


def test_a_slot_whose_replica_died_frees_itself_at_its_lease(redis):
    async def main():
        (dead,) = replicas(redis.url, n=1, slot_lease_s=1.0)
        (alive,) = replicas(redis.url, n=1)
        taken = [await _take(dead, "gina") for _ in range(3)]  # never given back: the replica "died"
        assert all(taken) and await _take(alive, "gina") is None
        await asyncio.sleep(1.2)  # past the lease, by Redis's clock
        assert await _take(alive, "gina") is not None

    asyncio.run(main())


def test_slots_without_redis_are_held_in_each_replica(redis):
    async def main():
        a, b = replicas(redis.url)
        redis.stop()
        held = [await _take(a, "hank") for _ in range(4)]
        assert sum(s is not None for s in held) == 3  # a's own count while Redis is away
        assert await _take(b, "hank") is not None  # b counts alone
        for slot in held:
            if slot is not None:
                await slot.__aexit__(None, None, None)  # given back where they were taken, no error
        assert await _take(a, "hank") is not None

    asyncio.run(main())
