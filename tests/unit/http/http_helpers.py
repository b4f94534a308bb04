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


class CountingWriter:
    """The real tiny Writer with its translations counted, made to fail when asked (`fail`). With
    `sample`, a translation is the Writer's sampled answer to the text: its greedy one is empty with
    random weights (so the service would fall back), a sampled one is the real model's text, noise as
    every stand-in's is, but a translation to use."""

    def __init__(self, writer, fail: bool = False, sample: bool = False):
        self._writer, self.fail, self.sample, self.calls = writer, fail, sample, 0

    def __getattr__(self, name):
        return getattr(self._writer, name)

    def to_english(self, text, **kw):
        from models import ModelUnavailable

        self.calls += 1
        if self.fail:
            raise ModelUnavailable("the writer is down (test)\nTraceback (most recent call last): ...")
        if self.sample:
            answer = self._writer.chat([{"role": "user", "content": text}], temperature=1.0, seed=0, max_new_tokens=16)
            return self._writer._usable(answer.text)
        return self._writer.to_english(text, **kw)
