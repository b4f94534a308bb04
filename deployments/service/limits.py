"""Each user's plan limits, counted where every ingress replica sees the same counts (issue 29).

A plan (`deployments.config.Plan`, the ingress's live settings) names per-user limits; which plan a user is
on is the plan table's (`python -m deployments.keys plan USER NAME`, read through a `PlanBook`). Requests
per route class are moving windows of the `limits` library: in Redis when `ingress.redis_url` is set (its
moving window is one Lua script, so N admitted across every replica and node is exactly N), else in this
process (the single-replica local service; `deployments.config` refuses more replicas without Redis).

Calls at once per model role (`Plan.concurrent`) are held slots: a sorted set per user and role in Redis
(one Lua script takes a slot only while fewer than the cap are held, by Redis's own clock; the `limits`
library counts rates, not calls in flight), else this process's. Each slot has a lease, so a replica that
dies holding one frees it when the lease ends. The model gateway (`HeldModels`) takes a slot for each call
of a request's user (`acting_user`, set by the HTTP layer) and gives it back when the call or stream ends.

Redis unreachable: the service keeps answering and counts in each replica (`degraded`: logged once per
outage, and the HTTP layer counts it in a metric), and tries Redis again a few seconds later. Never a 500.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import limits
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from storage.errors import AtelierError

log = logging.getLogger("atelier.limits")

RETRY_SHARED_S = 5.0  # after Redis failed, count locally this long before trying it again
SLOT_LEASE_S = 600.0  # a held slot not given back (its replica died) frees itself after this long
_KEY_PREFIX = "atelier-limits"

# The user whose request runs in this context (set by the HTTP layer once the key is checked): the model
# gateway holds that user's slots. None: no user's request (readiness, warm-up), nothing held.
acting_user: contextvars.ContextVar[str | None] = contextvars.ContextVar("atelier_acting_user", default=None)


class RateLimited(AtelierError):
    """A user's plan limit is spent: 429 with when it resets (`retry_after`, seconds)."""

    code = "rate_limited"
    status = 429

    def __init__(self, message: str, *, limit: str, retry_after: float, admission: "Admission | None" = None,
                 code: str | None = None):
        super().__init__(message, code=code)
        self.limit, self.retry_after, self.admission = limit, retry_after, admission


@dataclass
class Window:
    """One limit as the answer's headers and `/api/me/usage` show it."""

    name: str  # e.g. "search" or "search-day" when a class has several windows
    quota: int
    window_s: int
    remaining: int
    reset_s: int  # seconds until the window frees a request
    unit: str = "requests"


@dataclass
class Admission:
    """What a request of a limited route class was told: its windows (for the headers) and whether the
    counts were this replica's alone (Redis unreachable)."""

    plan: str
    windows: list[Window] = field(default_factory=list)
    degraded: bool = False


def _name(route_class: str, item: limits.RateLimitItem, several: bool) -> str:
    if not several:
        return route_class
    multiple = "" if item.multiples == 1 else str(item.multiples)
    return f"{route_class}-{multiple}{item.GRANULARITY.name}"


