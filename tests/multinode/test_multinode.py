"""The service on a real three-node Ray cluster (tests/multinode/conftest.py): placement follows the
config's resource plan, every ingress replica on every node sees the same gallery, and losing a node
(an ingress's and the models', the gallery writer's, the embedding actors' in a bulk ingest) loses
nothing. The node-loss tests run last, in this order; after each loss the test starts a new node in
the lost one's group, as KubeRay would, so the cluster is whole again."""

from __future__ import annotations

import concurrent.futures as cf
import io
import itertools
import threading
import time
import zipfile

import httpx
import pytest

from tests.multinode.conftest import wait_for
from tests.support.sample_photos import jpeg



def test_placement_follows_the_resource_plan(multinode):
    """The GPU-share roles run on the node that declares GPUs, the ingress replicas off it (its
    label_selector), spread over the head and the CPU worker; the capacity command agrees."""
    for role in ("Embedder", "Writer", "Describer", "Painter", "Guard"):
        replicas = multinode.replicas(role)
        assert replicas and {r["node"] for r in replicas} == {"gpu"}, (role, replicas)
        assert all(r["required_resources"].get("GPU", 0) > 0 for r in replicas), replicas
    ingress = multinode.replicas("Ingress")
    assert len(ingress) == 2 and {r["node"] for r in ingress} == {"head", "cpu"}, ingress
    done = multinode.cli("python", "-m", "deployments.capacity", str(multinode.tmp / "serve_config.yaml"),
                         "--nodes", "1x1cpu,1x2gpu+1cpu,1x1cpu")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_replica_on_every_node_sees_an_upload_and_a_delete(multinode):
    store = multinode.key_store()
    _, key = store.add("mallory")
    nodes = {r["node_id"]: r["node"] for r in multinode.replicas("Ingress")}
    seen: dict[str, set[str]] = {}

    def search(c: httpx.Client, img_id: str) -> bool:
        # A new text each time: the answer cache (per replica and in Redis) cannot answer for the gallery.
        r = c.get("/api/search", params={"q": f"a harbour at dawn {next(counter)}", "k": 50})
        assert r.status_code == 200, r.text
        seen.setdefault(r.headers["x-atelier-node"], set()).add(r.headers["x-atelier-replica"])
        return any(hit["img_id"] == img_id for hit in r.json()["results"])

    counter = itertools.count()
    # A fresh connection per request, so the proxy's choice of replica is made anew each time.
    with httpx.Client(base_url=multinode.base, headers={"Authorization": f"Bearer {key}"}, timeout=120,
                      limits=httpx.Limits(max_keepalive_connections=0)) as c:
        for i in range(2):
            up = c.post("/api/images", files={"file": (f"m{i}.jpg", jpeg(500 + i), "image/jpeg")})
            assert up.status_code == 201, up.text
            img_id = up.json()["img_id"]
            # Every search after the 201 finds it, whichever replica answers.
            assert all(search(c, img_id) for _ in range(6))
            assert c.delete(f"/api/images/{img_id}").status_code == 204
            assert not any(search(c, img_id) for _ in range(6))
    # Both replicas, on two nodes, answered.
    assert set(seen) == set(nodes) and len(seen) == 2, (seen, nodes)
    store.revoke("mallory")


