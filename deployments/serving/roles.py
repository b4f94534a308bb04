"""The four model deployments: thin Serve shells around the plain model classes of `models`.

Each loads and warms up its model in the constructor (Serve reports a replica ready only after
that), runs calls off the event loop, counts and times them with Serve metrics, and reports health.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, AsyncIterator, Callable, Type

from ray import serve
from ray.serve import metrics

import models
from deployments.config import LATENCY_BOUNDARIES_S, BatchOptions
from deployments.service.models import Charged, Meter
from deployments.service.tasks import background
from deployments.serving.logs import LOGGING, into_serve_log
from models.base import CANCEL, ModelRole
from models.configs import DescriberConfig, EmbedderConfig, GuardConfig, PainterConfig, WriterConfig
from models.errors import ModelError


class RoleShell:
    """A thin Serve shell around one plain model role: one generic entry point (`call`, `stream`) for
    every operation the role's class marks, so a new operation needs no change here."""

    def __init__(self, role: ModelRole):
        into_serve_log()
        self.model = role
        # Warm up before the constructor returns: Serve reports the replica ready only after that.
        role.warmup()
        # One family for every role, tagged by role, so one dashboard panel or alert covers them all.
        self._requests = metrics.Counter(
            "atelier_model_requests", description="model calls by role, operation and outcome "
            "(ok, rejected: the input was refused, error, cancelled)", tag_keys=("role", "op", "outcome"),
        )
        self._latency = metrics.Histogram(
            "atelier_model_latency_s", description="model call latency by role and operation, seconds",
            boundaries=LATENCY_BOUNDARIES_S, tag_keys=("role", "op"),
        )
        self.cancelled = 0
        # GPU seconds charged to users: a charged call's compute times this replica's GPU share (issue 29).
        self.gpu_share = _gpu_share()
        self.charged_s = 0.0
        self._sending: set = set()
        self._charged = metrics.Counter(
            "atelier_model_gpu_seconds", description="GPU seconds charged to users' plans by role: each charged "
            "call's measured compute times the replica's GPU share (1 on a replica without a GPU)",
            tag_keys=("role",))
        if role.work_unit:
            # atelier_painter_steps, atelier_writer_tokens: the work done, cancelled calls' included.
            work = metrics.Counter(f"atelier_{role.role}_{role.work_unit}",
                                   description=f"{role.work_unit} the {role.role} computed")
            role.on_work = lambda units: work.inc(units)

    async def _run(self, op: str, fn: Callable[..., Any], *args, cancel: threading.Event | None = None,
                   meter: Meter | None = None, **kwargs) -> Any:
        """Run a blocking model call in a worker thread so health checks and batching keep flowing.

        When the request is cancelled (the client went away; Serve cancels the call through every
        handle), the call's cancel flag is set, and the model stops at its next step or token
        instead of computing an answer nobody reads. With a `meter`, the thread's compute is measured;
        a call that ends without an answer is charged by the meter once its thread is done."""
        t0 = time.perf_counter()
        outcome = "error"
        cancel = cancel or threading.Event()
        token = CANCEL.set(cancel)  # asyncio.to_thread copies this context into the worker thread
        try:
            result = await asyncio.to_thread(meter.timed(fn) if meter is not None else fn, *args, **kwargs)
            outcome = "ok"
            return result
        except asyncio.CancelledError:
            cancel.set()
            self.cancelled += 1
            outcome = "cancelled"
            raise
        except ModelError as exc:
            outcome = "rejected" if 400 <= exc.status < 500 else "error"
            raise
        finally:
            CANCEL.reset(token)
            if meter is not None and outcome != "ok":
                meter.orphan()
            role = self.model.role
            self._requests.inc(tags={"role": role, "op": op, "outcome": outcome})
            self._latency.observe(time.perf_counter() - t0, tags={"role": role, "op": op})

    async def call(self, op: str, *args, **kwargs) -> Any:
        """The one entry point: run the model's operation `op` (a method marked `@operation`) off the
        event loop. An operation with a `batch` method is grouped with concurrent calls of it."""
        fn, spec = self.model.resolve(op)
        if spec.stream:
            raise LookupError(f"{op} streams: call it through stream() with .options(stream=True)")
        if spec.batch:
            [item] = args
            return await self._batched(spec.batch, item)
        return await self._run(op, fn, *args, **kwargs)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _batched(self, methods: list[str], items: list) -> list:
        """Concurrent single calls folded into one call of their operation's batch method (one forward pass)."""
        answers: list = [None] * len(items)
        for method in dict.fromkeys(methods):
            at = [i for i, m in enumerate(methods) if m == method]
            out = await self._run(method, getattr(self.model, method), [items[i] for i in at])
            if len(out) != len(at):
                raise RuntimeError(f"{self.model.role}.{method} answered {len(out)} values for {len(at)} inputs")
            for i, value in zip(at, out):
                answers[i] = value
        return answers

    async def stream(self, op: str, *args, **kwargs) -> AsyncIterator[Any]:
        """The pieces of a streaming operation as they come; call through a handle with .options(stream=True)."""
        async for piece in self._stream(op, None, *args, **kwargs):
            yield piece

    async def charged(self, user: str, op: str, *args, **kwargs) -> tuple[Any, float]:
        """`call`, charged to `user`'s GPU seconds: (answer, seconds measured times this replica's GPU share).
        A call cancelled or failed is charged through the ingress once its thread is done (`Ingress.charge`)."""
        fn, spec = self.model.resolve(op)
        if spec.stream or spec.batch:
            raise LookupError(f"{op} is {'streamed' if spec.stream else 'batched'}: not a charged call")
        meter = self._meter(user)
        result = await self._run(op, fn, *args, meter=meter, **kwargs)
        self._count(meter.charged)
        return result, meter.charged

    async def charged_stream(self, user: str, op: str, *args, **kwargs) -> AsyncIterator[Any]:
        """`stream`, charged to `user`: the last piece is `Charged(seconds)`."""
        meter = self._meter(user)
        async for piece in self._stream(op, meter, *args, **kwargs):
            yield piece
        self._count(meter.charged)
        yield Charged(meter.charged)

    async def _stream(self, op: str, meter: Meter | None, *args, **kwargs) -> AsyncIterator[Any]:
        fn, spec = self.model.resolve(op)
        if not spec.stream:
            raise LookupError(f"{op} does not stream: call it through call()")
        cancel = threading.Event()  # the stream's generation runs on after this first call returns
        pieces = await self._run(op, fn, *args, cancel=cancel, meter=meter, **kwargs)
        step = meter.timed(next) if meter is not None else next
        sentinel = object()
        finished = False
        try:
            while True:
                piece = await asyncio.to_thread(step, pieces, sentinel)
                if piece is sentinel:
                    finished = True
                    return
                yield piece
        finally:
            if not finished:  # the consumer went away (or was cancelled) first: stop generating
                cancel.set()
                self.cancelled += 1
                if meter is not None:
                    meter.orphan()

    def _count(self, seconds: float) -> None:
        self.charged_s += seconds
        self._charged.inc(seconds, tags={"role": self.model.role})

    def _meter(self, user: str) -> Meter:
        """A meter whose orphaned seconds (a call that ended without an answer) are counted here and charged
        to `user` through the ingress, from this replica's event loop."""
        loop = asyncio.get_running_loop()

        def orphaned(seconds: float) -> None:
            loop.call_soon_threadsafe(self._charge_orphan, user, seconds)

        return Meter(self.gpu_share, orphaned)

    def _charge_orphan(self, user: str, seconds: float) -> None:
        self._count(seconds)
        background(self._send_charge(user, seconds), self._sending)

    async def _send_charge(self, user: str, seconds: float) -> None:
        try:
            ingress = serve.get_deployment_handle(INGRESS, serve.get_replica_context().app_name)
            await ingress.charge.remote(user, self.model.role, seconds)
        except Exception as exc:  # noqa: BLE001 - a lost charge is logged; the call's answer is already settled
            logging.getLogger("atelier.limits").warning("could not charge %.3f GPU seconds of the %s to %s: %s",
                                                        seconds, self.model.role, user, exc)

    def progress(self) -> dict:
        """Work done so far on this replica (steps, tokens), calls cancelled and GPU seconds charged to users:
        for tests and operators."""
        return {"unit": self.model.work_unit, "done": self.model.work_done, "cancelled": self.cancelled,
                "charged_s": self.charged_s, "gpu_share": self.gpu_share}

    def check_health(self) -> None:
        self.model.check_health()


