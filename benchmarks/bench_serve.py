"""Issue 5 benchmarks: Embedder throughput batched versus batch size 1 under 32 concurrent callers, and the
latency Serve's HTTP hop adds to a no-op FastAPI route (default proxy, HAProxy ingress) over plain uvicorn.

    .venv/bin/python -m benchmarks.bench_serve             # everything; writes a section of benchmarks/RESULTS.md
    .venv/bin/python -m benchmarks.bench_serve --only hop  # one half; --help for the knobs

Every measurement runs in a subprocess with its own Ray session: Ray reads RAY_SERVE_ENABLE_HA_PROXY only
when it starts, and one part failing (HAProxy is new in Ray) must not hide the others' numbers. Wrong
answers are another matter (benchmarks.checks): every embedding must be one vector of the model's width,
every `/noop` answer 200 with the app's body; a part that sees otherwise exits 3, is not retried, and the
run exits 3 without writing RESULTS.md (serve_report.verify checks the results, --render-only's too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python benchmarks/bench_serve.py`
    sys.path.insert(0, str(REPO))

DATA = REPO / "benchmarks" / "data"
KITS = {"full": DATA / "kit-full", "tiny": DATA / "kit-tiny"}
CLIENTS = 32
REPLICA_CPUS = 0.5  # logical CPUs per replica; ray.init(num_cpus=4) on 2 cores, so fractions schedule anything

from benchmarks.checks import WRONG_EXIT, BenchmarkWrong, check, run  # noqa: E402
from benchmarks.serve_report import RESULTS, machine, render, summarise, verify, write_section  # noqa: E402
from benchmarks.texts import text_stats, varied_texts  # noqa: E402


# -- shared plumbing ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def worker_env(threads: int) -> dict[str, str]:
    """What every process of a part sees: one torch/OMP thread count, the repo importable, no telemetry."""
    return {
        "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
        "RAY_USAGE_STATS_ENABLED": "0",
    }


def start_ray(threads: int) -> None:
    import ray
    from tenacity import Retrying, stop_after_attempt, wait_fixed

    # A raylet that misses its 30 s start deadline is what a busy shared 2-core machine looks like; try again.
    for attempt in Retrying(stop=stop_after_attempt(3), wait=wait_fixed(10), reraise=True,
                            before_sleep=lambda _: ray.shutdown()):
        with attempt:
            ray.init(address="local", num_cpus=4, num_gpus=0, include_dashboard=False, log_to_driver=False, namespace="bench",
                     runtime_env={"env_vars": worker_env(threads)})


def stop_ray() -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def ensure_kit(size: str) -> Path:
    # The CLIP ViT-B/32 stand-in: what this benchmark measured from the start (its numbers are CLIP's).
    if not (KITS[size] / "embedder_clip" / "config.json").is_file():
        print(f"building the {size} embedder stand-in into {KITS[size]} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "models.kit", "build", "--size", size, "--roles", "embedder_clip",
                        str(KITS[size])], cwd=REPO, check=True, env={**os.environ, **worker_env(2)},
                       stdout=subprocess.DEVNULL)
    return KITS[size]


# -- (a) batching ------------------------------------------------------------------------------------
def embedder_app(kit: Path, threads: int, max_batch_size: int, wait_s: float, batch_log: Path):
    """The production Embedder shell, built through the same typed options as serve_config.yaml."""
    from deployments.config import ActorOptions, BatchOptions, DeploymentOptions, EmbedderSpec
    from models.embedder import EmbedderConfig
    from deployments.serving.roles import EmbedderDeployment

    from benchmarks.batch_log import BatchLoggingEmbedder

    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "BENCH_BATCH_LOG": str(batch_log)}
    spec = EmbedderSpec(
        model=EmbedderConfig(model=str(kit / "embedder_clip"), num_threads=threads, device="cpu"),
        batching=BatchOptions(max_batch_size=max_batch_size, batch_wait_timeout_s=wait_s),
        deployment=DeploymentOptions(
            num_replicas=1, max_ongoing_requests=2 * CLIENTS, max_queued_requests=8 * CLIENTS,
            ray_actor_options=ActorOptions(num_cpus=REPLICA_CPUS, runtime_env={"env_vars": env})),
    )
    return EmbedderDeployment.options(**spec.deployment.serve_options(), user_config=spec.batching.model_dump()).bind(
        spec.model.model_dump(), BatchLoggingEmbedder)


async def drive_embedder(handle, texts: list[str], warmup_s: float, seconds: float, dim: int) -> dict:
    """CLIENTS asyncio callers, each awaiting one text at a time; counts completions after the warm-up."""
    start = time.perf_counter()
    window = (start + warmup_s, start + warmup_s + seconds)
    wall = time.time() + warmup_s
    done: list[tuple[float, float]] = []
    dims: set[int] = set()

    async def caller(i: int) -> None:
        k = i
        while time.perf_counter() < window[1]:
            text = texts[k % len(texts)]
            k += CLIENTS
            t0 = time.perf_counter()
            _, vector = await handle.call.remote("text_vector", text)  # a Vector: (model id, values)
            t1 = time.perf_counter()
            dims.add(len(vector))
            done.append((t1, t1 - t0))

    await asyncio.gather(*(caller(i) for i in range(CLIENTS)))
    inside = [lat for t, lat in done if window[0] <= t <= window[1]]
    check(dims == {dim}, f"the embedder answered vectors of sizes {sorted(dims)}, expected {dim}")
    check(inside, f"no embedding finished inside the {seconds} s window")
    return {"requests": len(inside), "rps": len(inside) / seconds, "window": (wall, wall + seconds),
            "p50_ms": 1e3 * percentile(inside, 50), "p99_ms": 1e3 * percentile(inside, 99),
            "load": os.getloadavg()[0]}


def model_alone(kit: Path, threads: int, texts: list[str], rounds: int, batch: int) -> dict:
    """The same model called in-process, no Serve, on the same 4 batches' worth of texts in every mode: what
    batching can buy on this CPU at best. `sorted` groups texts of similar token counts into each batch, which
    shows what padding a mixed batch to its longest text costs.
    """
    import numpy as np
    import torch

    from models.embedder import Embedder, EmbedderConfig

    model = Embedder(EmbedderConfig(model=str(kit / "embedder_clip"), num_threads=threads, device="cpu"))
    model.warmup()
    torch.set_num_threads(threads)
    sample = texts[: 4 * batch]
    tok = model._processor.tokenizer
    by_length = sorted(sample, key=lambda t: len(tok(t)["input_ids"]))

    def chunks(pool: list[str], size: int) -> list[list[str]]:
        return [pool[i:i + size] for i in range(0, len(pool), size)]

    modes = {"batched": chunks(sample, batch), "sorted": chunks(by_length, batch), "batch1": chunks(sample, 1)}
    for mode, pool in modes.items():  # every mode embeds every text, one unit vector of the model's width each
        out = np.concatenate([model.embed_texts(chunk) for chunk in pool])
        check(out.shape == (len(sample), model.dim) and np.isfinite(out).all()
              and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-3),
              f"model alone, {mode}: vectors of shape {out.shape}, expected {(len(sample), model.dim)} unit ones")
    runs = []
    for r in range(rounds):
        row = {}
        for mode in (list(modes) if r % 2 == 0 else list(reversed(modes))):
            t0 = time.perf_counter()
            for chunk in modes[mode]:
                model.embed_texts(chunk)
            row[mode] = len(sample) / (time.perf_counter() - t0)
        runs.append(row)
    return {f"{m}_rps": statistics.median(r[m] for r in runs) for m in modes} | {
        "round_ratios": [r["batched"] / r["batch1"] for r in runs], "texts": len(sample), "dim": model.dim}


def part_batching(opts) -> dict:
    from ray import serve

    from benchmarks.batch_log import batches_between

    texts = varied_texts()
    configs = [("full", t) for t in opts.threads] + ([] if opts.no_tiny else [("tiny", opts.threads[0])])
    alone = {f"{size}/{threads}": model_alone(KITS[size], threads, texts, opts.rounds, opts.max_batch_size)
             for size, threads in configs}
    batch_log = Path(tempfile.mkdtemp(prefix="bench-batches-")) / "batches.log"
    modes = {"batched": (opts.max_batch_size, opts.wait_s), "batch1": (1, opts.wait_s)}
    if opts.long_wait_s:
        modes["batched_long_wait"] = (opts.max_batch_size, opts.long_wait_s)
    start_ray(1)
    out = []
    try:
        serve.start(proxy_location="Disabled")  # handles only: no HTTP proxy competing for the 2 cores
        for size, threads in configs:
            kit = KITS[size]
            seconds = opts.seconds if size == "full" else max(3.0, opts.seconds / 2)
            rounds = []
            for r in range(opts.rounds):
                order = list(modes) if r % 2 == 0 else list(reversed(modes))  # alternate: drift hits every mode
                row = {}
                for mode in order:
                    # Same deployment each time: only user_config changes, which Serve applies with reconfigure().
                    handle = serve.run(embedder_app(kit, threads, *modes[mode], batch_log),
                                       name="embed-bench", route_prefix=None)
                    row[mode] = asyncio.run(drive_embedder(handle, texts, opts.warmup_s, seconds,
                                                           alone[f"{size}/{threads}"]["dim"]))
                    row[mode].update(batches_between(batch_log, *row[mode]["window"]))
                    print(f"  {size} threads={threads} round {r + 1} {mode}: {row[mode]['rps']:.1f} req/s, "
                          f"mean batch {row[mode]['mean_batch']:.1f}, load {row[mode]['load']:.1f}", file=sys.stderr)
                row["ratio"] = row["batched"]["rps"] / row["batch1"]["rps"]
                rounds.append(row)
            serve.delete("embed-bench")
            out.append({"size": size, "threads": threads, "seconds": seconds, "rounds": rounds,
                        "alone": alone[f"{size}/{threads}"]})
    finally:
        stop_ray()
        shutil.rmtree(batch_log.parent, ignore_errors=True)
    return {"configs": out, "texts": text_stats(texts, KITS["full"])}


# -- (b) the proxy hop --------------------------------------------------------------------------------
def sequential_latency(base: str, requests: int, warmup: int) -> dict:
    """One client, one keep-alive connection, one request at a time; warm-up requests are not timed."""
    import httpx

    with httpx.Client(base_url=base, timeout=10) as client:
        first = client.get("/noop")
        check(first.status_code == 200 and first.json() == {"ok": True, "service": "noop"},
              f"{base}/noop answered {first.status_code} {first.text[:200]!r}")
        for _ in range(warmup):
            client.get("/noop")
        lat, errors = [], 0
        for _ in range(requests):
            t0 = time.perf_counter_ns()
            r = client.get("/noop")
            lat.append((time.perf_counter_ns() - t0) / 1e6)
            errors += r.status_code != 200 or r.content != first.content
        connections = len(client._transport._pool.connections)  # private, but the only way to see reuse
    check(errors == 0 and len(lat) == requests, f"{base}/noop: {errors} wrong answers of {len(lat)}")
    return {"p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "mean_ms": statistics.fmean(lat),
            "errors": errors, "connections": connections}


def wait_for(url: str, timeout_s: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url, timeout=5)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s}s (last: {last})")


def listening_sockets() -> list[dict]:
    """TCP listeners of this process and everything it started (Ray's daemons and workers, HAProxy)."""
    import psutil

    me = psutil.Process()
    found = []
    for proc in [me, *me.children(recursive=True)]:
        try:
            conns = proc.net_connections(kind="inet")
            cmd = proc.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if cmd and cmd[0].startswith("ray::"):
            label = cmd[0].strip()
        else:
            script = next((Path(a).name for a in cmd[1:] if a.endswith(".py")), "")
            label = " ".join(x for x in (Path(cmd[0]).name if cmd else proc.name(), script) if x)
        found.extend({"ip": c.laddr.ip, "port": c.laddr.port, "process": label}
                     for c in conns if c.status == psutil.CONN_LISTEN)
    return found


def haproxy_facts() -> dict:
    """The `bind` lines of the config Serve generated, and which backend servers HAProxy actually used."""
    import httpx

    root = Path(os.environ["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]).parent
    binds, addresses = [], {}
    for cfg in root.glob("*/haproxy.cfg"):
        section = None
        for line in cfg.read_text().splitlines():
            words = line.split()
            if line and not line[0].isspace():
                section = line.strip()
            elif words[:1] == ["bind"]:
                binds.append({"section": section, "bind": line.strip()})
            elif words[:1] == ["server"] and len(words) > 2:
                addresses[words[1]] = words[2]
    stats = httpx.get(f"http://127.0.0.1:{os.environ['RAY_SERVE_HAPROXY_STATS_PORT']}/stats;csv", timeout=5).text
    header, *rows = stats.lstrip("# ").splitlines()
    keys = header.split(",")
    servers = [dict(zip(keys, row.split(","))) for row in rows]
    used = [{"backend": r["pxname"], "server": r["svname"], "requests": int(r["stot"] or 0),
             "address": addresses.get(r["svname"], "")}
            for r in servers if r["svname"] not in ("FRONTEND", "BACKEND") and r["pxname"].startswith("http-")]
    return {"binds": binds, "servers": used,
            "stats_port": int(os.environ["RAY_SERVE_HAPROXY_STATS_PORT"]),
            "metrics_port": int(os.environ["RAY_SERVE_HAPROXY_METRICS_PORT"])}


def part_hop(opts, haproxy: bool) -> dict:
    from ray import serve

    from benchmarks.noop_app import serve_app

    uv_port, serve_port = free_port(), free_port()
    uvicorn = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "benchmarks.noop_app:app", "--host", "127.0.0.1", "--port", str(uv_port),
         "--log-level", "warning", "--no-access-log"], cwd=REPO, env={**os.environ, **worker_env(1)})
    start_ray(1)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
        serve.run(serve_app(REPLICA_CPUS), name="noop", route_prefix="/")
        targets = {"uvicorn": f"http://127.0.0.1:{uv_port}", "serve": f"http://127.0.0.1:{serve_port}"}
        for base in targets.values():
            wait_for(base + "/noop")
        rounds = []
        for r in range(opts.rounds):
            order = list(targets) if r % 2 == 0 else list(reversed(targets))
            row = {}
            for name in order:
                row[name] = sequential_latency(targets[name], opts.requests, opts.warmup_requests)
                print(f"  {'haproxy' if haproxy else 'proxy'} round {r + 1} {name}: p50 {row[name]['p50_ms']:.2f} "
                      f"p99 {row[name]['p99_ms']:.2f} ms", file=sys.stderr)
            rounds.append(row)
        return {"haproxy": haproxy, "rounds": rounds, "listeners": listening_sockets(),
                "haproxy_facts": haproxy_facts() if haproxy else None}
    finally:
        try:
            stop_ray()
        finally:
            uvicorn.terminate()
            uvicorn.wait(10)


def haproxy_env(workdir: str) -> dict[str, str]:
    """HAProxy mode, with its files and side ports moved off the shared defaults (/tmp/haproxy-serve, 8404, 9101,
    the fallback proxy's 8500), so it neither collides with nor exposes anything of another Ray session here."""
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{workdir}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{workdir}/admin.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": workdir,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{workdir}/server-state",
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{workdir}/metrics.sock",
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
    }


