"""Painter deployment: FLUX text-to-image; answers PNG bytes and the facts of the generation."""

from __future__ import annotations

import io
from typing import Type

from ray import serve

from .models.painter import Painter, PainterConfig
from .shell import RoleShell


@serve.deployment(name="Painter")
class PainterDeployment(RoleShell):
    def __init__(self, config: dict, model_class: Type[Painter] = Painter):
        super().__init__(model_class(PainterConfig.model_validate(config)))

    def check(self, prompt: str, size: str | None = None, steps: int | None = None,
              guidance: float | None = None, seed: int | None = None) -> str:
        """Validate a request without painting; returns the size as WxH."""
        w, h, _, _ = self.model.check(prompt, size, steps, guidance, seed)
        return f"{w}x{h}"

    async def paint(self, prompt: str, size: str | None = None, steps: int | None = None,
                    guidance: float | None = None, seed: int | None = None) -> dict:
        result = await self._run("paint", self.model.paint, prompt, size=size, steps=steps, guidance=guidance,
                                 seed=seed)
        buf = io.BytesIO()
        result.image.save(buf, format="PNG")
        return {"png": buf.getvalue(), "seed": result.seed, "size": result.size, "width": result.width,
                "height": result.height, "steps": result.steps, "guidance": result.guidance,
                "timings": result.timings, "model_id": self.model.model_id,
                "random_weights": self.model.random_weights}
