"""Service state every ingress replica shares: each user's per-operation stats and idempotency records.

Plain classes: in a cluster each lives in one named Ray actor (`shared()`), not in a replica, so
all replicas see one view and a replica restart loses nothing; the in-process test tier holds
them directly (`in_process()`). Either way the service calls them through `storage.calls.Calls`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

import numpy as np
from cachetools import LRUCache, TTLCache

from storage.calls import Calls
from storage.errors import Unavailable
from storage.placement import detached, on_head_node

log = logging.getLogger("atelier.state")

# Versioned like the gallery writer: the actor is detached and outlives a redeploy, and its
# `record` now takes the caller's user id first (v2 kept one service-wide view, v1 took ok: bool).
STATS_ACTOR = "atelier_stats_v4"  # v4: written through to disk (storage.ledgers), takes the storage settings
# v2: records written through to disk (storage.ledgers), so the actor takes the storage settings.
IDEMPOTENCY_ACTOR = "atelier_idempotency_v2"
RUNNING_S = 180.0  # a retry within this of the first call is told the first still runs (the longest route: 110 s)
LEDGER_S = 5.0  # a ledger call's deadline: past it, the ledger is taken as unreachable (its head node gone)
PURGE_S = 120.0  # a user's deletion from a ledger's tables, every version, on an object store


class _OpStats:
    """One operation's count, errors and latencies (a window of recent calls for the percentiles)."""

    def __init__(self, window: int):
        self.durations: deque = deque(maxlen=window)
        self.count = self.errors = self.client_closed = 0
        self.sum, self.min, self.max = 0.0, float("inf"), 0.0

    def add(self, seconds: float, status: int) -> None:
        self.count += 1
        self.errors += 1 if status >= 500 else 0  # a 499 (the client closing first) is not an error
        self.client_closed += 1 if status == 499 else 0  # it is counted as what it is (README)
        self.sum += seconds
        self.durations.append(seconds)
        self.min, self.max = min(self.min, seconds), max(self.max, seconds)

    def state(self) -> dict:
        return {"count": self.count, "errors": self.errors, "client_closed": self.client_closed, "sum": self.sum,
                "min": self.min if self.count else None, "max": self.max, "durations": list(self.durations)}

    @classmethod
    def of(cls, state: dict, window: int) -> "_OpStats":
        ops = cls(window)
        ops.durations.extend(state["durations"])
        ops.count, ops.errors, ops.client_closed = state["count"], state["errors"], state["client_closed"]
        ops.sum, ops.max = state["sum"], state["max"]
        ops.min = state["min"] if state["min"] is not None else float("inf")
        return ops

    def summary(self) -> dict:
        window = np.fromiter(self.durations, dtype=float)
        return {"count": self.count, "errors": self.errors, "client_closed": self.client_closed,
                "avg_s": self.sum / self.count, "min_s": self.min, "max_s": self.max,
                "p50_s": float(np.percentile(window, 50)), "p95_s": float(np.percentile(window, 95))}


class StatsLedger:
    """count/errors/client_closed/avg/min/max/p50/p95 per operation of each user (percentiles over a window
    of their recent calls), for the `/api/stats` of that user alone: one user's activity is nobody else's
    business. `client_closed` counts the 499s, clients that hung up before their answer. The service-wide
    view is the operator's, in the Prometheus metrics (`atelier_http_requests`, `atelier_http_latency_s`).
    The `users` most recently active are kept in memory (bounded).

    With `storage` (StorageSettings values) each user's stats are also on disk beside the gallery
    (storage.ledgers.StatsStore): the users whose stats changed are written at the first call `flush_s` or more
    after the last write (by the caller's thread: no thread of its own), and a user's stats are read back at
    their first call after a restart (or an eviction): counts survive a restart of this actor, of the head and
    of the whole cluster, less the calls of the last `flush_s`."""

    def __init__(self, window: int = 200, users: int = 1000, storage: dict | None = None, flush_s: float = 2.0):
        self._window = window
        self._users: LRUCache = LRUCache(maxsize=users)
        self._dirty: set[str] = set()
        self._flush_s, self._flushed = flush_s, time.monotonic()
        self._store = None
        if storage is not None:
            from storage.ledgers import StatsStore

            self._store = StatsStore.at(storage)

    def record(self, user_id: str, op: str, seconds: float, status: int) -> None:
        """One finished call of `user_id`'s (a user who deleted their data and goes on calling starts from zero)."""
        ops = self._ops(user_id)
        if op not in ops:
            ops[op] = _OpStats(self._window)
        ops[op].add(seconds, status)
        self._dirty.add(user_id)
        self._flush_if_due()

    def summary(self, user_id: str) -> dict[str, dict]:
        ops = self._ops(user_id)
        self._flush_if_due()
        return {op: ops[op].summary() for op in sorted(ops)}

    def forget_user(self, user_id: str) -> None:
        self._users.pop(user_id, None)
        self._dirty.discard(user_id)
        if self._store is not None:
            try:
                self._store.forget_user(user_id)
            except Exception as exc:  # noqa: BLE001 - DELETE /api/me must not answer 204 with the stats kept
                log.warning("the stats of a deleted user could not be removed (%s: %s)", type(exc).__name__, exc)
                raise Unavailable("the user's stats could not be removed yet; retry shortly", retry_after=5) from None

    def flush(self) -> None:
        """Write the stats of the users whose calls changed them since the last write."""
        users = {u: {op: s.state() for op, s in self._users[u].items()} for u in self._dirty if u in self._users}
        self._dirty.clear()
        self._flushed = time.monotonic()
        try:
            self._store.put_many(users)
        except Exception as exc:  # noqa: BLE001 - written again at the next flush
            self._dirty.update(users)
            log.warning("the stats could not be written (%s: %s); retried", type(exc).__name__, exc)

    def _flush_if_due(self) -> None:
        if self._store is not None and self._dirty and time.monotonic() - self._flushed >= self._flush_s:
            self.flush()

    def _ops(self, user_id: str) -> dict:
        ops = self._users.get(user_id)
        if ops is not None:
            return ops
        stored = None
        if self._store is not None:
            try:
                stored = self._store.get(user_id)
            except Exception as exc:  # noqa: BLE001 - stats never fail a call: this user starts from zero
                log.warning("the stats could not be read (%s: %s)", type(exc).__name__, exc)
        ops = self._users[user_id] = {op: _OpStats.of(s, self._window) for op, s in (stored or {}).items()}
        return ops


