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
import logging
import math
import time
import uuid
from contextlib import asynccontextmanager
from typing import Awaitable, Callable

import limits
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter

from .budgets import Budgets, Estimates
from .held import HeldModels
from .slots import CAPPED, KEY_PREFIX, TOP_HOLDER, LocalSlots, RedisSlots, role_key, slot_key
from .windows import Admission, RateLimited, Window, acting_user, per, window_name

__all__ = ["Admission", "HeldModels", "PlanLimits", "RateLimited", "Window", "acting_user"]

log = logging.getLogger("atelier.limits")

RETRY_SHARED_S = 5.0  # after Redis failed, count locally this long before trying it again
STORAGE_RETRY_S = 3600  # Retry-After of a full gallery: room comes only when the user deletes
SLOT_LEASE_S = 600.0  # a held slot not given back (its replica died) frees itself after this long


class PlanLimits(Budgets):
    """The counters of every user's plan. `plan_of(user)` names the user's plan (a `PlanBook`); `plans` are
    the live settings' plans, replaced by `tune`."""

    def __init__(self, plan_of: Callable[[str], Awaitable[str]], *, plans: dict, redis_url: str | None = None,
                 retry_shared_s: float = RETRY_SHARED_S, slot_lease_s: float = SLOT_LEASE_S,
                 capacity: dict[str, int] | None = None):
        self._plan_of = plan_of
        self._retry_shared_s = retry_shared_s
        self._slot_lease_s = slot_lease_s
        self._plans = dict(plans)
        # Per role, the calls held across every user from which the one holding most of it is refused: the
        # role's capacity less a reserve (a quarter, at least one) that only the others may take.
        self.share_from = {role: max(1, most - max(1, most // 4)) for role, most in (capacity or {}).items() if most > 0}
        self._parsed: dict[tuple[str, str], list[limits.RateLimitItem]] = {}
        # Each kind of counter as (this replica's, the shared one or None without Redis). Budgets are charged
        # in milliseconds: a moving window keeps one entry per unit, a sliding-window counter two numbers per
        # window whatever the cost.
        memory = MemoryStorage()
        self._counters = {"rates": (MovingWindowRateLimiter(memory), None),
                          "budgets": (SlidingWindowCounterRateLimiter(memory), None), "slots": (LocalSlots(), None)}
        if redis_url:
            storage = RedisStorage(redis_url, implementation="redispy", wrap_exceptions=True, key_prefix=KEY_PREFIX,
                                   socket_timeout=0.25, socket_connect_timeout=0.25)
            shared = {"rates": MovingWindowRateLimiter(storage), "budgets": SlidingWindowCounterRateLimiter(storage),
                      "slots": RedisSlots(redis_url)}
            self._counters = {kind: (local, shared[kind]) for kind, (local, _) in self._counters.items()}
        self.estimates = Estimates()
        self._pending: dict[tuple[str, str], float] = {}  # (user, role) -> estimated seconds of calls running here
        self._shared_down_until = 0.0
        self._warned = False
        # Told of each refusal and each count made without Redis, `(plan, limit, outcome)`: the metrics.
        self.on_event: Callable[[str | None, str, str], None] | None = None
        # Told of each charge of GPU seconds, `(plan, role, seconds)`: the metrics.
        self.on_charge: Callable[[str, str, float], None] | None = None

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

    def _down(self, exc: BaseException) -> None:
        self._shared_down_until = time.monotonic() + self._retry_shared_s
        if not self._warned:
            self._warned = True
            log.warning("the plans' shared counters (Redis) are unreachable (%s: %s); counting in this replica "
                        "alone until they answer", type(exc).__name__, exc)

    async def _call(self, method: str, *args, counter: str = "rates", **kwargs):
        """A call of a kind of counter (`rates`, `budgets`, `slots`) on the shared one, or this replica's when
        there is none or it is down: (result, degraded: counted here while Redis is unreachable)."""
        local, shared = self._counters[counter]
        if shared is not None and time.monotonic() >= self._shared_down_until:
            try:
                result = await getattr(shared, method)(*args, **kwargs)
                if self._warned:
                    self._warned = False
                    log.warning("the plans' shared counters (Redis) answer again")
                return result, False
            except Exception as exc:  # noqa: BLE001 - any Redis failure: count locally, never fail the request
                self._down(exc)
        return await getattr(local, method)(*args, **kwargs), shared is not None

    async def admit(self, user: str, route_class: str) -> Admission:
        """Count one request of `user` in `route_class`; `RateLimited` when a window of their plan is full."""
        plan_name, plan = await self.plan(user)
        items = self._items(plan_name, plan, route_class)
        admission = Admission(plan_name)
        for item in items:
            allowed, degraded = await self._call("hit", item, user, route_class)
            admission.degraded = admission.degraded or degraded
            stats, _ = await self._call("get_window_stats", item, user, route_class)
            window = Window(window_name(route_class, item, len(items) > 1), item.amount, item.get_expiry(),
                            max(0, stats.remaining), max(0, math.ceil(stats.reset_time - time.time())))
            admission.windows.append(window)
            if not allowed:
                reset = max(1, window.reset_s)
                raise RateLimited(f"the {plan_name!r} plan allows {item.amount} {route_class} requests per "
                                  f"{per(item)}; retry in {reset} s", limit=window.name, retry_after=reset,
                                  admission=admission)
        return admission

    @asynccontextmanager
    async def hold(self, user: str, role: str):
        """One of the user's slots of `role` for the body of the `async with` (none when their plan sets no cap
        for the role and its capacity is not known); `RateLimited` when all of theirs are held (`concurrent-`),
        or when the role is near its capacity and no one holds more of it than they do (`fair-share-`)."""
        plan_name, plan = await self.plan(user)
        cap, share_from = plan.concurrent.get(role), self.share_from.get(role, 0)
        if cap is None and not share_from:
            yield
            return
        key, token, every = slot_key(user, role), uuid.uuid4().hex, role_key(role) if share_from else None
        (table, outcome), degraded = await self._call("acquire", key, -1 if cap is None else cap, token,
                                                      self._slot_lease_s, every, user, share_from, counter="slots")
        if degraded:
            self.event(plan_name, f"concurrent-{role}", "degraded")
        if outcome == CAPPED:
            self.event(plan_name, f"concurrent-{role}", "refused")
            raise RateLimited(f"the {plan_name!r} plan allows {cap} {role} call{'s' if cap != 1 else ''} at once and "
                              f"that many of yours are running (a request of n images takes n); retry when one "
                              "ends", limit=f"concurrent-{role}", retry_after=2)
        if outcome == TOP_HOLDER:
            self.event(plan_name, f"fair-share-{role}", "refused")
            raise RateLimited(f"the {role} is nearly full ({share_from} or more calls at once) and no other user "
                              f"holds more of it than you; retry when one of yours ends", limit=f"fair-share-{role}",
                              retry_after=2)
        try:
            yield
        finally:
            try:  # the table the slot was taken in, even if Redis went or came back since
                await asyncio.shield(table.release(key, token, every, user))
            except Exception:  # noqa: BLE001 - its lease frees it
                pass

    async def limits_storage(self, user: str) -> bool:
        """Whether the user's plan bounds what they store (then the caller reads what they store)."""
        plan = (await self.plan(user))[1]
        return plan.stored_images is not None or plan.stored_bytes is not None

    async def check_storage(self, user: str, stored: tuple[int, int], images: int, size: int) -> None:
        """Refuse (`quota_exceeded`) `images` more images of `size` bytes that would take the user, who stores
        `stored` (images, bytes), past their plan. It frees up only when they delete: the Retry-After is long."""
        plan_name, plan = await self.plan(user)
        for limit, quota, used, more, unit in (("stored-images", plan.stored_images, stored[0], images, "images"),
                                               ("stored-bytes", plan.stored_bytes, stored[1], size, "bytes")):
            if quota is not None and used + more > quota:
                self.event(plan_name, limit, "refused")
                raise RateLimited(f"the {plan_name!r} plan keeps {quota} {unit} per user; you keep {used} and this "
                                  f"adds {more}; delete some of your images to make room", limit=limit,
                                  retry_after=STORAGE_RETRY_S, code="quota_exceeded")

    async def usage(self, user: str, stored: tuple[int, int] | None = None) -> dict:
        """Each limit of the user's plan: its quota, what is used and left, and when it resets (`stored`: the
        images and bytes they keep, where their plan bounds it)."""
        plan_name, plan = await self.plan(user)
        out = []
        for route_class in plan.requests:
            items = self._items(plan_name, plan, route_class)
            for item in items:
                stats, _ = await self._call("get_window_stats", item, user, route_class)
                left = max(0, stats.remaining)
                out.append({"limit": window_name(route_class, item, len(items) > 1), "route_class": route_class,
                            "unit": "requests", "quota": item.amount, "window_s": item.get_expiry(),
                            "used": item.amount - left, "left": left,
                            "resets_in_s": max(0, math.ceil(stats.reset_time - time.time())) if left < item.amount
                            else 0})
        for role, cap in plan.concurrent.items():
            (_, held), _ = await self._call("held", slot_key(user, role), counter="slots")
            out.append({"limit": f"concurrent-{role}", "role": role, "unit": "calls at once", "quota": cap,
                        "used": min(held, cap), "left": max(0, cap - held), "resets_in_s": 0})
        for budget in [f"gpu-{role}" for role in plan.gpu_seconds] + (["tokens"] if plan.tokens else []):
            windows, _ = await self._budget_windows(user, plan_name, plan, budget)
            for window in windows:
                out.append({"limit": window.name, "unit": window.unit, "quota": window.quota,
                            "window_s": window.window_s, "used": round(window.quota - window.exact_left, 3),
                            "left": round(window.exact_left, 3), "resets_in_s": window.reset_s,
                            **({"role": budget.removeprefix("gpu-")} if budget != "tokens" else {})})
        if stored is not None:
            for limit, quota, used, unit in (("stored-images", plan.stored_images, stored[0], "images"),
                                             ("stored-bytes", plan.stored_bytes, stored[1], "bytes")):
                if quota is not None:
                    out.append({"limit": limit, "unit": unit, "quota": int(quota), "used": used,
                                "left": max(0, int(quota) - used), "resets_in_s": 0})
        return {"plan": plan_name, "limits": out}

    async def forget_user(self, user: str) -> None:
        """A deleted user's counters go with them (best effort: they expire on their own; held slots end with
        their calls)."""
        for (plan_name, route_class), items in list(self._parsed.items()):
            budget = route_class.startswith("budget:")
            name = route_class.removeprefix("budget:")
            for item in items:
                try:
                    await self._call("clear", item, user, name, counter="budgets" if budget else "rates")
                except Exception:  # noqa: BLE001
                    pass
