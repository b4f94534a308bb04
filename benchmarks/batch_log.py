"""The production Embedder plus a log line per forward pass, so the batching benchmark can show the batches
Serve actually formed (size, model time) instead of guessing them from throughput."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from models.embedder import Embedder


class BatchLoggingEmbedder(Embedder):
    """Appends `wall-clock size milliseconds` to $BENCH_BATCH_LOG after each text batch; otherwise unchanged."""

    def embed_texts(self, texts):
        t0 = time.perf_counter()
        out = super().embed_texts(texts)
        with open(os.environ["BENCH_BATCH_LOG"], "a") as log:
            log.write(f"{time.time():.4f} {len(texts)} {1e3 * (time.perf_counter() - t0):.2f}\n")
        return out


def batches_between(batch_log: Path, t0: float, t1: float) -> dict:
    """Forward passes that ended inside [t0, t1] (how many, mean and largest size), and the share of the window
    the model spent computing."""
    rows = [line.split() for line in batch_log.read_text().splitlines()] if batch_log.exists() else []
    passes = [(float(t) - float(ms) / 1e3, float(t), int(n)) for t, n, ms in rows]
    sizes = [n for _, end, n in passes if t0 <= end <= t1]
    busy = sum(max(0.0, min(end, t1) - max(start, t0)) for start, end, _ in passes)
    return {"batches": len(sizes), "mean_batch": statistics.fmean(sizes) if sizes else 0.0,
            "max_batch": max(sizes, default=0), "model_busy": busy / (t1 - t0)}
