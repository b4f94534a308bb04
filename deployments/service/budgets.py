"""Budgets of a plan: GPU seconds per model role (`gpu-<role>`) and chat tokens (`tokens`) (issue 29.3).

Charged after the work from what was measured (a replica's compute times its GPU share; an answer's tokens),
and admitted before it from what is left: a call whose estimate (`Estimates`, learned from measured calls)
no longer fits is refused (`quota_exceeded`) before it starts. Budgets are sliding-window counters (two
numbers per window whatever the cost; GPU seconds counted in milliseconds), in Redis with the rates.
`Budgets` is a part of `PlanLimits` (deployments.service.limits), which holds the counters.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

import limits

from .windows import Admission, RateLimited, Window, span, window_name

log = logging.getLogger("atelier.limits")


class Budgets:
    """The budget half of `PlanLimits` (which gives `plan`, `_call`, `_parsed`, `event`, `on_charge`,
    `estimates` and `_pending`)."""

    # -- budgets: GPU seconds per role (`gpu-<role>`) and chat tokens (`tokens`) ----------------------
    @staticmethod
    def _budget_of(plan, budget: str) -> tuple[str | None, int, str]:
        """(the plan's text for the budget, units counted per unit shown, the unit's name)."""
        if budget == "tokens":
            return plan.tokens, 1, "tokens"
        return plan.gpu_seconds.get(budget.removeprefix("gpu-")), 1000, "gpu-seconds"  # counted in milliseconds

    def _budget_items(self, plan_name: str, plan, budget: str) -> list[limits.RateLimitItem]:
        key = (plan_name, f"budget:{budget}")
        if key not in self._parsed:
            text, scale, _ = self._budget_of(plan, budget)
            self._parsed[key] = [type(item)(item.amount * scale, item.multiples) for item in limits.parse_many(text)] \
                if text else []
        return self._parsed[key]

    async def _budget_windows(self, user: str, plan_name: str, plan, budget: str) -> tuple[list[Window], bool]:
        items = self._budget_items(plan_name, plan, budget)
        _, scale, unit = self._budget_of(plan, budget)
        windows, degraded = [], False
        for item in items:
            stats, down = await self._call("get_window_stats", item, user, budget, counter="budgets")
            degraded = degraded or down
            left = max(0, stats.remaining)
            windows.append(Window(window_name(budget, item, len(items) > 1), item.amount // scale, item.get_expiry(),
                                  left // scale, max(0, math.ceil(stats.reset_time - time.time()))
                                  if left < item.amount else 0, unit=unit, exact_left=left / scale))
        return windows, degraded

    async def budget_windows(self, user: str, budget: str) -> list[Window]:
        """The user's windows of a budget now (`gpu-painter`, `tokens`: an answer's RateLimit fields); none when
        their plan sets no such budget."""
        plan_name, plan = await self.plan(user)
        return (await self._budget_windows(user, plan_name, plan, budget))[0]

    async def afford(self, user: str, budget: str, needed: float, *, what: str = "this call") -> Admission | None:
        """Refuse (`quota_exceeded`) when less than `needed` (and nothing at all) is left of a budget of the
        user's plan; None when the plan sets no such budget."""
        plan_name, plan = await self.plan(user)
        if self._budget_of(plan, budget)[0] is None:
            return None
        windows, degraded = await self._budget_windows(user, plan_name, plan, budget)
        admission = Admission(plan_name, windows, degraded)
        if degraded:
            self.event(plan_name, budget, "degraded")
        for window in windows:
            if window.exact_left <= 0 or window.exact_left < needed:
                self.event(plan_name, window.name, "refused")
                reset = max(1, window.reset_s)
                of = "GPU seconds of the " + budget.removeprefix("gpu-") if window.unit == "gpu-seconds" else "chat tokens"
                raise RateLimited(
                    f"the {plan_name!r} plan allows {window.quota} {of} per {span(window.window_s)}; "
                    f"{max(0.0, window.exact_left):g} are left and {what} needs {needed:g}; retry in {reset} s",
                    limit=window.name, retry_after=reset, code="quota_exceeded", admission=admission)
        return admission

    @asynccontextmanager
    async def spend(self, user: str, role: str, op: str, kwargs: dict):
        """A call of `role` charged to the user's GPU seconds: refused (`quota_exceeded`) before it starts when
        what it is estimated to take no longer fits what is left (the calls of theirs this replica runs counted);
        the body sets `bill.seconds` to what the replica measured, and that is charged on exit. A call that ends
        without an answer is charged by its replica (`charge`). No budget for the role: `None` is yielded."""
        estimate = round(self.estimates.of(role, op, kwargs), 3)
        pending = self._pending.get((user, role), 0.0)
        if await self.afford(user, f"gpu-{role}", estimate + pending,
                             what=f"this call (estimated at {estimate:g} s, with {pending:g} s of calls running)") \
                is None:
            yield None
            return
        bill = Bill()
        self._pending[(user, role)] = pending + estimate
        try:
            yield bill
        finally:
            left = self._pending.get((user, role), 0.0) - estimate
            if left > 1e-6:
                self._pending[(user, role)] = left
            else:
                self._pending.pop((user, role), None)
            if bill.seconds is not None:
                self.estimates.learn(role, op, kwargs, bill.seconds)
                await asyncio.shield(self.charge(user, role, bill.seconds))

    async def charge(self, user: str, role: str, seconds: float) -> None:
        """Charge `seconds` of the role's GPU time to the user's budgets (after a run; a replica calls this
        through the ingress for a call that ended without an answer)."""
        if seconds > 0:
            plan_name, _ = await self.plan(user)
            if self.on_charge is not None:
                try:
                    self.on_charge(plan_name, role, seconds)
                except Exception:  # noqa: BLE001 - metrics never fail a request
                    pass
            await self._charge(user, f"gpu-{role}", seconds)

    async def charge_tokens(self, user: str, tokens: int) -> None:
        """Charge a chat answer's tokens (prompt and completion) to the user's `tokens` budget."""
        await self._charge(user, "tokens", tokens)

    async def _charge(self, user: str, budget: str, amount: float) -> None:
        """Add `amount` to the user's windows of a budget; beyond what is left, what is left (it is spent)."""
        plan_name, plan = await self.plan(user)
        _, scale, _ = self._budget_of(plan, budget)
        cost = max(1, round(amount * scale))
        for item in self._budget_items(plan_name, plan, budget):
            try:
                charged, _ = await self._call("hit", item, user, budget, cost=cost, counter="budgets")
                if not charged:  # more than is left: charge what is left
                    stats, _ = await self._call("get_window_stats", item, user, budget, counter="budgets")
                    if stats.remaining > 0:
                        await self._call("hit", item, user, budget, cost=int(stats.remaining), counter="budgets")
            except Exception as exc:  # noqa: BLE001 - a lost charge is logged, never a failed answer
                log.warning("could not charge %g to %s's %s budget: %s", amount, user, budget, exc)


