"""Text-encode and image-encode rates of the Embedder's families on this CPU (issue 15).

    .venv/bin/python -m benchmarks.bench_embedders [--threads 2] [--no-write]

The full-size random-weight stand-ins (`python -m models.kit build --size full`, into
benchmarks/data/kit-full): SigLIP 2 base/16 at 224 px (375 M parameters), Chinese-CLIP ViT-B/16
(188 M) and CLIP ViT-B/32 (151 M), each loaded through `Embedder` (float32 on the CPU, torch
threads as given) and timed the way the service calls it:

- one search query at a time (the latency a search waits for), over distinct Chinese and English
  queries; and queries in batches of 32 (what Serve's batching hands the replica under load);
- one photo at a time (an upload), and photos in batches of 16 (bulk ingestion's actors).

Ratios are against CLIP ViT-B/32 in the same run. Random weights cost what real ones do: the
numbers are the architectures', not the checkpoints' quality. Every call's answer is checked before the
section is written (benchmarks.checks): one finite unit vector of the model's width per text or photo;
otherwise it exits 3 and writes nothing.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.checks import check, check_vectors, run
from benchmarks.results_md import publish
from benchmarks.texts import queries

SECTION = "## Embedder families: text and image encode rates on the CPU (issue 15)"
KIT = Path(__file__).resolve().parent / "data" / "kit-full"
FAMILIES = [("embedder", "SigLIP 2 base/16-224"), ("embedder_chinese_clip", "Chinese-CLIP ViT-B/16"),
            ("embedder_clip", "CLIP ViT-B/32")]


def ensure(name: str) -> Path:
    from models.kit import build

    folder = KIT / name
    if not (folder / "atelier_stand_in.json").is_file():
        print(f"building the full-size {name} stand-in in {KIT} ...", file=sys.stderr, flush=True)
        build(name, "full", KIT)
    return folder


def photos(n: int) -> list:
    from PIL import Image

    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)) for _ in range(n)]


def timed(fn, items: list, dim: int, what: str) -> float:
    """Seconds of one call `fn(items)`, whose answer is checked afterwards: a unit vector per item."""
    t0 = time.perf_counter()
    out = fn(items)
    took = time.perf_counter() - t0
    check_vectors(what, out, len(items), dim)
    return took


def measure(name: str, threads: int, texts: list[str], images: list) -> dict:
    from models import Embedder, EmbedderConfig

    model = Embedder(EmbedderConfig(model=str(ensure(name)), num_threads=threads, device="cpu"))
    model.warmup()
    d = model.dim
    single_text = [timed(model.embed_texts, [t], d, f"{name}: text {t!r}") for t in texts[:64]]
    batches = [texts[i:i + 32] for i in range(64, len(texts) - 31, 32)]
    batch_text = sum(timed(model.embed_texts, b, d, f"{name}: a batch of {len(b)} texts") for b in batches)
    single_image = [timed(model.embed_images, [im], d, f"{name}: one photo") for im in images[:8]]
    img_batches = [images[i:i + 16] for i in range(8, len(images) - 15, 16)]
    batch_image = sum(timed(model.embed_images, b, d, f"{name}: a batch of {len(b)} photos") for b in img_batches)
    check(len(single_text) == 64 and batches and single_image and img_batches,
          f"{name}: timed {len(single_text)} texts, {len(batches)} text batches, {len(single_image)} photos, "
          f"{len(img_batches)} photo batches")
    n_params = sum(p.numel() for p in model._model.parameters())
    return {"name": name, "family": model.family, "multilingual": model.multilingual, "dim": model.dim,
            "params": n_params, "text_p50_ms": 1000 * statistics.median(single_text),
            "text_per_s": 32 * len(batches) / batch_text, "image_p50_ms": 1000 * statistics.median(single_image),
            "image_per_s": 16 * len(img_batches) / batch_image}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    texts = [q for pair in zip(queries(160, "zh"), queries(160, "en")) for q in pair]  # zh, en, zh, ...
    images = photos(8 + 16 * 3)
    rows = {name: measure(name, args.threads, texts, images) for name, _ in FAMILIES}
    base = rows["embedder_clip"]
    lines = [
        SECTION, "",
        f"Machine: {platform.machine()}, {args.threads} torch threads of this 2-core box, no GPU; float32 on the CPU; "
        "full-size random-weight stand-ins (`models.kit build --size full`).",
        f"Command: `.venv/bin/python -m benchmarks.bench_embedders --threads {args.threads}`", "",
        "| model | parameters | dim | reads Chinese | 1 query, p50 ms | queries/s, batch 32 | 1 photo, p50 ms "
        "| photos/s, batch 16 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, label in FAMILIES:
        r = rows[name]
        lines.append(
            f"| {label} | {r['params']:,} | {r['dim']} | {'yes' if r['multilingual'] else 'no (Writer translates)'} "
            f"| {r['text_p50_ms']:.1f} ({r['text_p50_ms'] / base['text_p50_ms']:.2f}x) "
            f"| {r['text_per_s']:.1f} ({r['text_per_s'] / base['text_per_s']:.2f}x) "
            f"| {r['image_p50_ms']:.1f} ({r['image_p50_ms'] / base['image_p50_ms']:.2f}x) "
            f"| {r['image_per_s']:.1f} ({r['image_per_s'] / base['image_per_s']:.2f}x) |")
    lines += ["", "Ratios in brackets are against CLIP ViT-B/32 in the same run (for latency, above 1 is slower; for "
              "rates, below 1 is slower). Queries alternate Chinese and English, all distinct (64 timed one at a time, "
              "the rest in batches of 32); photos are 640x480. SigLIP reads every query as 64 tokens (its fixed "
              "padding), CLIP and Chinese-CLIP only as many as the longest text in the batch; both bilingual image "
              "towers are ViT-B/16 at 224 px (196 patches) against B/32's 49."]
    publish(SECTION, lines, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
