"""The Painter's cold start from zero (issue 29.7): how long the first generation after idle takes when no
Painter replica runs (Serve starts one while the request waits in the ingress), against the same request warm.

    .venv/bin/python -m benchmarks.bench_cold_start [--kits tiny,full] [--repeats 3] [--idle-s 2] [--no-write]

Starts the local graph (serve_config.local.yaml: the other roles on the tiny kit, resources for 2 cores) on a
temp data folder, with the Painter autoscaled as serve_config.yaml does it (`min_replicas: 0`) but with a
short idle delay (`--idle-s`) and at most one replica. Per repeat: wait until Serve's status API shows no
Painter replica at all (the last one stopped), time `POST /api/generate/image` from the request to the answer (cold; a thread
polls the status API to tell when the replica came up), then the same request again (warm).

Kits: `tiny` is checkpoints/tiny/painter (the offline quickstart's stand-in); `full` is the full-size
FLUX.1-schnell stand-in at benchmarks/data/kit-full/painter, built there first if missing (the kit builds it
only on a GPU host: 12B transformer + 4.7B T5-XXL). A kit that cannot be built or loaded here is named in
the section with the reason, not measured.

Answers before speeds (benchmarks.checks): every answer must be 200 with a PNG of the size asked for, and
the Painter must have been at zero replicas before each cold request and running after it; otherwise the
run exits 3 and writes nothing to benchmarks/RESULTS.md ("Scale to zero: the Painter's cold start").
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python benchmarks/bench_cold_start.py`
    sys.path.insert(0, str(REPO))

from benchmarks.checks import check, run  # noqa: E402
from benchmarks.local_graph import start  # noqa: E402
from benchmarks.results_md import publish  # noqa: E402

SECTION = "## Scale to zero: the Painter's cold start (issue 29)"
KITS = {"tiny": REPO / "checkpoints" / "tiny", "full": REPO / "benchmarks" / "data" / "kit-full"}
APP = "atelier"


def painters(state: str | None = "RUNNING") -> int:
    """Painter replicas in `state` by Serve's status API; None: in any state (starting and stopping too)."""
    from ray import serve

    app = serve.status().applications.get(APP)
    painter = app.deployments.get("Painter") if app is not None else None
    if painter is None:
        return 0
    return int(sum(painter.replica_states.values()) if state is None else painter.replica_states.get(state, 0))


def painters_running() -> int:
    return painters("RUNNING")


def wait_for_zero(within_s: float) -> float:
    """Until no Painter replica exists in any state: a request sent while the last one is still stopping
    waits for that first (about 8 s more here), which is not the cold start this measures."""
    t0 = time.monotonic()
    while painters(None) != 0:
        check(time.monotonic() - t0 < within_s, f"the Painter did not scale to zero within {within_s:g} s of idle")
        time.sleep(0.2)
    return time.monotonic() - t0


def painter_kit(kit: str) -> tuple[Path | None, str]:
    """The painter folder of a kit, built if missing; (None, why) when it cannot be had here."""
    folder = KITS[kit] / "painter"
    if (folder / "model_index.json").is_file():
        return folder, f"found at {folder.relative_to(REPO)}"
    if kit == "tiny":
        from deployments.local import ensure_kit

        ensure_kit(KITS["tiny"])
        return folder, "built by deployments.local.ensure_kit"
    from models.kit import build

    t0 = time.perf_counter()
    try:
        built = build("painter", "full", KITS["full"])
    except (RuntimeError, MemoryError, OSError) as exc:
        return None, f"not built: {exc} (the kit gave up after {time.perf_counter() - t0:.1f} s)"
    return built.path, f"built in {time.perf_counter() - t0:.0f} s ({built.parameters / 1e9:.1f} B parameters)"


def png_of(answer, size: str) -> None:
    from PIL import Image

    check(answer.status_code == 200, f"POST /api/generate/image answered {answer.status_code}: {answer.text[:300]}")
    body = answer.json()
    url = body.get("image_url") or ""
    check(url.startswith("data:image/png;base64,") and body.get("size") == size,
          f"the generation answered size {body.get('size')!r} and image_url {url[:40]!r}, expected a {size} PNG")
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    check(image.format == "PNG" and f"{image.size[0]}x{image.size[1]}" == size,
          f"the image is a {image.format} of {image.size}, expected a PNG of {size}")