class IdempotencyLedger:
    """(user, Idempotency-Key) -> the first answer, for a day; a retry in flight is told to wait.

    With `storage` (StorageSettings values) every finished answer is also written to disk beside the gallery
    (storage.ledgers.IdempotencyStore) and a key this process does not hold is looked up there: a retry after
    a restart of this actor, of the head node or of the whole cluster gets the first answer, not a second
    image. What is held in memory is a cache of it (bounded: `size` records)."""

    EXPIRE_EVERY = 500  # finished answers between two sweeps of the expired records on disk

    def __init__(self, ttl_s: float = 86_400, size: int = 10_000, storage: dict | None = None):
        self.ttl_s = ttl_s
        self._done: TTLCache = TTLCache(maxsize=size, ttl=ttl_s)
        self._running: dict[tuple[str, str], float] = {}
        # Users deleted in the last 10 minutes (a request of theirs still running then keeps nothing).
        self._forgotten: TTLCache = TTLCache(maxsize=10_000, ttl=600)
        self._storage = storage
        self._store = None
        self._writes = 0

    @property
    def store(self):
        if self._store is None and self._storage is not None:
            from storage.ledgers import IdempotencyStore

            self._store = IdempotencyStore.at(self._storage)
        return self._store

    def begin(self, user_id: str, key: str, fingerprint: str) -> dict:
        k = (user_id, key)
        if k not in self._done and self.store is not None:
            try:
                found = self.store.get(user_id, key)
            except Exception as exc:  # noqa: BLE001 - without the record, running it again could paint twice
                log.warning("the idempotency records cannot be read (%s: %s)", type(exc).__name__, exc)
                raise Unavailable("this request's Idempotency-Key cannot be checked right now; retry shortly",
                                  retry_after=2) from None
            if found is not None:
                self._done[k] = found
        if k in self._done:
            fp, answer = self._done[k]
            return {"state": "done" if fp == fingerprint else "conflict", "answer": answer}
        started = self._running.get(k)
        if started is not None and time.monotonic() - started < RUNNING_S:
            return {"state": "running"}
        self._running[k] = time.monotonic()
        return {"state": "new"}

    def finish(self, user_id: str, key: str, fingerprint: str, answer: dict | None) -> None:
        started = self._running.pop((user_id, key), None)
        deleted = self._forgotten.get(user_id)
        if deleted is not None and (started is None or started <= deleted):
            # A request that ran across its user's deletion (forget_user): nothing of it is kept. Its replica may
            # have written the record itself when this call was late (IdempotencyClient): removed again.
            if answer is not None and self.store is not None:
                self.store.forget_user(user_id)
            return
        if answer is None:
            return
        self._done[(user_id, key)] = (fingerprint, answer)
        if self.store is not None:
            try:
                self.store.put(user_id, key, fingerprint, answer, self.ttl_s)
                self._writes += 1
                if self._writes % self.EXPIRE_EVERY == 0:
                    self.store.expire()
            except Exception as exc:  # noqa: BLE001 - the answer stands; it is kept in memory only
                log.warning("an idempotency record could not be written (%s: %s); kept in memory only",
                            type(exc).__name__, exc)

    def forget_user(self, user_id: str) -> None:
        for k in [k for k in self._done.keys() if k[0] == user_id]:
            self._done.pop(k, None)
        self._forgotten[user_id] = time.monotonic()
        if self.store is not None:
            try:
                self.store.forget_user(user_id)
            except Exception as exc:  # noqa: BLE001 - DELETE /api/me must not answer 204 with the records kept
                log.warning("a deleted user's idempotency records could not be removed (%s: %s)",
                            type(exc).__name__, exc)
                raise Unavailable("the user's records could not be removed yet; retry shortly", retry_after=5) from None


