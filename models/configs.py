"""The roles' typed configs, importable without torch: the ingress, the config validation and the
ingestion tasks need them, and none of those should pay for importing a deep-learning stack."""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import PainterInputError

# The file the kit writes into every stand-in's folder: a model loaded from such a folder answers
# with `random_weights: true`.
MARKER = "atelier_stand_in.json"
_WXH = re.compile(r"^\s*(\d{1,5})\s*[xX×]\s*(\d{1,5})\s*$")


class ModelConfig(BaseModel):
    """Where a role's checkpoint comes from and how it runs."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(..., description="Hub id (org/name) or local folder of a Hugging Face-format checkpoint.")
    revision: str | None = Field(None, description="Hub revision (commit, tag or branch) to pin; ignored for folders.")
    served_name: str | None = Field(
        None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
        description="The name users see (/v1/models, answers, errors). Default: the hub id, or "
                    "'atelier-<role>' for a local folder, whose path is never shown.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' picks cuda when present.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="'auto' is bfloat16 on a GPU and float32 on the CPU."
    )
    num_threads: int | None = Field(
        None, ge=1, description="torch CPU threads for this process; set it to the replica's num_cpus share."
    )


class EmbedderConfig(ModelConfig):
    model: str = Field("google/siglip2-base-patch16-224",
                       description="A CLIP, Chinese-CLIP or SigLIP (2) checkpoint (hub id or folder); its config.json "
                                   "names the family.")
    max_batch: int = Field(256, ge=1, description="Most images or texts in one call; bounds a replica's memory.")
    max_text_chars: int = Field(1000, ge=1, description="Longest text accepted; the towers truncate to their context.")
    multilingual: bool | None = Field(
        None, description="Whether the text tower reads Chinese as well as English (then a Chinese query is embedded "
                          "as it is, with no translation). Default: from the family (Chinese-CLIP and SigLIP 2 yes, "
                          "CLIP and SigLIP 1 no).")


# The embedding families the Embedder serves, by the `model_type` of their config.json. SigLIP 2's
# fixed-resolution checkpoints load as `siglip` (with a Gemma tokenizer); `siglip2` is the NaFlex kind.
EMBEDDER_FAMILIES = {"clip": "clip", "chinese_clip": "chinese_clip", "siglip": "siglip"}


def vector_shape(config: dict) -> tuple[int, int]:
    """(vector dimension, image side) of an embedding checkpoint from its config.json, without torch:
    CLIP and Chinese-CLIP project to `projection_dim`; SigLIP's vectors are its towers' width (the text
    head's `projection_size`)."""
    text = config.get("text_config") or {}
    dim = config.get("projection_dim") or text.get("projection_size") or text.get("hidden_size")
    return int(dim), int(config["vision_config"]["image_size"])


def crops_centre(config: dict) -> bool:
    """Whether the family's image processor takes the centre square (CLIP: shortest side to the tower's
    side, then a centre crop) or resizes the whole picture to the square (Chinese-CLIP, SigLIP)."""
    return config.get("model_type") == "clip"



class WriterConfig(ModelConfig):
    model: str = Field("Qwen/Qwen2.5-1.5B-Instruct", description="Causal LLM with a chat template (hub id or folder).")
    max_input_chars: int = Field(4000, ge=1, description="Longest text accepted from a caller, per message.")
    max_input_tokens: int = Field(2048, ge=16, description="Longest prompt, after the chat template, in tokens.")
    max_new_tokens: int = Field(256, ge=1, description="Default answer length, in tokens.")
    max_new_tokens_limit: int = Field(1024, ge=1, description="Most tokens a caller may ask for.")
    enhance_max_new_tokens: int = Field(120, ge=1, description="Answer length for prompt enhancement.")
    translate_max_new_tokens: int = Field(48, ge=1, description="Answer length for a translated search query.")
    post_max_new_tokens: int = Field(160, ge=1, description="Answer length for a Chinese post text.")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="Default sampling temperature; 0 is greedy.")
    top_p: float = Field(0.8, gt=0.0, le=1.0, description="Default nucleus sampling mass.")
    min_new_tokens: int = Field(
        0, ge=0, description="Tokens to generate before end-of-text is allowed; random-weight tests need a few."
    )



