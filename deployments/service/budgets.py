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
    operation with its size and steps) the latest runs' mean (an exponential moving average). A shape not measured
    yet is estimated from the measured ones by its units of work (pixels times steps): between two measured sizes
    on the line through them, below the smallest in proportion to it, and above the largest as the largest (a lower
    bound: a small call's seconds are mostly fixed costs, so scaling one up by its pixel-steps would estimate a
    large call many times over what it takes, and refuse a call that fits the budget; the large call's own
    measurement then teaches its shape)."""

    ALPHA = 0.3

    def __init__(self):
        self._by_shape: dict[tuple, float] = {}

    @staticmethod
    def _shape(role: str, op: str, kwargs: dict) -> tuple:
        return role, op, kwargs.get("size"), kwargs.get("steps")

    @staticmethod
    def _units(size, steps) -> int | None:
        try:
            width, height = (int(v) for v in str(size).lower().split("x"))
            return width * height * int(steps)
        except (TypeError, ValueError):
            return None

    def _measured(self, role: str, op: str) -> list[tuple[int, float]]:
        """(units, seconds) of the op's measured shapes, one point per number of units (their mean), ascending."""
        by_units: dict[int, list[float]] = {}
        for (r, o, size, steps), seconds in self._by_shape.items():
            if (r, o) == (role, op) and (units := self._units(size, steps)):
                by_units.setdefault(units, []).append(seconds)
        return sorted((u, sum(s) / len(s)) for u, s in by_units.items())

    def of(self, role: str, op: str, kwargs: dict) -> float:
        """Seconds the call is expected to take (0 before any call of its operation has been measured)."""
        known = self._by_shape.get(self._shape(role, op, kwargs))
        if known is not None:
            return known
        units, points = self._units(kwargs.get("size"), kwargs.get("steps")), self._measured(role, op)
        if units is None or not points:
            return 0.0
        (low_units, low_s), (high_units, high_s) = points[0], points[-1]
        if units <= low_units:
            return low_s * units / low_units
        if units >= high_units:
            return high_s
        for (u0, s0), (u1, s1) in zip(points, points[1:]):
            if u0 <= units <= u1:
                return max(0.0, s0 + (s1 - s0) * (units - u0) / (u1 - u0))
        return high_s

    def learn(self, role: str, op: str, kwargs: dict, seconds: float) -> None:
        shape = self._shape(role, op, kwargs)
        before = self._by_shape.get(shape)
        self._by_shape[shape] = seconds if before is None else before + self.ALPHA * (seconds - before)
