"""Scale to zero over real HTTP (issue 29.7): a Painter at `min_replicas: 0` goes to no replica when idle,
the service stays ready, and the first generation after that waits for the replica Serve starts (a 200 with
an image, not a 503), after which the Painter goes back to zero.

A second application, `/coldstart`, runs the same graph with the Painter autoscaled 0..1, starting at
zero, with a short idle delay. Replica counts are read from Serve's status API (what `serve status` shows), never guessed from a sleep.
"""

from __future__ import annotations

import base64
import io
import time

import pytest

APP = "coldstart"
IDLE_S = 2  # the test's idle delay before 1 -> 0 (production: 600 s)


def painters_running() -> int:
    from ray import serve

    app = serve.status().applications.get(APP)
    painter = app.deployments.get("Painter") if app is not None else None
    return 0 if painter is None else painter.replica_states.get("RUNNING", 0)


def wait_for_painters(count: int, within_s: float, why: str) -> None:
    deadline = time.monotonic() + within_s
    while painters_running() != count:
        assert time.monotonic() < deadline, f"the Painter did not reach {count} running replicas: {why}"
        time.sleep(0.25)


@pytest.fixture(scope="module")
def coldstart(service, tiny_kit, tmp_path_factory):
    from ray import serve

    from deployments.app import compose
    from tests.conftest import local_args

    args = local_args(
        tiny_kit, tmp_path_factory.mktemp(APP),
        **{"painter.deployment.num_replicas": None,
           # No replica at the start (serve_config.yaml starts one; going 1 -> 0 first would add a look-back
           # window to the suite's time, and this test sees 1 -> 0 after the generation). With max_replicas 1
           # the only step down is 1 -> 0, after downscale_to_zero_delay_s of no requests, as in production;
           # a 3 s look-back window (just over the suite's 2 s autoscaling metrics interval, tests/conftest.py)
           # instead of 30 s, sooner.
           "painter.deployment.autoscaling": {"min_replicas": 0, "initial_replicas": 0, "max_replicas": 1,
                                              "target_ongoing_requests": 1, "upscale_delay_s": 0,
                                              "downscale_to_zero_delay_s": IDLE_S, "look_back_period_s": 3},
           "guard": None},  # no Guard replica: what this app tests is the Painter's scaling
    )
    serve.run(compose(args), name=APP, route_prefix=f"/{APP}", blocking=False)
    try:
        with service.client() as c:
            deadline = time.monotonic() + 300
            while c.get(f"/{APP}/readyz").status_code != 200:
                assert time.monotonic() < deadline, "the coldstart app did not become ready"
                time.sleep(1)
        yield service
    finally:
        serve.delete(APP, _blocking=False)  # its replicas go while the next tests run


def test_the_first_generation_after_idle_waits_for_a_replica_and_the_painter_goes_back_to_zero(coldstart):
    from PIL import Image

    wait_for_painters(0, 120, "started at initial_replicas 0")
    with coldstart.client() as c:
        # Ready with no Painter running: its next request starts one, so it is not "not ready" (and the
        # probe does not call it, which would start one every probe).
        ready = c.get(f"/{APP}/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["models"]["painter"] is True
        assert painters_running() == 0

        answer = c.post(f"/{APP}/api/generate/image",
                        json={"text": "a lighthouse at dusk", "size": "small", "seed": 3, "steps": 1,
                              "enhance": False, "save_to_gallery": False})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["size"] == "64x64" and body["image_url"].startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(body["image_url"].split(",", 1)[1])))
    assert image.format == "PNG" and image.size == (64, 64)

    wait_for_painters(0, 120, f"idle again for {IDLE_S} s after the generation")
