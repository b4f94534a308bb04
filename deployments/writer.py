"""Writer deployment: prompt enhancement, Chinese post texts and chat, with token streaming."""

from __future__ import annotations

from typing import AsyncIterator, Type

from ray import serve

from .models.writer import ChatResult, Writer, WriterConfig
from .shell import RoleShell


@serve.deployment(name="Writer")
class WriterDeployment(RoleShell):
    def __init__(self, config: dict, model_class: Type[Writer] = Writer):
        super().__init__(model_class(WriterConfig.model_validate(config)))

    async def enhance_prompt(self, text: str, seed: int | None = None) -> str:
        return await self._run("enhance_prompt", self.model.enhance_prompt, text, seed=seed)

    async def to_english(self, text: str, seed: int | None = None) -> str:
        return await self._run("to_english", self.model.to_english, text, seed=seed)

    async def post_text(self, description: str, seed: int | None = None) -> str:
        return await self._run("post_text", self.model.post_text, description, seed=seed)

    async def chat(self, messages: list[dict], **params) -> ChatResult:
        return await self._run("chat", self.model.chat, messages, stream=False, **params)

    async def chat_stream(self, messages: list[dict], **params) -> AsyncIterator[str]:
        """Text pieces as they are decoded; call through a handle with .options(stream=True)."""
        import asyncio

        pieces = await self._run("chat_stream", self.model.chat, messages, stream=True, **params)
        sentinel = object()
        while True:
            piece = await asyncio.to_thread(next, pieces, sentinel)
            if piece is sentinel:
                return
            yield piece

    def count_tokens(self, text: str) -> int:
        return self.model.count_tokens(text)