def test_a_plans_limit_holds_across_both_ingress_replicas(multinode):
    """A plan of 5 searches a minute admits exactly 5 of 12 sent at once over fresh connections, whichever of
    the two replicas (two nodes, counters in Redis) answers; GPU seconds are charged once for both; a plan change
    counts from the next request."""
    _, key = multinode.key_store().add("trent")
    plans = multinode.plan_store()
    plans.assign("trent", "tiny")

    def search(i: int) -> httpx.Response:
        with httpx.Client(base_url=multinode.base, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
            return c.get("/api/search", params={"q": f"a lighthouse {i}"})

    with cf.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(search, range(12)))
    assert sorted(r.status_code for r in answers) == [200] * 5 + [429] * 7, [r.text for r in answers]
    assert len({r.headers["x-atelier-node"] for r in answers}) == 2  # both replicas counted into one limit
    assert all(r.json()["error"]["code"] == "rate_limited" and int(r.headers["retry-after"]) >= 1
               for r in answers if r.status_code == 429)
    # The Writer's GPU seconds (its replica's measured compute times its 0.25 GPU share) are charged once, in
    # Redis: both replicas report the same use.
    with httpx.Client(base_url=multinode.base, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
        text = c.post("/api/text", json={"text": "a lighthouse at dusk", "flag": "description"})
        assert text.status_code == 200, text.text
    seen: dict[str, float] = {}
    for _ in range(40):
        if len(seen) == 2:
            break
        with httpx.Client(base_url=multinode.base, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
            usage = c.get("/api/me/usage")
            seen[usage.headers["x-atelier-node"]] = {x["limit"]: x for x in usage.json()["limits"]}["gpu-writer"]["used"]
    assert len(seen) == 2 and len(set(seen.values())) == 1 and next(iter(seen.values())) > 0, seen
    plans.assign("trent", "default")
    assert search(99).status_code == 200
    multinode.key_store().revoke("trent")


def test_the_named_ledgers_the_service_depends_on_live_on_the_head(multinode):
    """The stats and idempotency ledgers and the job ledger: a worker node may go at any time, the head
    does not without the cluster. The gallery writer is not pinned there (storage/placement.py says why)."""
    from deployments.service.state import IDEMPOTENCY_ACTOR, STATS_ACTOR
    from pipelines.jobs import ledger_name

    store = multinode.key_store()
    _, key = store.add("trent")
    with httpx.Client(base_url=multinode.base, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
        assert c.post("/api/images", files={"file": ("t.jpg", jpeg(900), "image/jpeg")}).status_code == 201
        assert c.get("/api/init/upload").status_code == 200  # the job ledger, asked
    store.revoke("trent")
    names = multinode.alive_nodes()
    actors = {a["name"]: names.get(a["node_id"]) for a in multinode.state("actors", state="ALIVE") if a.get("name")}
    wanted = {STATS_ACTOR, IDEMPOTENCY_ACTOR, ledger_name({"lancedb_uri": multinode.lancedb})}
    assert wanted <= set(actors), sorted(actors)
    assert {actors[name] for name in wanted} == {"head"}, {n: actors[n] for n in wanted}
    # The gallery writer where serve_config.yaml's storage.writer_label_selector puts it: a CPU worker.
    writers = [name for name in actors if name.startswith("gallery_writer_")]
    assert len(writers) == 1 and actors[writers[0]] == "cpu", {n: actors[n] for n in writers}


class Traffic:
    """`clients` threads, each calling `call(client)` in a loop until `stop()`; every call is kept as
    (started, ended, outcome, Retry-After, answer) with outcome an HTTP status or the transport error."""

    def __init__(self, base: str, key: str, clients: int, call):
        self.base, self.auth, self.call = base, {"Authorization": f"Bearer {key}"}, call
        self.results: list[tuple[float, float, int | str, str | None, dict | None]] = []
        self._stop = threading.Event()
        self._pool = cf.ThreadPoolExecutor(clients)
        self._runs = [self._pool.submit(self._client) for _ in range(clients)]

    def _client(self) -> None:
        # A fresh connection per request: a connection to a lost node's proxy is not reused after the loss.
        with httpx.Client(base_url=self.base, headers=self.auth, timeout=60,
                          limits=httpx.Limits(max_keepalive_connections=0)) as c:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    r = self.call(c)
                    outcome, retry = r.status_code, r.headers.get("retry-after")
                    answer = r.json() if r.headers.get("content-type", "").startswith("application/json") else None
                except httpx.HTTPError as exc:
                    outcome, retry, answer = type(exc).__name__, None, None
                self.results.append((started, time.monotonic(), outcome, retry, answer))

    def stop(self) -> None:
        self._stop.set()
        for run in self._runs:
            run.result()  # a client that raised fails the test here
        self._pool.shutdown()

    def outcomes(self, since: float) -> dict:
        counts: dict = {}
        for started, _, outcome, _, _ in self.results:
            if started >= since:
                counts[outcome] = counts.get(outcome, 0) + 1
        return counts

    def report(self, what: str, kill_started: float, killed_at: float, restored_at: float | None) -> list:
        """Prints and returns the requests in flight at the kill (started before it, ended after it began)."""
        in_flight = [r for r in self.results if r[0] < killed_at and r[1] > kill_started]
        print(f"{what}: {len(self.results)} requests, {len(in_flight)} in flight at the kill "
              f"({sorted(str(r[2]) for r in in_flight)}), started after it: {self.outcomes(killed_at)}; "
              f"restored {(restored_at - killed_at) if restored_at else None!s} s after the kill")
        return in_flight


def models_on(multinode, node: str) -> bool:
    return all({r["node"] for r in multinode.replicas(role)} == {node}
               for role in ("Embedder", "Writer", "Describer", "Painter", "Guard"))


def trip_zip(distinct: int, repeats: int) -> bytes:
    """A zip of `distinct` photos, the first `repeats` of them twice under other names."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(distinct):
            z.writestr(f"trip/{i:04d}.jpg", jpeg(40_000 + i))
        for i in range(repeats):
            z.writestr(f"trip/again-{i:02d}.jpg", jpeg(40_000 + i))
    return buf.getvalue()


@pytest.fixture(scope="module")
def lost_ingress_and_model_nodes(multinode):
    """One loss, two tests. The production shape never puts an ingress and model replicas on one node
    (the ingress keeps off the GPU pool), so losing both is losing two nodes: the `cpu` worker (an
    ingress replica, its proxy, the gallery writer) and the `gpu` worker (every model replica and the
    bulk ingest's embedding actors) are killed whole at the same instant, while six clients search and a
    bulk ingest of 210 files runs; KubeRay's part, a new node in each lost group, is played here."""
    store = multinode.key_store()
    _, key = store.add("victor")
    multinode.plan_store().assign("victor", "load")  # six clients at once: more than the default plan's calls
    distinct, repeats = 200, 10
    with httpx.Client(base_url=multinode.base, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
        for i in range(2):
            assert c.post("/api/images", files={"file": (f"v{i}.jpg", jpeg(700 + i), "image/jpeg")}).status_code == 201
        assert "cpu" in {r["node"] for r in multinode.replicas("Ingress")}
        assert models_on(multinode, "gpu")
        r = c.post("/api/init/upload", files={"file": ("trip.zip", trip_zip(distinct, repeats), "application/zip")})
        assert r.status_code == 202, r.text
        job = r.json()["job_id"]
        progress: list[tuple[float, int]] = []

        def status() -> dict:
            answer = c.get(f"/api/init/upload/{job}").json()
            progress.append((time.monotonic(), answer["done"]))
            return answer

        # The embedding actors exist from the job's start; found first, so that the kill can follow the
        # first stored photos at once (a job this size on an idle cluster is done within seconds more).
        # Filtered here, not by the state API: once its ALIVE filter missed live actors for a whole job.
        embedding = wait_for(lambda: {multinode.node_of(a) for a in multinode.state("actors")
                                      if a.get("state") == "ALIVE" and "MapWorker" in (a.get("class_name") or "")},
                             300, every=0.25, what=
                             lambda: "the job's embedding actors alive (actors: " + repr(sorted(
                                 (a.get("class_name"), a.get("state"), a.get("name"))
                                 for a in multinode.state("actors"))) + f"; job {status()})")
        # Search traffic from here (not through the job's start, which it would only slow down).
        counter = itertools.count()
        traffic = Traffic(multinode.base, key, 6,
                          lambda c: c.get("/api/search", params={"q": f"a quiet street {next(counter)}", "k": 5}))
        try:
            before = wait_for(lambda: (answer := status())["done"] > 0 and answer, 300,
                              "the job storing its first photos")
            kill_started = time.monotonic()
            killed_at = multinode.kill_node("cpu", "gpu")
            gpu = multinode.replace_node("gpu")
            multinode.replace_node("cpu")
            wait_for(lambda: len(multinode.replicas("Ingress")) == 2
                     and "cpu" not in {r["node"] for r in multinode.replicas("Ingress")}, 180, "two ingress replicas again")
            wait_for(lambda: models_on(multinode, gpu), 240, f"every model replica on {gpu}")
            restored = time.monotonic()
            # Searches answer again, on the restored set.
            wait_for(lambda: any(r[0] >= restored and r[2] == 200 for r in traffic.results), 120,
                     "a search answered 200 on the restored replicas")
        finally:
            traffic.stop()
        wait_for(lambda: status()["state"] != "running", 600, "the job ending")
        final = status()
        stored = list_images(c)
    store.revoke("victor")
    traffic.report("ingress + model nodes lost", kill_started, killed_at, restored)
    timeline = ", ".join(f"{t - killed_at:+.0f}s:{done}" for t, done in progress[::5])
    print(f"ingest through the loss: {before['done']} of {distinct} stored at the kill; final {final}; "
          f"stored over time (seconds from the kill: done) {timeline}")
    return {"traffic": traffic, "killed_at": killed_at, "embedding": embedding, "before": before, "final": final,
            "distinct": distinct, "repeats": repeats, "stored": stored}


def test_searches_through_losing_an_ingress_node_and_the_model_node(lost_ingress_and_model_nodes):
    """Requests started after the kill are answered 200, or 503 with Retry-After (no replica for the
    model yet, or one lost under the request), or 504 when the route's own deadline (45 s here) passed
    while the box was busy bringing two nodes back: never a 500, never a hang (the clients' timeout is 60 s);
    those in flight at the kill are counted and reported; Serve brought the ingress back to two replicas
    and every model back, on the new GPU node (the fixture waited for both)."""
    lost = lost_ingress_and_model_nodes
    traffic, killed_at = lost["traffic"], lost["killed_at"]
    after = traffic.outcomes(killed_at)
    assert after and set(after) <= {200, 503, 504}, after
    assert all(r[3] for r in traffic.results if r[0] >= killed_at and r[2] == 503)  # each says when to retry
    assert not [r for r in traffic.results if r[2] == 500], [r[4] for r in traffic.results if r[2] == 500]


def test_a_bulk_ingest_through_losing_its_embedding_node(lost_ingress_and_model_nodes):
    """The embedding actors ran on the GPU node (they ask for a GPU share) and the gallery writer on the
    CPU node: both went mid-job. The job ends `succeeded` with exactly the distinct set stored (0 missing,
    0 duplicated), every file counted once, and its status says which node it lost."""
    lost = lost_ingress_and_model_nodes
    before, final, distinct, repeats = lost["before"], lost["final"], lost["distinct"], lost["repeats"]
    assert lost["embedding"] == {"gpu"}, lost["embedding"]
    assert before["state"] == "running" and 0 < before["done"] < distinct, before
    assert final["state"] == "succeeded", final
    assert (final["total"], final["done"], final["skipped_duplicates"], final["failed"]) == \
        (distinct + repeats, distinct, repeats, 0), final
    assert "node" in (final["message"] or ""), final
    assert len(lost["stored"]) == distinct + 2  # and the two photos uploaded before the job


def list_images(c: httpx.Client) -> set[str]:
    ids: list[str] = []
    cursor = None
    while True:
        page = c.get("/api/images", params={"limit": 100, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        ids += [item["img_id"] for item in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if not cursor:
            break
    assert len(ids) == len(set(ids)), "an image listed twice"
    return set(ids)


def writer_node(multinode) -> str | None:
    actors = [a for a in multinode.state("actors", state="ALIVE") if (a.get("name") or "").startswith("gallery_writer_")]
    return multinode.node_of(actors[0]) if len(actors) == 1 else None


def test_losing_the_gallery_writers_node_loses_no_acknowledged_row(multinode):
    """The writer lives on a CPU worker (storage.writer_label_selector). Its node is killed while four
    clients upload: uploads started after the kill are 201, or 503 with Retry-After, never a 500; the
    writer comes back on the new CPU node (reopening the table from S3), uploads are 201 again, and
    every upload that was answered 201 is in the gallery."""
    store = multinode.key_store()
    _, key = store.add("wendy")
    multinode.plan_store().assign("wendy", "load")
    node = wait_for(lambda: writer_node(multinode), 120, "the gallery writer alive")
    assert multinode.pools[node] == "cpu", node
    seeds = itertools.count(20_000)
    traffic = Traffic(multinode.base, key, 4, lambda c: c.post(
        "/api/images", files={"file": ("w.jpg", jpeg(next(seeds)), "image/jpeg")}))
    try:
        time.sleep(3)
        kill_started = time.monotonic()
        killed_at = multinode.kill_node(node)
        new = multinode.replace_node(node)
        wait_for(lambda: writer_node(multinode) == new, 180, f"the writer on {new}")
        restored = time.monotonic()
        wait_for(lambda: any(r[0] >= restored and r[2] == 201 for r in traffic.results), 120,
                 "an upload answered 201 after the writer came back")
    finally:
        traffic.stop()
    traffic.report("the gallery writer's node lost", kill_started, killed_at, restored)
    after = traffic.outcomes(killed_at)
    assert set(after) <= {201, 503}, after
    assert all(r[3] for r in traffic.results if r[0] >= killed_at and r[2] == 503)
    assert not [r for r in traffic.results if r[2] == 500], [r[4] for r in traffic.results if r[2] == 500]
    acknowledged = {r[4]["img_id"] for r in traffic.results if r[2] == 201}
    with httpx.Client(base_url=multinode.base, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
        stored = list_images(c)
    assert acknowledged <= stored, f"{len(acknowledged - stored)} acknowledged uploads lost"
    store.revoke("wendy")
