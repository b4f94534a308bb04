"""How the product service reaches the four models: one call, `call(role, op, *args, **kw)`.

An operation is a model-class method marked `@operation` (models.base); its answer is shaped there.
The gateway has two transports and nothing per operation:

- `ServeModels`: each role is a Ray Serve deployment; `call` is one handle call of the role's
  generic entry point (deployments.serving.roles.RoleShell.call). Serve's capacity and restart errors
  become our typed 503s here (`settle`), so nothing above sees a Ray exception.
- `LocalModels`: the plain model classes in this process, each call in a worker thread (the fast HTTP
  test tier, and anything else that wants the product without Ray).
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any, Protocol

from models.vector import Vector

from .errors import Overloaded, RequestTimeout, Unavailable

ROLES = ("embedder", "writer", "describer", "painter")
__all__ = ["ROLES", "LocalModels", "ServeModels", "TextStream", "Vector", "settle"]


class TextStream(Protocol):
    """Text pieces of one streamed answer: `await next()` until None; `cancel()` stops it early."""

    async def next(self) -> str | None: ...

    def cancel(self) -> None: ...


# The deployment calls of the request running in this context, so that a route whose deadline passes
# can tell why (`Product.deadline`): a call no replica ever took (none running: a node lost, replicas
# restarting; or all at capacity) is a 503 to retry, a call a replica was slow to answer is a 504.
model_calls: contextvars.ContextVar[list | None] = contextvars.ContextVar("atelier_model_calls", default=None)


def track(response):
    calls = model_calls.get()
    if calls is not None:
        calls.append(response)
    return response


def never_assigned(calls: list) -> bool:
    """Whether a Serve call of these was never handed to a replica (still queued in the handle's router).
    Reads the response's `_replica_result`, which Serve sets once a replica has taken the request
    (ray/serve/handle.py); a call that is not a Serve response counts as taken."""
    return any(getattr(call, "_replica_result", object()) is None for call in calls)


async def settle(response, *, retry_after: float = 2.0):
    """Await a deployment call, turning Serve's capacity errors into our typed 503s.

    Serve installs its own plain-text handlers for BackPressureError and DeploymentUnavailableError
    on the ingress app (overriding any of ours), so they must become our errors before they leave
    the service.
    """
    from ray.exceptions import ActorDiedError, ActorUnavailableError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    track(response)
    try:
        return await response
    except BackPressureError as exc:
        raise Overloaded("the service is at capacity; retry shortly",
                         retry_after=exc.retry_after_s or retry_after) from None
    except (DeploymentUnavailableError, ActorDiedError, ActorUnavailableError) as exc:
        raise Unavailable(f"a model is restarting; retry shortly ({type(exc).__name__})",
                          retry_after=retry_after) from None
    except asyncio.TimeoutError:
        raise RequestTimeout("a model took longer than the request's deadline") from None


class _ServeStream:
    def __init__(self, pieces):
        self._pieces = pieces

    async def next(self) -> str | None:
        async def one():
            try:
                return await self._pieces.__anext__()
            except StopAsyncIteration:
                return None

        return await settle(one())

    def cancel(self) -> None:
        self._pieces.cancel()


class _Gateway:
    """What both transports share: the one call, a stream, and each role's info (cached: it is asked on
    every search and generation, and a role's identity changes only with a new deployment)."""

    def __init__(self):
        self._info: dict[str, dict] = {}

    async def call(self, role: str, op: str, *args, **kwargs) -> Any:
        raise NotImplementedError

    async def stream(self, role: str, op: str, *args, **kwargs) -> TextStream:
        raise NotImplementedError

    async def cap(self, role: str) -> int | None:
        """How many calls of `role` the acting user may have at once (None: no cap; `limits.HeldModels`)."""
        return None

    async def info(self, role: str) -> dict:
        if role not in self._info:
            self._info[role] = await self.call(role, "info")
        return self._info[role]


class ServeModels(_Gateway):
    """The four roles as Serve deployment handles (`deployments.serving.roles`).

    `scale_to_zero` names the roles whose autoscaling may take them to no replica (`min_replicas: 0`): a
    call to one of them with none running waits in the handle while Serve starts one (the cold start),
    and readiness does not call it (a probe's call would start one, so the role would never stay at zero)."""

    def __init__(self, embedder, writer, describer, painter, *, scale_to_zero: tuple[str, ...] = ()):
        super().__init__()
        self.handles = {"embedder": embedder, "writer": writer, "describer": describer, "painter": painter}
        self.scale_to_zero = frozenset(scale_to_zero)

    async def call(self, role: str, op: str, *args, **kwargs) -> Any:
        return await settle(self.handles[role].call.remote(op, *args, **kwargs))

    async def stream(self, role: str, op: str, *args, **kwargs) -> TextStream:
        return _ServeStream(track(self.handles[role].options(stream=True).stream.remote(op, *args, **kwargs)))

    async def ready(self, role: str, timeout_s: float) -> bool:
        """A readiness probe: no capacity error mapping, only whether the role answers in time. A role
        scaled to zero is ready without a call: its next request waits for the replica Serve starts."""
        if role in self.scale_to_zero and await asyncio.wait_for(self.running_replicas(role), timeout=timeout_s) == 0:
            return True
        return await asyncio.wait_for(self.handles[role].call.remote("ready"), timeout=timeout_s)

    async def running_replicas(self, role: str) -> int:
        """How many replicas of the role Serve runs now (its status API, as `serve status` shows it)."""
        from ray import serve

        handle = self.handles[role]
        status = await asyncio.to_thread(serve.status)
        app = status.applications.get(handle.app_name)
        deployment = app.deployments.get(handle.deployment_name) if app is not None else None
        return 0 if deployment is None else int(deployment.replica_states.get("RUNNING", 0))


class _LocalStream:
    def __init__(self, pieces):
        self._pieces, self._done = pieces, False

    async def next(self) -> str | None:
        if self._done:
            return None
        piece = await asyncio.to_thread(next, self._pieces, None)
        self._done = piece is None
        return piece

    def cancel(self) -> None:
        self._done = True


class LocalModels(_Gateway):
    """The four roles as plain model classes in this process (loaded and warmed up by the caller)."""

    def __init__(self, embedder, writer, describer, painter):
        super().__init__()
        self.models = {"embedder": embedder, "writer": writer, "describer": describer, "painter": painter}

    def _method(self, role: str, op: str):
        model = self.models[role]
        model.resolve(op)  # only marked operations, as over Serve
        return getattr(model, op)  # through the object itself: a test's wrapper around a model sees its calls

    async def call(self, role: str, op: str, *args, **kwargs) -> Any:
        return await asyncio.to_thread(self._method(role, op), *args, **kwargs)

    async def stream(self, role: str, op: str, *args, **kwargs) -> TextStream:
        return _LocalStream(await asyncio.to_thread(self._method(role, op), *args, **kwargs))

    async def ready(self, role: str, timeout_s: float) -> bool:
        return await self.call(role, "ready")
