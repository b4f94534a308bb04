"""`python -m deployments.capacity`: whether a config's min and max replicas fit a cluster shape,
with Ray's placement rules (CPUs and memory per node, a GPU share on one device)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deployments.capacity import Need, pack, parse_nodes

ROOT = Path(__file__).resolve().parents[2]


def capacity(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deployments.capacity", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_the_production_plan_fits_two_gpu_nodes_and_four_cpu_nodes():
    done = capacity("serve_config.yaml", "--nodes", "2x8gpu,4xcpu", "--ingest-jobs", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "min: fits" in done.stdout and "max: fits" in done.stdout


def test_one_gpu_names_what_does_not_fit():
    # The Painter takes the one GPU whole: the other roles' shares (the Guard's too) find no device, even at
    # their minimum.
    done = capacity("serve_config.yaml", "--nodes", "1x1gpu,1xcpu")
    assert done.returncode == 1
    failing = {line.split(": ")[2] for line in done.stdout.splitlines() if line.startswith("min: DOES NOT FIT")}
    assert failing == {"Writer", "Describer", "Embedder", "Guard"}
    # Two GPUs hold the minimum; at the maximum two Painters take both and the shares are left over.
    done = capacity("serve_config.yaml", "--nodes", "1x2gpu+32cpu,2x16cpu")
    assert done.returncode == 1 and "min: fits" in done.stdout
    assert "max: DOES NOT FIT: Writer" in done.stdout and "Painter" not in done.stdout.split("max:", 1)[1]


def test_the_local_config_fits_the_local_cluster():
    # What `make serve` starts: one node, 4 logical CPUs (deployments/local.py --num-cpus).
    done = capacity("serve_config.local.yaml", "--nodes", "1x4cpu", "--ingest-jobs", "1")
    assert done.returncode == 0, done.stdout


def test_gpu_shares_pack_per_device_and_memory_per_node():
    (node,) = parse_nodes("1x1gpu+4cpu")
    assert pack([node], [Need("a", 1, 0.25)] * 4) == []
    left = pack([node], [Need("a", 1, 0.75), Need("b", 1, 0.5)])
    assert [n.what for n in left] == ["b"]  # 1.25 of one device
    nodes = parse_nodes("2x1gpu+4cpu")
    assert pack(nodes, [Need("a", 1, 0.75), Need("b", 1, 0.5)]) == []  # one per device
    assert [n.what for n in pack(nodes, [Need("w", 1, 2)])] == ["w"]  # two whole GPUs on one node only
    assert pack(parse_nodes("1x2gpu"), [Need("w", 1, 2)]) == []
    gib = 2**30
    nodes = parse_nodes("1x16cpu+4gib")
    assert [n.what for n in pack(nodes, [Need("i", 1, 0, 3 * gib), Need("j", 1, 0, 3 * gib)])] == ["j"]


def test_shapes_and_bad_arguments():
    gpu, cpu = parse_nodes("1x8gpu,1xcpu")
    assert (gpu.gpus, gpu.cpus, cpu.gpus, cpu.cpus) == (8, 96, 0, 16)
    for bad in ("2y8gpu", "0x8gpu", "2x8tpu", "2x1.5gpu", ""):
        with pytest.raises(ValueError):
            parse_nodes(bad)
    done = capacity("serve_config.yaml", "--nodes", "2y8gpu")
    assert done.returncode == 2 and done.stderr.startswith("error:") and "Traceback" not in done.stderr


def test_the_ingress_and_the_gallery_writer_stay_off_gpu_nodes():
    # serve_config.yaml's Ingress asks for atelier/pool != gpu, its gallery writer for atelier/pool = cpu:
    # GPU nodes alone cannot hold either; one CPU node more holds both.
    done = capacity("serve_config.yaml", "--nodes", "2x8gpu")
    assert done.returncode == 1
    assert {line.split(": ")[2] for line in done.stdout.splitlines()
            if "DOES NOT FIT" in line} == {"Ingress", "GalleryWriter"}
    assert capacity("serve_config.yaml", "--nodes", "2x8gpu,1xcpu").returncode == 0
