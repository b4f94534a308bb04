"""Both Serve configs validate against the typed builder; the production one without loading a model."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from deployments.config import AppArgs

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["serve_config.yaml", "serve_config.local.yaml"])
def test_config_validates_and_builds(name):
    from ray.serve import Application
    from ray.serve.schema import ServeDeploySchema

    from deployments.app import build_app

    config = yaml.safe_load((ROOT / name).read_text())
    ServeDeploySchema.model_validate(config)  # Serve's own schema of the file
    for app in config["applications"]:
        assert app["import_path"] == "deployments.app:build_app"
        args = AppArgs.model_validate(app["args"])
        # Binding builds the graph; no replica starts and no model loads.
        assert isinstance(build_app(args), Application)


def test_production_uses_gpu_shares_and_real_models():
    args = AppArgs.model_validate(yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"])
    shares = {role: getattr(args, role).deployment.ray_actor_options.num_gpus
              for role in ("embedder", "writer", "describer", "painter")}
    assert shares == {"embedder": 0.1, "writer": 0.25, "describer": 0.25, "painter": 1.0}
    assert args.painter.model.model == "black-forest-labs/FLUX.1-schnell"
    assert all(getattr(args, r).deployment.autoscaling for r in ("embedder", "writer", "describer", "painter"))


def test_local_config_differs_only_in_models_and_resources():
    prod = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]
    local = yaml.safe_load((ROOT / "serve_config.local.yaml").read_text())["applications"][0]
    assert prod["import_path"] == local["import_path"] and prod["route_prefix"] == local["route_prefix"]
    assert set(prod["args"]) == set(local["args"])


@pytest.mark.parametrize(
    "patch, where",
    [
        ({"embedder": {"batching": {"max_batch_size": 32}}}, "batching"),  # live settings live in user_config
        ({"ingress": {"timeouts": {"search_s": 5}}}, "timeouts"),
        ({"painter": {"model": {"sizes": {"small": "500x500"}}}}, "sizes"),
        ({"writer": {"deployment": {"ray_actor_options": {"num_gpu": 1}}}}, "num_gpu"),
        ({"typo_section": {}}, "typo_section"),
    ],
)
def test_bad_configs_are_refused_with_the_field_named(patch, where):
    with pytest.raises(ValidationError, match=where):
        AppArgs.model_validate(patch)


def _check(*files):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "deployments.config", *map(str, files)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_config_command_passes_both_configs():
    done = _check("serve_config.yaml", "serve_config.local.yaml")
    assert done.returncode == 0, done.stderr
    assert "serve_config.yaml: ok" in done.stdout and "serve_config.local.yaml: ok" in done.stdout


@pytest.mark.parametrize("section, key", [("storage", "lancedb_urii"), ("storage", "s3_secret_access_key"),
                                          ("ingest", "max_cpu"), ("ingress", "max_search_k")])
def test_config_command_names_a_misspelt_or_forbidden_key(tmp_path, section, key):
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["applications"][0]["args"].setdefault(section, {})[key] = "x"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    done = _check(bad)
    assert done.returncode == 1
    assert f"args.{section}.{key}" in done.stderr, done.stderr


@pytest.mark.parametrize("name, user_config, where", [
    ("Embedder", {"max_batch_size": 0}, "deployments[0].user_config.max_batch_size"),
    ("Ingress", {"timeouts": {"search_sec": 5}}, "deployments[1].user_config.timeouts.search_sec"),
    ("Writer", {"anything": 1}, "has no live settings"),
])
def test_config_command_checks_the_live_settings(tmp_path, name, user_config, where):
    config = yaml.safe_load((ROOT / "serve_config.local.yaml").read_text())
    deployments = config["applications"][0]["deployments"]
    entry = next((d for d in deployments if d["name"] == name), None)
    if entry is None:
        deployments.append(entry := {"name": name})
    entry["user_config"] = user_config
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    done = _check(bad)
    assert done.returncode == 1 and where in done.stderr, done.stderr


def test_config_command_refuses_what_serve_itself_refuses(tmp_path):
    config = yaml.safe_load((ROOT / "serve_config.local.yaml").read_text())
    config["proxy_location"] = "Everywhere"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    done = _check(bad)
    assert done.returncode == 1 and "proxy_location" in done.stderr and "Serve" in done.stderr, done.stderr


def test_storage_section_leaves_unset_values_to_the_environment(monkeypatch):
    monkeypatch.setenv("ATELIER_BLOB_ROOT", "/srv/blobs")
    args = AppArgs.model_validate({"storage": {"lancedb_uri": "/srv/lancedb"}})
    settings = args.storage.settings()
    assert (settings.lancedb_uri, settings.blob_root) == ("/srv/lancedb", "/srv/blobs")


def test_the_production_painter_scales_to_zero_and_the_ingress_knows_it():
    """serve_config.yaml scales the Painter (a whole GPU) to zero and starts it with one replica; the other
    roles keep one. The ingress is told which roles may have none, so readiness does not wake them."""
    from deployments.app import scale_to_zero

    args = AppArgs.model_validate(yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"])
    auto = args.painter.deployment.autoscaling
    assert (auto.min_replicas, auto.initial_replicas) == (0, 1)
    assert scale_to_zero(args) == ("painter",)
    local = AppArgs.model_validate(
        yaml.safe_load((ROOT / "serve_config.local.yaml").read_text())["applications"][0]["args"])
    assert scale_to_zero(local) == ()
