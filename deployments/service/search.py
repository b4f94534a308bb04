"""Search in Chinese or English, and by image: the query's vector, then the caller's gallery ranked."""

from __future__ import annotations

import asyncio

import numpy as np

from .context import SearchAnswer, Verbs
from .models import Vector
from .photos import Photos
from .safety import shown
from .texts import Texts


class Search(Verbs):
    def __init__(self, ctx, texts: Texts, photos: Photos):
        super().__init__(ctx)
        self.texts, self.photos = texts, photos
        self._side: int | None = None  # the image tower's side: asked once per process, not on every search

    async def query_vector(self, q: str, request_id: str = "-", *,
                           user: str) -> tuple[Vector, str, str | None, bool]:
        """A search text's vector: (vector, what was embedded, the English translation used or None, degraded).

        A bilingual embedder (SigLIP 2, Chinese-CLIP) embeds the query as it is: no LLM call. With query
        expansion on (`enhance_search`, off by default for these), a non-English query's translation is
        embedded too and the two unit vectors are averaged: the translation adds to the query, never
        replaces it. An English-only embedder (CLIP) searches the translation, as it cannot read Chinese;
        a failed translation there searches the original text and says `degraded`.
        """
        multilingual = bool((await self.models.info("embedder")).get("multilingual"))
        expand = self.policy.enhance_search if self.policy.enhance_search is not None else not multilingual
        translated, degraded = (await self.texts.english(q, request_id, user=user)) if expand else (q, False)
        english = translated if translated != q else None
        if not multilingual:
            return await self.texts.text_vector(translated, user=user), translated, english, degraded
        if english is None:
            return await self.texts.text_vector(q, user=user), q, None, degraded
        direct, extra = await asyncio.gather(self.texts.text_vector(q, user=user),
                                            self.texts.text_vector(english, user=user))
        if extra.model != direct.model:  # two models answered (a switch rolling out): never mix them
            return direct, q, None, False
        fused = np.asarray(direct.values, np.float32) + np.asarray(extra.values, np.float32)
        return Vector(direct.model, fused / max(float(np.linalg.norm(fused)), 1e-12)), q, english, False

    async def text(self, user: str, q: str, k: int, request_id: str = "-", *, safety: str = "any",
                   most: int = 100) -> SearchAnswer:
        """Text search in Chinese or English: vector hits fused with full-text hits on the user's texts. With a
        `safety` filter, up to `most` hits are ranked and the first k that pass are answered (fewer when the
        best `most` hold fewer)."""
        async def run():
            vector, embedded, english, degraded = await self.query_vector(q, request_id, user=user)
            hits = await (await self.library(vector)).search(user, vector.values, _depth(k, safety, most), text=q)
            hits = [h for h in hits if shown(h, safety)][:k]
            return SearchAnswer(text=q, english=english, hits=hits, degraded=degraded, embedded=embedded)

        return await self.deadline(run(), self.policy.timeouts.search_s, "search")

    async def by_image(self, user: str, data: bytes, k: int, *, filename: str | None,
                       content_type: str | None, safety: str = "any", most: int = 100) -> SearchAnswer:
        # Decoded at the side the image tower reads (a JPEG at a reduced scale), so a 12-megapixel query
        # photo is made small here, once, instead of travelling whole to the Embedder's replica.
        if self._side is None:
            self._side = await self.models.call("embedder", "image_size")
        image = await self.photos.decode_image(data, filename=filename, content_type=content_type,
                                               model_size=self._side)
        vector = await self.models.call("embedder", "image_vector", image)
        hits = await (await self.library(vector)).search(user, vector.values, _depth(k, safety, most))
        return SearchAnswer(text=None, english=None, hits=[h for h in hits if shown(h, safety)][:k])


def _depth(k: int, safety: str, most: int) -> int:
    """How many hits to rank for k answers: k, or with a safety filter four times as many (at most `most`)."""
    return k if safety == "any" else max(k, min(4 * k, most))
