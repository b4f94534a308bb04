"""The plans' counters shared through a real redis-server by two "replicas" (two `PlanLimits`, as two ingress
replicas hold): a limit of N admits exactly N across both, and Redis going away mid-test gives no error,
only counts kept in each replica until it is back (issue 29.2); calls at once per role the same, and a slot
its replica never gave back frees itself at its lease (issue 29.5); GPU seconds and tokens are charged once
for every replica, and a charge made while Redis is away is no error (issue 29.3)."""

from __future__ import annotations

import asyncio

import pytest

from deployments.config import Plan
from deployments.service.limits import PlanLimits, RateLimited
from tests.support.redis_server import RedisServer

PLANS = {"default": Plan(requests={"search": "7/minute", "generate": "2/minute"}, concurrent={"painter": 3}),
         "pro": Plan(requests={"search": "50/minute"}),
         "metered": Plan(gpu_seconds={"painter": "10/hour"}, tokens="1000/day")}


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


def test_budgets_are_charged_once_across_replicas_and_refuse_when_spent(redis):
    async def main():
        a, b = replicas(redis.url, {"mia": "metered"})
        await a.charge("mia", "painter", 4.25)
        await b.charge("mia", "painter", 3.5)
        [window] = await b.budget_windows("mia", "gpu-painter")
        assert (window.unit, window.quota, window.exact_left) == ("gpu-seconds", 10, pytest.approx(2.25, abs=0.002))
        # Each replica refuses a call that no longer fits what is left, whichever charged it.
        a.estimates.learn("painter", "generate", {"size": "64x64", "steps": 4}, 3.0)
        with pytest.raises(RateLimited) as refused:
            async with a.spend("mia", "painter", "generate", {"size": "64x64", "steps": 4}):
                pass
        assert (refused.value.code, refused.value.limit) == ("quota_exceeded", "gpu-painter")
        # Half the size and steps: a quarter of the work by the learned seconds per pixel-step, so it fits.
        assert a.estimates.of("painter", "generate", {"size": "32x64", "steps": 2}) == pytest.approx(0.75)
        # Above the largest measured call: its seconds, not scaled up (a small call's seconds are mostly fixed
        # costs); between two measured calls: on the line through them.
        assert a.estimates.of("painter", "generate", {"size": "1024x1024", "steps": 50}) == pytest.approx(3.0)
        b.estimates.learn("painter", "generate", {"size": "64x64", "steps": 1}, 1.0)
        b.estimates.learn("painter", "generate", {"size": "64x64", "steps": 5}, 3.0)
        assert b.estimates.of("painter", "generate", {"size": "64x64", "steps": 2}) == pytest.approx(1.5)
        async with a.spend("mia", "painter", "generate", {"size": "32x64", "steps": 2}) as bill:
            bill.seconds = 1.0  # what the replica measured: charged on exit
        assert (await a.budget_windows("mia", "gpu-painter"))[0].exact_left == pytest.approx(1.25, abs=0.002)
        await a.charge_tokens("mia", 400)
        await b.charge_tokens("mia", 350)
        [tokens] = await a.budget_windows("mia", "tokens")
        assert (tokens.unit, tokens.exact_left) == ("tokens", 250)
        # Redis away: charges are no error, counted in the replica alone (degraded) until it is back.
        redis.stop()
        await a.charge("mia", "painter", 0.5)
        assert (await a.budget_windows("mia", "gpu-painter"))[0].exact_left == pytest.approx(9.5, abs=0.002)
        redis.start()

    asyncio.run(main())


def test_a_nearly_full_role_refuses_the_user_holding_most_of_it(redis):
    """A role that takes 4 calls at once (its capacity) is shared out from 3 held: the user holding the most of
    it is refused (429 `fair-share-<role>`), whichever replica they call, and the others still get in."""
    async def take(limits: PlanLimits, user: str):
        slot = limits.hold(user, "describer")
        await slot.__aenter__()
        return slot

    async def main():
        a, b = replicas(redis.url, capacity={"describer": 4})
        assert a.share_from == {"describer": 3}
        dave = [await take(x, "dave") for x in (a, b, a)]  # no cap on the describer in dave's plan
        for x in (a, b):
            with pytest.raises(RateLimited) as refused:
                await take(x, "dave")
            assert refused.value.limit == "fair-share-describer" and refused.value.retry_after >= 1
        erin = [await take(b, "erin"), await take(a, "erin")]  # she holds less than dave: in
        await dave.pop().__aexit__(None, None, None)
        # 4 held, dave 2 and erin 2: both hold the most, both are refused; a third user is not.
        for user in ("dave", "erin"):
            with pytest.raises(RateLimited):
                await take(a, user)
        frank = await take(b, "frank")
        for slot in dave + erin + [frank]:
            await slot.__aexit__(None, None, None)
        # All given back: dave may take the role again.
        await (await take(a, "dave")).__aexit__(None, None, None)

    asyncio.run(main())


def test_fair_share_without_redis_holds_in_the_replica():
    async def plan_of(user):
        return "default"

    async def main():
        alone = PlanLimits(plan_of, plans=PLANS, capacity={"writer": 2})
        assert alone.share_from == {"writer": 1}
        first = alone.hold("gus", "writer")
        await first.__aenter__()
        with pytest.raises(RateLimited) as refused:
            async with alone.hold("gus", "writer"):
                pass
        assert refused.value.limit == "fair-share-writer"
        async with alone.hold("hal", "writer"):
            pass
        await first.__aexit__(None, None, None)
        async with alone.hold("gus", "writer"):
            pass

    asyncio.run(main())
