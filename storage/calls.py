"""One calling convention for a component that runs either as a Ray actor or in this process.

`await Calls(x).method(...)` runs `x.method.remote(...)` when `x` is an actor handle, and
`x.method(...)` here otherwise (in a worker thread when `threads=True`, for blocking I/O such as
LanceDB commits). The gallery's writer and the service's ledgers are reached this way, so the
code that uses them is the same in a Ray cluster and in the in-process test tier. An actor lost under
a call (its node gone) is `Unavailable`, a 503 with Retry-After, never a Ray exception; so is one that
does not answer within `timeout_s` (an actor on a head node that is gone answers nothing until the head is
back: a caller is told to retry instead of waiting out the route's deadline).
"""

from __future__ import annotations

import asyncio
from typing import Any

from storage.errors import AtelierError, Unavailable


class Calls:
    def __init__(self, target: Any, *, threads: bool = False, what: str | None = None,
                 timeout_s: float | None = None):
        self._target = target
        self._threads = threads
        self.what = what or type(target).__name__
        self.timeout_s = timeout_s
        from ray.actor import ActorHandle

        self.is_actor = isinstance(target, ActorHandle)

    @property
    def target(self) -> Any:
        return self._target

    def within(self, timeout_s: float | None) -> "Calls":
        """The same target, asked with another deadline (a purge may take longer than a lookup)."""
        return Calls(self._target, threads=self._threads, what=self.what, timeout_s=timeout_s)

    def __getattr__(self, name: str):
        method = getattr(self._target, name)
        if self.is_actor:
            async def remote(*args, **kwargs):
                from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError

                try:
                    ref = method.remote(*args, **kwargs)
                    return await (asyncio.wait_for(ref, self.timeout_s) if self.timeout_s else ref)
                except asyncio.TimeoutError:
                    raise Unavailable(f"the {self.what} did not answer within {self.timeout_s:g} s; retry shortly",
                                      retry_after=2) from None
                except RayTaskError as exc:
                    # Our own error, raised as it was: Ray's wrapper is an instance of its class, but the
                    # class's attributes win over the instance's (a NotFound's code would say `not_found`).
                    if isinstance(exc.cause, AtelierError):
                        raise exc.cause from None
                    raise
                except (ActorDiedError, ActorUnavailableError) as exc:
                    # Its node went under the call (Ray restarts the actor elsewhere): the caller may retry.
                    raise Unavailable(f"the {self.what} is restarting ({type(exc).__name__}); retry shortly",
                                      retry_after=2) from None

            return remote
        if self._threads:
            return lambda *args, **kwargs: asyncio.to_thread(method, *args, **kwargs)

        async def call(*args, **kwargs):
            return method(*args, **kwargs)

        return call

    def nowait(self, name: str, *args, **kwargs) -> None:
        """Fire and forget: an actor call is sent and not awaited; an in-process call just runs."""
        method = getattr(self._target, name)
        if self.is_actor:
            method.remote(*args, **kwargs)
        else:
            method(*args, **kwargs)
