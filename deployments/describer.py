"""Describer deployment: what a vision-language model sees in one image."""

from __future__ import annotations

from typing import Type

from PIL import Image
from ray import serve

from .models.describer import Describer, DescriberConfig, Description
from .shell import RoleShell


@serve.deployment(name="Describer")
class DescriberDeployment(RoleShell):
    def __init__(self, config: dict, model_class: Type[Describer] = Describer):
        super().__init__(model_class(DescriberConfig.model_validate(config)))

    async def describe(self, image: Image.Image, instruction: str | None = None,
                       max_new_tokens: int | None = None, seed: int | None = None) -> str:
        return await self._run("describe", self.model.describe, image, instruction,
                               max_new_tokens=max_new_tokens, seed=seed)

    async def answer(self, image: Image.Image, instruction: str | None = None,
                     max_new_tokens: int | None = None, seed: int | None = None) -> Description:
        """describe() with finish reason and token counts (the OpenAI chat surface)."""
        return await self._run("answer", self.model.answer, image, instruction,
                               max_new_tokens=max_new_tokens, seed=seed)
