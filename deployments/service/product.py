"""The product service: every product operation once, as typed async methods, under the HTTP routers.

No FastAPI here. The `/api` routes, the OpenAI-compatible routes and the ingest routes only parse a
request, call one of these methods and shape the answer; what a search, an upload, a generation
or a description *does* (which models, in which order, what is kept, what degrades) lives here, so
both surfaces behave the same by construction.

The operations are grouped by concern into verbs over one shared `Context` (context.py: the model
gateway, the live policy, the answer cache, the storage library, the shared ledgers):
`texts` (vectors, translations, prompts, post texts, embeddings), `photos` (the caller's gallery),
`search`, `generation` (paint-and-keep) and `conversation` (describe, chat). This class holds them and
the service-wide operations (health, stats, idempotency, deleting a user).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any, Awaitable, Callable

from storage.errors import InvalidInput, Unavailable

from .cache import AnswerCache
from .context import Context, Policy
from .conversation import Conversation
from .generation import Generation
from .models import LocalModels, ServeModels, Vector
from .photos import Photos
from .safety import ContentGuard, TermList
from .search import Search
from .texts import Texts


class ProductService:
    def __init__(self, models: ServeModels | LocalModels, *, policy: Policy, cache: AnswerCache,
                 library_factory: Callable[[int, str], Awaitable[Any]], stats, idempotency, ingest=None,
                 limits=None):
        if limits is not None:  # each user's calls at once per role, held to their plan
            from .held import HeldModels

            models = HeldModels(models, limits)
        self.ctx = Context(models, policy=policy, cache=cache, library_factory=library_factory, stats=stats,
                           idempotency=idempotency, ingest=ingest, limits=limits)
        # The term list and the Guard model's policy: set by tune(); a plan's tolerance loosens its thresholds.
        self.ctx.guard = ContentGuard(TermList(None), self.ctx.models, tolerance_of=self._tolerance)
        self.texts = Texts(self.ctx)
        self.photos = Photos(self.ctx)
        self.search = Search(self.ctx, self.texts, self.photos)
        self.generation = Generation(self.ctx, self.texts, self.photos)
        self.conversation = Conversation(self.ctx)
        self.ingest = ingest  # the ingest desk (deployments.service.ingest), None where no cluster runs jobs
        self.limits = limits  # the plans' counters (deployments.service.limits.PlanLimits); None: no limits

    def tune(self, tuning) -> None:
        """Apply new live settings (an IngressTuning): the next request uses them."""
        self.ctx.tune(tuning)
        if self.limits is not None:
            self.limits.tune(tuning.plans)
        terms = self.ctx.guard.terms
        if (terms.path, terms.reload_s) != (tuning.safety.terms_file, tuning.safety.reload_s):
            self.ctx.guard.terms = TermList(tuning.safety.terms_file, reload_s=tuning.safety.reload_s)
        self.ctx.guard.policy = tuning.safety
        if self.ingest is not None:  # bulk jobs flag their photos by the policy of when they were made
            self.ingest.safety = tuning.safety.model_dump()

    async def _tolerance(self, user: str) -> float:
        return 0.0 if self.limits is None else (await self.limits.plan(user))[1].safety_tolerance

    async def model_info(self, role: str) -> dict:
        """What users are shown of a role's model: its public name, facts, and whether its answers are noise."""
        return await self.ctx.models.info(role)

    async def library(self, vector: Vector | None = None):
        """The storage library of the configured embedding model (or of the model that made `vector`)."""
        return await self.ctx.library(vector)

    # -- health and operations --------------------------------------------------------------------
    async def readiness(self) -> dict[str, bool]:
        async def probe(role):
            try:
                return role, await self.ctx.models.ready(role, 2.0)
            except Exception:  # noqa: BLE001 - any failure means not ready
                return role, False

        return dict(await asyncio.gather(*(probe(r) for r in self.ctx.models.roles)))

    async def operation_stats(self, user: str) -> dict:
        """The caller's own calls by operation (the service-wide view is the operator's metrics)."""
        return await self.ctx.stats.summary(user)

    def record(self, user: str, op: str, seconds: float, status: int) -> None:
        """Count one finished HTTP call of `user`'s by its status (fire and forget: stats never slow or fail a
        request)."""
        self.ctx.stats.record_nowait(user, op, seconds, status)

    async def delete_user(self, user: str) -> None:
        """Everything of a user: ingest jobs first (no job writes a row after this), rows, blobs, records."""
        if self.ctx.ingest is not None:
            await self.ctx.ingest.forget_user(user)
        lib = await self.library()
        await lib.delete_user(user)
        await self.ctx.idempotency.forget_user(user)
        await self.ctx.stats.forget_user(user)
        if self.limits is not None:
            await self.limits.forget_user(user)

    async def undo_import(self, user: str, job_id: str) -> dict:
        """Take a finished bulk job back: every photo it stored (rows, vectors, blobs), nothing else of the user's."""
        if self.ingest is None:
            raise Unavailable("bulk ingestion is not configured on this service", code="ingest_unavailable")
        return await self.ingest.undo(user, job_id, self.photos.delete_import)

    async def usage(self, user: str) -> dict:
        """The caller's plan: each limit, what is used and left, and when it resets."""
        if self.limits is None:
            return {"plan": "default", "limits": []}
        stored = await self.photos.stored(user) if await self.limits.limits_storage(user) else None
        return await self.limits.usage(user, stored=stored)

    async def idempotent(self, user: str, key: str | None, fingerprint_of: str, work: Callable[[], Awaitable[dict]]):
        """Run `work` once per (user, Idempotency-Key): a retry gets the first answer, a reuse with
        another body is refused, a retry while the first still runs is told to wait."""
        if not key:
            return await work()
        fingerprint = hashlib.sha256(fingerprint_of.encode()).hexdigest()
        state = await self.ctx.idempotency.begin(user, key, fingerprint)
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
            await self.ctx.idempotency.finish(user, key, fingerprint, answer)
