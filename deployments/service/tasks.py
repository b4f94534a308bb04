"""Work started and not awaited (a charge after a stream closed, a small ingestion job): the event loop keeps
only weak references to tasks, so each is held in a set its owner keeps until the task is done."""

from __future__ import annotations

import asyncio
from typing import Awaitable


def background(work: Awaitable, held: set) -> asyncio.Future:
    """Run `work` on the current loop, held in `held` until it is done."""
    task = asyncio.ensure_future(work)
    held.add(task)
    task.add_done_callback(held.discard)
    return task
