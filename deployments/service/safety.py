"""Content safety (issue 30): the operator's term list, then the Guard model's verdict under the policy.

The term list (30.3): Chinese and English terms matched in a prompt before any model runs.

The deterministic layer of content safety: it works the same with random-weight stand-ins, so tests and the
quickstart can drive it. The list is a UTF-8 file the ingress's live settings name (`safety.terms_file`), one
term per line under a `[category]` line (`#` starts a comment):

    [violence]
    血腥
    gore

Matching is exact multi-pattern matching (an Aho-Corasick automaton, `pyahocorasick`) over text folded the same
way as the terms: Unicode NFKC (full-width letters and digits become half-width ones) and case folding, so
`ＧＯＲＥ` and `Gore` match `gore`. The file is read again when it changes (checked at most every
`safety.reload_s` seconds, on the next request): an operator edits it without a restart. A refusal names the
categories, never the matched terms (the list stays the operator's).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import time
import unicodedata
from dataclasses import dataclass
from typing import Awaitable, Callable, Literal

from models.policy import Safety
from models.errors import ModelError
from storage.errors import AtelierError, InvalidInput, Unavailable

from .windows import acting_user

log = logging.getLogger("atelier.safety")


class ContentPolicy(AtelierError):
    """A prompt or text the content policy refuses (400), with the categories it fell under."""

    code = "content_policy"
    status = 400

    def __init__(self, message: str, *, categories: list[str], stage: str, field: str | None = None):
        super().__init__(message, field=field)
        self.categories, self.stage = categories, stage

    def extra(self) -> dict:
        return {"categories": self.categories}


def fold(text: str) -> str:
    """Text as terms are matched: NFKC (full-width to half-width) and case-folded."""
    return unicodedata.normalize("NFKC", text).casefold()


def parse_terms(text: str) -> list[tuple[str, str]]:
    """(category, folded term) of each term of a list file's text; terms before any `[category]` are `other`."""
    terms, category = [], "other"
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            category = line[1:-1].strip() or "other"
            continue
        terms.append((category, fold(line)))
    return terms


class TermList:
    """A term list file as an automaton, read again when the file changes."""

    def __init__(self, path: str | None, *, reload_s: float = 2.0):
        self.path, self.reload_s = path, reload_s
        self._automaton = None
        self._seen: tuple | None = None  # (mtime_ns, size) of the file the automaton was built from
        self._loaded = False
        self._checked = 0.0
        self._lock = asyncio.Lock()

    def _stamp(self) -> tuple | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def _build(self, stamp: tuple | None):
        import ahocorasick

        if stamp is None:
            log.warning("the term list %s cannot be read; no terms are matched until it can", self.path)
            return None
        with open(self.path, encoding="utf-8") as f:
            terms = parse_terms(f.read())
        automaton = ahocorasick.Automaton()
        for category, term in terms:
            categories = automaton.get(term, set()) if term in automaton else set()
            automaton.add_word(term, categories | {category})
        if terms:
            automaton.make_automaton()
        log.info("term list %s: %d terms", self.path, len(terms))
        return automaton if terms else None

    async def _current(self):
        if self.path is None:
            return None
        if self._loaded and time.monotonic() - self._checked < self.reload_s:
            return self._automaton
        async with self._lock:
            if not self._loaded or time.monotonic() - self._checked >= self.reload_s:
                stamp = await asyncio.to_thread(self._stamp)
                if not self._loaded or stamp != self._seen:
                    self._automaton = await asyncio.to_thread(self._build, stamp)
                    self._seen, self._loaded = stamp, True
                self._checked = time.monotonic()
        return self._automaton

    async def categories(self, text: str) -> list[str]:
        """The categories of the list's terms found in `text` (sorted; empty: none)."""
        automaton = await self._current()
        if automaton is None or not text:
            return []
        found: set[str] = set()
        for _, categories in automaton.iter(fold(text)):
            found |= categories
        return sorted(found)


class GuardUnavailable(Unavailable):
    """The Guard cannot answer and the policy fails closed: 503 with Retry-After, never a silent pass."""

    code = "guard_unavailable"


