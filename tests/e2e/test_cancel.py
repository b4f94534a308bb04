"""Cancellation stops compute (issue 13): a cancelled request frees the Painter at the next denoising
step and the Writer at the next token, on real Serve replicas.

Each role runs here as an application of its own with room for a second call, so that `progress()`
answers while a generation runs (the local graph's Painter takes one request at a time), and the
Writer may not stop before 1024 tokens (the local graph's random-weight Writer may end after 8).
A client hanging up over HTTP reaches the same code: Serve cancels the request through every
handle call it awaits (tests/e2e/test_client_hangup.py covers the HTTP side)."""

from __future__ import annotations

import time

import pytest



@pytest.fixture(scope="module")
def roles(ray_cluster, tiny_kit):
    from ray import serve

    from deployments.serving.roles import PainterDeployment, WriterDeployment

    opts = dict(num_replicas=1, max_ongoing_requests=4, ray_actor_options={"num_cpus": 0.1})
    writer = serve.run(WriterDeployment.options(**opts).bind(
        {"model": str(tiny_kit / "writer"), "num_threads": 1, "min_new_tokens": 1024}),
        name="cancel_writer", route_prefix=None, blocking=False)
    painter = serve.run(PainterDeployment.options(**opts).bind(
        {"model": str(tiny_kit / "painter"), "num_threads": 1}),
        name="cancel_painter", route_prefix=None, blocking=False)
    for handle in (writer, painter):
        handle.call.remote("info").result(timeout_s=300)
    yield {"writer": writer, "painter": painter}
    for name in ("cancel_writer", "cancel_painter"):
        serve.delete(name, _blocking=False)


def _cancel_midway(handle, response) -> tuple[dict, dict]:
    """Wait until the call has done some work, cancel it, wait until the replica says so."""
    before = handle.progress.remote().result()
    deadline = time.monotonic() + 120
    while handle.progress.remote().result()["done"] == before["done"]:
        assert time.monotonic() < deadline, "the call never started"
        time.sleep(0.02)
    response.cancel()
    deadline = time.monotonic() + 60
    while (after := handle.progress.remote().result())["cancelled"] == before["cancelled"]:
        assert time.monotonic() < deadline, "the call was never cancelled on the replica"
        time.sleep(0.05)
    return before, after


def _settled(handle) -> dict:
    """Progress once the interrupted call has stopped counting."""
    last = handle.progress.remote().result()
    while True:
        time.sleep(0.5)
        now = handle.progress.remote().result()
        if now == last:
            return now
        last = now


def test_a_cancelled_generation_stops_denoising_and_frees_the_painter(roles):
    painter, steps = roles["painter"], 50
    start = painter.progress.remote().result()
    response = painter.call.remote("generate", "a slow storm over the sea", size="512x512", steps=steps, seed=1)
    _cancel_midway(painter, response)
    done = _settled(painter)["done"] - start["done"]
    assert 1 <= done < steps, done
    out = painter.call.remote("generate", "next", size="64x64", steps=1, seed=2).result(timeout_s=120)
    assert out["steps"] == 1 and out["png"].startswith(b"\x89PNG")


def test_a_cancelled_answer_stops_the_writer_at_the_next_token(roles):
    writer, asked = roles["writer"], 1024
    start = writer.progress.remote().result()
    response = writer.call.remote("chat", [{"role": "user", "content": "a long story"}], max_new_tokens=asked)
    _cancel_midway(writer, response)
    done = _settled(writer)["done"] - start["done"]
    assert 1 <= done < asked, done
    out = writer.call.remote("chat", [{"role": "user", "content": "hi"}], max_new_tokens=3).result(timeout_s=120)
    assert out.completion_tokens == 3


def test_a_refused_image_of_n_cancels_the_others(ray_cluster, tiny_kit):
    """A request of n images whose later calls the Painter's full queue refuses cancels the calls it
    started: the Painter stops them at their next step instead of painting two images for an answer
    that was already a 503 (issue 29.6)."""
    import asyncio

    from ray import serve
    from ray.serve.exceptions import BackPressureError

    from deployments.service.errors import Overloaded
    from deployments.service.generation import all_or_none
    from deployments.service.models import ServeModels
    from deployments.serving.roles import PainterDeployment

    steps = 40
    painter = serve.run(PainterDeployment.options(num_replicas=1, max_ongoing_requests=1, max_queued_requests=1,
                                                  ray_actor_options={"num_cpus": 0.1}).bind(
        {"model": str(tiny_kit / "painter"), "num_threads": 1}), name="tight_painter", route_prefix=None,
        blocking=False)
    try:
        painter.call.remote("info").result(timeout_s=300)
        models = ServeModels(None, None, None, painter)
        start = painter.progress.remote().result(timeout_s=120)

        async def four() -> dict:
            calls = (models.call("painter", "generate", "a lighthouse", size="64x64", steps=steps, seed=i)
                     for i in range(4))
            with pytest.raises(Overloaded):
                await all_or_none(calls)
            # In the same loop (whose end would cancel what is left anyway): the replica takes this once it
            # has let go of the two admitted calls, cancelled or finished; until the router has seen them go,
            # its one-deep queue refuses this call too (back-pressure), so it is asked again.
            deadline = time.monotonic() + 120
            while True:
                try:
                    return await painter.progress.remote()
                except BackPressureError:
                    assert time.monotonic() < deadline, "the Painter's queue never let go of the refused request"
                    await asyncio.sleep(0.1)

        now = asyncio.run(four())
        # The two admitted calls would have painted 2 x 40 steps; cancelled, they stop well short of it.
        assert now["done"] - start["done"] < 2 * steps, (start, now)
    finally:
        serve.delete("tight_painter", _blocking=False)
