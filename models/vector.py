"""The Embedder's answer as it travels: numpy only, so the ingress imports it without torch."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Vector(NamedTuple):
    """A unit vector and the embedding model that made it. Vectors of two models cannot be compared,
    so the service stores and searches each in its own model's table; while a model switch rolls out,
    replicas of both models answer, and the model travels with every vector."""

    model: str
    values: np.ndarray
