"""Guard: content-safety verdicts on texts (a Qwen3Guard-Gen checkpoint) and images (an image classifier).

Verdicts are scored, not generated. Qwen3Guard-Gen answers "Safety: <label>\\nCategories: <names>"; the
Guard reads the same answer as probabilities in one left-padded prefill of the batch: the next-token
distribution after "Safety:" over the first tokens of the three labels, then, continuing the same KV cache
with " Unsafe\\nCategories:", the distribution over the first tokens of the category names. A real
checkpoint gives its real verdict, calibrated scores instead of one sampled word; a random-weight stand-in
gives well-formed random ones; and no answer can come back malformed.

A text over `max_text_chars` is refused; a text whose prompt is over `max_input_tokens` loses its start.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import ClassVar, Literal, Sequence

import torch
from PIL import Image

from .base import ModelRole, operation, public_name
from .configs import GUARD_CATEGORIES, GuardConfig
from .errors import GuardInputError, ModelNotFound, ModelUnavailable

CATEGORIES: tuple[str, ...] = GUARD_CATEGORIES
# Qwen3Guard-Gen's words: its answer's labels (in the order of Verdict's fields) and its categories' names.
LABELS = ("Safe", "Unsafe", "Controversial")
CATEGORY_NAMES = {"violent": "Violent", "illegal": "Non-violent Illegal Acts",
                  "sexual": "Sexual Content or Sexual Acts", "pii": "PII", "self_harm": "Suicide & Self-Harm",
                  "unethical": "Unethical Acts", "political": "Politically Sensitive Topics",
                  "copyright": "Copyright Violation", "jailbreak": "Jailbreak"}
# The answer is scored from before the space that follows the colon: Qwen's byte-level BPE writes
# "Safety: Safe" as "Safety", ":", " Safe", so the words are scored with their leading space, and a prompt
# ending in a bare space would ask the model about a token boundary it never saw in training.
ANSWER = "Safety:"
UNSAFE_THEN_CATEGORIES = " Unsafe\nCategories:"


@dataclass(frozen=True)
class Verdict:
    """One text's or image's verdict. `safe`, `unsafe` and `controversial` sum to 1 (rounded to 6 places, so
    they still do); `scores` holds every category, each the probability that the input is unsafe in it."""

    label: Literal["safe", "controversial", "unsafe"]
    safe: float
    unsafe: float
    controversial: float
    scores: dict[str, float]
    model: str
    kind: Literal["text", "image"]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class Guard(ModelRole):
    role: ClassVar[str] = "guard"

    def __init__(self, config: GuardConfig):
        super().__init__(config)
        self.config: GuardConfig = config
        self._model = None
        self._tokenizer = None
        self._image_model = None
        self._image_processor = None
        self._image_random = False
        self._label_ids: list[int] = []
        self._category_ids: list[int] = []
        self._continuation: list[int] = []
        # One forward pass at a time: a replica's memory is sized for one batch, and on the CPU two passes
        # in parallel only share the same cores.
        self._lock_forward = threading.Lock()

    # -- life cycle -------------------------------------------------------------------------------
    def _load(self, source: str) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kw = self._pretrained_kwargs()
        tok = AutoTokenizer.from_pretrained(source, **{k: v for k, v in kw.items() if k != "use_safetensors"})
        if not tok.chat_template:
            raise ValueError("the tokenizer has no chat template: use a Qwen3Guard-Gen checkpoint")
        self._tokenizer = tok
        self._label_ids = self._first_ids(LABELS, "safety labels")
        self._category_ids = self._first_ids([CATEGORY_NAMES[c] for c in CATEGORIES], "category names")
        self._continuation = tok(UNSAFE_THEN_CATEGORIES, add_special_tokens=False)["input_ids"]
        overhead = len(self._prompt_ids(""))
        if overhead + 16 > self.config.max_input_tokens:
            raise ModelNotFound(f"guard: the chat template alone is {overhead} tokens; max_input_tokens="
                                f"{self.config.max_input_tokens} leaves no room for a text: raise it")
        self._model = AutoModelForCausalLM.from_pretrained(source, dtype=self._dtype, **kw).to(self._device).eval()
        if self.config.image_model is not None:
            self._load_image_model()

    def _load_image_model(self) -> None:
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        name, revision = self.config.image_model, self.config.image_revision
        source = self._locate(name, revision, setting="image_model", stand_in="guard_image")
        kw = self._pretrained_kwargs(name, revision)
        try:
            self._image_processor = AutoImageProcessor.from_pretrained(
                source, **{k: v for k, v in kw.items() if k != "use_safetensors"})
            model = AutoModelForImageClassification.from_pretrained(source, dtype=self._dtype, **kw)
        except (OSError, ValueError) as exc:
            raise ModelNotFound(f"guard: could not load image_model {name!r} ({exc}); build the kit's guard_image "
                                "stand-in or set image_model to null") from exc
        known = set(model.config.id2label.values())
        # A mapping that names no label of this classifier would pass every image as safe, silently.
        unknown = sorted(set(self.config.image_labels) - known)
        if unknown:
            raise ModelNotFound(f"guard: image_labels names {', '.join(unknown)}, which image_model {name!r} "
                                f"does not have; its labels are {', '.join(sorted(known))}")
        self._image_model = model.to(self._device).eval()
        self._image_random = self._detect_random_weights(source)

    def _warmup(self) -> None:
        self.check_text("warm-up")
        if self._image_model is not None:
            self.check_image(Image.new("RGB", (64, 64), (127, 127, 127)))

    def check_health(self) -> None:
        super().check_health()
        if self._model is None:
            raise ModelUnavailable("guard has no text model")

    @property
    def random_weights(self) -> bool:
        """True when either checkpoint is a kit stand-in: then some verdicts are noise."""
        return self._random_weights or self._image_random

    @property
    def image_name(self) -> str | None:
        """The image model's public name (as public_name is the text model's), None without one."""
        if self.config.image_model is None:
            return None
        return public_name(self.config.image_served_name, self.config.image_model, "atelier-guard-image")

    def facts(self) -> dict:
        # The ingress refuses a too long text itself, with no round trip (issue 28).
        return {"categories": list(CATEGORIES), "image_check": self.config.image_model is not None,
                "image_model": self.image_name,
                "limits": {"max_text_chars": self.config.max_text_chars, "max_batch": self.config.max_batch}}

    # -- operations -------------------------------------------------------------------------------
    @operation(batch="check_texts")
    def check_text(self, text: str) -> Verdict:
        return self.check_texts([text])[0]

    def check_texts(self, texts: Sequence[str]) -> list[Verdict]:
        """Each text's verdict: one padded forward pass (and its cached continuation) per max_batch texts."""
        if not isinstance(texts, (list, tuple)):
            raise GuardInputError("texts must be a list of strings", field="input")
        for text in texts:
            if not isinstance(text, str):
                raise GuardInputError(f"input is a {type(text).__name__}, not a string", field="input")
            if len(text) > self.config.max_text_chars:
                raise GuardInputError(f"input has {len(text)} characters; the limit is {self.config.max_text_chars}",
                                      field="input")
        self.load()
        n = self.config.max_batch
        return [v for i in range(0, len(texts), n) for v in self._score_texts(texts[i:i + n])]

    @operation(batch="check_images")
    def check_image(self, image: Image.Image) -> Verdict:
        return self.check_images([image])[0]

    def check_images(self, images: Sequence[Image.Image]) -> list[Verdict]:
        """Each image's verdict from the classifier's softmax, max_batch images per forward pass."""
        if self.config.image_model is None:
            raise ModelUnavailable("this guard checks no images: its image_model is null")
        if not isinstance(images, (list, tuple)):
            raise GuardInputError("images must be a list of PIL images", field="input")
        for image in images:
            if not isinstance(image, Image.Image):
                raise GuardInputError(
                    f"image is a {type(image).__name__}, not a PIL image; decode it first (storage intake does)",
                    field="input")
        self.load()
        n = self.config.max_batch
        return [v for i in range(0, len(images), n) for v in self._score_images(images[i:i + n])]

    # -- internals --------------------------------------------------------------------------------
    def _first_ids(self, words: Sequence[str], what: str) -> list[int]:
        """The first token of each word as the answer writes it (after a space): two words sharing one
        could not be told apart by a single next-token distribution."""
        ids = [self._tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in words]
        if len(set(ids)) != len(ids):
            raise ModelNotFound(f"guard: the tokenizer gives two of the {what} ({', '.join(words)}) the same first "
                                "token, so they cannot be scored apart; use a Qwen3Guard-Gen checkpoint")
        return ids

    def _prompt_ids(self, text: str) -> list[int]:
        prompt = self._tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                     add_generation_prompt=True, tokenize=False)
        return self._tokenizer(prompt + ANSWER, add_special_tokens=False)["input_ids"]

    def _encode(self, text: str) -> list[int]:
        """The prompt's ids, the text cut from its START until they fit max_input_tokens. The end is kept:
        it is what a model given the text would act on (the question after a pasted document, the payload
        after a jailbreak's long preamble), and a guard that read only the start could be padded past."""
        ids = self._prompt_ids(text)
        while len(ids) > self.config.max_input_tokens:
            own = self._tokenizer(text, add_special_tokens=False)["input_ids"]
            # Re-tokenising a cut text can shift a token or two: the loop takes another bite if it must.
            text = self._tokenizer.decode(own[max(1, len(ids) - self.config.max_input_tokens):])
            ids = self._prompt_ids(text)
        return ids

    def _score_texts(self, texts: Sequence[str]) -> list[Verdict]:
        rows = [self._encode(t) for t in texts]
        width = max(len(r) for r in rows)
        pad = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else 0
        # Left padding puts every prompt's last token in the last column, where the answer is read.
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self._device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self._device)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        cont = torch.tensor([self._continuation] * len(rows), device=self._device)
        with self._lock_forward, torch.inference_mode():
            # Logits of the last position only: all of them would be (batch x prompt x 151,936 ids), gigabytes.
            out = self._model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                              logits_to_keep=1)
            labels = out.logits[:, -1, self._label_ids].float().softmax(-1)
            # Then the same rows read on as if each had answered "Unsafe": only the continuation's tokens
            # are computed, the prompt's keys and values come from the cache.
            mask2 = torch.cat([mask, torch.ones_like(cont)], 1)
            positions2 = positions[:, -1:] + 1 + torch.arange(cont.shape[1], device=self._device)
            out2 = self._model(input_ids=cont, attention_mask=mask2, position_ids=positions2, cache=out.cache,
                               use_cache=True, logits_to_keep=1)
            given_unsafe = out2.logits[:, -1, self._category_ids].float().softmax(-1)
        self._did_work(len(rows))
        verdicts = []
        for (safe, unsafe, controversial), cats in zip(labels.tolist(), given_unsafe.tolist()):
            flagged = unsafe + controversial
            scores = {c: flagged * p for c, p in zip(CATEGORIES, cats)}
            verdicts.append(_verdict(safe, unsafe, controversial, scores, self.public_name, "text"))
        return verdicts

    def _score_images(self, images: Sequence[Image.Image]) -> list[Verdict]:
        rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        pixels = self._image_processor(images=rgb, return_tensors="pt")["pixel_values"]
        with self._lock_forward, torch.inference_mode():
            logits = self._image_model(pixel_values=pixels.to(self._device, self._dtype)).logits
        probs = logits.float().softmax(-1).tolist()
        self._did_work(len(images))
        names = self._image_model.config.id2label
        verdicts = []
        for row in probs:
            scores = dict.fromkeys(CATEGORIES, 0.0)
            for i, p in enumerate(row):
                category = self.config.image_labels.get(names[i])
                if category is not None:
                    scores[category] += p
            unsafe = min(1.0, sum(p for i, p in enumerate(row) if names[i] in self.config.image_labels))
            # A classifier has no "controversial": an image is unsafe once the mapped labels hold half the mass.
            verdicts.append(_verdict(1.0 - unsafe, unsafe, 0.0, scores, self.image_name, "image",
                                     label="unsafe" if unsafe >= 0.5 else "safe"))
        return verdicts