class PainterConfig(ModelConfig):
    model: str = Field("black-forest-labs/FLUX.1-schnell", description="FLUX checkpoint in diffusers format.")
    sizes: dict[str, str] = Field(
        default_factory=lambda: {"small": "512x512", "medium": "768x768", "large": "1024x1024"},
        description="Size presets, name -> WxH; each side a multiple of 16.",
    )
    default_size: str = Field("small", description="Preset used when a caller names none.")
    min_side: int = Field(64, ge=16, description="Smallest side accepted, in pixels.")
    max_side: int = Field(2048, ge=16, description="Largest side accepted, in pixels.")
    default_steps: int = Field(4, ge=1, description="Denoising steps by default (schnell is distilled for 1-4).")
    max_steps: int = Field(50, ge=1, description="Most denoising steps a caller may ask for.")
    default_guidance: float = Field(0.0, ge=0.0, description="Guidance scale by default (schnell ignores it).")
    max_guidance: float = Field(20.0, ge=0.0, description="Largest guidance scale accepted.")
    max_prompt_chars: int = Field(2000, ge=1, description="Longest prompt accepted, in characters.")
    max_sequence_length: int = Field(256, ge=16, le=512, description="T5 tokens the prompt is encoded to.")

    @field_validator("sizes")
    @classmethod
    def _sizes_valid(cls, sizes: dict[str, str]) -> dict[str, str]:
        for name, value in sizes.items():
            m = _WXH.match(value)
            if not m or int(m[1]) % 16 or int(m[2]) % 16:
                raise ValueError(f"size preset {name}={value!r} must be WxH with both sides multiples of 16")
        return sizes

    # What a caller's request is checked against: the Painter's `info` carries them, so that the ingress
    # refuses a bad size or step count itself, with no round trip to a Painter replica (issue 28).
    LIMITS: ClassVar[tuple[str, ...]] = ("sizes", "default_size", "min_side", "max_side", "default_steps", "max_steps", "default_guidance",
              "max_guidance", "max_prompt_chars")

    def limits(self) -> dict:
        return self.model_dump(include=set(self.LIMITS), mode="json")

    def parse_size(self, size: str | None) -> tuple[int, int]:
        """A preset name or 'WxH' -> (width, height), checked against the bounds and the 16-pixel grid."""
        size = self.default_size if size is None else size
        if not isinstance(size, str):
            raise PainterInputError("size must be a preset name or 'WxH'", field="size")
        m = _WXH.match(self.sizes.get(size, size))
        if not m:
            raise PainterInputError(
                f"size {size!r} is neither a preset ({', '.join(self.sizes)}) nor WxH like 512x768", field="size")
        w, h = int(m[1]), int(m[2])
        for name, v in (("width", w), ("height", h)):
            if not self.min_side <= v <= self.max_side:
                raise PainterInputError(f"{name} {v} is out of range; use {self.min_side}..{self.max_side} pixels",
                                        field="size")
            if v % 16:
                down, up = v - v % 16, v - v % 16 + 16
                raise PainterInputError(
                    f"{name} {v} is not a multiple of 16 (FLUX packs 2x2 latents of an 8x VAE); use {down} or {up}",
                    field="size")
        return w, h

    def check(self, prompt: str, size: str | None, steps: int | None, guidance: float | None,
              seed: int | None) -> tuple[int, int, int, float]:
        """Everything a paint() call needs, checked cheaply before any model work: (w, h, steps, guidance)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise PainterInputError("prompt is empty; describe the picture in a few words", field="prompt")
        if len(prompt) > self.max_prompt_chars:
            raise PainterInputError(f"prompt has {len(prompt)} characters; the limit is {self.max_prompt_chars}",
                                    field="prompt")
        w, h = self.parse_size(size)
        steps = self.default_steps if steps is None else steps
        if not isinstance(steps, int) or not 1 <= steps <= self.max_steps:
            raise PainterInputError(f"steps={steps} is out of range; use 1..{self.max_steps}", field="steps")
        guidance = self.default_guidance if guidance is None else guidance
        if not 0.0 <= float(guidance) <= self.max_guidance:
            raise PainterInputError(f"guidance={guidance} is out of range; use 0..{self.max_guidance}",
                                    field="guidance")
        if seed is not None and (not isinstance(seed, int) or not 0 <= seed < 2**63):
            raise PainterInputError("seed must be an integer in 0..2**63-1", field="seed")
        return w, h, steps, float(guidance)



class DescriberConfig(ModelConfig):
    model: str = Field("OpenGVLab/InternVL3-1B-hf", description="Image-text-to-text checkpoint (hub id or folder).")
    max_new_tokens: int = Field(160, ge=1, description="Default description length, in tokens.")
    max_new_tokens_limit: int = Field(512, ge=1, description="Most tokens a caller may ask for.")
    max_instruction_chars: int = Field(2000, ge=1, description="Longest instruction accepted.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 decodes greedily; above 0 samples, seeded per call.")
    min_new_tokens: int = Field(
        0, ge=0, description="Tokens to generate before end-of-text is allowed; random-weight tests need a few."
    )



# The Guard's categories of unsafe content, in the order of Qwen3Guard-Gen's safety policy (models/guard.py
# maps each to its name there). Here, not in models/guard.py, so that the ingress reads them without torch.
GUARD_CATEGORIES: tuple[str, ...] = (
    "violent", "illegal", "sexual", "pii", "self_harm", "unethical", "political", "copyright", "jailbreak")


class GuardConfig(ModelConfig):
    model: str = Field("Qwen/Qwen3Guard-Gen-0.6B",
                       description="Qwen3Guard-Gen checkpoint (hub id or folder): a causal LLM whose chat template "
                                   "asks for a 'Safety: ...' and 'Categories: ...' answer.")
    image_model: str | None = Field(
        "Falconsai/nsfw_image_detection",
        description="Image classification checkpoint (hub id or folder); null: the Guard checks no images.")
    image_revision: str | None = Field(None, description="Hub revision of image_model to pin; ignored for folders.")
    image_served_name: str | None = Field(
        None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
        description="The image model's name in verdicts. Default: its hub id, or 'atelier-guard-image' for a "
                    "local folder, whose path is never shown.")
    image_labels: dict[str, str] = Field(
        default_factory=lambda: {"nsfw": "sexual"},
        description="Classifier label -> Guard category it counts as unsafe in; labels not named are safe ones.")
    max_text_chars: int = Field(8000, ge=1, description="Longest text accepted, in characters.")
    max_input_tokens: int = Field(
        2048, ge=64, description="Longest prompt, chat template included, in tokens; a longer text loses its start.")
    max_batch: int = Field(16, ge=1, description="Texts or images in one forward pass; a longer list is chunked.")

    @field_validator("image_labels")
    @classmethod
    def _labels_name_categories(cls, labels: dict[str, str]) -> dict[str, str]:
        for label, category in labels.items():
            if category not in GUARD_CATEGORIES:
                raise ValueError(f"image_labels[{label!r}] = {category!r} is not a Guard category; "
                                 f"choose from {', '.join(GUARD_CATEGORIES)}")
        return labels