class PlanLimits:
    """The counters of every user's plan. `plan_of(user)` names the user's plan (a `PlanBook`); `plans` are
    the live settings' plans, replaced by `tune`."""

    def __init__(self, plan_of: Callable[[str], Awaitable[str]], *, plans: dict, redis_url: str | None = None,
                 retry_shared_s: float = RETRY_SHARED_S, slot_lease_s: float = SLOT_LEASE_S):
        self._plan_of = plan_of
        self._retry_shared_s = retry_shared_s
        self._slot_lease_s = slot_lease_s
        self._plans = dict(plans)
        self._parsed: dict[tuple[str, str], list[limits.RateLimitItem]] = {}
        self._local = MovingWindowRateLimiter(MemoryStorage())
        self._local_slots = LocalSlots()
        self._shared = self._shared_slots = None
        if redis_url:
            storage = RedisStorage(redis_url, implementation="redispy", wrap_exceptions=True, key_prefix=_KEY_PREFIX,
                                   socket_timeout=0.25, socket_connect_timeout=0.25)
            self._shared = MovingWindowRateLimiter(storage)
            self._shared_slots = RedisSlots(redis_url)
        self._shared_down_until = 0.0
        self._warned = False
        # Told of each refusal and each count made without Redis, `(plan, limit, outcome)`: the metrics.
        self.on_event: Callable[[str | None, str, str], None] | None = None

    def tune(self, plans: dict) -> None:
        """New plans (the ingress's reconfigure): the next request is counted against them."""
        self._plans = dict(plans)
        self._parsed.clear()

    async def plan(self, user: str):
        """(name, Plan) of the user; a name the settings do not define is `default` (and logged)."""
        name = await self._plan_of(user)
        plan = self._plans.get(name)
        if plan is None:
            log.warning("user %s is on plan %r, which the ingress settings do not define; using `default`", user, name)
            name, plan = "default", self._plans["default"]
        return name, plan

    def _items(self, plan_name: str, plan, route_class: str) -> list[limits.RateLimitItem]:
        key = (plan_name, route_class)
        if key not in self._parsed:
            text = plan.requests.get(route_class)
            self._parsed[key] = limits.parse_many(text) if text else []
        return self._parsed[key]

    def event(self, plan: str | None, limit: str, outcome: str) -> None:
        """One refusal (`refused`) or count made without Redis (`degraded`), told to `on_event`."""
        if self.on_event is not None:
            try:
                self.on_event(plan, limit, outcome)
            except Exception:  # noqa: BLE001 - metrics never fail a request
                pass

    def _limiter(self) -> tuple[MovingWindowRateLimiter, bool]:
        if self._shared is not None and time.monotonic() >= self._shared_down_until:
            return self._shared, False
        return self._local, self._shared is not None

    def _down(self, exc: BaseException) -> None:
        self._shared_down_until = time.monotonic() + self._retry_shared_s
        if not self._warned:
            self._warned = True
            log.warning("the plans' shared counters (Redis) are unreachable (%s: %s); counting in this replica "
                        "alone until they answer", type(exc).__name__, exc)

    async def _call(self, method: str, *args, slots: bool = False):
        """A limiter call (or, with `slots`, a slot table's) on the shared counters, or this replica's when
        they are down: (result, degraded)."""
        limiter, degraded = self._limiter()
        if slots:
            limiter = self._local_slots if limiter is self._local else self._shared_slots
        if not degraded and self._shared is not None:
            try:
                result = await getattr(limiter, method)(*args)
                if self._warned:
                    self._warned = False
                    log.warning("the plans' shared counters (Redis) answer again")
                return result, False
            except Exception as exc:  # noqa: BLE001 - any Redis failure: count locally, never fail the request
                self._down(exc)
                limiter, degraded = (self._local_slots if slots else self._local), True
        return await getattr(limiter, method)(*args), degraded

    async def admit(self, user: str, route_class: str) -> Admission:
        """Count one request of `user` in `route_class`; `RateLimited` when a window of their plan is full."""
        plan_name, plan = await self.plan(user)
        items = self._items(plan_name, plan, route_class)
        admission = Admission(plan_name)
        for item in items:
            allowed, degraded = await self._call("hit", item, user, route_class)
            admission.degraded = admission.degraded or degraded
            stats, _ = await self._call("get_window_stats", item, user, route_class)
            window = Window(_name(route_class, item, len(items) > 1), item.amount, item.get_expiry(),
                            max(0, stats.remaining), max(0, math.ceil(stats.reset_time - time.time())))
            admission.windows.append(window)
            if not allowed:
                reset = max(1, window.reset_s)
                raise RateLimited(f"the {plan_name!r} plan allows {item.amount} {route_class} requests per "
                                  f"{_per(item)}; retry in {reset} s", limit=window.name, retry_after=reset,
                                  admission=admission)
        return admission

    @asynccontextmanager
    async def hold(self, user: str, role: str):
        """One of the user's slots of `role` for the body of the `async with` (no slot when their plan sets
        no cap for the role); `RateLimited` when all of them are held."""
        plan_name, plan = await self.plan(user)
        cap = plan.concurrent.get(role)
        if cap is None:
            yield
            return
        key, token = _slot_key(user, role), uuid.uuid4().hex
        (table, taken), degraded = await self._call("acquire", key, cap, token, self._slot_lease_s, slots=True)
        limit = f"concurrent-{role}"
        if degraded:
            self.event(plan_name, limit, "degraded")
        if not taken:
            self.event(plan_name, limit, "refused")
            raise RateLimited(f"the {plan_name!r} plan allows {cap} {role} call{'s' if cap != 1 else ''} at once and "
                              f"that many of yours are running (a request of n images takes n); retry when one "
                              "ends", limit=limit, retry_after=2)
        try:
            yield
        finally:
            try:  # the table the slot was taken in, even if Redis went or came back since
                await asyncio.shield(table.release(key, token))
            except Exception:  # noqa: BLE001 - its lease frees it
                pass

    async def usage(self, user: str) -> dict:
        """Each limit of the user's plan: its quota, what is used and left, and when it resets."""
        plan_name, plan = await self.plan(user)
        out = []
        for route_class in plan.requests:
            items = self._items(plan_name, plan, route_class)
            for item in items:
                stats, _ = await self._call("get_window_stats", item, user, route_class)
                left = max(0, stats.remaining)
                out.append({"limit": _name(route_class, item, len(items) > 1), "route_class": route_class,
                            "unit": "requests", "quota": item.amount, "window_s": item.get_expiry(),
                            "used": item.amount - left, "left": left,
                            "resets_in_s": max(0, math.ceil(stats.reset_time - time.time())) if left < item.amount
                            else 0})
        for role, cap in plan.concurrent.items():
            (_, held), _ = await self._call("held", _slot_key(user, role), slots=True)
            out.append({"limit": f"concurrent-{role}", "role": role, "unit": "calls at once", "quota": cap,
                        "used": min(held, cap), "left": max(0, cap - held), "resets_in_s": 0})
        return {"plan": plan_name, "limits": out}

    async def forget_user(self, user: str) -> None:
        """A deleted user's counters go with them (best effort: they expire on their own; held slots end with
        their calls)."""
        for (plan_name, route_class), items in list(self._parsed.items()):
            for item in items:
                try:
                    await self._call("clear", item, user, route_class)
                except Exception:  # noqa: BLE001
                    pass