def _verdict(safe: float, unsafe: float, controversial: float, scores: dict[str, float], model: str,
             kind: Literal["text", "image"], label: str | None = None) -> Verdict:
    if label is None:
        label = max((("safe", safe), ("controversial", controversial), ("unsafe", unsafe)), key=lambda kv: kv[1])[0]
    return Verdict(label=label, safe=round(safe, 6), unsafe=round(unsafe, 6), controversial=round(controversial, 6),
                   scores={c: round(min(1.0, max(0.0, scores[c])), 4) for c in CATEGORIES}, model=model, kind=kind)


class ImageGuard(Guard):
    """The Guard's image half alone: bulk ingestion's embedding actors check each new photo with it as they embed
    it, with no text model loaded (the prompt checks are the Guard deployment's)."""

    def _load_checkpoints(self) -> None:
        if self.config.image_model is None:
            raise ModelUnavailable("this guard checks no images: its image_model is null")
        self._load_image_model()

    def _warmup(self) -> None:
        self.check_image(Image.new("RGB", (64, 64), (127, 127, 127)))

    def check_health(self) -> None:
        if self._image_model is None:
            raise ModelUnavailable("the image guard is not loaded")

    def check_texts(self, texts: Sequence[str]) -> list[Verdict]:
        raise ModelUnavailable("the image guard has no text model: texts go to the Guard deployment")
