"""Faults over real HTTP: back-pressure, a Writer that is down, and (with search) a lost Embedder replica.

A second application, `/faults`, runs the same graph with a Painter limited to one request in
flight and one queued, two Embedder replicas, and Writer and Describer stand-ins that fail on purpose.
"""

from __future__ import annotations

import concurrent.futures as cf
import sys
import time

import pytest
import ray.cloudpickle

from models import Describer, ModelUnavailable, Writer

# Replicas cannot import this test module by name: ship its classes by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class UnavailableWriter(Writer):
    """Fault stand-in: loads like the real Writer, then fails every call, as when its GPU is gone."""

    def _warmup(self) -> None:
        return None

    def chat(self, *args, **kwargs):
        raise ModelUnavailable("the writer is down (fault test)")


class BrokenDescriber(Describer):
    """Fault stand-in: a vision model whose every call crashes (a bug, a dead GPU)."""

    def _warmup(self) -> None:
        return None

    def describe(self, *args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered (fault test)")


@pytest.fixture(scope="module")
def faults(service, tiny_kit, tmp_path_factory):
    from ray import serve

    from deployments.app import compose
    from tests.conftest import local_args

    args = local_args(
        tiny_kit, tmp_path_factory.mktemp("faults"),
        **{"painter.deployment.max_ongoing_requests": 1, "painter.deployment.max_queued_requests": 1,
           "embedder.deployment.num_replicas": 2,
           "guard": None},  # no Guard replica: what this app tests is the other roles' faults
    )
    serve.run(compose(args, {"writer": UnavailableWriter, "describer": BrokenDescriber}), name="faults", route_prefix="/faults", blocking=False)
    with service.client() as c:
        deadline = time.monotonic() + 300
        while c.get("/faults/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the faults app did not become ready"
            time.sleep(1)
    yield service
    serve.delete("faults", _blocking=False)  # its replicas go while the next tests run


def test_painter_overload_answers_503_with_retry_after_never_500(faults):
    body = {"text": "a storm over the sea", "size": "512x512", "save_to_gallery": False, "enhance": False}

    def generate(i):
        with faults.client() as c:
            return c.post("/faults/api/generate/image", json={**body, "seed": i})

    with cf.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(generate, range(10)))
    codes = [r.status_code for r in answers]
    assert 500 not in codes
    refused = [r for r in answers if r.status_code in (429, 503)]
    assert refused, f"10 concurrent generations against 1 slot + 1 queue were all served: {codes}"
    assert all(int(r.headers.get("retry-after", 0)) >= 1 for r in refused), [(r.status_code, r.headers, r.text) for r in refused]
    assert all(r.json()["error"]["code"] for r in refused)
    assert set(codes) <= {200, 429, 503}
    with faults.client() as c:  # and it serves normally afterwards
        r = c.post("/faults/api/generate/image", json={**body, "size": "small"})
        assert r.status_code == 200, r.text


def test_generation_degrades_when_the_writer_is_down(faults):
    import uuid

    from tests.conftest import serve_log_records

    rid = f"degrade-{uuid.uuid4().hex[:8]}"
    with faults.client() as c:
        r = c.post("/faults/api/generate/image", headers={"X-Request-ID": rid},
                   json={"text": "海边的日落", "size": "small", "save_to_gallery": False, "seed": 1})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["degraded"] is True
        assert body["prompt"] == {"original": "海边的日落", "used": "海边的日落"}
        assert body["size"] == "64x64"
    # The app's warning is in the Ingress replica's Serve log, as JSON, beside its request.
    warnings = [r for r in serve_log_records("Ingress", "faults", rid) if r["levelname"] == "WARNING"]
    assert warnings and warnings[0]["name"] == "atelier.service", serve_log_records("Ingress", "faults", rid)
    assert "prompt enhancement failed" in warnings[0]["message"]


def _embedder_replicas(app: str) -> list[str]:
    import ray

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["name"].startswith("SERVE_REPLICA::") and f"{app}#Embedder#" in a["name"])