def _per(item: limits.RateLimitItem) -> str:
    unit = item.GRANULARITY.name
    return unit if item.multiples == 1 else f"{item.multiples} {unit}s"


def _slot_key(user: str, role: str) -> str:
    return f"{_KEY_PREFIX}:held:{role}:{user}"


class LocalSlots:
    """Held slots in this process: key -> {token: lease end}. Each method answers (this table, result), so a
    slot is given back where it was taken."""

    def __init__(self):
        self._held: dict[str, dict[str, float]] = {}

    def _live(self, key: str) -> dict[str, float]:
        now = time.monotonic()
        held = self._held.get(key, {})
        for token in [t for t, end in held.items() if end <= now]:
            del held[token]
        return held

    async def acquire(self, key: str, cap: int, token: str, lease_s: float):
        held = self._live(key)
        if len(held) >= cap:
            return self, False
        self._held.setdefault(key, held)[token] = time.monotonic() + lease_s
        return self, True

    async def release(self, key: str, token: str) -> None:
        held = self._held.get(key)
        if held is not None:
            held.pop(token, None)
            if not held:
                self._held.pop(key, None)

    async def held(self, key: str):
        return self, len(self._live(key))


# KEYS[1]: the user's slots of a role (a sorted set: token -> lease end). ARGV: cap, lease (s), token.
# Redis's own clock, so replicas on hosts whose clocks differ agree on which leases ended.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])))
return 1
"""
_HELD = """
local t = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(t[1]) + tonumber(t[2]) / 1e6)
return redis.call('ZCARD', KEYS[1])
"""


class RedisSlots:
    """Held slots in Redis, shared by every ingress replica on every node: one script takes a slot only while
    fewer than the cap are held (check and take are one step, so N replicas at once never take N+1)."""

    def __init__(self, url: str):
        import redis.asyncio as aredis

        self._redis = aredis.Redis.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.25)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._held = self._redis.register_script(_HELD)

    async def acquire(self, key: str, cap: int, token: str, lease_s: float):
        return self, bool(await self._acquire(keys=[key], args=[cap, lease_s, token]))

    async def release(self, key: str, token: str) -> None:
        await self._redis.zrem(key, token)

    async def held(self, key: str):
        return self, int(await self._held(keys=[key]))


class HeldModels:
    """The model gateway, holding the acting user's slots: each call of a role their plan caps takes one of
    their slots for as long as it runs (a stream: until its last piece, its error or its cancel). Calls
    outside a user's request and a role's small questions (its info, sizes, token counts) take none."""

    FREE = frozenset({"info", "ready", "dimension", "image_size", "size_of", "count_tokens"})

    def __init__(self, models, limits: PlanLimits):
        self._models, self._limits = models, limits

    def __getattr__(self, name: str) -> Any:  # info, ready, running_replicas, handles...: the gateway's own
        return getattr(self._models, name)

    async def cap(self, role: str) -> int | None:
        user = acting_user.get()
        return None if user is None else (await self._limits.plan(user))[1].concurrent.get(role)

    async def call(self, role: str, op: str, *args, **kwargs) -> Any:
        user = acting_user.get()
        if user is None or op in self.FREE:
            return await self._models.call(role, op, *args, **kwargs)
        async with self._limits.hold(user, role):
            return await self._models.call(role, op, *args, **kwargs)

    async def stream(self, role: str, op: str, *args, **kwargs):
        user = acting_user.get()
        if user is None:
            return await self._models.stream(role, op, *args, **kwargs)
        slot = self._limits.hold(user, role)
        await slot.__aenter__()
        try:
            pieces = await self._models.stream(role, op, *args, **kwargs)
        except BaseException as exc:
            await slot.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return _HeldStream(pieces, slot)


class _HeldStream:
    """A stream that gives its slot back when it ends, fails or is cancelled."""

    def __init__(self, pieces, slot):
        self._pieces, self._slot, self._open = pieces, slot, True

    async def _release(self) -> None:
        if self._open:
            self._open = False
            await self._slot.__aexit__(None, None, None)

    async def next(self) -> str | None:
        try:
            piece = await self._pieces.next()
        except BaseException:
            await self._release()
            raise
        if piece is None:
            await self._release()
        return piece

    def cancel(self) -> None:
        self._pieces.cancel()
        if self._open:
            asyncio.ensure_future(self._release())