class StatsCalls(Calls):
    def record_nowait(self, user_id: str, op: str, seconds: float, status: int) -> None:
        try:
            self.nowait("record", user_id, op, seconds, status)
        except Exception:  # noqa: BLE001 - the ledger restarting must not break serving
            pass

    async def forget_user(self, user_id: str) -> None:
        await self.within(PURGE_S).forget_user(user_id)


class IdempotencyClient:
    """The ingress's side of the idempotency ledger. The ledger (an actor on the head) is asked with a deadline;
    when it cannot answer (the head is gone, or restarting), the records on disk are read and written from here:
    a retry during the outage gets its first answer if it is on disk (else a 503 with Retry-After: whether it
    still runs elsewhere cannot be known), and an answer finished during the outage is written to disk, so a
    retry after it never paints a second image."""

    def __init__(self, ledger: Calls, storage: dict | None = None, ttl_s: float = 86_400):
        self.ledger, self.ttl_s = ledger, ttl_s
        self._storage = storage
        self._store = None  # opened at the first outage

    @property
    def store(self):
        if self._store is None and self._storage is not None:
            from storage.ledgers import IdempotencyStore

            self._store = IdempotencyStore.at(self._storage)
        return self._store

    async def begin(self, user_id: str, key: str, fingerprint: str) -> dict:
        try:
            return await self.ledger.begin(user_id, key, fingerprint)
        except Unavailable:
            if self.store is None:
                raise
        found = await asyncio.to_thread(self._read, user_id, key)
        if found is None:
            raise Unavailable("this request's Idempotency-Key cannot be checked right now; retry shortly",
                              retry_after=2)
        return {"state": "done" if found[0] == fingerprint else "conflict", "answer": found[1]}

    async def finish(self, user_id: str, key: str, fingerprint: str, answer: dict | None) -> None:
        try:
            await self.ledger.finish(user_id, key, fingerprint, answer)
            return
        except Unavailable:
            if answer is None or self.store is None:
                return
        log.warning("the idempotency ledger did not answer; the answer is written to disk from this replica")
        try:
            await asyncio.to_thread(self.store.put, user_id, key, fingerprint, answer, self.ttl_s)
        except Exception as exc:  # noqa: BLE001 - the answer stands; only its replay is lost
            log.warning("an idempotency record could not be written (%s: %s)", type(exc).__name__, exc)

    async def forget_user(self, user_id: str) -> None:
        await self.ledger.within(PURGE_S).forget_user(user_id)

    def _read(self, user_id: str, key: str):
        try:
            return self.store.get(user_id, key)
        except Exception as exc:  # noqa: BLE001 - unknown: the caller must retry
            log.warning("the idempotency records cannot be read (%s: %s)", type(exc).__name__, exc)
            raise Unavailable("this request's Idempotency-Key cannot be checked right now; retry shortly",
                              retry_after=2) from None


def named(cls, name: str, **kwargs):
    """The cluster's one instance of a state actor, created by whoever asks first (with `kwargs`).

    One call at a time, but not in each caller's submission order: an in-order actor holds every later call of a
    caller while one of its calls is missing (a call given up at its deadline, under load), for Ray's 30 s reorder
    wait, and then cancels them all; the suite saw the stats ledger answer nothing for a minute that way. Each
    caller awaits the calls whose order matters to it (an idempotency record is begun before it is finished)."""
    import ray

    actor = ray.remote(num_cpus=0.01, max_restarts=-1, allow_out_of_order_execution=True)(cls)
    return detached(actor, name, **on_head_node()).remote(**kwargs)


def shared(storage: dict | None = None) -> tuple[StatsCalls, IdempotencyClient]:
    """(stats, idempotency) as the cluster's named actors, asked with a deadline; their records on disk at
    `storage`, which this replica reads and writes itself when the idempotency ledger does not answer."""
    idempotency = Calls(named(IdempotencyLedger, IDEMPOTENCY_ACTOR, storage=storage), what="idempotency ledger",
                        timeout_s=LEDGER_S)
    return (StatsCalls(named(StatsLedger, STATS_ACTOR, storage=storage), what="stats ledger", timeout_s=LEDGER_S),
            IdempotencyClient(idempotency, storage))


def in_process(storage: dict | None = None) -> tuple[StatsCalls, Calls]:
    """(stats, idempotency) held by this process alone (the in-process test tier); idempotency records on disk
    at `storage` when given."""
    return StatsCalls(StatsLedger(storage=storage)), Calls(IdempotencyLedger(storage=storage))
