"""What the models make of texts: query vectors (cached), translations and prompts (degrading to the
original when the Writer fails), Chinese post texts, and embeddings for the OpenAI surface."""

from __future__ import annotations

import asyncio

import numpy as np

from storage.errors import InvalidInput

from .cache import AnswerCache
from .context import Verbs, brief, callers_mistake, is_english, log
from .models import Vector


class Texts(Verbs):
    async def text_vector(self, text: str, *, user: str) -> Vector:
        """A text's vector and its model, cached per user (README, "Caches"). The cache holds the configured
        model's vectors only: one that a replica of another model made (a model switch rolling out) is used
        once and not kept."""
        model = (await self.models.info("embedder"))["model_id"]

        async def compute():
            return await self.models.call("embedder", "text_vector", text)

        found = await self.ctx.cached("embed_text", text, compute, user=user, timeout=self.policy.timeouts.search_s,
                                   keep=lambda v: isinstance(v, Vector) and v.model == model)
        return found if isinstance(found, Vector) else Vector(model, np.asarray(found, np.float32))

    async def english(self, text: str, request_id: str = "-", *, user: str) -> tuple[str, bool]:
        """Search text in English: (english, degraded). A failing Writer degrades, never fails.

        A failed translation is remembered for `caches.failure_ttl_s` like an answer is for `ttl_s`:
        the same query then searches its original text at once instead of waiting on the Writer again.
        """
        if is_english(text):
            return text, False
        failed_key = AnswerCache.key("translate", (await self.models.info("writer"))["model_id"], text, user=user)
        if failed_key in self.ctx.failed:
            return text, True
        try:
            return await self.ctx.cached("translate", text, lambda: self.models.call("writer", "to_english", text),
                                      user=user, timeout=self.policy.timeouts.writer_s), False
        except Exception as exc:  # noqa: BLE001 - any Writer trouble means: search with the original text
            if callers_mistake(exc):
                raise
            self.ctx.failed[failed_key] = True
            log.warning("request %s: the writer could not translate a search query (%s); searching the original "
                        "text, and so for the next %g s", request_id, self._why(exc), self.ctx.failed.ttl)
            return text, True

    def _why(self, exc: BaseException) -> str:
        """What went wrong with a Writer call, for the log line of a degraded answer."""
        if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            return f"no answer within the Writer's {self.policy.timeouts.writer_s:g} s (timeouts.writer_s)"
        return brief(exc)

    async def enhance(self, text: str, request_id: str = "-", *, user: str, checked: bool = False,
                      instead: str = "answering with the original text") -> tuple[str, bool]:
        """A richer English prompt: (prompt, degraded). A failing Writer degrades to the original text;
        `instead` says in the log line what the caller does with it. `checked`: the caller had the content
        policy check the text already (a generation does, before anything runs)."""
        if not checked:
            await self.ctx.guard.check(text, stage="prompt", field="text")  # before the Writer runs
        try:
            used = await self.ctx.cached("enhance", text, lambda: self.models.call("writer", "enhance_prompt", text),
                                      user=user, timeout=self.policy.timeouts.writer_s)
        except Exception as exc:  # noqa: BLE001 - the original text is the fallback
            if callers_mistake(exc):
                raise
            log.warning("request %s: prompt enhancement failed (%s); %s", request_id, self._why(exc), instead)
            return text, True
        await self.ctx.guard.check(used, stage="enhanced")  # what the Writer made of it, before it is used
        return used, False

    async def post_text(self, description: str, request_id: str = "-") -> tuple[str, bool]:
        """The Chinese post text for a description: (text, degraded); the description itself is the fallback."""
        try:
            post = await asyncio.wait_for(self.models.call("writer", "post_text", description),
                                          timeout=self.policy.timeouts.writer_s)
        except Exception as exc:  # noqa: BLE001 - the text itself is the fallback, flagged degraded
            if callers_mistake(exc):
                raise
            log.warning("request %s: the post text failed (%s); answering with the description itself", request_id,
                        self._why(exc))
            return description, True
        await self.ctx.guard.check(post, stage="post_text")  # what the Writer wrote, before it is sent
        return post, False

    async def embed(self, texts: list[str], *, dimensions: int | None, user: str) -> tuple[list[int], np.ndarray]:
        """Vectors of texts with their token counts; one text is batched with concurrent callers and cached."""
        if dimensions is not None:
            dim = await self.models.call("embedder", "dimension")
            if dimensions != dim:
                raise InvalidInput(f"dimensions={dimensions}: this model's vectors have {dim}; leave it out or "
                                   f"send {dim}", field="dimensions")

        async def run() -> tuple[list[int], np.ndarray]:
            # Counting first also refuses an oversized list before any forward pass.
            counts = await self.models.call("embedder", "count_tokens", texts)
            if len(texts) == 1:
                return counts, np.asarray([(await self.text_vector(texts[0], user=user)).values])
            return counts, await self.models.call("embedder", "embed_texts", texts)

        return await self.deadline(run(), self.policy.timeouts.search_s, "embedding")
