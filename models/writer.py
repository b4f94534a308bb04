"""Writer: an instruction LLM for prompt enhancement/translation, Chinese post texts and chat."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import ClassVar, Iterator, Literal, Sequence

import torch
from pydantic import BaseModel

from .base import CANCEL, ModelRole, operation
from .configs import WriterConfig
from .errors import Cancelled, ModelUnavailable, WriterInputError

ENHANCE_SYSTEM = (
    "You turn a short idea, written in any language, into one rich English prompt for a text-to-image "
    "model. Keep the idea's subject; add setting, lighting, composition, style and camera details. "
    "Answer with the prompt only, in English, in one paragraph."
)
TRANSLATE_SYSTEM = (
    "Translate the user's search query into short, plain English for an image search engine. "
    "Keep every object, place and colour it names. Answer with the English query only."
)
POST_SYSTEM = (
    "你是社交媒体文案助手。根据用户给出的图片描述，用简体中文写一段适合发朋友圈或小红书的文案："
    "语气自然亲切，可以加一两个表情符号和话题标签，不超过120字。只输出文案本身。"
)


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class ChatResult:
    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int


class Writer(ModelRole):
    role: ClassVar[str] = "writer"
    work_unit: ClassVar[str] = "tokens"

    def __init__(self, config: WriterConfig):
        super().__init__(config)
        self.config: WriterConfig = config
        self._model = None
        self._tokenizer = None
        # Seeding torch's global generator and sampling must not interleave between threads.
        self._generate_lock = threading.Lock()

    def facts(self) -> dict:
        # The ingress refuses an answer length over the limit itself, with no round trip (issue 28).
        return {"limits": {"max_new_tokens": self.config.max_new_tokens_limit}}

    def _load(self, source: str) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kw = self._pretrained_kwargs()
        self._tokenizer = AutoTokenizer.from_pretrained(source, **{k: v for k, v in kw.items() if k != "use_safetensors"})
        if not self._tokenizer.chat_template:
            raise ValueError("the tokenizer has no chat template: use an instruction-tuned checkpoint")
        self._model = AutoModelForCausalLM.from_pretrained(source, dtype=self._dtype, **kw).to(self._device).eval()

    def _warmup(self) -> None:
        self.chat([{"role": "user", "content": "hello"}], max_new_tokens=2, seed=0)

    # -- product calls ----------------------------------------------------------------------------
    @operation
    def enhance_prompt(self, text: str, *, seed: int | None = None) -> str:
        """A short idea in any language -> a rich English text-to-image prompt."""
        self._check_text(text, "text")
        result = self.chat(
            [{"role": "system", "content": ENHANCE_SYSTEM}, {"role": "user", "content": text}],
            max_new_tokens=self.config.enhance_max_new_tokens, seed=seed,
        )
        return self._usable(result.text)

    @operation
    def to_english(self, text: str, *, seed: int | None = None) -> str:
        """A search query in any language -> short English, as CLIP understands it."""
        self._check_text(text, "text")
        result = self.chat(
            [{"role": "system", "content": TRANSLATE_SYSTEM}, {"role": "user", "content": text}],
            max_new_tokens=self.config.translate_max_new_tokens, temperature=0.0, seed=seed,
        )
        return self._usable(result.text)

    @operation
    def post_text(self, description: str, *, seed: int | None = None) -> str:
        """An image description -> a Chinese social-media post text."""
        self._check_text(description, "description")
        result = self.chat(
            [{"role": "system", "content": POST_SYSTEM}, {"role": "user", "content": description}],
            max_new_tokens=self.config.post_max_new_tokens, seed=seed,
        )
        return self._usable(result.text)

    @operation
    def chat(self, messages: Sequence[dict | ChatMessage], *, max_new_tokens: int | None = None,
             temperature: float | None = None, top_p: float | None = None, seed: int | None = None,
             stream: bool = False) -> ChatResult | Iterator[str]:
        """Answer a conversation. With stream=True, yields text pieces as they are decoded."""
        inputs, gen_kwargs = self._prepare(messages, max_new_tokens, temperature, top_p)
        if stream:
            return self._stream(inputs, gen_kwargs, seed)
        with self._generate_lock, torch.inference_mode():
            _seed(seed)
            out = self._model.generate(**inputs, **gen_kwargs)
        _raise_if_cancelled(gen_kwargs)
        new = out[0, inputs["input_ids"].shape[1]:]
        text = self._tokenizer.decode(new, skip_special_tokens=True)
        hit_eos = bool(len(new)) and int(new[-1]) in self._eos_ids()
        finish = "length" if (len(new) >= gen_kwargs["max_new_tokens"] and not hit_eos) else "stop"
        return ChatResult(text=text, finish_reason=finish, prompt_tokens=int(inputs["input_ids"].shape[1]),
                          completion_tokens=int(len(new)))

    @operation(stream=True)
    def chat_stream(self, messages: Sequence[dict | ChatMessage], **params) -> Iterator[str]:
        """chat() as text pieces, as they are decoded."""
        return self.chat(messages, stream=True, **params)

    @operation
    def count_tokens(self, text: str) -> int:
        self.load()
        return len(self._tokenizer(text)["input_ids"])

    # -- internals --------------------------------------------------------------------------------
    def _prepare(self, messages, max_new_tokens, temperature, top_p):
        msgs = self._check_messages(messages)
        max_new = self.config.max_new_tokens if max_new_tokens is None else max_new_tokens
        if not 1 <= max_new <= self.config.max_new_tokens_limit:
            raise WriterInputError(
                f"max_new_tokens={max_new} is out of range; use 1..{self.config.max_new_tokens_limit}",
                field="max_new_tokens",
            )
        temperature = self.config.temperature if temperature is None else temperature
        if not 0.0 <= temperature <= 2.0:
            raise WriterInputError(f"temperature={temperature} is out of range; use 0..2", field="temperature")
        top_p = self.config.top_p if top_p is None else top_p
        if not 0.0 < top_p <= 1.0:
            raise WriterInputError(f"top_p={top_p} is out of range; use a value in (0, 1]", field="top_p")
        self.load()
        inputs = self._tokenizer.apply_chat_template(
            msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        n_prompt = int(inputs["input_ids"].shape[1])
        if n_prompt > self.config.max_input_tokens:
            raise WriterInputError(
                f"the conversation is {n_prompt} tokens long; the limit is {self.config.max_input_tokens}: "
                "shorten it", field="messages",
            )
        inputs = {k: v.to(self._device) for k, v in inputs.items()}
        gen = dict(max_new_tokens=max_new, min_new_tokens=min(self.config.min_new_tokens, max_new),
                   pad_token_id=self._tokenizer.pad_token_id, eos_token_id=sorted(self._eos_ids()),
                   stopping_criteria=_watch(self, CANCEL.get()))
        if temperature > 0:
            gen.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            gen.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return inputs, gen

    def _stream(self, inputs, gen_kwargs, seed) -> Iterator[str]:
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self._tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        errors: list[BaseException] = []

        def run():
            try:
                with self._generate_lock, torch.inference_mode():
                    _seed(seed)
                    self._model.generate(**inputs, **gen_kwargs, streamer=streamer)
            except BaseException as exc:  # surfaced to the consumer below
                errors.append(exc)
                streamer.end()

        thread = threading.Thread(target=run, name="writer-stream", daemon=True)
        thread.start()
        for piece in streamer:
            if piece:
                yield piece
        thread.join()
        if errors:
            raise errors[0]
        _raise_if_cancelled(gen_kwargs)

    def _eos_ids(self) -> set[int]:
        ids = self._model.generation_config.eos_token_id
        ids = ids if isinstance(ids, list) else [ids]
        ids = {int(i) for i in ids if i is not None}
        if self._tokenizer.eos_token_id is not None:
            ids.add(int(self._tokenizer.eos_token_id))
        return ids

    def _check_text(self, text, field: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise WriterInputError(f"{field} is empty; send at least one non-blank character", field=field)
        if len(text) > self.config.max_input_chars:
            raise WriterInputError(
                f"{field} has {len(text)} characters; the limit is {self.config.max_input_chars}", field=field
            )

    def _check_messages(self, messages) -> list[dict]:
        if not isinstance(messages, (list, tuple)) or not messages:
            raise WriterInputError("messages must be a non-empty list", field="messages")
        out = []
        for i, m in enumerate(messages):
            try:
                msg = m if isinstance(m, ChatMessage) else ChatMessage.model_validate(m)
            except Exception as exc:
                raise WriterInputError(
                    f"messages[{i}] must be {{role: system|user|assistant, content: str}}", field="messages"
                ) from exc
            self._check_text(msg.content, f"messages[{i}].content")
            out.append(msg.model_dump())
        return out

    def _usable(self, text: str) -> str:
        text = text.strip()
        if not text:
            # Callers fall back to the original text and report degraded=true.
            raise ModelUnavailable("the writer produced an empty answer", code="empty_model_output")
        return text


def _seed(seed: int | None) -> None:
    if seed is not None:
        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)


def _watch(writer: "Writer", cancel: threading.Event | None):
    """generate()'s stopping criteria: count each new token, and stop at the next one once the
    request is cancelled, so a replica whose caller went away is free again within a token."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Watch(StoppingCriteria):
        def __init__(self):
            self.cancel = cancel

        def __call__(self, input_ids, scores, **kwargs):
            writer._did_work(1)
            stop = cancel is not None and cancel.is_set()
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([Watch()])


def _raise_if_cancelled(gen_kwargs: dict) -> None:
    for criterion in gen_kwargs.get("stopping_criteria") or ():
        cancel = getattr(criterion, "cancel", None)
        if cancel is not None and cancel.is_set():
            raise Cancelled("the request was cancelled; generation stopped")