@dataclass
class Bill:
    """What one charged call cost: the GPU seconds its replica measured (None: no answer came back)."""

    seconds: float | None = None


class Estimates:
    """What a call of a role is expected to take, learned from this replica's measured calls: per shape (the
    operation with its size and steps) the latest runs' mean, and for a shape not seen yet the operation's
    seconds per unit of work (pixels times steps) times the call's units."""

    ALPHA = 0.3

    def __init__(self):
        self._by_shape: dict[tuple, float] = {}
        self._per_unit: dict[tuple[str, str], float] = {}

    @staticmethod
    def _shape(role: str, op: str, kwargs: dict) -> tuple:
        return role, op, kwargs.get("size"), kwargs.get("steps")

    @staticmethod
    def _units(kwargs: dict) -> int | None:
        size, steps = kwargs.get("size"), kwargs.get("steps")
        try:
            width, height = (int(v) for v in str(size).lower().split("x"))
            return width * height * int(steps)
        except (TypeError, ValueError):
            return None

    def of(self, role: str, op: str, kwargs: dict) -> float:
        """Seconds the call is expected to take (0 before any call of its operation has been measured)."""
        known = self._by_shape.get(self._shape(role, op, kwargs))
        if known is not None:
            return known
        units, rate = self._units(kwargs), self._per_unit.get((role, op))
        return units * rate if units is not None and rate is not None else 0.0

    def learn(self, role: str, op: str, kwargs: dict, seconds: float) -> None:
        shape = self._shape(role, op, kwargs)
        before = self._by_shape.get(shape)
        self._by_shape[shape] = seconds if before is None else before + self.ALPHA * (seconds - before)
        units = self._units(kwargs)
        if units:
            rate = self._per_unit.get((role, op))
            self._per_unit[(role, op)] = seconds / units if rate is None else rate + self.ALPHA * (seconds / units - rate)
