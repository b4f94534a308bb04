"""Trust over real HTTP through Serve: a client that hangs up is not a server error.

The test makes the condition it needs instead of betting on a clock: it hangs up only once Serve's own
router says the request is on the Painter's replica (the `serve_num_ongoing_requests_at_replicas` gauge
on the node's metrics port), and then checks that the hang-up reached the model (the Painter counts
the call as cancelled) before it reads the stats."""

from __future__ import annotations

import http.client
import json
import time
import uuid
from urllib.parse import urlsplit

import httpx

from tests.support.serve_gauges import at_painter, wait

OP = "POST /api/generate/image"


def _op(client) -> dict:
    """This user's stats of OP. A 503 is the service asking to be called again after Retry-After (the
    suite's other tests may be loading the same cluster), as a client would; any other answer fails here
    with what it said."""
    deadline = time.monotonic() + 60
    while (r := client.get("/api/stats")).status_code == 503 and time.monotonic() < deadline:
        time.sleep(float(r.headers.get("retry-after", "1")))
    assert r.status_code == 200, (r.status_code, r.headers, r.text)
    return r.json()["operations"].get(OP, {"count": 0, "errors": 0, "client_closed": 0})


def test_a_client_that_hangs_up_is_recorded_as_499_not_500(service, ray_cluster):
    from ray import serve

    from tests.conftest import serve_log_records

    painter = serve.get_deployment_handle("Painter", app_name="atelier")
    metrics = f"http://127.0.0.1:{ray_cluster.metrics_port}/metrics"
    with service.client() as c:
        before = _op(c)
        progress = painter.progress.remote().result(timeout_s=120)  # the Painter's one slot is free now
        wait("an earlier generation is still on the Painter", lambda: at_painter(metrics) == 0)
        # 50 steps at 1024x1024 (tens of seconds on the tiny model): the hang-up below lands mid-paint.
        body = {"text": "a very slow storm", "size": "1024x1024", "steps": 50, "enhance": False,
                "save_to_gallery": False}
        rid = f"hangup-{uuid.uuid4().hex}"
        url = urlsplit(service.base_url)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
        conn.request("POST", "/api/generate/image", body=json.dumps(body),
                     headers={"Authorization": f"Bearer {service.keys['alice']}", "Content-Type": "application/json",
                              "X-Request-ID": rid})
        wait("the generation never reached the Painter", lambda: at_painter(metrics) >= 1)
        conn.close()  # hang up without reading a byte of the answer
        # The hang-up reached the model: the Painter stopped denoising and counted the call as cancelled.
        after_progress = wait("the Painter never saw the hang-up",
                               lambda: (p := painter.progress.remote().result(timeout_s=120))["cancelled"]
                               > progress["cancelled"] and p)
        assert after_progress["cancelled"] == progress["cancelled"] + 1, (progress, after_progress)
        after = wait("the abandoned request was never recorded", lambda: (a := _op(c))["count"] > before["count"] and a)
    assert after["count"] == before["count"] + 1, (before, after)
    assert after["errors"] == before["errors"], (before, after)
    assert after["client_closed"] == before["client_closed"] + 1, (before, after)  # counted as what it is
    [line] = [r for r in serve_log_records("Ingress", "atelier", rid) if r.get("route_template")]
    assert (line["status"], line["route_template"]) == (499, "/api/generate/image"), line
