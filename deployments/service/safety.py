"""The operator's term list (issue 30.3): Chinese and English terms matched in a prompt before any model runs.

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
import logging
import os
import time
import unicodedata
from dataclasses import dataclass
from typing import Callable

from storage.errors import AtelierError

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


@dataclass
class Guard:
    """What the service checks prompts with (today the operator's term list; the Guard model comes next).
    `on_refusal(stage, category)` is told of each refusal (the ingress's metrics; never the user)."""

    terms: TermList
    on_refusal: Callable[[str, str], None] | None = None

    async def check(self, text: str, *, stage: str, field: str | None = None) -> None:
        """Refuse (`ContentPolicy`) a text with a listed term: a caller's prompt (`prompt`), or what a model wrote
        before it is used, saved or sent (`enhanced`, `description`, `post_text`, `answer`)."""
        categories = await self.terms.categories(text)
        if not categories:
            return
        if self.on_refusal is not None:
            for category in categories:
                try:
                    self.on_refusal(stage, category)
                except Exception:  # noqa: BLE001 - metrics never fail a request
                    pass
        what = _WHAT.get(stage, stage)
        fix = "rephrase it" if stage == "prompt" else "nothing was saved or sent; ask differently"
        raise ContentPolicy(f"{what} is refused by this service's content policy ({', '.join(categories)}); {fix}",
                            categories=categories, stage=stage, field=field)


_WHAT = {"prompt": "the prompt", "enhanced": "the enhanced prompt", "description": "the model's description",
         "post_text": "the model's post text", "answer": "the model's answer"}
