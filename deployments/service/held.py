"""The model gateway of a user's request, held to their plan (issue 29): each call of a role their plan caps
takes one of their slots for as long as it runs, and each call of a role their plan budgets is admitted from
what is left and charged what its replica measured."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

from .budgets import Bill
from .windows import acting_user


class HeldModels:
    """The model gateway, holding the acting user's slots: each call of a role their plan caps (or whose
    capacity is shared out) takes one of their slots for as long as it runs (a stream: until its last piece, its
    error or its cancel), and a call of a role their plan budgets is admitted from what is left and charged
    what its replica measured. Calls outside a user's request and a role's small questions (its info, sizes,
    token counts) take and cost nothing."""

    # The service's own checks (the Guard's verdicts) are not the user's work either.
    FREE = frozenset({"info", "ready", "dimension", "image_size", "size_of", "count_tokens", "check_text",
                      "check_image"})

    def __init__(self, models, limits):
        self._models, self._limits = models, limits
        if hasattr(models, "on_orphan"):  # in-process models charge a call that ended without an answer here
            models.on_orphan = limits.charge

    def __getattr__(self, name: str) -> Any:  # info, ready, running_replicas, handles...: the gateway's own
        return getattr(self._models, name)

    async def cap(self, role: str) -> int | None:
        user = acting_user.get()
        return None if user is None else (await self._limits.plan(user))[1].concurrent.get(role)

    async def call(self, role: str, op: str, *args, **kwargs) -> Any:
        user = acting_user.get()
        if user is None or op in self.FREE:
            return await self._models.call(role, op, *args, **kwargs)
        async with self._limits.hold(user, role), self._limits.spend(user, role, op, kwargs) as bill:
            if bill is None:
                return await self._models.call(role, op, *args, **kwargs)
            result, bill.seconds = await self._models.charged(role, op, user, *args, **kwargs)
            return result

    async def stream(self, role: str, op: str, *args, **kwargs):
        user = acting_user.get()
        if user is None:
            return await self._models.stream(role, op, *args, **kwargs)
        held = AsyncExitStack()
        try:
            await held.enter_async_context(self._limits.hold(user, role))
            bill = await held.enter_async_context(self._limits.spend(user, role, op, kwargs))
            if bill is None:
                pieces = await self._models.stream(role, op, *args, **kwargs)
            else:
                pieces = await self._models.charged_stream(role, op, user, *args, **kwargs)
        except BaseException as exc:
            await held.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return _HeldStream(pieces, held, bill)


class _HeldStream:
    """A stream that gives its slot back (and is charged, when its plan budgets the role) when it ends, fails or
    is cancelled."""

    def __init__(self, pieces, held: AsyncExitStack, bill: Bill | None):
        self._pieces, self._held, self._bill, self._open = pieces, held, bill, True

    async def _release(self) -> None:
        if self._open:
            self._open = False
            if self._bill is not None:
                self._bill.seconds = getattr(self._pieces, "charged", None)
            await self._held.aclose()

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
