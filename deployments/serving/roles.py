"""The four model deployments: thin Serve shells around the plain model classes of `models`.

Each loads and warms up its model in the constructor (Serve reports a replica ready only after
that), runs calls off the event loop, counts and times them with Serve metrics, and reports health.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, AsyncIterator, Callable, Type

from ray import serve
from ray.serve import metrics

import models
from deployments.config import LATENCY_BOUNDARIES_S, BatchOptions
from deployments.serving.logs import LOGGING, into_serve_log
from models.base import CANCEL, ModelRole
from models.configs import DescriberConfig, EmbedderConfig, PainterConfig, WriterConfig
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
        if role.work_unit:
            # atelier_painter_steps, atelier_writer_tokens: the work done, cancelled calls' included.
            work = metrics.Counter(f"atelier_{role.role}_{role.work_unit}",
                                   description=f"{role.work_unit} the {role.role} computed")
            role.on_work = lambda units: work.inc(units)

    async def _run(self, op: str, fn: Callable[..., Any], *args, cancel: threading.Event | None = None,
                   **kwargs) -> Any:
        """Run a blocking model call in a worker thread so health checks and batching keep flowing.

        When the request is cancelled (the client went away; Serve cancels the call through every
        handle), the call's cancel flag is set, and the model stops at its next step or token
        instead of computing an answer nobody reads."""
        t0 = time.perf_counter()
        outcome = "error"
        cancel = cancel or threading.Event()
        token = CANCEL.set(cancel)  # asyncio.to_thread copies this context into the worker thread
        try:
            result = await asyncio.to_thread(fn, *args, **kwargs)
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
        fn, spec = self.model.resolve(op)
        if not spec.stream:
            raise LookupError(f"{op} does not stream: call it through call()")
        cancel = threading.Event()  # the stream's generation runs on after this first call returns
        pieces = await self._run(op, fn, *args, cancel=cancel, **kwargs)
        sentinel = object()
        finished = False
        try:
            while True:
                piece = await asyncio.to_thread(next, pieces, sentinel)
                if piece is sentinel:
                    finished = True
                    return
                yield piece
        finally:
            if not finished:  # the consumer went away (or was cancelled) first: stop generating
                cancel.set()
                self.cancelled += 1

    def progress(self) -> dict:
        """Work done so far on this replica (steps, tokens) and calls cancelled: for tests and operators."""
        return {"unit": self.model.work_unit, "done": self.model.work_done, "cancelled": self.cancelled}

    def check_health(self) -> None:
        self.model.check_health()


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
