"""GPU seconds over real HTTP through Serve (issue 29.3): a user on serve_config.local's `trial` plan (a painter
budget) is charged, for answered generations and for one they hung up on mid-paint, what the Painter's replica
measured: the user's `/api/me/usage` matches the replica's own count of GPU seconds it charged (`progress()`)
within 5%.

As in test_client_hangup, the hang-up waits for Serve's own router to say the request is on the Painter's replica,
and the charges are read once the replica says the call was cancelled (a cancelled call is charged by its
replica through the ingress when its thread has stopped)."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import httpx

from tests.support.serve_gauges import at_painter, wait


def test_generations_are_charged_what_the_painter_measured_even_when_hung_up_on(service, ray_cluster):
    from ray import serve

    from deployments.http.auth import key_store, plan_store

    plan_store().assign("wren", "trial")
    key = key_store().add("wren")[1]
    painter = serve.get_deployment_handle("Painter", app_name="atelier")
    metrics = f"http://127.0.0.1:{ray_cluster.metrics_port}/metrics"
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=service.base_url, headers=headers, timeout=300) as wren:
        def used() -> float:
            rows = {x["limit"]: x for x in wren.get("/api/me/usage").json()["limits"]}
            return rows["gpu-painter"]["used"]

        wait("an earlier generation is still on the Painter", lambda: at_painter(metrics) == 0)
        start = painter.progress.remote().result(timeout_s=120)
        assert used() == 0
        answered = wren.post("/api/generate/image", json={"text": "a kite", "size": "64x64", "steps": 4,
                                                          "enhance": False, "save_to_gallery": False})
        assert answered.status_code == 200, answered.text
        policies = answered.headers["ratelimit-policy"]
        assert '"gpu-painter";q=300;w=86400;qu="gpu-seconds"' in policies, policies
        after_answer = painter.progress.remote().result(timeout_s=120)
        charged = after_answer["charged_s"] - start["charged_s"]
        assert charged > 0 and abs(used() - charged) <= 0.05 * charged, (used(), charged)

        # Hung up on mid-paint: charged for the steps it ran, by the replica, once they have stopped.
        url = urlsplit(service.base_url)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
        conn.request("POST", "/api/generate/image", headers={**headers, "Content-Type": "application/json"},
                     body=json.dumps({"text": "a slow storm", "size": "1024x1024", "steps": 50, "enhance": False,
                                      "save_to_gallery": False}))
        wait("the generation never reached the Painter", lambda: at_painter(metrics) >= 1)
        conn.close()  # hang up without reading a byte of the answer
        wait("the Painter never saw the hang-up",
             lambda: painter.progress.remote().result(timeout_s=120)["cancelled"] > after_answer["cancelled"])
        total = wait("the Painter never charged the cancelled call",
                     lambda: (p := painter.progress.remote().result(timeout_s=120))["charged_s"] >
                     after_answer["charged_s"] and p["charged_s"] - start["charged_s"])
        # The replica's charge reaches the user's budget through the ingress.
        wait(f"wren's usage never matched the {total:.3f} GPU seconds the Painter charged",
             lambda: abs(used() - total) <= 0.05 * total)
