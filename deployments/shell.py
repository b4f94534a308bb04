"""What every model deployment shares: load + warm up in the constructor, run calls off the event loop,
count and time them with Serve metrics, and report health."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from ray.serve import metrics

from .models.base import ModelRole

LATENCY_BOUNDARIES_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]


class RoleShell:
    """A thin Serve shell around one plain model role; subclasses only name their typed methods."""

    def __init__(self, role: ModelRole):
        self.model = role
        # Warm up before the constructor returns: Serve reports the replica ready only after that.
        role.warmup()
        tags = ("op", "outcome")
        self._requests = metrics.Counter(
            f"atelier_{role.role}_requests", description=f"{role.role} calls by operation and outcome", tag_keys=tags
        )
        self._latency = metrics.Histogram(
            f"atelier_{role.role}_latency_s", description=f"{role.role} call latency in seconds",
            boundaries=LATENCY_BOUNDARIES_S, tag_keys=("op",),
        )

    async def _run(self, op: str, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """Run a blocking model call in a worker thread so health checks and batching keep flowing."""
        t0 = time.perf_counter()
        outcome = "error"
        try:
            result = await asyncio.to_thread(fn, *args, **kwargs)
            outcome = "ok"
            return result
        finally:
            self._requests.inc(tags={"op": op, "outcome": outcome})
            self._latency.observe(time.perf_counter() - t0, tags={"op": op})

    def info(self) -> dict:
        """What the ingress shows users about this model (and whether its answers are noise)."""
        return {"role": self.model.role, "model_id": self.model.model_id, "random_weights": self.model.random_weights}

    def ready(self) -> bool:
        self.model.check_health()
        return True

    def check_health(self) -> None:
        self.model.check_health()
