"""Calls at once per user and model role (`Plan.concurrent`), as held slots, and each role's fair share
(issue 29.5).

A sorted set per user and role in Redis (one Lua script takes a slot only while fewer than the cap are held,
by Redis's own clock; the `limits` library counts rates, not calls in flight), else this process's. Where a
role's capacity is known, every user's calls of it are also held in one set per role: once it holds the
role's share-out mark (its capacity less a reserve), the user holding the most of it is refused and everyone
else still gets in. Each slot has a lease, so a replica that dies holding one frees it when the lease ends.
"""

from __future__ import annotations

import time

KEY_PREFIX = "atelier-limits"


def slot_key(user: str, role: str) -> str:
    return f"{KEY_PREFIX}:held:{role}:{user}"


TAKEN, CAPPED, TOP_HOLDER = 1, 0, -1  # what `acquire` answers


def role_key(role: str) -> str:
    return f"{KEY_PREFIX}:role:{role}"


class LocalSlots:
    """Held slots in this process: key -> {token: lease end}; a role's table (`role_key`) names each of its
    slots `user|token`. Each method answers (this table, result), so a slot is given back where it was taken."""

    def __init__(self):
        self._held: dict[str, dict[str, float]] = {}

    def _live(self, key: str) -> dict[str, float]:
        now = time.monotonic()
        held = self._held.get(key, {})
        for token in [t for t, end in held.items() if end <= now]:
            del held[token]
        return held

    async def acquire(self, key: str, cap: int, token: str, lease_s: float, role: str | None = None,
                      user: str = "", share_from: int = 0):
        """TAKEN; CAPPED when the user holds `cap` (-1: no cap); TOP_HOLDER when the role's table (`role`) holds
        `share_from` or more (0: not shared out) and no other user holds more than this one, who holds some."""
        held = self._live(key)
        if 0 <= cap <= len(held):
            return self, CAPPED
        if role is not None:
            everyone = self._live(role)
            if share_from and len(everyone) >= share_from and _top_holder(everyone, user):
                return self, TOP_HOLDER
            self._held.setdefault(role, everyone)[f"{user}|{token}"] = time.monotonic() + lease_s
        self._held.setdefault(key, held)[token] = time.monotonic() + lease_s
        return self, TAKEN

    async def release(self, key: str, token: str, role: str | None = None, user: str = "") -> None:
        for table, member in ((key, token), (role, f"{user}|{token}")):
            held = self._held.get(table) if table is not None else None
            if held is not None:
                held.pop(member, None)
                if not held:
                    self._held.pop(table, None)

    async def held(self, key: str):
        return self, len(self._live(key))


def _top_holder(members, user: str) -> bool:
    counts: dict[str, int] = {}
    for member in members:
        who = member.rsplit("|", 1)[0]
        counts[who] = counts.get(who, 0) + 1
    mine = counts.pop(user, 0)
    return mine > 0 and mine >= max(counts.values(), default=0)


# KEYS[1]: the user's slots of a role (a sorted set: token -> lease end); KEYS[2]: the role's slots of every
# user (`user|token` -> lease end). ARGV: cap (-1: none), lease (s), token, user, share_from (0: never).
# Redis's own clock, so replicas on hosts whose clocks differ agree on which leases ended.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local cap, lease, share_from = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if cap >= 0 and redis.call('ZCARD', KEYS[1]) >= cap then
  return 0
end
if share_from > 0 then
  local members = redis.call('ZRANGE', KEYS[2], 0, -1)
  if #members >= share_from then
    local counts, mine, top = {}, 0, 0
    for _, member in ipairs(members) do
      local who = string.match(member, '^(.*)|[^|]*$')
      counts[who] = (counts[who] or 0) + 1
    end
    for who, n in pairs(counts) do
      if who == ARGV[4] then mine = n elseif n > top then top = n end
    end
    if mine > 0 and mine >= top then
      return -1
    end
  end
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(lease))
if share_from > 0 then
  redis.call('ZADD', KEYS[2], now + lease, ARGV[4] .. '|' .. ARGV[3])
  redis.call('EXPIRE', KEYS[2], math.ceil(lease))
end
return 1
"""
_HELD = """
local t = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(t[1]) + tonumber(t[2]) / 1e6)
return redis.call('ZCARD', KEYS[1])
"""


class RedisSlots:
    """Held slots in Redis, shared by every ingress replica on every node: one script takes a slot only while
    fewer than the cap are held and the user is not the role's top holder when it is shared out (check and
    take are one step, so N replicas at once never take N+1)."""

    def __init__(self, url: str):
        import redis.asyncio as aredis

        self._redis = aredis.Redis.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.25)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._held = self._redis.register_script(_HELD)

    async def acquire(self, key: str, cap: int, token: str, lease_s: float, role: str | None = None,
                      user: str = "", share_from: int = 0):
        every = role or key  # not read or written when the role is not shared out (share_from 0)
        return self, int(await self._acquire(keys=[key, every], args=[cap, lease_s, token, user, share_from]))

    async def release(self, key: str, token: str, role: str | None = None, user: str = "") -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrem(key, token)
        if role is not None:
            pipe.zrem(role, f"{user}|{token}")
        await pipe.execute()

    async def held(self, key: str):
        return self, int(await self._held(keys=[key]))