# -- running parts and reporting ----------------------------------------------------------------------
def wait_for_quiet(max_load: float, max_wait_s: float) -> float:
    """Other engineers' suites share these cores: start a part once the 1-min load settles, or stop waiting."""
    t0 = time.monotonic()
    while os.getloadavg()[0] > max_load and time.monotonic() - t0 < max_wait_s:
        time.sleep(10)
    return round(time.monotonic() - t0)


def run_part(part: str, argv: list[str], extra_env: dict[str, str], timeout_s: float, quiet: tuple,
             attempts: int = 2) -> dict:
    """Run one part in a subprocess; a failed part is tried once more (a shared machine loses a raylet now and
    then), and the result says how many tries it took."""
    for attempt in range(1, attempts + 1):
        result = _run_part_once(part, argv, extra_env, timeout_s, quiet)
        result["attempts"] = attempt
        if "error" not in result or result.get("wrong"):  # wrong answers are not the shared machine's luck
            break
        print(f"  {part} failed ({result['error']}), attempt {attempt} of {attempts}", file=sys.stderr)
    return result


def _run_part_once(part: str, argv: list[str], extra_env: dict[str, str], timeout_s: float, quiet: tuple) -> dict:
    waited = wait_for_quiet(*quiet)
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    cmd = [sys.executable, "-m", "benchmarks.bench_serve", "--part", part, "--out", str(out), *argv]
    env = {**os.environ, **worker_env(1), **extra_env}
    load_before = os.getloadavg()[0]
    t0 = time.monotonic()
    # Its own process group, so a timeout stops the part and the Ray daemons it started, and nothing else.
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    watchdog = threading.Timer(timeout_s, _stop_group, args=(proc,))
    watchdog.start()
    tail: list[str] = []
    try:
        for line in proc.stderr:
            if line.startswith("  "):
                print(line, end="", file=sys.stderr)
            tail = (tail + [line])[-40:]
        proc.wait()
    finally:
        watchdog.cancel()
    meta = {"wall_s": round(time.monotonic() - t0, 1), "load_before": load_before, "load_after": os.getloadavg()[0],
            "waited_s": waited}
    if proc.returncode == 0 and out.stat().st_size:
        result = json.loads(out.read_text())
    else:
        result = {"error": f"exit {proc.returncode}", "stderr_tail": "".join(tail[-15:]),
                  "wrong": proc.returncode == WRONG_EXIT}
    out.unlink(missing_ok=True)
    return {**result, **meta}


