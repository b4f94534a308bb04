"""Helpers of the in-process HTTP tests (importable by name: the test folders are not packages)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def png(seed: int, size=(48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def auth(surface, user: str | None = "alice") -> dict:
    client, keys = surface
    return {"Authorization": f"Bearer {keys[user]}"} if user else {}
