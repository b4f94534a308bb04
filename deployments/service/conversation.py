"""What the models say about a picture or in a conversation: describe-then-write (the vision model's
description, then the Writer's Chinese post text) and the OpenAI surface's chats, text or vision."""

from __future__ import annotations

import asyncio
import time

from PIL import Image

from models.errors import ModelError
from storage.errors import AtelierError, NotFound, Unavailable

from .context import ChatAnswer, Described, Verbs, brief, callers_mistake, log


class Conversation(Verbs):
    async def describe(self, user: str, image: Image.Image, *, img_id: str | None, instruction: str | None,
                       request_id: str = "-") -> Described:
        """Describe-then-write: the vision model's description, then the Writer's Chinese post text;
        with an img_id both are saved on the caller's row (`description`, `post_text`), never over its caption."""
        async def run():
            try:
                description = await self.models.call("describer", "describe", image, instruction)
            except Exception as exc:  # noqa: BLE001 - a failing vision model is a 503 of this route only
                if callers_mistake(exc):
                    raise
                log.warning("request %s: describer failed (%s)", request_id, brief(exc))
                raise Unavailable("the vision model cannot answer right now; retry shortly",
                                  code="describer_unavailable", retry_after=self.policy.retry_after_s) from None
            try:
                post = await asyncio.wait_for(self.models.call("writer", "post_text", description),
                                              timeout=self.policy.timeouts.writer_s)
                return description, post, False
            except Exception as exc:  # noqa: BLE001 - the Writer's input came from us; the description still stands
                log.warning("request %s: post text failed (%s)", request_id, brief(exc))
                return description, "", True

        description, post, degraded = await self.deadline(run(), self.policy.timeouts.describe_s,
                                                          "describing the image")
        # What the models wrote, checked before it is saved or sent.
        await self.ctx.guard.check(description, stage="description")
        await self.ctx.guard.check(post, stage="post_text")
        if img_id is not None:
            # The user's caption stays theirs: the model's texts go to their own columns.
            await (await self.library()).update(user, img_id, description=description, post_text=post)
        info_d, info_w = await self.models.info("describer"), await self.models.info("writer")
        return Described(description=description, post_text=post, img_id=img_id, degraded=degraded,
                         random_weights=bool(info_d["random_weights"] or info_w["random_weights"]))

    async def served_model(self, requested: str | None, *roles: str) -> dict:
        """The info of the role a request's `model` names (its public name or the role); None means the first role."""
        infos = [await self.models.info(role) for role in roles]
        if requested is None:
            return infos[0]
        for role, info in zip(roles, infos):
            if requested in (info["name"], role):
                return info
        names = ", ".join(repr(info["name"]) for info in infos)
        raise NotFound(f"model {requested!r} is not served here; use {names} or leave model out (GET /v1/models "
                       "lists them)", code="model_not_found", field="model")

    async def chat(self, messages: list[dict], *, stream: bool, **params) -> ChatAnswer:
        """A text conversation with the Writer. Streamed, the first piece is awaited before returning,
        so bad input is an error here and not a broken stream."""
        info = await self.models.info("writer")
        timeout = self.policy.timeouts.chat_s
        if not stream:
            result = await self.deadline(self.models.call("writer", "chat", messages, **params), timeout, "the writer")
            await self.ctx.guard.check(result.text, stage="answer")
            return ChatAnswer(info=info, result=result)
        deadline = time.monotonic() + timeout
        pieces = await self.models.stream("writer", "chat_stream", messages, **params)
        try:
            first = await self.deadline(pieces.next(), timeout, "the writer")
        except BaseException:
            pieces.cancel()
            raise
        return ChatAnswer(info=info, stream=pieces, first=first, max_new_tokens=params.get("max_new_tokens"),
                          deadline=deadline)

    async def count_chat_tokens(self, text: str) -> int:
        return await self.models.call("writer", "count_tokens", text)

    async def vision_answer(self, image: Image.Image, question: str | None, *, max_new_tokens: int | None,
                            seed: int | None, request_id: str = "-") -> ChatAnswer:
        """The vision model's answer to a question about one image (a chat with an image part)."""
        info = await self.models.info("describer")

        async def ask():
            try:
                return await self.models.call("describer", "answer", image, question, max_new_tokens=max_new_tokens,
                                             seed=seed)
            except (AtelierError, ModelError):
                raise
            except Exception as exc:  # noqa: BLE001 - a failing vision model is a 503, as on /api/describe
                log.warning("request %s: describer failed (%s)", request_id, brief(exc))
                raise Unavailable("the vision model cannot answer right now; retry shortly",
                                  code="describer_unavailable", retry_after=self.policy.retry_after_s) from None

        answer = await self.deadline(ask(), self.policy.timeouts.describe_s, "the describer")
        await self.ctx.guard.check(answer.text, stage="answer")
        return ChatAnswer(info=info, result=answer)
