"""Gallery rows for the storage tests of every tier: a small dimension, a model name, deterministic rows."""

from __future__ import annotations

import hashlib

import numpy as np

DIM = 8
MODEL = "openai/clip-vit-base-patch32"


def sha(*parts) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def make_row(user: str, n: int, *, vector=None, caption: str = "", description: str = "", seed: int | None = None,
             **extra) -> dict:
    rng = np.random.default_rng(seed if seed is not None else abs(hash((user, n))) % 2**32)
    return {"user_id": user, "content_hash": sha(user, n), "image_uri": f"blobs/{n}.png",
            "display_uri": f"blobs/{n}.jpg", "width": 64, "height": 48, "source": "upload",
            "caption": caption, "description": description,
            "vector": rng.standard_normal(DIM).astype(np.float32) if vector is None else vector, **extra}
