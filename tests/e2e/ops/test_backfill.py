"""A live model switch on the suite's cluster, as an operator runs it: `python -m pipelines.backfill --to`
another embedder of another dimension while users upload, delete and search; then the config flip rolled
out with `serve deploy` and a catch-up run. Search answers throughout. The cluster serves the other model from
then on (the config file the suite started it with says so): only the restart test runs after it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.e2e.ops.test_operator import Operator
from tests.support.sample_photos import jpeg

ROOT = Path(__file__).resolve().parents[3]
USER = "fay"


# After every other test on the suite's cluster (tests/conftest.py), then the restart's (test_restart.py): the
# cluster serves the other model from here on, and the restart brings it up again on that config.
LAST_ON_THE_CLUSTER = 1


@pytest.fixture(scope="module")
def operator(ray_cluster):
    return Operator(ray_cluster)


class Searcher(threading.Thread):
    """One user searching all along (distinct queries, so no cache answers): every answer is kept with its
    time, and every 200 must hold results: the user has images whichever model's table answers."""

    def __init__(self, base: str, key: str):
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        self.stop, self.statuses, self.empty = threading.Event(), Counter(), 0
        self.problems: list[str] = []
        self.answers: list[tuple[float, int]] = []

    def run(self) -> None:
        n = 0
        while not self.stop.is_set() and n < 5000:
            n += 1
            try:
                r = self.client.get("/api/search", params={"q": f"海边 {n}" if n % 2 else f"harbour {n}", "k": 3})
            except httpx.HTTPError as exc:
                self.problems.append(f"{type(exc).__name__}: {exc}")
                continue
            self.statuses[r.status_code] += 1
            self.answers.append((time.monotonic(), r.status_code))
            if r.status_code == 200:
                self.empty += not r.json()["results"]
            elif r.status_code == 503 and "Retry-After" not in r.headers:
                self.problems.append(f"503 without Retry-After: {r.text[:200]}")
            elif r.status_code not in (503, 504):
                self.problems.append(f"{r.status_code}: {r.text[:200]}")
            time.sleep(0.05)


def backfill(operator, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "pipelines.backfill", "--address", f"127.0.0.1:{operator.gcs}",
                          "--config", str(operator.config), *args], cwd=ROOT, env=operator.shell,
                         capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return json.loads(out.stdout[out.stdout.index("{"):])


def table_keys(operator, model: str, dim: int) -> set[tuple[str, str]]:
    from storage.gallery import Gallery
    from storage.settings import StorageSettings

    gallery = Gallery.open(StorageSettings(lancedb_uri=str(operator.tmp / "lancedb")), dim=dim, embed_model=model)
    tbl = gallery.table.search().select(["user_id", "content_hash"]).limit(None).to_arrow()
    pairs = list(zip(tbl.column("user_id").to_pylist(), tbl.column("content_hash").to_pylist()))
    assert len(pairs) == len(set(pairs)), "a model's table holds one row per user and content"
    return set(pairs)


