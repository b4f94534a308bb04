"""Fixtures shared by the whole suite: the tiny model kit, built once per test run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Two cores for everything: keep torch from spawning a thread per core in every process.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_kit(tmp_path_factory) -> Path:
    """All four roles' tiny random-weight checkpoints, built from code (no hub)."""
    import torch

    from deployments.kit import ROLES, build

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("kit")
    for role in ROLES:
        build(role, "tiny", out, seed=0)
    return out