def measure(kit: str, folder: Path, args) -> list[dict]:
    import httpx
    import ray
    from ray import serve

    def edit(spec: dict) -> None:
        spec["painter"]["model"]["model"] = str(folder)
        spec["painter"]["deployment"]["num_replicas"] = None
        spec["painter"]["deployment"]["autoscaling"] = {
            "min_replicas": 0, "initial_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 1,
            "upscale_delay_s": 0, "downscale_delay_s": args.idle_s}

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base, key = start(Path(tmp), port=args.port, edit=edit)
        try:
            body = {"text": "a lighthouse at dusk", "size": args.size, "steps": args.steps, "enhance": False,
                    "save_to_gallery": False}
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=600) as c:
                for i in range(args.repeats):
                    idle = wait_for_zero(args.idle_s + 120)
                    check(painters_running() == 0, "the Painter was running before the cold request")
                    up: list[float] = []
                    stop = threading.Event()
                    t0 = time.perf_counter()

                    def watch():
                        while not stop.is_set():
                            if painters_running() > 0:
                                up.append(time.perf_counter() - t0)
                                return
                            time.sleep(0.1)

                    watcher = threading.Thread(target=watch, daemon=True)
                    watcher.start()
                    cold = c.post("/api/generate/image", json={**body, "seed": i})
                    cold_s = time.perf_counter() - t0
                    stop.set()
                    watcher.join()
                    png_of(cold, args.wxh)
                    check(painters_running() == 1, "no Painter replica runs after the cold request was answered")
                    t1 = time.perf_counter()
                    warm = c.post("/api/generate/image", json={**body, "seed": i})
                    warm_s = time.perf_counter() - t1
                    png_of(warm, args.wxh)
                    rows.append({"kit": kit, "cold_s": cold_s, "warm_s": warm_s, "up_s": up[0] if up else None,
                                 "idle_s": idle})
                    print(f"{kit} #{i + 1}: cold {cold_s:.2f} s (replica RUNNING at "
                          f"{up[0] if up else float('nan'):.2f} s), warm {warm_s:.2f} s", file=sys.stderr, flush=True)
        finally:
            serve.shutdown()
            ray.shutdown()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_cold_start", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kits", default="tiny,full", help="comma-separated: tiny, full")
    parser.add_argument("--repeats", type=int, default=3, help="cold/warm pairs per kit")
    parser.add_argument("--idle-s", type=float, default=2.0, help="downscale_delay_s of the run (production: 600)")
    parser.add_argument("--size", default="small", help="size preset of the generation (the config's)")
    parser.add_argument("--wxh", default="512x512", help="what --size is, to check the PNG against")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--port", type=int, default=8131)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    kits = [k.strip() for k in args.kits.split(",") if k.strip()]
    check(kits and all(k in KITS for k in kits), f"--kits {args.kits!r}: choose from {', '.join(KITS)}")

    rows, notes = [], []
    for kit in kits:
        folder, how = painter_kit(kit)
        notes.append(f"- `{kit}`: {how}.")
        print(f"{kit}: {how}", file=sys.stderr, flush=True)
        if folder is not None:
            rows += measure(kit, folder, args)
    check(rows, "no kit could be measured")

    def med(kit, key):
        values = [r[key] for r in rows if r["kit"] == kit and r[key] is not None]
        return statistics.median(values) if values else float("nan")

    cmd = (f"`.venv/bin/python -m benchmarks.bench_cold_start --kits {args.kits} --repeats {args.repeats} "
           f"--idle-s {args.idle_s:g} --size {args.size} --steps {args.steps}`")
    lines = [
        SECTION, "",
        f"`POST /api/generate/image` ({args.size} = {args.wxh}, {args.steps} steps, no prompt enhancement, not kept) "
        "on the local graph (serve_config.local.yaml's other roles; the Painter autoscaled as in serve_config.yaml: "
        f"`min_replicas: 0`, here at most 1 replica and `downscale_delay_s: {args.idle_s:g}`). Cold: the request sent "
        "when Serve's status API shows no Painter replica in any state (the last one stopped), timed to the answer; warm: the same request "
        "right after. *Replica up* is when the status API first showed the new replica RUNNING (polled every "
        "0.1 s from the request). Every answer checked: 200, a PNG of the size asked for.",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, no GPU; {time.strftime('%Y-%m-%d')}. "
        f"Command: {cmd}.", "",
        "| kit | repeat | cold s | replica up s | warm s | cold - warm s |", "|---|---|---|---|---|---|",
    ]
    for kit in kits:
        mine = [r for r in rows if r["kit"] == kit]
        for i, r in enumerate(mine, 1):
            upv = "-" if r["up_s"] is None else f"{r['up_s']:.2f}"
            lines.append(f"| {kit} | {i} | {r['cold_s']:.2f} | {upv} | {r['warm_s']:.2f} | {r['cold_s'] - r['warm_s']:.2f} |")
        if mine:
            lines.append(f"| **{kit}** | median | **{med(kit, 'cold_s'):.2f}** | {med(kit, 'up_s'):.2f} | "
                         f"**{med(kit, 'warm_s'):.2f}** | {med(kit, 'cold_s') - med(kit, 'warm_s'):.2f} |")
    lines += ["", "Kits:", *notes]
    publish(SECTION, lines, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
