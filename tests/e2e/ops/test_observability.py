"""Observability with real parts (issue 13): Debian's Prometheus scrapes this suite's Ray node, traffic
exercises every panel of deployments/observability/grafana-dashboard.json (successes, 4xx, overload
503s, a user over a plan's limit, a succeeded ingest with a bad file and a failed ingest), and each panel's every expression, run
in that Prometheus over the test's window, has a non-zero sample. The alert rules pass promtool."""

from __future__ import annotations

import concurrent.futures as cf
import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import _free_port

ROOT = Path(__file__).resolve().parents[3]
OBS = ROOT / "deployments" / "observability"


def panel_targets() -> list[tuple[str, str]]:
    dashboard = json.loads((OBS / "grafana-dashboard.json").read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] if panel["type"] != "row"
            for target in panel["targets"]]


def test_alert_rules_pass_promtool():
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with Debian's prometheus package: `make deps` installs it"
    check = subprocess.run([promtool, "check", "rules", "alerts.yaml"], cwd=OBS, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    tested = subprocess.run([promtool, "test", "rules", "alerts_test.yaml"], cwd=OBS, capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_dashboard_is_grafana_json_with_at_least_8_panels():
    targets = panel_targets()
    assert len({title for title, _ in targets}) >= 8
    assert not any("vector(0)" in expr for _, expr in targets)  # no panel made non-empty by an escape


class Prometheus:
    def __init__(self, tmp: Path, metrics_port: int):
        binary = shutil.which("prometheus")
        assert binary, "Debian's prometheus package: `make deps` installs it"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            # Ray's export of a node that has run the suite is megabytes: give a scrape time to finish.
            "global": {"scrape_interval": "3s", "scrape_timeout": "3s", "evaluation_interval": "3s"},
            "rule_files": [str(OBS / "alerts.yaml")],
            "scrape_configs": [{"job_name": "ray", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
        }))
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=open(tmp / "prometheus.log", "wb"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/-/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("prometheus did not become ready: " + (tmp / "prometheus.log").read_text()[-2000:])

    def range(self, expr: str, start: float) -> list[float]:
        r = httpx.get(self.url + "/api/v1/query_range", timeout=30,
                      params={"query": expr, "start": start, "end": time.time(), "step": "2s"})
        assert r.status_code == 200, (expr, r.text)
        return [float(v) for series in r.json()["data"]["result"] for _, v in series["values"]]

    def names(self) -> set[str]:
        r = httpx.get(self.url + "/api/v1/label/__name__/values", timeout=30)
        return set(r.json()["data"])

    def targets(self) -> list:
        r = httpx.get(self.url + "/api/v1/targets", timeout=30)
        return [(t["scrapeUrl"], t["health"], t["lastError"]) for t in r.json()["data"]["activeTargets"]]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def prometheus(ray_cluster, tmp_path_factory):
    prom = Prometheus(tmp_path_factory.mktemp("prometheus"), ray_cluster.metrics_port)
    yield prom
    prom.stop()


def _trial_user() -> str:
    """A key of a user on the config's `trial` plan (10 texts a minute, a GPU-second budget), for the plan panels."""
    from deployments.http.auth import key_store, plan_store

    plan_store().assign("tess", "trial")
    return key_store().add("tess")[1]


def _traffic(service, round_no: int, trial_key: str) -> None:
    """One round of what a day brings: successes on every role, a 4xx, an overload, a cancelled call, and
    a user over their plan's limit."""
    from tests.support.sample_photos import jpeg

    photo = jpeg(7000 + round_no)
    with service.client("alice") as c:
        assert c.post("/api/images", files={"file": (f"r{round_no}.jpg", photo, "image/jpeg")}).status_code in (200, 201)
        assert c.get("/api/search", params={"q": f"harbour {round_no}", "k": 3}).status_code == 200
        assert c.post("/v1/embeddings", json={"model": "atelier-embedder",
                                              "input": [f"a {round_no}", f"b {round_no}"]}).status_code == 200
        assert c.post("/api/describe", files={"file": ("d.jpg", photo, "image/jpeg")}).status_code == 200
        # The Describer refuses a blank instruction: a 400, and a "rejected" call of that role.
        refused = c.post("/api/describe", files={"file": ("d.jpg", photo, "image/jpeg")}, data={"instruction": "  "})
        assert refused.status_code == 400, refused.text
        assert c.get("/api/images/not-a-real-id").status_code == 404
        assert c.get("/api/search", params={"q": "x", "k": 0}).status_code == 400
    # A trial user over the plan's 10 texts a minute: counted before the body is read (each `{}` is a 400
    # while the window has room), so the 11th of a round, and all of the next rounds', are 429s.
    with httpx.Client(base_url=service.base_url, headers={"Authorization": f"Bearer {trial_key}"}, timeout=60) as t:
        codes = [t.post("/api/text", json={}).status_code for _ in range(11)]
        assert set(codes) <= {400, 429} and codes[-1] == 429, codes
        # A small generation on the trial plan's GPU-second budget: charged to the plan (3 a minute: later
        # rounds may be 429s, and a 503 while the last round's overload still fills the Painter).
        painted = t.post("/api/generate/image", json={"text": f"a kite {round_no}", "size": "64x64", "steps": 2,
                                                      "enhance": False, "save_to_gallery": False})
        assert painted.status_code in (200, 429, 503), painted.text
    # A stranger: the proxy's gate answers from the headers, no replica sees it.
    assert httpx.get(service.base_url + "/api/images", timeout=60).status_code == 401
    assert httpx.get(service.base_url + "/api/images", headers={"Authorization": "Bearer atl_000000000000_nope"},
                     timeout=60).status_code == 401

    # Overload: 12 generations at once against the Painter's 1 slot + 4 queued, long enough (40
    # steps each) that the queue is still there at the next scrape.
    def generate(i: int) -> int:
        with service.client("alice") as c:
            return c.post("/api/generate/image", json={"text": f"a storm {round_no}", "size": "large",
                                                       "save_to_gallery": False, "seed": i, "steps": 40}).status_code

    with cf.ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(generate, range(12)))
    assert 500 not in codes and set(codes) <= {200, 429, 503}, codes


def _ingest(service, tiny_kit, tmp: Path) -> None:
    """A succeeded job with one refused file, through the API, and a failed job, through the command line's
    driver against a gallery table it cannot open."""
    import ray
    from tests.support.sample_photos import jpeg, job_on_an_unopenable_gallery

    from pipelines.jobs import ledger
    from pipelines.run import run_job
    from pipelines.spec import JobSpec

    # A few files: the ingress stores them itself (a small job), under the same ledger and metrics as a Ray
    # Data job's, without a Ray Data start-up.
    files = [("files", (f"obs-{i}.jpg", jpeg(91_000 + i), "image/jpeg")) for i in range(4)]
    files.append(("files", ("broken.jpg", b"not a jpeg at all", "image/jpeg")))
    with service.client("alice") as c:
        r = c.post("/api/init/upload", files=files)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        deadline = time.monotonic() + 180
        while (status := c.get(f"/api/init/upload/{job_id}").json())["state"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, status
            time.sleep(0.5)
    assert status["state"] == "succeeded" and status["failed"] == 1, status

    spec, _ = job_on_an_unopenable_gallery(tmp, tiny_kit, "obs-user", 2, 92_000)
    jobs = ledger(spec.storage)  # that gallery's ledger: its counters' zeros exported and scraped before the job
    ray.get(jobs.list.remote("nobody"))
    time.sleep(4)
    assert ray.get(jobs.open.remote(spec.model_dump(), True))["action"] != "conflict"
    assert run_job(JobSpec.model_validate(spec.model_dump()), console=False)["state"] == "failed"


def test_prometheus_sees_every_panel_after_traffic(prometheus, service, ray_cluster, tiny_kit, tmp_path):
    import ray

    start = time.time()
    # The job ledger (a long-lived actor) starts its counters at zero; Prometheus must have seen the
    # zero before the first increment for rate() to count it, as it has in a running service.
    ray.get(ray_cluster.ledger().list.remote("nobody"))
    deadline = time.monotonic() + 60
    while not prometheus.range('ray_atelier_ingest_jobs_ended_total{state="failed"}', start):
        assert time.monotonic() < deadline, ("the ledger's counters never reached Prometheus", prometheus.targets(),
                                             sorted(n for n in prometheus.names() if "atelier" in n))
        time.sleep(1)
    targets = panel_targets()
    trial_key = _trial_user()
    # The ingests (a job's workers start, a failed job's retries) run beside the traffic rounds. A
    # counter's first sample is its first increment, which rate() cannot see: every panel needs two
    # rounds, a scrape apart.
    with cf.ThreadPoolExecutor(1) as background:
        ingested = background.submit(_ingest, service, tiny_kit, tmp_path)
        _traffic(service, 0, trial_key)
        time.sleep(4)  # a report (1 s) and a scrape (3 s)
        _traffic(service, 1, trial_key)
        ingested.result()
    def missing_panels() -> list[tuple[str, str]]:
        return [(title, expr) for title, expr in targets if not any(v > 0 for v in prometheus.range(expr, start))]

    for round_no in range(2, 10):
        waited = time.monotonic() + 8  # a report and two scrapes, looked at every 2 s
        while (missing := missing_panels()) and time.monotonic() < waited:
            time.sleep(2)
        if not missing:
            break
        _traffic(service, round_no, trial_key)
    assert not missing, ("panels with no non-zero sample after traffic:\n" + "\n".join(f"{t}: {e}" for t, e in missing),
                         prometheus.targets())

    names = prometheus.names()
    for name in ("ray_atelier_model_requests_total", "ray_atelier_model_latency_s_bucket",
                 "ray_atelier_http_requests_total", "ray_atelier_http_latency_s_bucket",
                 "ray_atelier_painter_steps_total", "ray_atelier_writer_tokens_total",
                 "ray_atelier_ingest_rows_total", "ray_atelier_ingest_jobs_ended_total", "ray_atelier_ingest_jobs",
                 "ray_atelier_ingest_stale_jobs", "ray_atelier_gate_refusals_total",
                 "ray_atelier_limit_events_total", "ray_atelier_plan_gpu_seconds_total",
                 "ray_atelier_model_gpu_seconds_total"):
        assert name in names, name
    # The rules load in this Prometheus too.
    rules = httpx.get(prometheus.url + "/api/v1/rules", timeout=30).json()["data"]["groups"]
    assert {r["name"] for g in rules for r in g["rules"]} >= {"AtelierHighErrorRatio", "AtelierIngestJobsStale",
                                                            "AtelierLimitsDegraded"}
