"""Each user's plan limits, counted where every ingress replica sees the same counts (issue 29).

A plan (`deployments.config.Plan`, the ingress's live settings) names per-user limits; which plan a user is
on is the plan table's (`python -m deployments.keys plan USER NAME`, read through a `PlanBook`). Requests
per route class are moving windows of the `limits` library: in Redis when `ingress.redis_url` is set (its
moving window is one Lua script, so N admitted across every replica and node is exactly N), else in this
process (the single-replica local service; `deployments.config` refuses more replicas without Redis).

Redis unreachable: the service keeps answering and counts in each replica (`degraded`: logged once per
outage, and the HTTP layer counts it in a metric), and tries Redis again a few seconds later. Never a 500.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import limits
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from storage.errors import AtelierError

log = logging.getLogger("atelier.limits")

RETRY_SHARED_S = 5.0  # after Redis failed, count locally this long before trying it again
_KEY_PREFIX = "atelier-limits"


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
                 retry_shared_s: float = RETRY_SHARED_S):
        self._plan_of = plan_of
        self._retry_shared_s = retry_shared_s
        self._plans = dict(plans)
        self._parsed: dict[tuple[str, str], list[limits.RateLimitItem]] = {}
        self._local = MovingWindowRateLimiter(MemoryStorage())
        self._shared = None
        if redis_url:
            storage = RedisStorage(redis_url, implementation="redispy", wrap_exceptions=True, key_prefix=_KEY_PREFIX,
                                   socket_timeout=0.25, socket_connect_timeout=0.25)
            self._shared = MovingWindowRateLimiter(storage)
        self._shared_down_until = 0.0
        self._warned = False

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

    async def _call(self, method: str, *args):
        """A limiter call on the shared counters, or this replica's when they are down: (result, degraded)."""
        limiter, degraded = self._limiter()
        if not degraded and self._shared is not None:
            try:
                result = await getattr(limiter, method)(*args)
                if self._warned:
                    self._warned = False
                    log.warning("the plans' shared counters (Redis) answer again")
                return result, False
            except Exception as exc:  # noqa: BLE001 - any Redis failure: count locally, never fail the request
                self._down(exc)
                limiter, degraded = self._local, True
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
        return {"plan": plan_name, "limits": out}

    async def forget_user(self, user: str) -> None:
        """A deleted user's counters go with them (best effort: they expire on their own)."""
        for (plan_name, route_class), items in list(self._parsed.items()):
            for item in items:
                try:
                    await self._call("clear", item, user, route_class)
                except Exception:  # noqa: BLE001
                    pass


def _per(item: limits.RateLimitItem) -> str:
    unit = item.GRANULARITY.name
    return unit if item.multiples == 1 else f"{item.multiples} {unit}s"
