"""The context every verb of the product service shares, the answers' shapes, and the policy knobs."""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from cachetools import TTLCache

from models.errors import ModelInputError
from storage.errors import InvalidInput, Unavailable

from .cache import AnswerCache
from .errors import RequestTimeout
from .models import LocalModels, ServeModels, TextStream, Vector, model_calls, never_assigned

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


def callers_mistake(exc: BaseException) -> bool:
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
    safety: dict | None = None  # the Guard's verdict on the picture (None: no Guard, or it was skipped)


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


class Context:
    """What every verb of the service shares: the model gateway, the live policy, the answer cache, the
    storage library of each embedding model, the shared ledgers, the ingest desk and the plans' counters."""

    def __init__(self, models: ServeModels | LocalModels, *, policy: Policy, cache: AnswerCache,
                 library_factory: Callable[[int, str], Awaitable[Any]], stats, idempotency, ingest=None, limits=None):
        self.models, self.policy, self.cache = models, policy, cache
        self.stats, self.idempotency, self.ingest = stats, idempotency, ingest
        self.limits = limits  # the plans' counters (deployments.service.limits.PlanLimits); None: no limits
        self._library_factory = library_factory
        # Search texts the Writer just failed to translate (a short TTL, like answers have a long one).
        self.failed: TTLCache = TTLCache(maxsize=4096, ttl=policy.failure_ttl_s)
        self._libraries: dict[str, Any] = {}  # by embedding model: the configured one, and any other a vector came from
        self._library_lock = asyncio.Lock()

    def tune(self, tuning) -> None:
        """Apply new live settings (an IngressTuning) to the running service: the next request uses them.
        Caches whose size or lifetime changed start empty; unchanged ones keep what they hold."""
        policy = Policy.of(tuning)
        if policy.failure_ttl_s != self.policy.failure_ttl_s:
            self.failed = TTLCache(maxsize=4096, ttl=policy.failure_ttl_s)
        self.policy = policy
        self.cache.resize(lru_size=tuning.caches.lru_size, ttl_s=tuning.caches.ttl_s)

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

    async def cached(self, kind: str, text: str, compute, *, user: str, timeout: float, keep=lambda value: True):
        """Model answers to text through the two-level cache, keyed by model id + the caller + input."""
        info = await self.models.info("writer" if kind in ("enhance", "translate") else "embedder")
        return await self.cache.get_or_compute(AnswerCache.key(kind, info["model_id"], text, user=user),
                                               lambda: asyncio.wait_for(compute(), timeout=timeout), keep=keep)


class Verbs:
    """A group of the service's operations over the shared context (its models, policy and storage)."""

    def __init__(self, ctx: Context):
        self.ctx = ctx

    @property
    def models(self) -> ServeModels | LocalModels:
        return self.ctx.models

    @property
    def policy(self) -> Policy:
        return self.ctx.policy

    async def library(self, vector: Vector | None = None):
        return await self.ctx.library(vector)

    async def deadline(self, coro, seconds: float, what: str):
        return await self.ctx.deadline(coro, seconds, what)
