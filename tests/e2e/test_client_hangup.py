"""Trust over real HTTP through Serve: a client that hangs up is not a server error."""

from __future__ import annotations

import time

import httpx
import pytest

pytestmark = pytest.mark.e2e
OP = "POST /api/generate/image"


def _op(client) -> dict:
    return client.get("/api/stats").json()["operations"].get(OP, {"count": 0, "errors": 0})


def test_a_client_that_hangs_up_is_recorded_as_499_not_500(service):
    with service.client() as c:
        before = _op(c)
        # 50 denoising steps at the largest size: longer than the client is willing to wait.
        body = {"text": "a very slow storm", "size": "large", "steps": 50, "enhance": False, "save_to_gallery": False}
        with pytest.raises(httpx.TimeoutException):
            c.post("/api/generate/image", json=body, timeout=0.3)
        deadline = time.monotonic() + 60
        while (after := _op(c))["count"] <= before["count"]:
            assert time.monotonic() < deadline, "the abandoned request was never recorded"
            time.sleep(0.5)
    assert after["errors"] == before["errors"], (before, after)
