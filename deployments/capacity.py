"""Does a serve config fit a cluster? Packs every deployment's replicas, at their minimum and at their
maximum, onto the nodes of a cluster shape the way Ray's scheduler can place them, and names what does
not fit.

    python -m deployments.capacity serve_config.yaml --nodes 2x8gpu,4xcpu
    python -m deployments.capacity serve_config.yaml --nodes 1x8gpu+96cpu+1024gib,3x32cpu --ingest-jobs 1

A node shape is `COUNTx` followed by `+`-joined parts: `Ncpu`, `Ngpu`, `Ngib` (memory). A bare `cpu`
node has 16 CPUs; a GPU node without a CPU count has 12 CPUs per GPU; memory is unbounded unless given.
Rules of the packing, as Ray applies them: CPUs and memory are per node; a GPU share below 1 must fit
on one GPU (four 0.25 replicas share a GPU, a 0.75 and a 0.5 do not); whole GPUs are whole devices; a
replica's `label_selector` is matched against the label the KubeRay manifest gives each group
(`atelier/pool`: `gpu` on a node with GPUs, else `cpu`).
Replicas are placed largest first (GPU share, then CPUs), each on the first node where it fits:
first-fit decreasing, which may miss a packing an exhaustive search would find, never the other way.
The gallery writer (one actor, `storage.writer_label_selector`) is packed beside the deployments.
`--ingest-jobs N` also reserves, for the maximum, N running bulk-ingest jobs: each asks for the config's
`ingest.embed_actors` embedding actors and `ingest.read_tasks` read tasks, within `ingest.max_cpus`.

The minimum of a deployment that scales to zero (`min_replicas: 0`, the Painter in serve_config.yaml) is
one replica: at rest it holds none, but a rollout starts one and the first request after idle waits
for one, so there must be room for it.

Exit 0 when both the minimum and the maximum fit, 1 when either does not (the lines say which
deployment and what it lacks), 2 on a bad argument or config.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from storage.gallery_writer import WRITER_NUM_CPUS

from .config import AppArgs

EPS = 1e-9
CPU_NODE_CPUS = 16.0
CPUS_PER_GPU = 12.0


@dataclass
class Node:
    name: str
    cpus: float
    gpus: int
    memory: float = math.inf  # bytes
    free_cpus: float = 0.0
    free_gpus: list[float] = field(default_factory=list)  # what is left of each device
    free_memory: float = 0.0

    def reset(self) -> None:
        self.free_cpus, self.free_gpus, self.free_memory = self.cpus, [1.0] * self.gpus, self.memory

    @property
    def labels(self) -> dict[str, str]:
        # The pool label the KubeRay manifest gives its groups (atelier/pool: gpu | cpu).
        return {"atelier/pool": "gpu" if self.gpus else "cpu"}

    def place(self, need: "Need") -> bool:
        if need.cpus > self.free_cpus + EPS or need.memory > self.free_memory + EPS:
            return False
        if not selected(self.labels, need.selector):
            return False
        devices: list[int] = []
        if need.gpus >= 1 - EPS:  # whole devices
            if abs(need.gpus - round(need.gpus)) > EPS:
                return False  # Ray refuses a share above 1 that is not a whole number
            devices = [i for i, f in enumerate(self.free_gpus) if f >= 1 - EPS][:round(need.gpus)]
            if len(devices) < round(need.gpus):
                return False
            for i in devices:
                self.free_gpus[i] = 0.0
        elif need.gpus > EPS:  # a share of one device: the fullest device it still fits on
            fits = [i for i, f in enumerate(self.free_gpus) if f >= need.gpus - EPS]
            if not fits:
                return False
            best = min(fits, key=lambda i: self.free_gpus[i])
            self.free_gpus[best] -= need.gpus
        self.free_cpus -= need.cpus
        self.free_memory -= need.memory
        return True


@dataclass(frozen=True)
class Need:
    """One replica (or one ingest job) of a deployment."""

    what: str
    cpus: float
    gpus: float
    memory: float = 0.0
    selector: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Deployment:
    name: str
    min_replicas: int
    max_replicas: int
    cpus: float
    gpus: float
    memory: float
    selector: tuple[tuple[str, str], ...] = ()


def selected(labels: dict[str, str], selector) -> bool:
    """Ray's label selector on a node's labels: `v`, `!v`, `in(a,b)`, `!in(a,b)` per key."""
    for key, want in selector:
        negate = want.startswith("!")
        want = want[1:] if negate else want
        values = {v.strip() for v in want[3:-1].split(",")} if want.startswith("in(") else {want}
        if (labels.get(key) in values) == negate:
            return False
    return True


def parse_nodes(text: str) -> list[Node]:
    nodes: list[Node] = []
    for group in filter(None, (g.strip() for g in text.split(","))):
        m = re.fullmatch(r"(\d+)x(.+)", group)
        if not m or int(m.group(1)) < 1:
            raise ValueError(f"node group {group!r}: write COUNTxSHAPE, e.g. 2x8gpu or 4x32cpu")
        count, shape = int(m.group(1)), m.group(2)
        cpus = gpus = None
        memory = math.inf
        for part in shape.split("+"):
            p = re.fullmatch(r"(\d+(?:\.\d+)?)?(cpu|gpu|gib)", part.strip().lower())
            if not p or (p.group(1) is None and p.group(2) != "cpu"):
                raise ValueError(f"node group {group!r}: {part!r} is not Ncpu, Ngpu, Ngib or cpu")
            value = float(p.group(1)) if p.group(1) is not None else None
            if p.group(2) == "cpu":
                cpus = value if value is not None else CPU_NODE_CPUS
            elif p.group(2) == "gpu":
                if value != int(value):
                    raise ValueError(f"node group {group!r}: a node has a whole number of GPUs")
                gpus = int(value)
            else:
                memory = value * 2**30
        gpus = gpus or 0
        if cpus is None:
            cpus = CPUS_PER_GPU * gpus if gpus else CPU_NODE_CPUS
        first = len(nodes)
        nodes += [Node(f"{group}#{i}", cpus, gpus, memory) for i in range(first, first + count)]
    if not nodes:
        raise ValueError("no nodes: give --nodes, e.g. 2x8gpu,4xcpu")
    return nodes


def deployments_of(config: dict) -> tuple[list[Deployment], dict]:
    """Every deployment of atelier's applications with its replica bounds and per-replica resources,
    and the ingest section (for --ingest-jobs)."""

    out: list[Deployment] = []
    ingest: dict = {}
    for app in config.get("applications") or []:
        if app.get("import_path") != "deployments.app:build_app":
            continue
        args = AppArgs.model_validate(app.get("args") or {})
        overrides = {d.get("name"): d for d in app.get("deployments") or []}
        specs = {"Embedder": args.embedder.deployment, "Writer": args.writer.deployment,
                 "Describer": args.describer.deployment, "Painter": args.painter.deployment,
                 "Ingress": args.ingress.deployment}
        if args.guard is not None:
            specs["Guard"] = args.guard.deployment
        for name, spec in specs.items():
            opts = spec.serve_options()
            over = overrides.get(name, {})
            for key in ("num_replicas", "autoscaling_config", "ray_actor_options"):
                if key in over:
                    opts[key] = over[key]
                    if key == "num_replicas":
                        opts.pop("autoscaling_config", None)
                    if key == "autoscaling_config":
                        opts.pop("num_replicas", None)
            if "autoscaling_config" in opts:
                auto = opts["autoscaling_config"]
                # A deployment that scales to zero still needs room for one replica: the one a rollout starts
                # (initial_replicas) and the one its first request after idle waits for.
                low = max(int(auto.get("min_replicas", 1)), int(auto.get("initial_replicas") or 0), 1)
                high = int(auto.get("max_replicas", 1))
            else:
                low = high = int(opts.get("num_replicas", 1))
            actor = opts.get("ray_actor_options") or {}
            label = name if len(config["applications"]) == 1 else f"{app.get('name')}/{name}"
            out.append(Deployment(label, low, high, float(actor.get("num_cpus", 1)),
                                  float(actor.get("num_gpus", 0)), float(actor.get("memory") or 0),
                                  tuple(sorted((actor.get("label_selector") or {}).items()))))
        # The gallery writer, one per gallery (storage/gallery_writer.py), where its label selector lets it.

        selector = args.storage.settings().writer_label_selector or {}
        out.append(Deployment("GalleryWriter", 1, 1, WRITER_NUM_CPUS, 0.0, 0.0, tuple(sorted(selector.items()))))
        if args.ingest is not None:
            ingest = args.ingest.model_dump()
    return out, ingest


def ingest_needs(ingest: dict) -> list[Need]:
    """What one running bulk-ingest job asks Ray for: its embedding actors and its read tasks, within
    the job's caps (`max_cpus`, `max_gpus`), as pipelines/ingest.py requests them."""
    actors = [Need("ingest job (embedding actor)", ingest["embed_num_cpus"], ingest["embed_num_gpus"])
              for _ in range(ingest["embed_actors"])]
    room = max(0.0, ingest["max_cpus"] - sum(a.cpus for a in actors))
    reads = min(ingest["read_tasks"], int(room / ingest["read_num_cpus"] + EPS))
    return actors + [Need("ingest job (read task)", ingest["read_num_cpus"], 0.0) for _ in range(reads)]


