"""Painter: FLUX text-to-image through diffusers' FluxPipeline, with inputs checked before any work."""

from __future__ import annotations

import io
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from PIL import Image

from .base import CANCEL, ModelRole, operation
from .configs import PainterConfig
from .errors import Cancelled

@dataclass(frozen=True)
class PaintResult:
    image: Image.Image
    seed: int
    width: int
    height: int
    steps: int
    guidance: float
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


class Painter(ModelRole):
    role: ClassVar[str] = "painter"
    work_unit: ClassVar[str] = "steps"

    def __init__(self, config: PainterConfig):
        super().__init__(config)
        self.config: PainterConfig = config
        self._pipe = None
        self._paint_lock = threading.Lock()

    def _load(self, source: str) -> None:
        from diffusers import FluxPipeline

        kw = self._pretrained_kwargs()
        kw.pop("trust_remote_code")  # diffusers pipelines have no such switch; custom code is never loaded
        self._pipe = FluxPipeline.from_pretrained(source, dtype=self._dtype, **kw).to(self._device)
        self._pipe.set_progress_bar_config(disable=True)

    def _warmup(self) -> None:
        self.paint("warm-up", size=f"{self.config.min_side}x{self.config.min_side}", steps=1, seed=0)

    def parse_size(self, size: str | None) -> tuple[int, int]:
        """A preset name or 'WxH' -> (width, height) (PainterConfig.parse_size)."""
        return self.config.parse_size(size)

    def check(self, prompt: str, size: str | None, steps: int | None, guidance: float | None,
              seed: int | None) -> tuple[int, int, int, float]:
        """Validate everything a paint() call needs, cheaply, before any model work (PainterConfig.check)."""
        return self.config.check(prompt, size, steps, guidance, seed)

    def facts(self) -> dict:
        return {"limits": self.config.limits()}

    @operation
    def size_of(self, prompt: str, size: str | None, steps: int | None, seed: int | None,
                guidance: float | None = None) -> str:
        """check() for a caller that only needs the size: 'WxH'."""
        w, h, _, _ = self.check(prompt, size, steps, guidance, seed)
        return f"{w}x{h}"

    def as_answer(self, result: PaintResult) -> dict:
        """A painted image as it travels on (to the service, across processes): PNG bytes and its facts."""
        buf = io.BytesIO()
        result.image.save(buf, format="PNG")
        return {"png": buf.getvalue(), "seed": result.seed, "size": result.size, "width": result.width,
                "height": result.height, "steps": result.steps, "guidance": result.guidance,
                "timings": result.timings, "model_id": self.model_id, "random_weights": self.random_weights}

    @operation
    def generate(self, prompt: str, *, size: str | None = None, steps: int | None = None,
                 guidance: float | None = None, seed: int | None = None) -> dict:
        """paint(), as the answer travels to the service: PNG bytes and the facts of the generation."""
        return self.as_answer(self.paint(prompt, size=size, steps=steps, guidance=guidance, seed=seed))

    def paint(self, prompt: str, *, size: str | None = None, steps: int | None = None,
              guidance: float | None = None, seed: int | None = None) -> PaintResult:
        """One image for a prompt; the same prompt, size, steps and seed give the same pixels."""
        w, h, steps, guidance = self.check(prompt, size, steps, guidance, seed)
        seed = secrets.randbelow(2**31) if seed is None else seed
        self.load()
        pipe = self._pipe
        cancel = CANCEL.get()

        def step_end(pipeline, step, timestep, tensors):
            # Count each denoising step; once the request is cancelled, the pipeline skips the rest.
            self._did_work(1)
            if cancel is not None and cancel.is_set():
                pipeline._interrupt = True
            return tensors

        with self._paint_lock, torch.inference_mode():
            t0 = time.perf_counter()
            prompt_embeds, pooled, _ = pipe.encode_prompt(
                prompt=prompt, prompt_2=None, device=self._device, max_sequence_length=self.config.max_sequence_length
            )
            t1 = time.perf_counter()
            generator = torch.Generator(device="cpu").manual_seed(seed)
            image = pipe(
                prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled, height=h, width=w,
                num_inference_steps=steps, guidance_scale=guidance, generator=generator, output_type="pil",
                callback_on_step_end=step_end,
            ).images[0]
            t2 = time.perf_counter()
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"the request was cancelled; denoising stopped after {self.work_done} steps in all")
        return PaintResult(image=image, seed=seed, width=w, height=h, steps=steps, guidance=guidance,
                           timings={"encode_s": t1 - t0, "denoise_decode_s": t2 - t1, "total_s": t2 - t0})
