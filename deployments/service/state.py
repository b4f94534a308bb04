"""Service state every ingress replica shares: per-operation stats and idempotency records.

Plain classes: in a cluster each lives in one named Ray actor (`shared()`), not in a replica, so
all replicas see one view and a replica restart loses nothing; the in-process test tier holds
them directly (`in_process()`). Either way the service calls them through `storage.calls.Calls`.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque

import numpy as np
from cachetools import TTLCache

from storage.calls import Calls
from storage.placement import detached, on_head_node

# Versioned like the gallery writer: the actor is detached and outlives a redeploy, and its
# `record` now takes a status code (v1 took ok: bool).
STATS_ACTOR = "atelier_stats_v2"
IDEMPOTENCY_ACTOR = "atelier_idempotency"


class StatsLedger:
    """count/errors/client_closed/avg/min/max/p50/p95 per operation over the whole service (a window of
    recent calls); `client_closed` counts the 499s, clients that hung up before their answer."""

    def __init__(self, window: int = 10_000):
        self._durations: dict[str, deque] = defaultdict(lambda: deque(maxlen=window))
        self._count: dict[str, int] = defaultdict(int)
        self._errors: dict[str, int] = defaultdict(int)
        self._closed: dict[str, int] = defaultdict(int)
        self._min: dict[str, float] = {}
        self._max: dict[str, float] = {}
        self._sum: dict[str, float] = defaultdict(float)

    def record(self, op: str, seconds: float, status: int) -> None:
        """One finished call; 5xx counts as an error (a 499, the client closing first, does not)."""
        self._count[op] += 1
        self._errors[op] += 1 if status >= 500 else 0
        self._closed[op] += 1 if status == 499 else 0
        self._sum[op] += seconds
        self._durations[op].append(seconds)
        self._min[op] = min(self._min.get(op, seconds), seconds)
        self._max[op] = max(self._max.get(op, seconds), seconds)

    def summary(self) -> dict[str, dict]:
        out = {}
        for op, n in sorted(self._count.items()):
            window = np.fromiter(self._durations[op], dtype=float)
            out[op] = {
                "count": n, "errors": self._errors[op], "client_closed": self._closed[op], "avg_s": self._sum[op] / n,
                "min_s": self._min[op], "max_s": self._max[op],
                "p50_s": float(np.percentile(window, 50)), "p95_s": float(np.percentile(window, 95)),
            }
        return out

    def forget_user(self, user_id: str) -> None:  # stats are never keyed by user; nothing to forget
        return None


class IdempotencyLedger:
    """(user, Idempotency-Key) -> the first answer, for a day; a retry in flight is told to wait."""

    def __init__(self, ttl_s: float = 86_400, size: int = 100_000):
        self._done: TTLCache = TTLCache(maxsize=size, ttl=ttl_s)
        self._running: dict[tuple[str, str], float] = {}

    def begin(self, user_id: str, key: str, fingerprint: str) -> dict:
        k = (user_id, key)
        if k in self._done:
            fp, answer = self._done[k]
            return {"state": "done" if fp == fingerprint else "conflict", "answer": answer}
        started = self._running.get(k)
        if started is not None and time.monotonic() - started < 600:
            return {"state": "running"}
        self._running[k] = time.monotonic()
        return {"state": "new"}

    def finish(self, user_id: str, key: str, fingerprint: str, answer: dict | None) -> None:
        self._running.pop((user_id, key), None)
        if answer is not None:
            self._done[(user_id, key)] = (fingerprint, answer)

    def forget_user(self, user_id: str) -> None:
        for k in [k for k in self._done.keys() if k[0] == user_id]:
            self._done.pop(k, None)


class StatsCalls(Calls):
    def record_nowait(self, op: str, seconds: float, status: int) -> None:
        try:
            self.nowait("record", op, seconds, status)
        except Exception:  # noqa: BLE001 - the ledger restarting must not break serving
            pass


def named(cls, name: str):
    """The cluster's one instance of a state actor, created by whoever asks first."""
    import ray

    return detached(ray.remote(num_cpus=0.01, max_restarts=-1)(cls), name, **on_head_node()).remote()


def shared() -> tuple[StatsCalls, Calls]:
    """(stats, idempotency) as the cluster's named actors."""
    return (StatsCalls(named(StatsLedger, STATS_ACTOR), what="stats ledger"),
            Calls(named(IdempotencyLedger, IDEMPOTENCY_ACTOR), what="idempotency ledger"))


def in_process() -> tuple[StatsCalls, Calls]:
    """(stats, idempotency) held by this process alone (the in-process test tier)."""
    return StatsCalls(StatsLedger()), Calls(IdempotencyLedger())