def pack(nodes: list[Node], needs: list[Need]) -> list[Need]:
    """First-fit decreasing; returns what did not fit."""
    for node in nodes:
        node.reset()
    left = []
    for need in sorted(needs, key=lambda n: (-n.gpus, -n.cpus, -n.memory, n.what)):
        if not any(node.place(need) for node in nodes):
            left.append(need)
    return left


def _fmt(v: float) -> str:
    return f"{v:g}"


def report(deps: list[Deployment], nodes: list[Node], ingest: dict, ingest_jobs: int) -> tuple[bool, list[str]]:
    lines = [f"cluster: {len(nodes)} nodes, {_fmt(sum(n.cpus for n in nodes))} CPUs, {sum(n.gpus for n in nodes)} GPUs",
             f"{'deployment':<12} {'min':>4} {'max':>4} {'cpus/replica':>13} {'gpus/replica':>13}"]
    for d in deps:
        lines.append(f"{d.name:<12} {d.min_replicas:>4} {d.max_replicas:>4} {_fmt(d.cpus):>13} {_fmt(d.gpus):>13}")
    ok = True
    for label, count in (("min", lambda d: d.min_replicas), ("max", lambda d: d.max_replicas)):
        needs = [Need(d.name, d.cpus, d.gpus, d.memory, d.selector) for d in deps for _ in range(count(d))]
        if label == "max" and ingest_jobs and ingest:
            needs += ingest_needs(ingest) * ingest_jobs
        left = pack(nodes, needs)
        total_cpu = sum(n.cpus for n in needs)
        total_gpu = sum(n.gpus for n in needs)
        if not left:
            lines.append(f"{label}: fits ({_fmt(total_cpu)} CPUs, {_fmt(total_gpu)} GPUs asked)")
            continue
        ok = False
        missing: dict[str, list[Need]] = {}
        for need in left:
            missing.setdefault(need.what, []).append(need)
        for what, lost in missing.items():
            n = lost[0]
            lines.append(f"{label}: DOES NOT FIT: {what}: {len(lost)} of its replicas ({_fmt(n.cpus)} CPUs, "
                         f"{_fmt(n.gpus)} GPU each) find no node with room")
    return ok, lines


def main(argv: list[str] | None = None) -> int:
    import yaml
    from pydantic import ValidationError

    parser = argparse.ArgumentParser(prog="python -m deployments.capacity",
                                     description="Whether a serve config's min and max replicas fit a cluster shape.")
    parser.add_argument("config", type=Path)
    parser.add_argument("--nodes", required=True, help="cluster shape, e.g. 2x8gpu,4xcpu (see the module help)")
    parser.add_argument("--ingest-jobs", type=int, default=0, help="bulk-ingest jobs running at the maximum")
    args = parser.parse_args(argv)
    try:
        nodes = parse_nodes(args.nodes)
        deps, ingest = deployments_of(yaml.safe_load(args.config.read_text()))
    except (ValueError, OSError, yaml.YAMLError, ValidationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not deps:
        print(f"error: {args.config} has no atelier application", file=sys.stderr)
        return 2
    ok, lines = report(deps, nodes, ingest, args.ingest_jobs)
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
