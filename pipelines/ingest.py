"""Bulk ingestion from the command line: a user's files -> Ray Data (read/check/decode tasks, an embedding
actor pool) -> blobs and gallery rows through the cluster's one GalleryWriter, with progress in the job ledger.

    python -m pipelines.ingest --user alice --config serve_config.local.yaml photos/ trip.zip
    ray job submit --working-dir . -- python -m pipelines.ingest --user alice s3://bucket/camera/

Every listed file ends as exactly one of: stored (`done`), skipped (its content is already in the
user's gallery, or earlier in this job: found by hash before any decode), or an error entry
(name, code, message). So `done + skipped_duplicates + failed == total`, and a rerun after a crash
costs little more than reading and hashing what is already stored.

The parts: pipelines.stages (the Ray Data read and embed stages), pipelines.run (one attempt's driver),
pipelines.attempt (an attempt under the job ledger's rules), pipelines.submit (starting a driver for the
API), pipelines.spec and pipelines.jobs (what a job is, and the ledger).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from pathlib import Path

import ray

from pipelines.config import PipelineSections
from pipelines.jobs import ledger
from pipelines.run import run_job
from pipelines.sources import as_url
from pipelines.spec import JobSpec, absolute_storage, job_id_for
from storage.placement import NAMESPACE

__all__ = ["main", "spec_from_config"]


# -- command line ----------------------------------------------------------------------------------
def spec_from_config(config: Path, user: str, sources: list[str], *, job_id: str | None = None,
                     on_duplicate: str = "store") -> JobSpec:
    """A job of `user` over `sources`, with the storage, embedder and ingest sections of a Serve config file."""
    sections = PipelineSections.from_file(config)
    settings = absolute_storage(sections.settings())
    urls = [as_url(s) for s in sources]
    basis = "cli\x00" + "\x00".join(urls) + ("" if on_duplicate == "store" else f"\x00on_duplicate={on_duplicate}")
    return JobSpec(job_id=job_id or job_id_for(user, basis), user_id=user, sources=urls,
                   storage=settings.model_dump(), ingest=sections.job_ingest(), safety=sections.safety,
                   fingerprint=hashlib.sha256(basis.encode()).hexdigest(), on_duplicate=on_duplicate)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.ingest",
        description="Embed a user's photos into the gallery with Ray Data: folders, .zip files, "
                    "s3:// prefixes or files. Resources, batch sizes and the model come from --config.")
    parser.add_argument("sources", nargs="*", help="folders, .zip files, s3://bucket/prefix, or image files")
    parser.add_argument("--user", help="the user whose gallery receives the images")
    parser.add_argument("--config", type=Path, default=Path(os.environ.get("ATELIER_SERVE_CONFIG", "serve_config.yaml")),
                        help="Serve config whose `storage`, `embedder` and `ingest` sections apply "
                             "(default: $ATELIER_SERVE_CONFIG or serve_config.yaml)")
    parser.add_argument("--job", help="run the job the API created with this id (its spec is in the job ledger)")
    parser.add_argument("--ledger", help="with --job: the LanceDB location of the gallery whose job ledger holds "
                                         "the job (default: the storage of --config)")
    parser.add_argument("--job-id", help="id of the job (default: made from the user and the sources, so a "
                                         "rerun of the same command resumes the same job)")
    parser.add_argument("--on-duplicate", choices=("store", "skip", "ignore"), default="store",
                        help="a photo with a near-duplicate in the user's gallery or the job: stored (default), "
                             "skipped (counted as a skipped duplicate), or not compared")
    parser.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local one)")
    parser.add_argument("--num-cpus", type=float, help="logical CPUs of a local cluster started here")
    args = parser.parse_args(argv)
    if not args.job and not (args.user and args.sources):
        parser.error("give --user and at least one SOURCE, or --job ID")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    spec = None
    if not args.job:
        if not args.config.is_file():
            parser.error(f"--config {args.config} is not a file")
        spec = spec_from_config(args.config, args.user, args.sources, job_id=args.job_id,
                                on_duplicate=args.on_duplicate)
    address = args.address or os.environ.get("RAY_ADDRESS")
    # No address: a small cluster of its own ("local"), never whichever cluster `ray start` last recorded.
    local = {"num_cpus": args.num_cpus} if args.num_cpus and not address else {}
    # No usage reports from this driver either (the cluster starts with --disable-usage-stats): with them
    # on, Ray Data polls a Prometheus on localhost:9090 every 10 s for as long as the driver lives.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address=address or "local", namespace=NAMESPACE, **local)
    if args.job:
        uri = args.ledger or absolute_storage(PipelineSections.from_file(args.config).settings()).lancedb_uri
        jobs = ledger({"lancedb_uri": uri})
        raw = ray.get(jobs.spec.remote(args.job))
        if raw is None:
            print(f"no job {args.job} in the job ledger", file=sys.stderr)
            return 2
        spec = JobSpec.model_validate(raw)
    else:
        jobs = ledger(spec.storage)
        opened = ray.get(jobs.open.remote(spec.model_dump(), True))
        if opened["action"] == "conflict":
            print(f"job {spec.job_id} exists for other sources or another user; pass another --job-id",
                  file=sys.stderr)
            return 2
    print(f"ingestion job {spec.job_id} for user {spec.user_id!r}", file=sys.stderr, flush=True)
    status = run_job(spec, console=True)
    print(json.dumps(status, indent=2, ensure_ascii=False), flush=True)
    return 0 if status and status["state"] == "succeeded" else 1


if __name__ == "__main__":
    # Run the importable module, not `__main__`: Ray pickles functions by module name, and workers
    # cannot import `__main__`'s.
    from pipelines.ingest import main as _main

    sys.exit(_main())
