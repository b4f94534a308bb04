"""The house's seams: the import layers hold, and the modules ingestion's tasks import stay light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_import_layers_hold():
    """pyproject.toml's import-linter contracts (CI runs `lint-imports` too)."""
    done = subprocess.run([str(Path(sys.executable).with_name("lint-imports"))], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


@pytest.mark.parametrize("module", ["pipelines.ingest", "pipelines.config", "deployments.config"])
def test_ingestion_and_config_modules_import_no_heavy_stack(module):
    """Every read task of a job imports pipelines.ingest: LanceDB (3.5 s) or torch there slows every job."""
    code = (f"import sys, {module}; heavy = [m for m in ('lancedb', 'torch', 'transformers', 'diffusers') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
