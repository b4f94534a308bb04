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
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from models.vector import Vector

from .errors import Overloaded, RequestTimeout, Unavailable
from .tasks import background

ROLES = ("embedder", "writer", "describer", "painter")  # the four every app has; the Guard is optional (issue 30)
__all__ = ["ROLES", "Charged", "LocalModels", "Meter", "ServeModels", "TextStream", "Vector", "settle"]


@dataclass(frozen=True)
class Charged:
    """The last piece of a charged stream: the GPU seconds its replica measured."""

    seconds: float


class Meter:
    """The compute one charged call spends in its worker threads, times the GPU share of what runs it (a
    replica's `num_gpus`; one whole device where it has no GPU). A call that ends without an answer (cancelled,
    failed) is `orphan`ed: its seconds go to `on_orphan(seconds)` once its threads are done, since a cancelled
    model runs on to its next step. `on_orphan` may be called from a worker thread."""

    def __init__(self, share: float, on_orphan: Callable[[float], None]):
        self.share, self._on_orphan = share, on_orphan
        self.seconds = 0.0
        self._running = 0
        self._orphaned = False
        self._lock = threading.Lock()

    @property
    def charged(self) -> float:
        return self.seconds * self.share

    def timed(self, fn: Callable) -> Callable:
        def run(*args, **kwargs):
            with self._lock:
                self._running += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds += time.perf_counter() - t0
                    self._running -= 1
                    last = self._orphaned and self._running == 0
                if last:
                    self._on_orphan(self.charged)

        return run

    def orphan(self) -> None:
        with self._lock:
            if self._orphaned:
                return
            self._orphaned = True
            done = self._running == 0
        if done:
            self._on_orphan(self.charged)


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
        self.charged: float | None = None  # a charged stream's GPU seconds, once its last piece came

    async def next(self) -> str | None:
        async def one():
            try:
                return await self._pieces.__anext__()
            except StopAsyncIteration:
                return None

        piece = await settle(one())
        if isinstance(piece, Charged):
            self.charged = piece.seconds
            return await self.next()
        return piece

    def cancel(self) -> None:
        self._pieces.cancel()


class _Gateway:
    """What both transports share: the one call, a stream, and each role's info (cached: it is asked on
    every search and generation, and a role's identity changes only with a new deployment)."""

    def __init__(self):
        self._info: dict[str, dict] = {}

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles this gateway reaches: the four, and the Guard where the app has one."""
        return tuple(role for role, model in self._roles().items() if model is not None or role in ROLES)

    def _roles(self) -> dict:
        raise NotImplementedError

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

    def __init__(self, embedder, writer, describer, painter, *, guard=None, scale_to_zero: tuple[str, ...] = ()):
        super().__init__()
        self.handles = {"embedder": embedder, "writer": writer, "describer": describer, "painter": painter,
                        "guard": guard}
        self.scale_to_zero = frozenset(scale_to_zero)

    def _roles(self) -> dict:
        return self.handles

    async def call(self, role: str, op: str, *args, **kwargs) -> Any:
        return await settle(self.handles[role].call.remote(op, *args, **kwargs))

    async def stream(self, role: str, op: str, *args, **kwargs) -> TextStream:
        return _ServeStream(track(self.handles[role].options(stream=True).stream.remote(op, *args, **kwargs)))

    async def charged(self, role: str, op: str, user: str, *args, **kwargs) -> tuple[Any, float]:
        """A call whose compute is charged to `user`: (answer, GPU seconds its replica measured). A call that
        ends without an answer is charged by the replica itself, through the ingress (`Ingress.charge`)."""
        return await settle(self.handles[role].charged.remote(user, op, *args, **kwargs))

    async def charged_stream(self, role: str, op: str, user: str, *args, **kwargs) -> TextStream:
        """A stream charged to `user`: its `charged` seconds are set once its last piece has come."""
        return _ServeStream(track(self.handles[role].options(stream=True).charged_stream.remote(user, op, *args,
                                                                                               **kwargs)))

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
    def __init__(self, pieces, meter: Meter | None = None):
        self._pieces, self._done, self._meter = pieces, False, meter
        self.charged: float | None = None

    async def next(self) -> str | None:
        if self._done:
            return None
        step = self._meter.timed(next) if self._meter is not None else next
        try:
            piece = await asyncio.to_thread(step, self._pieces, None)
        except BaseException:
            if self._meter is not None:
                self._meter.orphan()
            raise
        self._done = piece is None
        if self._done and self._meter is not None:
            self.charged = self._meter.charged
        return piece

    def cancel(self) -> None:
        if not self._done and self._meter is not None:
            self._meter.orphan()
        self._done = True


class LocalModels(_Gateway):
    """The four roles as plain model classes in this process (loaded and warmed up by the caller)."""

    def __init__(self, embedder, writer, describer, painter, *, guard=None):
        super().__init__()
        self.models = {"embedder": embedder, "writer": writer, "describer": describer, "painter": painter,
                       "guard": guard}
        # Where a charged call that ended without an answer is charged: `await on_orphan(user, role, seconds)`
        # (the plans' counters set it). The models run on this process's CPUs: one device each.
        self.on_orphan: Callable[[str, str, float], Any] | None = None
        self._charging: set = set()

    def _roles(self) -> dict:
        return self.models

    def _method(self, role: str, op: str):
        model = self.models[role]
        model.resolve(op)  # only marked operations, as over Serve
        return getattr(model, op)  # through the object itself: a test's wrapper around a model sees its calls

    async def call(self, role: str, op: str, *args, **kwargs) -> Any:
        return await asyncio.to_thread(self._method(role, op), *args, **kwargs)

    async def stream(self, role: str, op: str, *args, **kwargs) -> TextStream:
        return _LocalStream(await asyncio.to_thread(self._method(role, op), *args, **kwargs))

    def _meter(self, user: str, role: str) -> Meter:
        loop = asyncio.get_running_loop()

        def charge(seconds: float) -> None:
            background(self.on_orphan(user, role, seconds), self._charging)

        def orphaned(seconds: float) -> None:
            if self.on_orphan is not None:
                loop.call_soon_threadsafe(charge, seconds)

        return Meter(1.0, orphaned)

    async def _metered(self, role: str, op: str, user: str, *args, **kwargs) -> tuple[Any, Meter]:
        meter = self._meter(user, role)
        try:
            return await asyncio.to_thread(meter.timed(self._method(role, op)), *args, **kwargs), meter
        except BaseException:
            meter.orphan()
            raise

    async def charged(self, role: str, op: str, user: str, *args, **kwargs) -> tuple[Any, float]:
        result, meter = await self._metered(role, op, user, *args, **kwargs)
        return result, meter.charged

    async def charged_stream(self, role: str, op: str, user: str, *args, **kwargs) -> TextStream:
        return _LocalStream(*await self._metered(role, op, user, *args, **kwargs))

    async def ready(self, role: str, timeout_s: float) -> bool:
        return await self.call(role, "ready")