INGRESS = "Ingress"  # the ingress deployment's name (deployments.serving.ingress), where orphaned charges go


def _gpu_share() -> float:
    """The GPUs Ray assigned this replica (its `num_gpus`, a fraction where replicas share one); one whole
    device on a replica without a GPU, so that plans' budgets hold on CPU-only deployments too."""
    try:
        import ray

        return float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0)) or 1.0
    except Exception:  # noqa: BLE001 - outside Ray (a plain test of the shell)
        return 1.0


def _model_class(default: str, given: type | None) -> type:
    """The role's class: a test's own (`compose(model_classes=...)`), else the one `models` names (it
    imports torch and transformers only now, in the replica, never in the ingress)."""
    return given if given is not None else getattr(models, default)


@serve.deployment(name="Embedder", logging_config=LOGGING)
class EmbedderDeployment(RoleShell):
    """Image and text vectors (CLIP, Chinese-CLIP or SigLIP 2), batched across concurrent requests."""

    def __init__(self, config: dict, model_class: Type | None = None):
        super().__init__(_model_class("Embedder", model_class)(EmbedderConfig.model_validate(config)))

    def reconfigure(self, user_config: dict) -> None:
        opts = BatchOptions.model_validate(user_config or {})
        self._batched.set_max_batch_size(opts.max_batch_size)
        self._batched.set_batch_wait_timeout_s(opts.batch_wait_timeout_s)


@serve.deployment(name="Writer", logging_config=LOGGING)
class WriterDeployment(RoleShell):
    """Prompt enhancement, translation, Chinese post texts and chat, with token streaming."""

    def __init__(self, config: dict, model_class: Type | None = None):
        super().__init__(_model_class("Writer", model_class)(WriterConfig.model_validate(config)))


@serve.deployment(name="Describer", logging_config=LOGGING)
class DescriberDeployment(RoleShell):
    """What a vision-language model sees in one image."""

    def __init__(self, config: dict, model_class: Type | None = None):
        super().__init__(_model_class("Describer", model_class)(DescriberConfig.model_validate(config)))


@serve.deployment(name="Painter", logging_config=LOGGING)
class PainterDeployment(RoleShell):
    """FLUX text-to-image; answers PNG bytes and the facts of the generation."""

    def __init__(self, config: dict, model_class: Type | None = None):
        super().__init__(_model_class("Painter", model_class)(PainterConfig.model_validate(config)))


@serve.deployment(name="Guard", logging_config=LOGGING)
class GuardDeployment(RoleShell):
    """Content safety (issue 30): a text guard's and an image classifier's verdicts, batched across concurrent
    checks (one padded forward pass for many prompts)."""

    def __init__(self, config: dict, model_class: Type | None = None):
        super().__init__(_model_class("Guard", model_class)(GuardConfig.model_validate(config)))
