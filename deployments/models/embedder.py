"""Embedder: CLIP-family image and text vectors, L2-normalised, one forward pass per batch."""

from __future__ import annotations

from typing import ClassVar, Sequence

import numpy as np
import torch
from PIL import Image

from .base import ModelRole
from .configs import EmbedderConfig
from .errors import EmbedderInputError, ModelUnavailable


class Embedder(ModelRole):
    role: ClassVar[str] = "embedder"

    def __init__(self, config: EmbedderConfig):
        super().__init__(config)
        self.config: EmbedderConfig = config
        self._model = None
        self._processor = None
        self._dim = 0
        self._image_size = 224

    def _load(self, source: str) -> None:
        from transformers import AutoModel, AutoProcessor

        kw = self._pretrained_kwargs()
        model = AutoModel.from_pretrained(source, dtype=self._dtype, **kw)
        if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
            raise ValueError(f"{type(model).__name__} has no get_image_features/get_text_features: not a CLIP-family model")
        self._model = model.to(self._device).eval()
        self._processor = AutoProcessor.from_pretrained(source, **{k: v for k, v in kw.items() if k != "use_safetensors"})
        cfg = model.config
        self._dim = int(getattr(cfg, "projection_dim", 0) or cfg.text_config.hidden_size)
        self._image_size = int(cfg.vision_config.image_size)

    def _warmup(self) -> None:
        self.embed_images([Image.new("RGB", (self._image_size, self._image_size), (127, 127, 127))])
        self.embed_texts(["warm-up"])

    @property
    def dim(self) -> int:
        self.load()
        return self._dim

    @property
    def image_size(self) -> int:
        """Side of the square the image tower sees; decoders can downscale to it on load."""
        self.load()
        return self._image_size

    # -- typed calls ------------------------------------------------------------------------------
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """float32 (n, dim), unit-norm rows, one forward pass for the whole list."""
        self._check_batch(images, "images")
        for i, img in enumerate(images):
            if not isinstance(img, Image.Image):
                raise EmbedderInputError(
                    f"images[{i}] is a {type(img).__name__}, not a PIL image; decode it first (storage intake does)",
                    field="images",
                )
        return self.embed_pixels(self.preprocess(images))

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The processor's pixel tensor for a batch (CPU work, separable from the forward pass)."""
        self.load()
        rgb = [img if img.mode == "RGB" else img.convert("RGB") for img in images]
        return self._processor(images=rgb, return_tensors="pt")["pixel_values"]

    def embed_pixels(self, pixel_values: torch.Tensor) -> np.ndarray:
        self.load()
        with torch.inference_mode():
            out = self._model.get_image_features(pixel_values=pixel_values.to(self._device, self._dtype))
        return _normalised(out)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """float32 (n, dim), unit-norm rows; text longer than the model's context is truncated."""
        self._check_batch(texts, "texts")
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise EmbedderInputError(f"texts[{i}] is empty; send at least one non-blank character", field="texts")
            if len(text) > self.config.max_text_chars:
                raise EmbedderInputError(
                    f"texts[{i}] has {len(text)} characters; the limit is {self.config.max_text_chars}", field="texts"
                )
        self.load()
        tok = self._processor.tokenizer
        enc = tok(list(texts), padding=True, truncation=True, max_length=tok.model_max_length, return_tensors="pt")
        with torch.inference_mode():
            out = self._model.get_text_features(**{k: v.to(self._device) for k, v in enc.items()})
        return _normalised(out)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """CLIP tokens each text is embedded from: start/end tokens included, cut at the model's context."""
        self._check_batch(texts, "texts")
        self.load()
        tok = self._processor.tokenizer
        enc = tok(list(texts), truncation=True, max_length=tok.model_max_length)
        return [len(ids) for ids in enc["input_ids"]]

    def _check_batch(self, items, name: str) -> None:
        if not isinstance(items, (list, tuple)) or not items:
            raise EmbedderInputError(f"{name} must be a non-empty list", field=name)
        if len(items) > self.config.max_batch:
            raise EmbedderInputError(
                f"{name} has {len(items)} items; the limit per call is {self.config.max_batch}: split the batch",
                field=name,
            )

    def check_health(self) -> None:
        super().check_health()
        if self._dim <= 0:
            raise ModelUnavailable("embedder has no output dimension")


def _normalised(out) -> np.ndarray:
    # transformers 5 returns an output object whose pooler_output is the (unnormalised) projection.
    feats = out if isinstance(out, torch.Tensor) else out.pooler_output
    feats = torch.nn.functional.normalize(feats.float(), dim=-1)
    return feats.cpu().numpy().astype(np.float32, copy=False)