def test_a_live_model_switch_moves_every_image_while_search_answers(operator, tiny_kit):
    from deployments.http.auth import key_store
    from models import EmbedderConfig
    from pipelines.config import embedder_shape

    key = key_store().add(USER)[1]
    old, new = str(tiny_kit / "embedder"), str(tiny_kit / "embedder_chinese_clip")
    old_dim, new_dim = embedder_shape(EmbedderConfig(model=old))[0], embedder_shape(EmbedderConfig(model=new))[0]
    assert old_dim != new_dim  # two tables that could never be searched with each other's vectors
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=operator.base, headers=auth, timeout=120) as c:
        ids = [c.post("/api/images", files={"file": (f"p{i}.jpg", jpeg(9100 + i), "image/jpeg")},
                      data={"caption": "海边的日落"}).json()["img_id"] for i in range(12)]
        searcher = Searcher(operator.base, key)
        searcher.start()
        try:
            # The backfill runs while the user uploads two more and deletes one.
            job = subprocess.Popen([sys.executable, "-m", "pipelines.backfill", "--address",
                                    f"127.0.0.1:{operator.gcs}", "--config", str(operator.config), "--to", new],
                                   cwd=ROOT, env=operator.shell, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
            time.sleep(2)
            for i in (12, 13):
                assert c.post("/api/images", files={"file": (f"p{i}.jpg", jpeg(9100 + i), "image/jpeg")}).status_code == 201
            assert c.delete(f"/api/images/{ids[0]}").status_code == 204
            out, err = job.communicate(timeout=400)
            assert job.returncode == 0, out[-2000:] + err[-3000:]
            first = json.loads(out[out.index("{"):])
            assert first["state"] == "succeeded" and first["missing"] == 0 and first["duplicated"] == 0, first
            # Its catch-up passes took what was stored meanwhile; run again, it finds nothing left to copy,
            # and both tables hold the same images: every user's, the deleted one in neither.
            again = backfill(operator, "--to", new)
            assert again["copied"] == 0 and again["missing"] == 0, again
            assert table_keys(operator, new, new_dim) == table_keys(operator, old, old_dim)

            # The flip: the config's embedder is the new model, rolled out (an args edit replaces every replica).
            def to(model):
                return lambda app: app["args"]["embedder"]["model"].update(model=model)

            rollout = [time.monotonic()]
            replicas = operator.replica_ids()
            flipped = operator.cli("serve", "deploy", str(operator.write_config(to(new))),
                                   f"--address={operator.dashboard}")
            assert flipped.returncode == 0, flipped.stderr
            operator.wait_running(lambda: _embedder_dim(operator.base, auth) == new_dim and
                                  operator.replica_ids()["Ingress"].isdisjoint(replicas["Ingress"]))
            rollout.append(time.monotonic())
            now = operator.replica_ids()
            for name, before in replicas.items():  # an args edit is a new code version: every replica replaced
                assert before.isdisjoint(now[name]), name
            assert c.post("/api/images", files={"file": ("p14.jpg", jpeg(9114), "image/jpeg")}).status_code == 201
            caught_up = backfill(operator, "--from", old, "--to", new)  # what old replicas stored during the rollout
            assert caught_up["missing"] == 0 and caught_up["duplicated"] == 0, caught_up
            mine_new = {h for u, h in table_keys(operator, new, new_dim) if u == USER}
            assert len(mine_new) == 12 + 2 - 1 + 1  # 0 missing, 0 duplicated, the deleted one not back
            listed = {r["img_id"] for r in c.get("/api/images", params={"limit": 100}).json()["items"]}
            assert len(listed) == len(mine_new) and ids[0] not in listed and set(ids[1:]) <= listed

            time.sleep(1)  # the searcher's last queries go to the new model's replicas only
        finally:
            searcher.stop.set()
            searcher.join(timeout=120)
    assert not searcher.problems, searcher.problems[:5]  # never a 500, a 503 without Retry-After, a dropped request
    assert searcher.statuses[200] > 20 and searcher.empty == 0, (searcher.statuses, searcher.empty)
    # Outside the rollout every search is a 200. While it runs, five replicas start on these two cores beside
    # the serving ones, and a search may pass its deadline: that is our JSON 504 (counted here), never a 500.
    outside = Counter(s for t, s in searcher.answers if not rollout[0] <= t <= rollout[-1])
    assert set(outside) == {200}, outside
    print(f"searches: {dict(searcher.statuses)}; during the rollout: "
          f"{dict(Counter(s for t, s in searcher.answers if rollout[0] <= t <= rollout[-1]))}")
    statuses = json.loads(subprocess.run([sys.executable, "-m", "pipelines.backfill", "--config", str(operator.config),
                                          "--status"], cwd=ROOT, env=operator.shell, capture_output=True, text=True,
                                         timeout=120).stdout)
    assert (old, new, "succeeded") in {(s["source"], s["target"], s["state"]) for s in statuses}


def _embedder_dim(base: str, auth: dict) -> int:
    """The served embedder's dimension, from the OpenAI surface (what a client of it sees)."""
    r = httpx.post(base + "/v1/embeddings", headers=auth, json={"model": "atelier-embedder", "input": "x"}, timeout=30)
    return len(r.json()["data"][0]["embedding"]) if r.status_code == 200 else -1
