"""Describer: a vision-language model (transformers-native InternVL or any image-text-to-text model)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from PIL import Image

from .base import ModelRole, operation
from .configs import DescriberConfig
from .errors import DescriberInputError, ModelUnavailable
from .writer import _seed

DEFAULT_INSTRUCTION = "Describe this image in detail: the subject, setting, colours, mood and any text in it."


@dataclass(frozen=True)
class Description:
    """A vision answer with its token counts (the OpenAI surface reports them as usage)."""

    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int


class Describer(ModelRole):
    role: ClassVar[str] = "describer"

    def __init__(self, config: DescriberConfig):
        super().__init__(config)
        self.config: DescriberConfig = config
        self._model = None
        self._processor = None
        self._lock_generate = threading.Lock()

    def facts(self) -> dict:
        # The ingress refuses an answer length over the limit itself, with no round trip (issue 28).
        return {"limits": {"max_new_tokens": self.config.max_new_tokens_limit}}

    def _load(self, source: str) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        kw = self._pretrained_kwargs()
        self._processor = AutoProcessor.from_pretrained(source, **{k: v for k, v in kw.items() if k != "use_safetensors"})
        self._model = AutoModelForImageTextToText.from_pretrained(source, dtype=self._dtype, **kw)
        self._model = self._model.to(self._device).eval()

    def _warmup(self) -> None:
        self.describe(Image.new("RGB", (64, 64), (127, 127, 127)), max_new_tokens=2, seed=0)

    @operation
    def describe(self, image: Image.Image, instruction: str | None = None, *, max_new_tokens: int | None = None,
                 seed: int | None = None) -> str:
        """What the vision model says about one image; the same seed gives the same text."""
        return self.answer(image, instruction, max_new_tokens=max_new_tokens, seed=seed).text

    @operation
    def answer(self, image: Image.Image, instruction: str | None = None, *, max_new_tokens: int | None = None,
               seed: int | None = None) -> Description:
        """describe(), with why generation stopped and how many tokens went in (image tokens included) and out."""
        if not isinstance(image, Image.Image):
            raise DescriberInputError(
                f"image is a {type(image).__name__}, not a PIL image; decode it first (storage intake does)",
                field="image",
            )
        instruction = DEFAULT_INSTRUCTION if instruction is None else instruction
        if not isinstance(instruction, str) or not instruction.strip():
            raise DescriberInputError("instruction is empty; leave it out or ask something", field="instruction")
        if len(instruction) > self.config.max_instruction_chars:
            raise DescriberInputError(
                f"instruction has {len(instruction)} characters; the limit is {self.config.max_instruction_chars}",
                field="instruction",
            )
        max_new = self.config.max_new_tokens if max_new_tokens is None else max_new_tokens
        if not 1 <= max_new <= self.config.max_new_tokens_limit:
            raise DescriberInputError(
                f"max_new_tokens={max_new} is out of range; use 1..{self.config.max_new_tokens_limit}",
                field="max_new_tokens",
            )
        self.load()
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
        prompt = self._processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = self._processor(images=[rgb], text=[prompt], return_tensors="pt").to(self._device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self._dtype)
        tok = self._processor.tokenizer
        with self._lock_generate, torch.inference_mode():
            _seed(seed)
            sampling = {"do_sample": True, "temperature": self.config.temperature} if self.config.temperature > 0 \
                else {"do_sample": False}
            out = self._model.generate(**inputs, max_new_tokens=max_new, **sampling,
                                       min_new_tokens=min(self.config.min_new_tokens, max_new),
                                       pad_token_id=tok.pad_token_id)
        n_prompt = int(inputs["input_ids"].shape[1])
        new = out[0, n_prompt:]
        hit_eos = bool(len(new)) and int(new[-1]) in _eos_ids(self._model, tok)
        return Description(
            text=tok.decode(new, skip_special_tokens=True).strip(),
            finish_reason="length" if len(new) >= max_new and not hit_eos else "stop",
            prompt_tokens=n_prompt, completion_tokens=int(len(new)),
        )

    def check_health(self) -> None:
        super().check_health()
        if self._model is None:
            raise ModelUnavailable("describer has no model")


def _eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = ids if isinstance(ids, list) else [ids]
    out = {int(i) for i in ids if i is not None}
    if tokenizer.eos_token_id is not None:
        out.add(int(tokenizer.eos_token_id))
    return out