def test_losing_one_of_two_embedder_replicas_fails_at_most_the_requests_in_flight(faults):
    import threading

    import ray
    from ray import serve

    replicas = _embedder_replicas("faults")
    assert len(replicas) == 2, replicas
    clients, per_client = 6, 12
    answers: list[int] = []
    lock = threading.Lock()
    started = threading.Barrier(clients + 1)

    def searcher(n):
        with faults.client() as c:
            started.wait()
            for i in range(per_client):
                # A new text each time: the answer cache must not hide the embedder.
                r = c.get("/faults/api/search", params={"q": f"street photo {n}-{i}", "k": 3})
                with lock:
                    answers.append(r.status_code)

    threads = [threading.Thread(target=searcher, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    started.wait()
    time.sleep(0.5)
    ray.kill(ray.get_actor(replicas[0], namespace="serve"), no_restart=True)
    for t in threads:
        t.join(timeout=300)
    failures = [code for code in answers if code != 200]
    assert len(answers) == clients * per_client
    # At most one request per client can have been in flight on the killed replica.
    assert len(failures) <= clients, answers
    assert 500 not in failures
    deadline = time.monotonic() + 120
    while True:
        status = serve.status().applications["faults"].deployments["Embedder"]
        running = status.replica_states.get("RUNNING", 0)
        if status.status == "HEALTHY" and running == 2:
            break
        assert time.monotonic() < deadline, f"the embedder did not recover: {status}"
        time.sleep(1)
    with faults.client() as c:
        assert c.get("/faults/api/search", params={"q": "after the storm", "k": 3}).status_code == 200


def test_text_route_falls_back_to_the_original_when_the_writer_is_down(faults):
    with faults.client() as c:
        for flag in ("prompt_enhancement", "description"):
            r = c.post("/faults/api/text", json={"text": "海边的日落", "flag": flag})
            assert r.status_code == 200, r.text
            assert r.json()["text"] == "海边的日落" and r.json()["degraded"] is True


def test_a_failing_describer_is_a_503_of_describe_only(faults):
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 200, dtype=np.uint8)).save(buf, format="PNG")
    with faults.client() as c:
        r = c.post("/faults/api/describe", files={"file": ("p.png", buf.getvalue(), "image/png")})
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "describer_unavailable"
        assert int(r.headers["retry-after"]) >= 1
        # Everything else still answers.
        assert c.get("/faults/api/search", params={"q": "beach", "k": 2}).status_code == 200
        assert c.get("/faults/healthz").status_code == 200


def test_a_call_no_replica_could_take_is_told_from_one_a_replica_was_slow_on(ray_cluster):
    """A route's deadline answers 503 + Retry-After when a model call never reached a replica (none
    running: a node lost, replicas restarting) and 504 when a replica took it and was slow
    (Product.deadline). It tells them apart by what Serve's own response records
    (`deployments.service.models.never_assigned`); checked here against Serve itself, with a deployment
    no node can hold and one that sleeps."""
    import asyncio

    from ray import serve

    from deployments.service.models import model_calls, never_assigned, settle

    @serve.deployment(ray_actor_options={"num_cpus": 0.01, "label_selector": {"atelier/pool": "nowhere"}})
    class Unplaceable:
        def __call__(self) -> int:
            return 1

    @serve.deployment(ray_actor_options={"num_cpus": 0.01})
    class Sleepy:
        async def __call__(self) -> int:
            await asyncio.sleep(10)
            return 1

    async def timed_out_unassigned(handle) -> bool:
        calls: list = []
        token = model_calls.set(calls)
        try:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(settle(handle.remote()), timeout=3)
        finally:
            model_calls.reset(token)
        assert len(calls) == 1
        return never_assigned(calls)

    # `serve.run` waits for its app to be RUNNING, which an unplaceable one never is (`blocking` is about
    # looping forever afterwards); run_many can leave it deploying.
    serve.run_many([serve.RunTarget(Unplaceable.bind(), name="unplaceable", route_prefix=None)],
                   wait_for_applications_running=False)
    serve.run(Sleepy.bind(), name="sleepy", route_prefix=None)
    try:
        assert asyncio.run(timed_out_unassigned(serve.get_app_handle("unplaceable"))) is True
        assert asyncio.run(timed_out_unassigned(serve.get_app_handle("sleepy"))) is False
    finally:  # not waited for: nothing after this test depends on these two being gone
        serve.delete("unplaceable", _blocking=False)
        serve.delete("sleepy", _blocking=False)
