"""One user against another (issue 29): a victim's searches and generations alone, then while an abuser floods
the service, first on a plan with no limits, then on serve_config.yaml's `default` plan (rates and calls at
once per role), in one run on the local graph.

    .venv/bin/python -m benchmarks.bench_tenants [--phase-s 45] [--generators 20] [--embedders 20]
        [--strings 256] [--photos 300] [--gallery 40] [--no-write]

The local graph (serve_config.local.yaml's app: tiny kit, resources for 2 cores) on a temp data folder; the
ingress's plans are `default` (no limit: where the abuser starts) and `fair` (serve_config.yaml's `default`
plan, taken from the file). The abuser is moved between them with the plan table, live, as
`python -m deployments.keys plan` does.

Per phase, `--phase-s` seconds: the victim searches one query after another (`GET /api/search`, k=5) and
asks for a small generation every 5 s. In the two flood phases the abuser runs at the same time
`--generators` loops of `POST /api/generate/image` (4 steps), `--embedders` loops of `POST /v1/embeddings`
with `--strings` strings each, and one bulk ingest of `--photos` photos (a zip to `POST /api/init/upload`,
cancelled at the phase's end if still running).

Answers before speeds (benchmarks.checks): every victim search 200 with k hits of their own gallery, no
answer to anyone a 5xx other than 503, the ingest accepted (202); the victim's generations and the
abuser's answers are counted by status (the result, not a check). Otherwise the run exits 3 and writes
nothing to benchmarks/RESULTS.md ("One user against another").

Goal (issue 29): the victim's search p95 at most 1.5x alone, and every victim generation admitted (no 503)
while the abuser gets 429s.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import zipfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.checks import check, check_hits, run  # noqa: E402
from benchmarks.local_graph import start  # noqa: E402
from benchmarks.results_md import publish  # noqa: E402

SECTION = "## One user against another: plans under a flood (issue 29)"
QUERIES = ["harbour at dusk", "a red car", "mountain lake", "城市夜景", "a cat on a sofa", "海边的日落"]


def fair_plan() -> dict:
    """serve_config.yaml's `default` plan (the Ingress's user_config), as the production service runs it."""
    import yaml

    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    for dep in config["applications"][0]["deployments"]:
        if dep["name"] == "Ingress":
            return dep["user_config"]["plans"]["default"]
    raise RuntimeError("serve_config.yaml has no Ingress user_config")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


class Abuser:
    """The flood: generation and embedding loops in threads, and one bulk ingest, until `stop`."""

    def __init__(self, base: str, key: str, args, phase: int):
        self.base, self.key, self.args, self.phase = base, key, args, phase
        self.stop = threading.Event()
        self.statuses: Counter = Counter()
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.job_id: str | None = None
        self.wrong: list[str] = []

    def _count(self, what: str, status: int) -> None:
        with self.lock:
            self.statuses[(what, status)] += 1

    def _loop(self, what: str, send) -> None:
        import httpx

        with httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.key}"}, timeout=300) as c:
            i = 0
            while not self.stop.is_set():
                r = send(c, i)
                self._count(what, r.status_code)
                if r.status_code >= 500 and r.status_code != 503:  # checked by end(), in the main thread
                    self.wrong.append(f"the abuser's {what} answered {r.status_code}: {r.text[:300]}")
                if r.status_code in (429, 503):  # a client that honours Retry-After, as the openai one does
                    self.stop.wait(min(5.0, float(r.headers.get("retry-after", "1"))))
                i += 1

    def start(self) -> None:
        import httpx

        from tests.support.sample_photos import jpeg

        a = self.args

        def generate(c, i):
            return c.post("/api/generate/image", json={"text": f"a storm {self.phase}-{i}", "size": "small",
                                                       "steps": 4, "enhance": False, "save_to_gallery": False})

        def embed(c, i):
            return c.post("/v1/embeddings", json={"model": "atelier-embedder",
                                                  "input": [f"abuse {self.phase} {i} {j}" for j in range(a.strings)]})

        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for i in range(a.photos):
                z.writestr(f"flood/{i}.jpg", jpeg(500_000 + 10_000 * self.phase + i))
        with httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.key}"}, timeout=300) as c:
            r = c.post("/api/init/upload", files={"file": ("flood.zip", buf.getvalue(), "application/zip")})
        self._count("ingest", r.status_code)
        check(r.status_code in (202, 429), f"the abuser's ingest answered {r.status_code}: {r.text[:300]}")
        self.job_id = r.json().get("job_id") if r.status_code == 202 else None
        for what, send, n in (("generate", generate, a.generators), ("embeddings", embed, a.embedders)):
            for _ in range(n):
                t = threading.Thread(target=self._loop, args=(what, send), daemon=True)
                t.start()
                self.threads.append(t)

    def end(self) -> None:
        import httpx

        self.stop.set()
        for t in self.threads:
            t.join()
        check(not self.wrong, "; ".join(self.wrong[:3]))
        if self.job_id:
            with httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.key}"}, timeout=120) as c:
                c.delete(f"/api/init/upload/{self.job_id}")
                deadline = time.monotonic() + 120
                while c.get(f"/api/init/upload/{self.job_id}").json().get("state") not in \
                        ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
                    time.sleep(0.5)


def victim_phase(base: str, key: str, args) -> dict:
    """The victim's searches (one after another) and a generation every 5 s, for `--phase-s` seconds."""
    import httpx

    latencies: list[float] = []
    generations: Counter = Counter()
    stop = threading.Event()

    wrong: list[str] = []

    def generate_every_5s():
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=300) as c:
            i = 0
            while not stop.wait(0 if i == 0 else 5):
                r = c.post("/api/generate/image", json={"text": f"a quiet harbour {i}", "size": "small", "steps": 2,
                                                        "enhance": False, "save_to_gallery": False})
                if r.status_code >= 500 and r.status_code != 503:  # checked below, in the main thread
                    wrong.append(f"the victim's generation answered {r.status_code}: {r.text[:300]}")
                generations[r.status_code] += 1
                i += 1

    painter = threading.Thread(target=generate_every_5s, daemon=True)
    painter.start()
    end = time.monotonic() + args.phase_s
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=300) as c:
        i = 0
        while time.monotonic() < end:
            t0 = time.perf_counter()
            r = c.get("/api/search", params={"q": QUERIES[i % len(QUERIES)], "k": 5})
            took = time.perf_counter() - t0
            check(r.status_code == 200, f"the victim's search answered {r.status_code}: {r.text[:300]}")
            check_hits("the victim's search", r.json()["results"], 5)
            latencies.append(took * 1000)
            i += 1
    stop.set()
    painter.join()
    check(not wrong, "; ".join(wrong[:3]))
    return {"latencies": latencies, "generations": generations}


