"""The product service: every product operation once, as typed async methods, under the HTTP routers.

No FastAPI here. The `/api` routes, the OpenAI-compatible routes and the ingest routes only parse a
request, call one of these methods and shape the answer; what a search, an upload, a generation
or a description *does* (which models, in which order, what is kept, what degrades) lives here, so
both surfaces behave the same by construction.

The service runs over the model gateway (`models.call(role, op, ...)`: Serve handles in production, the
plain model classes in the fast test tier), a storage `Library`, the answer cache and the shared ledgers (stats, idempotency).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import numpy as np
from cachetools import TTLCache
from PIL import Image

from models.errors import ModelError, ModelInputError
from storage.errors import AtelierError, InvalidInput, NotFound, Unavailable

from .cache import AnswerCache
from .errors import RequestTimeout
from .models import ROLES, LocalModels, ServeModels, TextStream, Vector, model_calls, never_assigned

log = logging.getLogger("atelier.service")
_LATIN = re.compile(r"^[\x00-\x7F\u00C0-\u024F\u2018-\u201F]*$")


def is_english(text: str) -> bool:
    """Latin-script text goes to an English-only embedder as it is; anything else is translated by the Writer first."""
    return bool(_LATIN.match(text))


def brief(exc: BaseException) -> str:
    """One line about a failure: its type and first line. A Ray task error's text carries the whole
    remote traceback, which would turn every degraded request into a screen of log."""
    cause = getattr(exc, "cause", None) or exc
    first = (str(cause).strip().splitlines() or [""])[0][:200]
    return f"{type(cause).__name__}: {first}" if first else type(cause).__name__


def _callers_mistake(exc: BaseException) -> bool:
    """A 4xx from a model or storage: the caller must see it, never a silent fallback."""
    return isinstance(exc, (InvalidInput, ModelInputError))


@dataclass
class Policy:
    """The knobs of the product's behaviour: the ingress's live settings (IngressTuning)."""

    timeouts: Any
    retry_after_s: int = 2
    enhance_search: bool | None = None  # None: on for English-only embedders, off for bilingual ones
    failure_ttl_s: float = 30.0

    @classmethod
    def of(cls, tuning) -> "Policy":
        return cls(timeouts=tuning.timeouts, retry_after_s=tuning.retry_after_s,
                   enhance_search=tuning.enhance_search, failure_ttl_s=tuning.caches.failure_ttl_s)


@dataclass
class SearchAnswer:
    text: str | None
    english: str | None  # the Writer's translation, when one was made and used; else None
    hits: list[dict]
    degraded: bool = False
    embedded: str | None = None  # what the embedder was given: the query itself, or its translation


@dataclass
class Generated:
    """One painted image: the Painter's answer, the prompt it painted, and the gallery row if kept."""

    painted: dict
    original: str
    used: str
    degraded: bool
    row: dict | None = None


@dataclass
class Described:
    description: str
    post_text: str
    img_id: str | None
    degraded: bool
    random_weights: bool


@dataclass
class ChatAnswer:
    info: dict
    result: Any = None  # a ChatResult or Description (non-streamed)
    stream: TextStream | None = None
    first: str | None = None
    max_new_tokens: int | None = None
    deadline: float = 0.0  # time.monotonic() by which a stream must have ended


