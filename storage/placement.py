"""Where the cluster's named actors live: in one namespace, on the head node; `detached` gets or makes one.

The service depends on a few small named, detached actors (the job ledger, the stats and idempotency
ledgers). On a cluster, a worker node can go at any time (a pod rescheduled, a spot node reclaimed);
the head cannot without the cluster going too. So they are pinned to the head the way Ray's own state
actors are: by a sliver of the resource Ray gives only the head node.

An ingestion job's driver (pipelines.jobs.IngestDriver) runs there too, as Ray Jobs runs an
entrypoint on the head: it only plans the job and hands rows to the writer, while its tasks and
embedding actors, which do the work, run on the workers and are retried or restarted by Ray Data when
a worker goes.

The gallery writer is not: its commits and compactions are real work, which the head (the GCS, the
dashboard, Serve's controller) should not carry. It keeps no state of its own (every row is in
LanceDB), so when its node goes Ray restarts it elsewhere (`max_restarts=-1`) and it reopens the table;
`storage.writer_label_selector` says which nodes it may use (serve_config.yaml: the CPU workers).
"""

from __future__ import annotations

from typing import Any

# The Ray namespace of every named actor of the service (and of its drivers' `ray.init`): a name is
# only found within its namespace, so every caller must ask in the same one.
NAMESPACE = "atelier"
# Ray gives the head node this resource (1.0), and no other node (ray._common.constants).
HEAD_NODE_RESOURCE = "node:__internal_head__"


def on_head_node() -> dict:
    """Ray actor options that place an actor on the head node."""
    return {"resources": {HEAD_NODE_RESOURCE: 0.001}}


def detached(actor_class: Any, name: str, **options: Any) -> Any:
    """The cluster's one actor `name` of a `@ray.remote` class, created by whoever asks first:
    `detached(cls, name, **options).remote(*args)` returns the existing actor (its args then unused)
    or starts it, detached so that it outlives its creator. `options` are Ray's (placement, CPUs)."""
    return actor_class.options(name=name, namespace=NAMESPACE, get_if_exists=True, lifetime="detached", **options)
