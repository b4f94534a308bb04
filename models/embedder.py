"""Embedder: image and text vectors of one CLIP-family checkpoint, L2-normalised, one forward pass per batch.

Three families, told apart by the checkpoint's config.json (`model_type`), each read the way it was trained:

| family | text tokens | vectors | a pair's score |
|---|---|---|---|
| CLIP (`clip`) | BPE, English, up to 77, padded to the longest | `projection_dim` | cosine; softmax over candidates x logit_scale |
| Chinese-CLIP (`chinese_clip`) | WordPiece (CJK characters + English pieces), up to 52 | `projection_dim` | as CLIP |
| SigLIP / SigLIP 2 (`siglip`) | SentencePiece; lower-cased, exactly 64, right-padded | the towers' width | sigmoid(logit_scale x cosine + logit_bias): each pair on its own |

The gallery ranks by cosine for every family: SigLIP's sigmoid is monotonic in it, so the order is the same.
"""

from __future__ import annotations

import threading
from typing import ClassVar, Sequence

import numpy as np
import torch
from PIL import Image

from .base import ModelRole, operation
from .configs import EMBEDDER_FAMILIES, EmbedderConfig, vector_shape
from .errors import EmbedderInputError, ModelUnavailable
from .vector import Vector


class Embedder(ModelRole):
    role: ClassVar[str] = "embedder"

    def __init__(self, config: EmbedderConfig):
        super().__init__(config)
        self.config: EmbedderConfig = config
        self._model = None
        self._processor = None
        self._dim = 0
        # A fast tokenizer keeps its padding and truncation settings on the one Rust object it calls, and
        # the replica tokenizes in several worker threads at once (padded batches, unpadded token counts).
        # Under a flood of /v1/embeddings a padded batch once came out unpadded (a 500: "expected sequence
        # of length 9 at dim 1 (got 10)"); not reproduced in a unit test. One tokenizer call at a time.
        self._tok_lock = threading.Lock()
        self._image_size = 224
        self._family = ""
        self._multilingual = False
        self._context = 77

    def _load(self, source: str) -> None:
        from transformers import AutoConfig, AutoModel, AutoProcessor

        kw = self._pretrained_kwargs()
        model_type = AutoConfig.from_pretrained(source, **{k: v for k, v in kw.items() if k != "use_safetensors"}).model_type
        if model_type not in EMBEDDER_FAMILIES:
            hint = (" (a SigLIP 2 NaFlex checkpoint: use a fixed-resolution one, e.g. google/siglip2-base-patch16-224)"
                    if model_type == "siglip2" else "")
            raise ValueError(f"{model_type!r} is not an embedding family this role serves{hint}; "
                             f"choose a {', '.join(sorted(EMBEDDER_FAMILIES))} checkpoint")
        model = AutoModel.from_pretrained(source, dtype=self._dtype, **kw)
        self._model = model.to(self._device).eval()
        self._processor = AutoProcessor.from_pretrained(source, **{k: v for k, v in kw.items() if k != "use_safetensors"})
        self._family = EMBEDDER_FAMILIES[model_type]
        self._dim, self._image_size = vector_shape(model.config.to_dict())
        tok = self._processor.tokenizer
        # The text tower's context: what its position table holds, and no more than its tokenizer says.
        positions = int(model.config.text_config.max_position_embeddings)
        self._context = min(positions, int(tok.model_max_length)) if tok.model_max_length else positions
        if self.config.multilingual is not None:
            self._multilingual = self.config.multilingual
        else:
            # SigLIP 2 reads Gemma's multilingual vocabulary; SigLIP 1 (T5's English one) and CLIP do not.
            self._multilingual = self._family == "chinese_clip" or (
                self._family == "siglip" and "gemma" in type(tok).__name__.lower())

    def _warmup(self) -> None:
        self.embed_images([Image.new("RGB", (self._image_size, self._image_size), (127, 127, 127))])
        self.embed_texts(["warm-up"])

    @property
    def dim(self) -> int:
        self.load()
        return self._dim

    @property
    def family(self) -> str:
        """`clip`, `chinese_clip` or `siglip` (SigLIP 2's fixed-resolution checkpoints included)."""
        self.load()
        return self._family

    @property
    def multilingual(self) -> bool:
        """Whether a Chinese query can be embedded as it is (no translation to English first)."""
        self.load()
        return self._multilingual

    def facts(self) -> dict:
        return {"family": self._family, "multilingual": self._multilingual, "dim": self._dim,
                # The ingress refuses an empty, too long or too large input itself, with no round trip (issue 28).
                "limits": {"max_text_chars": self.config.max_text_chars, "max_batch": self.config.max_batch}}

    @operation
    def dimension(self) -> int:
        """Values in each vector (a new gallery table's width)."""
        return self.dim

    @operation
    def image_size(self) -> int:
        """Side of the square the image tower sees; decoders can downscale to it on load."""
        self.load()
        return self._image_size

    @operation(batch="image_vectors")
    def image_vector(self, image: Image.Image) -> Vector:
        return self.image_vectors([image])[0]

    def image_vectors(self, images: Sequence[Image.Image]) -> list[Vector]:
        """Each image's unit vector, tagged with the model that made it (one forward pass for all)."""
        return self._tagged(self.embed_images(images), images)

    @operation(batch="text_vectors")
    def text_vector(self, text: str) -> Vector:
        return self.text_vectors([text])[0]

    def text_vectors(self, texts: Sequence[str]) -> list[Vector]:
        """Each text's unit vector, tagged with the model that made it (one forward pass for all)."""
        return self._tagged(self.embed_texts(texts), texts)

    def _tagged(self, vectors: np.ndarray, inputs: Sequence) -> list[Vector]:
        if len(vectors) != len(inputs):
            raise RuntimeError(f"embedder returned {len(vectors)} vectors for {len(inputs)} inputs")
        return [Vector(self.model_id, v) for v in vectors]

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

    @operation
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
        enc = self._tokenize(texts, return_tensors="pt")
        with torch.inference_mode():
            out = self._model.get_text_features(**{k: v.to(self._device) for k, v in enc.items()})
        return _normalised(out)

    def _tokenize(self, texts: Sequence[str], **kw):
        """The text tower's input, as its family was trained: SigLIP reads lower-cased text padded to
        exactly its context and no attention mask (big_vision's way, and what makes a text's vector
        the same alone or in a batch); CLIP and Chinese-CLIP pad to the longest and mask the padding."""
        tok = self._processor.tokenizer
        with self._tok_lock:
            if self._family == "siglip":
                enc = tok([t.lower() for t in texts], padding="max_length", truncation=True,
                          max_length=self._context, **kw)
                return {"input_ids": enc["input_ids"]}
            return dict(tok(list(texts), padding=True, truncation=True, max_length=self._context, **kw))

    @operation
    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text is embedded from: special tokens included, cut at the model's context (SigLIP's
        padding, which is not the text's, not counted)."""
        self._check_batch(texts, "texts")
        self.load()
        tok = self._processor.tokenizer
        texts = [t.lower() for t in texts] if self._family == "siglip" else list(texts)
        with self._tok_lock:
            enc = tok(texts, truncation=True, max_length=self._context)
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
