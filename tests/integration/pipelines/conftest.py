"""Ingestion fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def gcs_address(ray_cluster) -> str:
    """Where a second driver process (the command line) joins the test cluster."""
    import ray

    return ray.get_runtime_context().gcs_address