def _stop_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def part_meta(result: dict) -> dict:
    keys = ("wall_s", "load_before", "load_after", "waited_s", "attempts", "error", "stderr_tail", "wrong")
    return {k: result[k] for k in keys if k in result}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["batching", "hop"], help="run one half")
    p.add_argument("--rounds", type=int, default=3, help="repetitions of every measurement (medians are reported)")
    p.add_argument("--threads", default="1", help="torch threads of the full-size embedder runs (comma list)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured window per batching run (tiny: half)")
    p.add_argument("--warmup-s", type=float, default=3.0)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--wait-s", type=float, default=0.01, help="batch_wait_timeout_s of the batched mode")
    p.add_argument("--long-wait-s", type=float, default=0.05,
                   help="also run the batched mode with this batch_wait_timeout_s (0: skip)")
    p.add_argument("--no-tiny", action="store_true", help="skip the tiny embedder")
    p.add_argument("--requests", type=int, default=3000, help="timed sequential requests per hop round")
    p.add_argument("--warmup-requests", type=int, default=300)
    p.add_argument("--no-haproxy", action="store_true")
    p.add_argument("--max-load", type=float, default=3.0,
                   help="start each part once the 1-min load average is below this (the machine is shared)")
    p.add_argument("--max-wait-s", type=float, default=300, help="longest wait for that, per part")
    p.add_argument("--no-write", action="store_true", help="print the section instead of writing RESULTS.md")
    p.add_argument("--render-only", action="store_true",
                   help="rewrite the section from benchmarks/data/bench_serve-latest.json without measuring")
    p.add_argument("--part", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    opts.threads = [int(t) for t in opts.threads.split(",") if t.strip()]
    if opts.rounds < 1 or not opts.threads or min(opts.threads) < 1:
        p.error("--rounds and --threads need positive values")

    if opts.part:  # inside a subprocess with its own Ray session
        result = {"batching": part_batching, "hop_proxy": lambda o: part_hop(o, False),
                  "hop_haproxy": lambda o: part_hop(o, True)}[opts.part](opts)
        opts.out.write_text(json.dumps(result))
        return 0

    latest = DATA / "bench_serve-latest.json"
    if opts.render_only:
        if not latest.is_file():
            p.error(f"{latest.relative_to(REPO)} is missing: run the benchmark once without --render-only")
        results = json.loads(latest.read_text())["results"]
        verify(results)
        text = render(results, summarise(results), results["command"])
        if not opts.no_write:
            write_section(text)
        print(text)
        return 0

    quiet = (opts.max_load, opts.max_wait_s)
    command = "python -m benchmarks.bench_serve" + ("" if argv is None and len(sys.argv) == 1 else " " + " ".join(
        argv if argv is not None else sys.argv[1:]))
    results = {"when": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine(), "parts": {}, "command": command,
               "clients": CLIENTS, "replica_cpus": REPLICA_CPUS,
               **{k: getattr(opts, k) for k in ("rounds", "seconds", "warmup_s", "max_batch_size", "wait_s", "long_wait_s",
                                                "requests", "warmup_requests")}}
    shared = ["--rounds", str(opts.rounds), "--threads", ",".join(map(str, opts.threads)), "--seconds",
              str(opts.seconds), "--warmup-s", str(opts.warmup_s), "--max-batch-size", str(opts.max_batch_size),
              "--wait-s", str(opts.wait_s), "--long-wait-s", str(opts.long_wait_s), "--requests", str(opts.requests), "--warmup-requests",
              str(opts.warmup_requests)] + (["--no-tiny"] if opts.no_tiny else [])
    if opts.only in (None, "batching"):
        ensure_kit("full")
        if not opts.no_tiny:
            ensure_kit("tiny")
        print("(a) batching ...", file=sys.stderr)
        results["batching"] = run_part("batching", shared, {}, 1800, quiet)
        results["parts"]["batching"] = part_meta(results["batching"])
    if opts.only in (None, "hop"):
        hap_dir = tempfile.mkdtemp(prefix="bench-haproxy-")
        variants = [("hop_proxy", {})] + ([] if opts.no_haproxy else [("hop_haproxy", haproxy_env(hap_dir))])
        try:
            for part, env in variants:
                print(f"(b) {part} ...", file=sys.stderr)
                results[part] = run_part(part, shared, env, 900, quiet)
                results["parts"][part] = part_meta(results[part])
        finally:
            shutil.rmtree(hap_dir, ignore_errors=True)
    DATA.mkdir(parents=True, exist_ok=True)
    # A --no-write trial keeps its numbers apart, so --render-only always rebuilds what RESULTS.md shows; so
    # does a run with wrong answers (kept there for a look, never published).
    raw = DATA / "bench_serve-trial.json" if opts.no_write else latest
    try:
        verify(results)
    except BenchmarkWrong:
        (DATA / "bench_serve-trial.json").write_text(json.dumps({"results": results}, indent=2))
        raise
    summary = summarise(results)
    raw.write_text(json.dumps({"results": results, "summary": summary}, indent=2))
    text = render(results, summary, command)
    if opts.no_write:
        print(text)
    else:
        write_section(text)
        print(text)
        print(f"\nwrote {RESULTS.relative_to(REPO)}; raw numbers in {raw.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
