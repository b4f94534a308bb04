"""How a gallery table is committed to: one lock per table in a process, commit conflicts retried.

Both the gallery's writes (`table.py`) and its upkeep (`upkeep.py`) commit through here, under the
same lock, so an index build or a purge never interleaves with an upsert of this process; the
cluster's GalleryWriter actor makes this process the only writer overall.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from storage.errors import Unavailable

_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def table_lock(key: str) -> threading.Lock:
    """One lock per table in this process, shared by every Gallery opened on it."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.Lock())


def is_commit_conflict(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "commit conflict" in text or "retryable" in text or "too many concurrent writers" in text


def commit(op: Callable[[], Any], attempts: int) -> Any:
    """Run one commit, retrying commit conflicts up to `attempts` times; a conflict that persists is a 503."""
    retrying = Retrying(
        retry=retry_if_exception(is_commit_conflict),
        stop=stop_after_attempt(attempts),
        wait=wait_random_exponential(multiplier=0.05, max=2),
        reraise=True,
    )
    try:
        return retrying(op)
    except Exception as exc:
        if is_commit_conflict(exc):
            raise Unavailable("the gallery is busy with other writes; try again", code="gallery_busy") from exc
        raise
