"""The four model deployments: thin Serve shells around the plain model classes of `models`.

Each loads and warms up its model in the constructor (Serve reports a replica ready only after
that), runs calls off the event loop, counts and times them with Serve metrics, and reports health.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, AsyncIterator, Callable, Type

import numpy as np
from PIL import Image
from ray import serve
from ray.serve import metrics

from deployments.config import LATENCY_BOUNDARIES_S, BatchOptions
from models.base import CANCEL, ModelRole
from models.configs import DescriberConfig, EmbedderConfig, PainterConfig, WriterConfig
from models.errors import ModelError
from deployments.serving.logs import LOGGING, into_serve_log

class RoleShell:
    """A thin Serve shell around one plain model role; subclasses only name their typed methods."""

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

    def progress(self) -> dict:
        """Work done so far on this replica (steps, tokens) and calls cancelled: for tests and operators."""
        return {"unit": self.model.work_unit, "done": self.model.work_done, "cancelled": self.cancelled}

    def info(self) -> dict:
        """What the ingress shows users about this model (and whether its answers are noise)."""
        return {"role": self.model.role, "model_id": self.model.model_id, "name": self.model.public_name,
                "random_weights": self.model.random_weights, **self.model.facts()}

    def ready(self) -> bool:
        self.model.check_health()
        return True

    def check_health(self) -> None:
        self.model.check_health()


def _model_class(default: str, given: type | None) -> type:
    if given is not None:
        return given
    from importlib import import_module

    return getattr(import_module("models"), default)


@serve.deployment(name="Embedder", logging_config=LOGGING)
class EmbedderDeployment(RoleShell):
    """Image and text vectors (CLIP, Chinese-CLIP or SigLIP 2), batched across concurrent requests."""

    def __init__(self, config: dict, model_class: Type | None = None):
        super().__init__(_model_class("Embedder", model_class)(EmbedderConfig.model_validate(config)))

    def reconfigure(self, user_config: dict) -> None:
        opts = BatchOptions.model_validate(user_config or {})
        for batched in (self.embed_text, self.embed_image):
            batched.set_max_batch_size(opts.max_batch_size)
            batched.set_batch_wait_timeout_s(opts.batch_wait_timeout_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def embed_text(self, texts: list[str]) -> list[tuple[str, np.ndarray]]:
        """One text -> (model id, unit vector); concurrent callers share a forward pass. The model id
        goes with the vector: while a model switch rolls out, the caller stores or searches it in
        that model's table (deployments.service.models.Vector)."""
        vectors = await self._run("embed_texts", self.model.embed_texts, texts)
        return self._with_model(_one_per_input(vectors, texts))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def embed_image(self, images: list[Image.Image]) -> list[tuple[str, np.ndarray]]:
        vectors = await self._run("embed_images", self.model.embed_images, images)
        return self._with_model(_one_per_input(vectors, images))

    def _with_model(self, vectors: list[np.ndarray]) -> list[tuple[str, np.ndarray]]:
        return [(self.model.model_id, v) for v in vectors]

    async def embed_texts(self, texts: list[str]) -> np.ndarray:
        """A caller's own list in one call (the OpenAI surface's list input)."""
        return await self._run("embed_texts", self.model.embed_texts, texts)

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens per text, for the OpenAI surface's usage report."""
        return self.model.count_tokens(texts)

    def dim(self) -> int:
        return self.model.dim

    def image_size(self) -> int:
        return self.model.image_size


def _one_per_input(vectors: np.ndarray, inputs: list) -> list[np.ndarray]:
    if len(vectors) != len(inputs):
        raise RuntimeError(f"embedder returned {len(vectors)} vectors for {len(inputs)} inputs")
    return list(vectors)


@serve.deployment(name="Writer", logging_config=LOGGING)
class WriterDeployment(RoleShell):
    """Prompt enhancement, Chinese post texts and chat, with token streaming."""

    def __init__(self, config: dict, model_class: Type | None = None):
        super().__init__(_model_class("Writer", model_class)(WriterConfig.model_validate(config)))

    async def enhance_prompt(self, text: str, seed: int | None = None) -> str:
        return await self._run("enhance_prompt", self.model.enhance_prompt, text, seed=seed)

    async def to_english(self, text: str, seed: int | None = None) -> str:
        return await self._run("to_english", self.model.to_english, text, seed=seed)

    async def post_text(self, description: str, seed: int | None = None) -> str:
        return await self._run("post_text", self.model.post_text, description, seed=seed)

    async def chat(self, messages: list[dict], **params):
        return await self._run("chat", self.model.chat, messages, stream=False, **params)

    async def chat_stream(self, messages: list[dict], **params) -> AsyncIterator[str]:
        """Text pieces as they are decoded; call through a handle with .options(stream=True)."""
        cancel = threading.Event()  # the stream's generation runs on after this first call returns
        pieces = await self._run("chat_stream", self.model.chat, messages, stream=True, cancel=cancel, **params)
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

    def count_tokens(self, text: str) -> int:
        return self.model.count_tokens(text)


@serve.deployment(name="Describer", logging_config=LOGGING)
class DescriberDeployment(RoleShell):
    """What a vision-language model sees in one image."""

    def __init__(self, config: dict, model_class: Type | None = None):
        super().__init__(_model_class("Describer", model_class)(DescriberConfig.model_validate(config)))

    async def describe(self, image: Image.Image, instruction: str | None = None,
                       max_new_tokens: int | None = None, seed: int | None = None) -> str:
        return await self._run("describe", self.model.describe, image, instruction,
                               max_new_tokens=max_new_tokens, seed=seed)

    async def answer(self, image: Image.Image, instruction: str | None = None,
                     max_new_tokens: int | None = None, seed: int | None = None):
        """describe() with finish reason and token counts (the OpenAI chat surface)."""
        return await self._run("answer", self.model.answer, image, instruction,
                               max_new_tokens=max_new_tokens, seed=seed)


@serve.deployment(name="Painter", logging_config=LOGGING)
class PainterDeployment(RoleShell):
    """FLUX text-to-image; answers PNG bytes and the facts of the generation."""

    def __init__(self, config: dict, model_class: Type | None = None):
        super().__init__(_model_class("Painter", model_class)(PainterConfig.model_validate(config)))

    def check(self, prompt: str, size: str | None = None, steps: int | None = None,
              guidance: float | None = None, seed: int | None = None) -> str:
        """Validate a request without painting; returns the size as WxH."""
        return self.model.size_of(prompt, size, steps, seed, guidance=guidance)

    async def paint(self, prompt: str, size: str | None = None, steps: int | None = None,
                    guidance: float | None = None, seed: int | None = None) -> dict:
        result = await self._run("paint", self.model.paint, prompt, size=size, steps=steps, guidance=guidance,
                                 seed=seed)
        return self.model.as_answer(result)