# The requests whose checks passed without the Guard model (its policy fails open): the edge sets a fresh list per
# request and answers `X-Atelier-Safety: degraded` when it is not empty.
UNGUARDED: contextvars.ContextVar[list | None] = contextvars.ContextVar("atelier_unguarded", default=None)


SafetyFilter = Literal["any", "unflagged", "flagged"]


def shown(row: dict, want: str) -> bool:
    """Whether a gallery row passes a listing's or a search's `safety` filter: `unflagged` leaves out the images
    the Guard flagged (an image never checked is unflagged), `flagged` keeps only those, `any` keeps all."""
    if want == "any":
        return True
    flagged = bool(((row.get("meta") or {}).get("safety") or {}).get("flagged"))
    return flagged if want == "flagged" else not flagged


def unguarded() -> bool:
    """Whether this request had a check let through without the Guard model (answers say `degraded: true`)."""
    return bool(UNGUARDED.get())


@dataclass
class Screened:
    """What a check found: the Guard's verdict as it is stored with a row (`verdict`), and whether the Guard model
    was skipped because it was down and the policy fails open (`degraded`)."""

    verdict: dict | None = None
    degraded: bool = False


class ContentGuard:
    """What the service checks prompts, model-written texts and images with: the operator's term list first (no
    model runs for a listed term), then the Guard model's verdict under the policy (models.policy.Safety) and
    the user's plan's tolerance. `on_refusal(stage, category)` is told of each refusal and `on_degraded(stage)` of
    each check made without the Guard (the ingress's metrics; never the user)."""

    def __init__(self, terms: TermList, models=None, *, policy: Safety | None = None,
                 tolerance_of: Callable[[str], Awaitable[float]] | None = None):
        self.terms, self.models = terms, models
        self.policy = policy or Safety()
        self.tolerance_of = tolerance_of
        self.on_refusal: Callable[[str, str], None] | None = None
        self.on_degraded: Callable[[str], None] | None = None

    @property
    def has_model(self) -> bool:
        return self.models is not None and "guard" in self.models.roles and self.policy.guard

    @property
    def required(self) -> bool:
        """Whether the service cannot answer guarded routes without the Guard (fail closed)."""
        return self.has_model and self.policy.on_guard_down == "closed"

    async def check(self, text: str, *, stage: str, field: str | None = None, user: str | None = None) -> Screened:
        """Refuse (`ContentPolicy`) a text with a listed term or one the Guard's scores block: a caller's prompt
        (`prompt`), or what a model wrote before it is used, saved or sent (`enhanced`, `description`, `post_text`,
        `answer`). Returns the verdict, with the categories the policy flags."""
        await self._check_terms(text, stage, field)
        return await self._judge("check_text", text, stage=stage, field=field, user=user, refuse=True)

    async def check_growing(self, text: str, checked: int, *, stage: str, final: bool = False) -> int:
        """A streamed answer so far, before its newest piece is sent: the term list on all of it (a listed term
        may span pieces), the Guard once it has grown `stream_every_chars` past what it last checked (`checked`,
        in characters) and when it ends (`final`). Returns what the Guard has now checked. So at most that many
        characters reach the client before the Guard has read them; a refusal ends the stream."""
        await self._check_terms(text, stage, None)
        if final or len(text) - checked >= self.policy.stream_every_chars:
            await self._judge("check_text", text, stage=stage, field=None, user=None, refuse=True)
            return len(text)
        return checked

    async def check_image(self, image, *, stage: str, user: str | None = None, refuse: bool = True) -> Screened:
        """The Guard's verdict on a PIL image: a generated picture (`refuse`: a blocked one is never stored or
        returned) or a user's upload (not refused: its verdict is stored and it is flagged). A Guard configured
        without an image model (`image_model: null`) checks no images: nothing to judge, not a Guard down."""
        if not self.has_model or not await self._checks_images():
            return Screened()
        return await self._judge("check_image", image, stage=stage, field=None, user=user, refuse=refuse)

    async def moderate(self, op: str, item) -> dict:
        """The Guard's plain verdict (`/v1/moderations`), with no term list and no policy: down is 503."""
        if op == "check_image" and not await self._checks_images():
            raise InvalidInput("this service's Guard checks no images; send text only", field="input")
        return await self._ask(op, item, stage="moderation", fail_open=False, cut=False)

    async def tolerance(self, user: str | None) -> float:
        """The looseness of `user`'s plan (Plan.safety_tolerance); 0 outside a user's request or without plans."""
        return await self.tolerance_of(user) if (self.tolerance_of is not None and user is not None) else 0.0

    async def _check_terms(self, text: str, stage: str, field: str | None) -> None:
        categories = await self.terms.categories(text)
        if categories:
            self._refuse(stage, categories, field)

    async def _checks_images(self) -> bool:
        try:
            return bool((await self.models.info("guard")).get("image_check", True))
        except Exception:  # noqa: BLE001 - a Guard that cannot tell is asked, and judged down or not there
            return True

    async def _judge(self, op: str, item, *, stage: str, field: str | None, user: str | None,
                     refuse: bool) -> Screened:
        if not self.has_model:
            return Screened()
        verdict = await self._ask(op, item, stage=stage, fail_open=self.policy.on_guard_down == "open")
        if verdict is None:
            return Screened(degraded=True)
        blocked, record = self.policy.record(verdict, await self.tolerance(user if user is not None
                                                                          else acting_user.get()))
        if blocked and refuse:
            self._refuse(stage, blocked, field)
        return Screened(verdict=record)

    async def _ask(self, op: str, item, *, stage: str, fail_open: bool, cut: bool = True) -> dict | None:
        """The Guard's verdict as a dict; None when it is down and the policy fails open (counted, and marked on
        the answer); GuardUnavailable (503) when it is down and the policy fails closed. With `cut`, a text
        longer than the Guard reads is checked by its end (what a reader acts on, and where a long preamble
        would push a payload); a moderation's caller gets the Guard's 400 instead."""
        try:
            if cut and op == "check_text":
                limit = ((await self.models.info("guard")).get("limits") or {}).get("max_text_chars")
                item = item[-limit:] if limit and len(item) > limit else item
            verdict = await asyncio.wait_for(self.models.call("guard", op, item), self.policy.guard_timeout_s)
            return verdict.as_dict() if hasattr(verdict, "as_dict") else dict(verdict)
        except (AtelierError, ModelError) as exc:
            if getattr(exc, "status", 500) < 500:
                raise
            reason = exc
        except asyncio.TimeoutError as exc:  # past the Guard's own deadline
            reason = exc
        except Exception as exc:  # noqa: BLE001 - a replica that crashed mid-call (out of memory...): the Guard is down
            log.warning("the Guard failed on a %s check", stage, exc_info=True)
            reason = exc
        if fail_open:
            log.warning("the Guard could not check a %s (%s: %s); let through unchecked: the policy fails open",
                        stage, type(reason).__name__, reason)
            self._tell(self.on_degraded, stage)
            marks = UNGUARDED.get()
            if marks is not None:
                marks.append(stage)
            return None
        raise GuardUnavailable("the content-safety check is unavailable, so this request cannot be answered now; "
                               "retry shortly", retry_after=2.0) from None

    def _refuse(self, stage: str, categories: list[str], field: str | None):
        for category in categories:
            self._tell(self.on_refusal, stage, category)
        what = _WHAT.get(stage, stage)
        fix = "rephrase it" if stage == "prompt" else "nothing was saved or sent; ask differently"
        raise ContentPolicy(f"{what} is refused by this service's content policy ({', '.join(categories)}); {fix}",
                            categories=categories, stage=stage, field=field)

    @staticmethod
    def _tell(hook, *args) -> None:
        if hook is not None:
            try:
                hook(*args)
            except Exception:  # noqa: BLE001 - metrics never fail a request
                pass


_WHAT = {"prompt": "the prompt", "enhanced": "the enhanced prompt", "description": "the model's description",
         "post_text": "the model's post text", "answer": "the model's answer", "image": "the generated image"}
