"""What the plans' limits answer: a refusal (`RateLimited`), the windows a request was counted in
(`Window`, `Admission`: the answer's RateLimit fields and `/api/me/usage`), and their names."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field

import limits

from storage.errors import AtelierError

# The user whose request runs in this context (set by the HTTP layer once the key is checked): the model
# gateway holds that user's slots and charges their budgets. None: no user's request (readiness, warm-up).
acting_user: contextvars.ContextVar[str | None] = contextvars.ContextVar("atelier_acting_user", default=None)


class RateLimited(AtelierError):
    """A user's plan limit is spent: 429 with when it resets (`retry_after`, seconds)."""

    code = "rate_limited"
    status = 429

    def __init__(self, message: str, *, limit: str, retry_after: float, admission: "Admission | None" = None,
                 code: str | None = None):
        super().__init__(message, code=code)
        self.limit, self.retry_after, self.admission = limit, retry_after, admission

    def extra(self) -> dict:
        return {"limit": self.limit, "retry_after_s": int(self.retry_after)}


@dataclass
class Window:
    """One limit as the answer's headers and `/api/me/usage` show it."""

    name: str  # e.g. "search" or "search-day" when a class has several windows
    quota: int
    window_s: int
    remaining: int
    reset_s: int  # seconds until the window frees a request
    unit: str = "requests"
    exact_left: float = 0.0  # a budget's remaining, unrounded (GPU seconds to the millisecond)


@dataclass
class Admission:
    """What a request of a limited route class was told: its windows (for the headers) and whether the
    counts were this replica's alone (Redis unreachable)."""

    plan: str
    windows: list[Window] = field(default_factory=list)
    degraded: bool = False


def window_name(route_class: str, item: limits.RateLimitItem, several: bool) -> str:
    if not several:
        return route_class
    multiple = "" if item.multiples == 1 else str(item.multiples)
    return f"{route_class}-{multiple}{item.GRANULARITY.name}"


def per(item: limits.RateLimitItem) -> str:
    unit = item.GRANULARITY.name
    return unit if item.multiples == 1 else f"{item.multiples} {unit}s"


def span(window_s: int) -> str:
    for seconds, unit in ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second")):
        if window_s % seconds == 0:
            count = window_s // seconds
            return unit if count == 1 else f"{count} {unit}s"
    return f"{window_s} s"
