"""Photos for benchmarks, made here: JPEGs of noise (the worst case for a JPEG's size and decode)."""

from __future__ import annotations

import io

import numpy as np


def noise_jpeg(seed: int | np.random.Generator, width: int = 640, height: int = 480, quality: int = 90) -> bytes:
    from PIL import Image

    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()
