"""How an ingestion job's driver is started: a detached actor on the head (`IngestDriver`), or a Ray Jobs
submission of `python -m pipelines.ingest --job ID`; either way under a deterministic id, so a retried
request never starts a second one.
"""

from __future__ import annotations

import shlex

import ray
from ray.job_submission import JobSubmissionClient

from pipelines.jobs import ledger
from pipelines.spec import JobSpec
from storage.placement import detached, on_head_node


@ray.remote(max_restarts=0)
class IngestDriver:
    """A job's driver as a detached actor: it outlives the ingress replica that started it."""

    def run(self, job_id: str, storage: dict) -> dict | None:
        # Ray Data (with pandas) loads here, in the driver's own actor: the ingress replica imports this
        # module to submit jobs and never runs one.
        from pipelines.run import run_job

        spec = ray.get(ledger(storage).spec.remote(job_id))
        try:
            return None if spec is None else run_job(JobSpec.model_validate(spec), console=False)
        finally:
            ray.actor.exit_actor()


def submission_id(job_id: str, submission: int) -> str:
    return f"atelier-ingest-{job_id}-{submission}"


def submit(spec: JobSpec, submission: int) -> str:
    """Start the job's driver; the id is deterministic, so a retried request never starts a second one."""
    sid = submission_id(spec.job_id, submission)
    ingest = spec.ingest
    if ingest.submitter == "jobs":
        client = JobSubmissionClient(ingest.jobs_address)
        try:
            client.submit_job(entrypoint=f"python -m pipelines.ingest --job {spec.job_id} "
                                         f"--ledger {shlex.quote(spec.storage['lancedb_uri'])}", submission_id=sid,
                              entrypoint_num_cpus=ingest.driver_num_cpus, runtime_env=ingest.jobs_runtime_env)
        except Exception as exc:  # the same id again means this submission already happened
            if "already exists" not in str(exc):
                raise
        return sid
    # On the head, as Ray Jobs places an entrypoint: losing a worker costs the job retried tasks, not its driver.
    driver = detached(IngestDriver, sid, num_cpus=ingest.driver_num_cpus, **on_head_node()).remote()
    driver.run.remote(spec.job_id, spec.storage)
    return sid
