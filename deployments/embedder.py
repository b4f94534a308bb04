"""Embedder deployment: CLIP image and text vectors, batched across concurrent requests."""

from __future__ import annotations

from typing import Type

import numpy as np
from PIL import Image
from ray import serve

from .config import BatchOptions
from .models.embedder import Embedder, EmbedderConfig
from .shell import RoleShell


@serve.deployment(name="Embedder")
class EmbedderDeployment(RoleShell):
    def __init__(self, config: dict, model_class: Type[Embedder] = Embedder):
        super().__init__(model_class(EmbedderConfig.model_validate(config)))

    def reconfigure(self, user_config: dict) -> None:
        opts = BatchOptions.model_validate(user_config or {})
        for batched in (self.embed_text, self.embed_image):
            batched.set_max_batch_size(opts.max_batch_size)
            batched.set_batch_wait_timeout_s(opts.batch_wait_timeout_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def embed_text(self, texts: list[str]) -> list[np.ndarray]:
        """One text -> one unit vector; concurrent callers share a forward pass."""
        vectors = await self._run("embed_texts", self.model.embed_texts, texts)
        return _one_per_input(vectors, texts)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def embed_image(self, images: list[Image.Image]) -> list[np.ndarray]:
        vectors = await self._run("embed_images", self.model.embed_images, images)
        return _one_per_input(vectors, images)

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