class ProductService:
    def __init__(self, models: ServeModels | LocalModels, *, policy: Policy, cache: AnswerCache,
                 library_factory: Callable[[int, str], Awaitable[Any]], stats, idempotency, ingest=None):
        self.models, self.policy, self.cache = models, policy, cache
        self.stats, self.idempotency, self.ingest = stats, idempotency, ingest
        self._library_factory = library_factory
        # Search texts the Writer just failed to translate (a short TTL, like answers have a long one).
        self._failed: TTLCache = TTLCache(maxsize=4096, ttl=policy.failure_ttl_s)
        self._libraries: dict[str, Any] = {}  # by embedding model: the configured one, and any other a vector came from
        self._library_lock = asyncio.Lock()

    def tune(self, tuning) -> None:
        """Apply new live settings (an IngressTuning) to the running service: the next request uses them.
        Caches whose size or lifetime changed start empty; unchanged ones keep what they hold."""
        policy = Policy.of(tuning)
        if policy.failure_ttl_s != self.policy.failure_ttl_s:
            self._failed = TTLCache(maxsize=4096, ttl=policy.failure_ttl_s)
        self.policy = policy
        self.cache.resize(lru_size=tuning.caches.lru_size, ttl_s=tuning.caches.ttl_s)

    async def model_info(self, role: str) -> dict:
        """What users are shown of a role's model: its public name, facts, and whether its answers are noise."""
        return await self.models.info(role)

    # -- plumbing ---------------------------------------------------------------------------------
    async def library(self, vector: Vector | None = None):
        """Storage composed for this process over the embedding model's table: the configured model's,
        or, given a vector, the table of the model that made it. While a model switch rolls out the
        Embedder's replicas of both models answer, and a vector is only ever stored or searched in its
        own model's table (never a dimension mismatch, never two models' vectors compared)."""
        model = vector.model if vector is not None else (await self.models.info("embedder"))["model_id"]
        lib = self._libraries.get(model)
        if lib is None:
            async with self._library_lock:  # one Library per model and process, however many first requests race
                lib = self._libraries.get(model)
                if lib is None:
                    dim = len(vector.values) if vector is not None else await self.models.call("embedder", "dimension")
                    lib = self._libraries[model] = await self._library_factory(dim, model)
        return lib

    async def deadline(self, coro, seconds: float, what: str):
        calls: list = []
        token = model_calls.set(calls)
        try:
            return await asyncio.wait_for(coro, timeout=seconds)
        except asyncio.TimeoutError:
            if never_assigned(calls):
                raise Unavailable(f"{what}: no model replica could take the request within {seconds:g} s "
                                  "(replicas restarting or at capacity); retry shortly",
                                  retry_after=self.policy.retry_after_s) from None
            raise RequestTimeout(f"{what} took longer than {seconds:g} s") from None
        finally:
            model_calls.reset(token)

    async def _cached(self, kind: str, text: str, compute, *, timeout: float, keep=lambda value: True):
        """Model answers to text through the two-level cache, keyed by model id + input."""
        info = await self.models.info("writer" if kind in ("enhance", "translate") else "embedder")
        return await self.cache.get_or_compute(AnswerCache.key(kind, info["model_id"], text),
                                               lambda: asyncio.wait_for(compute(), timeout=timeout), keep=keep)

    async def text_vector(self, text: str) -> Vector:
        """A text's vector and its model. The cache holds the configured model's vectors only: one that a
        replica of another model made (a model switch rolling out) is used once and not kept."""
        model = (await self.models.info("embedder"))["model_id"]

        async def compute():
            return await self.models.call("embedder", "text_vector", text)

        found = await self._cached("embed_text", text, compute, timeout=self.policy.timeouts.search_s,
                                   keep=lambda v: isinstance(v, Vector) and v.model == model)
        return found if isinstance(found, Vector) else Vector(model, np.asarray(found, np.float32))

    async def english(self, text: str, request_id: str = "-") -> tuple[str, bool]:
        """Search text in English: (english, degraded). A failing Writer degrades, never fails.

        A failed translation is remembered for `caches.failure_ttl_s` like an answer is for `ttl_s`:
        the same query then searches its original text at once instead of waiting on the Writer again.
        """
        if is_english(text):
            return text, False
        failed_key = AnswerCache.key("translate", (await self.models.info("writer"))["model_id"], text)
        if failed_key in self._failed:
            return text, True
        try:
            return await self._cached("translate", text, lambda: self.models.call("writer", "to_english", text),
                                      timeout=self.policy.timeouts.writer_s), False
        except Exception as exc:  # noqa: BLE001 - any Writer trouble means: search with the original text
            if _callers_mistake(exc):
                raise
            self._failed[failed_key] = True
            log.warning("request %s: the writer could not translate a search query (%s); searching the original "
                        "text, and so for the next %g s", request_id, brief(exc), self._failed.ttl)
            return text, True

    async def enhance(self, text: str, request_id: str = "-") -> tuple[str, bool]:
        """A richer English prompt: (prompt, degraded). A failing Writer degrades to the original text."""
        try:
            used = await self._cached("enhance", text, lambda: self.models.call("writer", "enhance_prompt", text),
                                      timeout=self.policy.timeouts.writer_s)
            return used, False
        except Exception as exc:  # noqa: BLE001 - the original text is the fallback
            if _callers_mistake(exc):
                raise
            log.warning("request %s: prompt enhancement failed (%s); painting the original", request_id, brief(exc))
            return text, True

    # -- health and operations --------------------------------------------------------------------
    async def readiness(self) -> dict[str, bool]:
        async def probe(role):
            try:
                return role, await self.models.ready(role, 2.0)
            except Exception:  # noqa: BLE001 - any failure means not ready
                return role, False

        return dict(await asyncio.gather(*(probe(r) for r in ROLES)))

    async def operation_stats(self) -> dict:
        return await self.stats.summary()

    def record(self, op: str, seconds: float, status: int) -> None:
        """Count one finished HTTP call by its status (fire and forget: stats never slow or fail a request)."""
        self.stats.record_nowait(op, seconds, status)

    async def delete_user(self, user: str) -> None:
        """Everything of a user: ingest jobs first (no job writes a row after this), rows, blobs, records."""
        if self.ingest is not None:
            await self.ingest.forget_user(user)
        lib = await self.library()
        await lib.delete_user(user)
        await self.idempotency.forget_user(user)

    # -- text -------------------------------------------------------------------------------------
    async def post_text(self, description: str, request_id: str = "-") -> tuple[str, bool]:
        """The Chinese post text for a description: (text, degraded); the description itself is the fallback."""
        try:
            return await asyncio.wait_for(self.models.call("writer", "post_text", description),
                                          timeout=self.policy.timeouts.writer_s), False
        except Exception as exc:  # noqa: BLE001 - the text itself is the fallback, flagged degraded
            if _callers_mistake(exc):
                raise
            log.warning("request %s: post text failed (%s)", request_id, brief(exc))
            return description, True

    # -- gallery ----------------------------------------------------------------------------------
    async def keep_upload(self, user: str, data: bytes, *, filename: str | None, content_type: str | None,
                          caption: str | None) -> tuple[dict, bool]:
        """An uploaded photo checked, embedded and kept: (row, created); the same bytes again return the row."""
        lib = await self.library()
        image = await lib.admit(data, filename=filename, content_type=content_type)
        existing = await lib.find(user, image.content_hash)
        if existing is not None:
            return existing, False
        return await self._embed_and_store(user, image, source="upload", caption=caption)

    async def _embed_and_store(self, user: str, image, *, source: str, caption: str | None = None,
                               meta: dict | None = None) -> tuple[dict, bool]:
        """An admitted image embedded by the Embedder and kept (blobs, then the row): every way an
        image enters a gallery from the service (upload, generation, a small ingestion job) ends here."""
        vector = await self.models.call("embedder", "image_vector", image.model_image)
        return await (await self.library(vector)).store(user, image, source=source, vector=vector.values,
                                                        caption=caption, meta=meta)

    async def keep_ingested(self, user: str, name: str, data: bytes, job_id: str, seen: set[str]) -> str:
        """One file of a small ingestion job: skipped by its hash before any decode when the user (or this
        job) has it, else checked, embedded and kept like an upload; returns the counter it adds to."""
        content_hash = hashlib.sha256(data).hexdigest()
        if content_hash in seen:  # claimed by another file of this job (before any await: files run at once)
            return "skipped_duplicates"
        seen.add(content_hash)
        lib = await self.library()
        if await lib.find(user, content_hash) is not None:
            return "skipped_duplicates"
        image = await lib.admit(data, filename=name)
        _, created = await self._embed_and_store(user, image, source="ingest",
                                                 meta={"ingest_job": job_id, "name": name})
        return "done" if created else "skipped_duplicates"

    async def list_images(self, user: str, limit: int, cursor: str | None) -> tuple[list[dict], str | None]:
        return await (await self.library()).list(user, limit, cursor)

    async def get_image(self, user: str, img_id: str) -> dict:
        return await (await self.library()).get(user, img_id)

    async def delete_image(self, user: str, img_id: str) -> None:
        await (await self.library()).delete(user, img_id)

    async def image_file(self, user: str, img_id: str) -> tuple[bytes, str]:
        """The stored display copy of a user's image and its media type."""
        return await (await self.library()).display(user, img_id)

    async def image_owner(self, img_id: str) -> str | None:
        """Who owns an image (for a signed URL, which does not carry its owner); None if nobody does."""
        return await (await self.library()).owner(img_id)

    async def decode_image(self, data: bytes, *, filename: str | None = None, content_type: str | None = None,
                           model_size: int | None = None) -> Image.Image:
        """Any image a caller sends for a model to look at (checked by its bytes like an upload), never kept."""
        decoded = await (await self.library()).decode(data, filename=filename, content_type=content_type,
                                                      model_size=model_size)
        return decoded.model_image

    # -- search -----------------------------------------------------------------------------------
    async def query_vector(self, q: str, request_id: str = "-") -> tuple[Vector, str, str | None, bool]:
        """A search text's vector: (vector, what was embedded, the English translation used or None, degraded).

        A bilingual embedder (SigLIP 2, Chinese-CLIP) embeds the query as it is: no LLM call. With query
        expansion on (`enhance_search`, off by default for these), a non-English query's translation is
        embedded too and the two unit vectors are averaged: the translation adds to the query, never
        replaces it. An English-only embedder (CLIP) searches the translation, as it cannot read Chinese;
        a failed translation there searches the original text and says `degraded`.
        """
        multilingual = bool((await self.models.info("embedder")).get("multilingual"))
        expand = self.policy.enhance_search if self.policy.enhance_search is not None else not multilingual
        translated, degraded = (await self.english(q, request_id)) if expand else (q, False)
        english = translated if translated != q else None
        if not multilingual:
            return await self.text_vector(translated), translated, english, degraded
        if english is None:
            return await self.text_vector(q), q, None, degraded
        direct, extra = await asyncio.gather(self.text_vector(q), self.text_vector(english))
        if extra.model != direct.model:  # two models answered (a switch rolling out): never mix them
            return direct, q, None, False
        fused = np.asarray(direct.values, np.float32) + np.asarray(extra.values, np.float32)
        return Vector(direct.model, fused / max(float(np.linalg.norm(fused)), 1e-12)), q, english, False

    async def search(self, user: str, q: str, k: int, request_id: str = "-") -> SearchAnswer:
        """Text search in Chinese or English: vector hits fused with full-text hits on the user's texts."""
        async def run():
            vector, embedded, english, degraded = await self.query_vector(q, request_id)
            hits = await (await self.library(vector)).search(user, vector.values, k, text=q)
            return SearchAnswer(text=q, english=english, hits=hits, degraded=degraded, embedded=embedded)

        return await self.deadline(run(), self.policy.timeouts.search_s, "search")

    async def search_by_image(self, user: str, data: bytes, k: int, *, filename: str | None,
                              content_type: str | None) -> SearchAnswer:
        # Decoded at the side the image tower reads (a JPEG at a reduced scale), so a 12-megapixel query
        # photo is made small here, once, instead of travelling whole to the Embedder's replica.
        side = await self.models.call("embedder", "image_size")
        image = await self.decode_image(data, filename=filename, content_type=content_type, model_size=side)
        vector = await self.models.call("embedder", "image_vector", image)
        hits = await (await self.library(vector)).search(user, vector.values, k)
        return SearchAnswer(text=None, english=None, hits=hits)

    # -- generation -------------------------------------------------------------------------------
    async def check_paint(self, prompt: str, size: str | None, steps: int | None, seed: int | None) -> str:
        """Refuse bad sizes and steps before the Writer or the Painter does any work; returns WxH."""
        return await self.models.call("painter", "size_of", prompt, size, steps, seed)

    async def paint(self, user: str, prompt: str, *, size: str, steps: int | None, seed: int | None,
                    enhance: bool, keep: bool, n: int = 1, request_id: str = "-") -> list[Generated]:
        """Paint-and-keep: the prompt (enhanced by the Writer if asked), n images (image i with seed + i),
        each kept in the caller's gallery with its prompts when `keep`. Both HTTP surfaces use this."""
        async def run():
            used, degraded = (await self.enhance(prompt, request_id)) if enhance else (prompt, False)
            seeds = [None if seed is None else (seed + i) % 2**63 for i in range(n)]
            painted = await asyncio.gather(*(self.models.call("painter", "generate", used, size=size, steps=steps, seed=s) for s in seeds))
            out = [Generated(painted=p, original=prompt, used=used, degraded=degraded) for p in painted]
            if keep:
                for g in out:
                    g.row = await self._keep_generated(user, g)
            return out

        return await self.deadline(run(), self.policy.timeouts.generate_s, "image generation")

    async def _keep_generated(self, user: str, g: Generated) -> dict:
        lib = await self.library()
        image = await lib.admit(g.painted["png"], content_type="image/png")
        p = g.painted
        row, _ = await self._embed_and_store(user, image, source="generated", caption=g.original,
                                             meta={"prompt_original": g.original, "prompt_used": g.used,
                                                   "seed": p["seed"], "size": p["size"], "model": p["model_id"],
                                                   "steps": p["steps"]})
        return row

    async def writer_random(self) -> bool:
        return bool((await self.models.info("writer"))["random_weights"])

    async def idempotent(self, user: str, key: str | None, fingerprint_of: str, work: Callable[[], Awaitable[dict]]):
        """Run `work` once per (user, Idempotency-Key): a retry gets the first answer, a reuse with
        another body is refused, a retry while the first still runs is told to wait."""
        if not key:
            return await work()
        fingerprint = hashlib.sha256(fingerprint_of.encode()).hexdigest()
        state = await self.idempotency.begin(user, key, fingerprint)
        if state["state"] == "done":
            return state["answer"]
        if state["state"] == "conflict":
            raise InvalidInput("this Idempotency-Key was used with a different request body",
                               code="idempotency_conflict")
        if state["state"] == "running":
            raise Unavailable("the same request is still running; retry shortly", code="in_progress", retry_after=2)
        answer = None
        try:
            answer = await work()
            return answer
        finally:
            await self.idempotency.finish(user, key, fingerprint, answer)

    # -- describe ---------------------------------------------------------------------------------
    async def gallery_image(self, user: str, img_id: str, *, model_size: int | None = None) -> Image.Image:
        """One of the caller's own images, decoded for a model."""
        data, _ = await self.image_file(user, img_id)
        return await self.decode_image(data, model_size=model_size)

    async def describe(self, user: str, image: Image.Image, *, img_id: str | None, instruction: str | None,
                       request_id: str = "-") -> Described:
        """Describe-then-write: the vision model's description, then the Writer's Chinese post text;
        with an img_id both are saved on the caller's row (`description`, `post_text`), never over its caption."""
        async def run():
            try:
                description = await self.models.call("describer", "describe", image, instruction)
            except Exception as exc:  # noqa: BLE001 - a failing vision model is a 503 of this route only
                if _callers_mistake(exc):
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
        if img_id is not None:
            # The user's caption stays theirs: the model's texts go to their own columns.
            await (await self.library()).update(user, img_id, description=description, post_text=post)
        info_d, info_w = await self.models.info("describer"), await self.models.info("writer")
        return Described(description=description, post_text=post, img_id=img_id, degraded=degraded,
                         random_weights=bool(info_d["random_weights"] or info_w["random_weights"]))

    # -- chat -------------------------------------------------------------------------------------
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
        return ChatAnswer(info=info, result=answer)

    # -- embeddings -------------------------------------------------------------------------------
    async def embed(self, texts: list[str], *, dimensions: int | None) -> tuple[list[int], np.ndarray]:
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
                return counts, np.asarray([(await self.text_vector(texts[0])).values])
            return counts, await self.models.call("embedder", "embed_texts", texts)

        return await self.deadline(run(), self.policy.timeouts.search_s, "embedding")
