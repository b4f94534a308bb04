"""What Serve's own router says about a deployment, read off the node's metrics port: tests that need a request
to be on a replica wait for it instead of betting on a clock."""

from __future__ import annotations

import time

import httpx

GAUGE = "ray_serve_num_ongoing_requests_at_replicas"


def at_painter(metrics_url: str) -> float:
    """Requests Serve's routers have handed to the atelier Painter's replicas and not yet seen answered."""
    total = 0.0
    for line in httpx.get(metrics_url, timeout=30).text.splitlines():
        if line.startswith(GAUGE + "{") and 'deployment="Painter"' in line and 'application="atelier"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait(what: str, ready, timeout_s: float = 120):
    """`ready()`'s first truthy value, polled every 0.1 s; fails with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not (value := ready()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return value
