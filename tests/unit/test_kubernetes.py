"""The KubeRay manifest (deployments/kubernetes/rayservice.yaml) and its image, checked without a
Kubernetes cluster: the RayService against KubeRay's own CRD schema, strictly; its serveConfigV2
against Serve's schema and the app's args; and what an operator relies on (token auth, autoscaling,
GPU limits, S3 state, Secrets, a fenced dashboard) read from the file itself."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deployments" / "kubernetes"
MANIFEST = KUBE / "rayservice.yaml"
# KubeRay's RayService CRD, unchanged (../shared/kuberay/README.md). CI has ../shared; a clone may not.
CRD = ROOT.parent / "shared" / "kuberay" / "ray.io_rayservices.yaml"

# The manifest's top-level metadata is a Kubernetes ObjectMeta, which the CRD leaves as a bare
# `type: object` (the API server validates it itself): the fields a manifest may set, closed.
OBJECT_META = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def rayservice() -> dict:
    (service,) = [d for d in docs() if d["kind"] == "RayService"]
    return service


def closed(schema):
    """The schema with every object closed unless it says `x-kubernetes-preserve-unknown-fields`: the
    CRD leaves unknown fields open (the API server prunes them silently), so a misspelt field would
    pass; closed, it fails."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed(v) for k, v in schema.items()}
    if out.get("type") == "object" and not out.get("x-kubernetes-preserve-unknown-fields") \
            and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def validator():
    if not CRD.is_file():
        pytest.skip(f"KubeRay's RayService CRD is not at {CRD}: it comes with ../shared (CI has it, a clone may not)")
    import jsonschema

    crd = yaml.safe_load(CRD.read_text())
    assert crd["spec"]["names"]["kind"] == "RayService"
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = OBJECT_META
    schema = closed(schema)
    jsonschema.Draft7Validator.check_schema(schema)
    return version["name"], jsonschema.Draft7Validator(schema)


def errors(validator, doc) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator[1].iter_errors(doc)]


def test_the_rayservice_passes_kuberays_crd_schema_strictly(validator):
    service = rayservice()
    assert service["apiVersion"] == f"ray.io/{validator[0]}"
    assert errors(validator, service) == []


@pytest.mark.parametrize("path, misspelt", [
    (("spec", "rayClusterConfig"), "enableInTreeAutoscalling"),
    (("spec", "rayClusterConfig", "headGroupSpec"), "rayStartParam"),
    (("spec", "rayClusterConfig", "workerGroupSpecs", 1, "template", "spec", "containers", 0), "resource"),
    (("metadata",), "lables"),
])
def test_a_misspelt_field_fails(validator, path, misspelt):
    service = rayservice()
    node = service
    for key in path:
        node = node[key]
    node[misspelt] = {"a": "b"} if misspelt != "enableInTreeAutoscalling" else True
    found = errors(validator, service)
    assert found and any(misspelt in e for e in found), found


def test_its_serve_config_passes_serve_and_the_app(tmp_path):
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load(rayservice()["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(config)
    done = subprocess.run([sys.executable, "-m", "deployments.config", str(MANIFEST)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr
    # The same command names a broken embedded config, and where it is.
    broken = rayservice()
    broken["spec"]["serveConfigV2"] = broken["spec"]["serveConfigV2"].replace("vector_cache_mb", "vector_cache_mbb")
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump_all([broken, *[d for d in docs() if d["kind"] != "RayService"]]))
    done = subprocess.run([sys.executable, "-m", "deployments.config", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "spec.serveConfigV2" in done.stderr and "vector_cache_mbb" in done.stderr


def test_its_serve_config_is_serve_config_yaml_with_shared_state():
    """serve_config.yaml is the production plan; the manifest differs only where a cluster must:
    LanceDB and the blobs on S3, the Redis answer cache on."""
    embedded = yaml.safe_load(rayservice()["spec"]["serveConfigV2"])
    plan = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    for config in (embedded, plan):
        for app in config["applications"]:
            app["args"].pop("storage")
            app["args"]["ingress"].pop("redis_url")
    assert embedded == plan
    storage = yaml.safe_load(rayservice()["spec"]["serveConfigV2"])["applications"][0]["args"]["storage"]
    assert storage["lancedb_uri"].startswith("s3://") and storage["blob_backend"] == "s3"


def _groups(service) -> dict[str, dict]:
    cluster = service["spec"]["rayClusterConfig"]
    return {"head": cluster["headGroupSpec"], **{g["groupName"]: g for g in cluster["workerGroupSpecs"]}}


def test_what_an_operator_relies_on():
    import ray

    from deployments.http.proxy import PROXY_ENV

    service = rayservice()
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["enableInTreeAutoscaling"] is True
    groups = _groups(service)
    assert set(groups) == {"head", "cpu", "gpu"}
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == "1"
    assert all("nvidia.com/gpu" not in g["template"]["spec"]["containers"][0]["resources"]["limits"]
               for name, g in groups.items() if name != "gpu")
    # The dashboard and Jobs API stay inside: a ClusterIP head service, no Ingress for it.
    assert groups["head"]["serviceType"] == "ClusterIP" and groups["head"].get("enableIngress") is False
    # GCS fault tolerance, its Redis password from the Secret (KubeRay refuses RAY_REDIS_ADDRESS beside it).
    ft = cluster["gcsFaultToleranceOptions"]
    assert ft["redisAddress"] and ft["redisPassword"]["valueFrom"]["secretKeyRef"]["name"] == "atelier-secrets"
    for name, group in groups.items():
        container = group["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        # Every node runs Serve's proxy with the key gate, and gets its secrets from the Secret only.
        for key, value in PROXY_ENV.items():
            assert env[key]["value"] == value, name
        for secret in ("ATELIER_URL_SECRET", "ATELIER_S3_ACCESS_KEY_ID", "ATELIER_S3_SECRET_ACCESS_KEY",
                       "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert "value" not in env[secret] and env[secret]["valueFrom"]["secretKeyRef"]["name"] == "atelier-secrets"
        assert env["ATELIER_KEYS_URI"]["value"].startswith("s3://")
        assert not {"RAY_REDIS_ADDRESS", "REDIS_PASSWORD"} & set(env), name
        assert group["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "atelier"


def test_the_network_policy_fences_the_dashboard_and_the_gcs():
    (policy,) = [d for d in docs() if d["kind"] == "NetworkPolicy"]
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "atelier"}
    assert "Ingress" in spec["policyTypes"]
    open_to_all = [rule for rule in spec["ingress"] if "from" not in rule]
    # From anywhere: the Serve port only.
    assert [p["port"] for rule in open_to_all for p in rule["ports"]] == [8000]
    # 8265 (dashboard, Jobs API) only to the Ray pods themselves and the KubeRay operator.
    for rule in spec["ingress"]:
        if "from" in rule and "ports" in rule:
            assert [p["port"] for p in rule["ports"]] == [8265]
            assert all(peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
                       for peer in rule["from"])


def test_the_image_installs_the_pinned_torch_pair():
    pins = {d.split("==")[0]: d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
            if d.startswith(("torch==", "torchvision=="))}
    dockerfile = (KUBE / "Dockerfile").read_text()
    install = next(line for line in dockerfile.splitlines() if "torch==" in line)
    assert pins["torch"] in install.split() and pins["torchvision"] in install.split()
    assert "FROM python:3.11" in dockerfile and "pip install ." in dockerfile
    assert json.dumps(rayservice()).count("registry.example.com/atelier:0.1.0") == 3