def main(argv: list[str] | None = None) -> int:
    import httpx
    import ray
    from ray import serve

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_tenants", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase-s", type=float, default=45)
    parser.add_argument("--generators", type=int, default=20)
    parser.add_argument("--embedders", type=int, default=20)
    parser.add_argument("--strings", type=int, default=256)
    parser.add_argument("--photos", type=int, default=300)
    parser.add_argument("--gallery", type=int, default=40, help="photos in the victim's gallery")
    parser.add_argument("--port", type=int, default=8133)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    from tests.support.sample_photos import jpeg

    fair = fair_plan()
    tuning = {"plans": {"default": {}, "fair": fair}}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base, victim = start(Path(tmp), port=args.port, tuning=tuning)
        try:
            from deployments.http.auth import key_store, plan_store

            abuser = key_store().add("abuser")[1]
            plans = plan_store()
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {victim}"}, timeout=300) as c:
                for i in range(args.gallery):
                    r = c.post("/api/images", files={"file": (f"v{i}.jpg", jpeg(40_000 + i), "image/jpeg")})
                    check(r.status_code == 201, f"the victim's upload answered {r.status_code}: {r.text[:300]}")
            phases = [("victim alone", None), ("abuser on a plan with no limits", "default"),
                      ("abuser on serve_config.yaml's default plan", "fair")]
            for n, (label, plan) in enumerate(phases):
                flood = None
                if plan is not None:
                    plans.assign("abuser", plan)
                    flood = Abuser(base, abuser, args, n)
                    flood.start()
                print(f"phase: {label}", file=sys.stderr, flush=True)
                seen = victim_phase(base, victim, args)
                if flood is not None:
                    flood.end()
                check(seen["latencies"], f"{label}: the victim's searches got no answer")
                rows.append({"label": label, **seen, "abuser": dict(flood.statuses) if flood else {}})
        finally:
            serve.shutdown()
            ray.shutdown()

    alone = rows[0]
    solo_p95 = pct(alone["latencies"], 95)

    def answers(counts: dict, what: str) -> str:
        mine = {s: n for (w, s), n in counts.items() if w == what}
        return ", ".join(f"{s}: {n}" for s, n in sorted(mine.items())) or "-"

    cmd = (f"`.venv/bin/python -m benchmarks.bench_tenants --phase-s {args.phase_s:g} --generators {args.generators} "
           f"--embedders {args.embedders} --strings {args.strings} --photos {args.photos} --gallery {args.gallery}`")
    limits = ", ".join(f"{k} {v}" for k, v in fair.get("requests", {}).items())
    caps = ", ".join(f"{k} {v}" for k, v in fair.get("concurrent", {}).items())
    lines = [
        SECTION, "",
        f"The local graph (serve_config.local.yaml: tiny kit, one replica of each role, resources for 2 cores). A victim "
        f"with {args.gallery} photos searches one query after another and asks for a small generation (2 steps) "
        f"every 5 s, for {args.phase_s:g} s per phase. The abuser runs {args.generators} generation loops (4 steps), "
        f"{args.embedders} `/v1/embeddings` loops of {args.strings} strings and one bulk ingest of {args.photos} "
        "photos (cancelled at the phase's end), each loop waiting out a 429's or 503's Retry-After as the openai "
        f"client does. `fair` is serve_config.yaml's default plan: requests {limits}; calls at once {caps}.",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, no GPU; {time.strftime('%Y-%m-%d')}. Command: {cmd}.",
        "",
        "| phase | victim searches | search p50 ms | search p95 ms | p95 / alone | victim generations | "
        "abuser generations | abuser embeddings | abuser ingest |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lat = r["latencies"]
        gens = ", ".join(f"{s}: {n}" for s, n in sorted(r["generations"].items()))
        lines.append(f"| {r['label']} | {len(lat)} | {statistics.median(lat):.1f} | {pct(lat, 95):.1f} | "
                     f"{pct(lat, 95) / solo_p95:.2f}x | {gens} | {answers(r['abuser'], 'generate')} | "
                     f"{answers(r['abuser'], 'embeddings')} | {answers(r['abuser'], 'ingest')} |")
    lines += ["", "Goal (issue 29): the victim's search p95 at most 1.5x alone, every victim generation admitted "
              "(no 503) while the abuser gets 429s. Answers are counted by HTTP status."]
    publish(SECTION, lines, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
