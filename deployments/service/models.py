"""How the product service reaches the four models, through one typed gateway with two faces.

- `ServeModels`: the models are Ray Serve deployments behind handles (production and the e2e tests).
  Serve's capacity and restart errors become our typed 503s here (`settle`), so nothing above
  sees a Ray exception.
- `LocalModels`: the plain model classes of `models` in this process, each call in a
  worker thread (the fast HTTP test tier, and anything else that wants the product without Ray).

Both answer the same calls with the same values; the service is written against either.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any, NamedTuple, Protocol

import numpy as np
from PIL import Image

from .errors import Overloaded, RequestTimeout, Unavailable

ROLES = ("embedder", "writer", "describer", "painter")


class Vector(NamedTuple):
    """A unit vector and the embedding model that made it. Vectors of two models cannot be compared,
    so the service stores and searches each in its own model's table; while a model switch rolls out,
    replicas of both models answer, and the model travels with every vector."""

    model: str
    values: np.ndarray


class TextStream(Protocol):
    """Text pieces of one streamed answer: `await next()` until None; `cancel()` stops it early."""

    async def next(self) -> str | None: ...

    def cancel(self) -> None: ...


class ModelGateway(Protocol):
    async def info(self, role: str) -> dict: ...
    async def ready(self, role: str, timeout_s: float) -> bool: ...
    async def dim(self) -> int: ...
    async def embed_text(self, text: str) -> Vector: ...
    async def embed_texts(self, texts: list[str]) -> np.ndarray: ...
    async def embed_image(self, image: Image.Image) -> Vector: ...
    async def count_text_tokens(self, texts: list[str]) -> list[int]: ...
    async def enhance_prompt(self, text: str) -> str: ...
    async def to_english(self, text: str) -> str: ...
    async def post_text(self, description: str) -> str: ...
    async def chat(self, messages: list[dict], **params) -> Any: ...
    async def chat_stream(self, messages: list[dict], **params) -> TextStream: ...
    async def count_chat_tokens(self, text: str) -> int: ...
    async def describe(self, image: Image.Image, instruction: str | None) -> str: ...
    async def answer(self, image: Image.Image, instruction: str | None, *, max_new_tokens: int | None,
                     seed: int | None) -> Any: ...
    async def check_paint(self, prompt: str, size: str | None, steps: int | None, seed: int | None) -> str: ...
    async def paint(self, prompt: str, *, size: str | None, steps: int | None, seed: int | None) -> dict: ...


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


class ServeModels:
    """The four roles as Serve deployment handles (`deployments.serving.roles`)."""

    def __init__(self, embedder, writer, describer, painter):
        self.handles = {"embedder": embedder, "writer": writer, "describer": describer, "painter": painter}
        self.embedder, self.writer, self.describer, self.painter = embedder, writer, describer, painter
        self._info: dict[str, dict] = {}

    async def info(self, role: str) -> dict:
        if role not in self._info:
            self._info[role] = await settle(self.handles[role].info.remote())
        return self._info[role]

    async def ready(self, role: str, timeout_s: float) -> bool:
        await asyncio.wait_for(self.handles[role].ready.remote(), timeout=timeout_s)
        return True

    async def dim(self) -> int:
        return await settle(self.embedder.dim.remote())

    async def embed_text(self, text: str) -> Vector:
        return Vector(*await settle(self.embedder.embed_text.remote(text)))

    async def embed_texts(self, texts: list[str]) -> np.ndarray:
        return await settle(self.embedder.embed_texts.remote(texts))

    async def embed_image(self, image: Image.Image) -> Vector:
        return Vector(*await settle(self.embedder.embed_image.remote(image)))

    async def count_text_tokens(self, texts: list[str]) -> list[int]:
        return await settle(self.embedder.count_tokens.remote(texts))

    async def enhance_prompt(self, text: str) -> str:
        return await settle(self.writer.enhance_prompt.remote(text))

    async def to_english(self, text: str) -> str:
        return await settle(self.writer.to_english.remote(text))

    async def post_text(self, description: str) -> str:
        return await settle(self.writer.post_text.remote(description))

    async def chat(self, messages: list[dict], **params):
        return await settle(self.writer.chat.remote(messages, **params))

    async def chat_stream(self, messages: list[dict], **params) -> TextStream:
        return _ServeStream(track(self.writer.options(stream=True).chat_stream.remote(messages, **params)))

    async def count_chat_tokens(self, text: str) -> int:
        return await settle(self.writer.count_tokens.remote(text))

    async def describe(self, image: Image.Image, instruction: str | None) -> str:
        return await settle(self.describer.describe.remote(image, instruction))

    async def answer(self, image, instruction, *, max_new_tokens, seed):
        return await settle(self.describer.answer.remote(image, instruction, max_new_tokens=max_new_tokens, seed=seed))

    async def check_paint(self, prompt, size, steps, seed) -> str:
        return await settle(self.painter.check.remote(prompt, size, steps, None, seed))

    async def paint(self, prompt, *, size, steps, seed) -> dict:
        return await settle(self.painter.paint.remote(prompt, size=size, steps=steps, seed=seed))


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


class LocalModels:
    """The four roles as plain model classes in this process (loaded and warmed up by the caller)."""

    def __init__(self, embedder, writer, describer, painter):
        self.models = {"embedder": embedder, "writer": writer, "describer": describer, "painter": painter}
        self.embedder, self.writer, self.describer, self.painter = embedder, writer, describer, painter

    @staticmethod
    async def _run(fn, *args, **kwargs):
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def info(self, role: str) -> dict:
        model = self.models[role]
        return {"role": model.role, "model_id": model.model_id, "name": model.public_name,
                "random_weights": model.random_weights, **model.facts()}

    async def ready(self, role: str, timeout_s: float) -> bool:
        self.models[role].check_health()
        return True

    async def dim(self) -> int:
        return self.embedder.dim

    async def embed_text(self, text: str) -> Vector:
        return Vector(self.embedder.model_id, (await self._run(self.embedder.embed_texts, [text]))[0])

    async def embed_texts(self, texts: list[str]) -> np.ndarray:
        return await self._run(self.embedder.embed_texts, texts)

    async def embed_image(self, image: Image.Image) -> Vector:
        return Vector(self.embedder.model_id, (await self._run(self.embedder.embed_images, [image]))[0])

    async def count_text_tokens(self, texts: list[str]) -> list[int]:
        return await self._run(self.embedder.count_tokens, texts)

    async def enhance_prompt(self, text: str) -> str:
        return await self._run(self.writer.enhance_prompt, text)

    async def to_english(self, text: str) -> str:
        return await self._run(self.writer.to_english, text)

    async def post_text(self, description: str) -> str:
        return await self._run(self.writer.post_text, description)

    async def chat(self, messages: list[dict], **params):
        return await self._run(self.writer.chat, messages, stream=False, **params)

    async def chat_stream(self, messages: list[dict], **params) -> TextStream:
        return _LocalStream(await self._run(self.writer.chat, messages, stream=True, **params))

    async def count_chat_tokens(self, text: str) -> int:
        return await self._run(self.writer.count_tokens, text)

    async def describe(self, image: Image.Image, instruction: str | None) -> str:
        return await self._run(self.describer.describe, image, instruction)

    async def answer(self, image, instruction, *, max_new_tokens, seed):
        return await self._run(self.describer.answer, image, instruction, max_new_tokens=max_new_tokens, seed=seed)

    async def check_paint(self, prompt, size, steps, seed) -> str:
        return self.painter.size_of(prompt, size, steps, seed)

    async def paint(self, prompt, *, size, steps, seed) -> dict:
        result = await self._run(self.painter.paint, prompt, size=size, steps=steps, seed=seed)
        return await self._run(self.painter.as_answer, result)

