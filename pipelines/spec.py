"""What an ingestion job is: its spec (everything a driver needs, kept with the job in the ledger), its
public status, and its id. Plain data without Ray, so the service builds specs without loading Ray.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipelines.config import IngestSpec
from storage.settings import StorageSettings

State = Literal["queued", "running", "succeeded", "failed", "cancelled", "undone"]


class NamedFile(BaseModel):
    """A file known by URL whose name the user gave (a staged multipart upload)."""

    name: str
    url: str


# What a job or an upload does with a photo that has a near-duplicate: the one list of the choices.
OnDuplicate = Literal["store", "skip", "ignore"]


class JobSpec(BaseModel):
    """Everything a driver needs; kept with the job, so `python -m pipelines.ingest --job ID` runs it anywhere."""

    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    user_id: str = Field(min_length=1, max_length=256)
    sources: list[str] = Field(default_factory=list, description="Folders, .zip files, s3:// prefixes, files.")
    files: list[NamedFile] = Field(default_factory=list, description="Files with user-given names.")
    storage: dict[str, Any] = Field(default_factory=dict, description="StorageSettings values (no secrets).")
    ingest: IngestSpec
    staged_prefix: str | None = Field(None, description="Blob prefix of a staged upload, removed when the job ends.")
    fingerprint: str = Field("", description="What makes a retried request the same job (manifest or key).")
    on_duplicate: OnDuplicate = Field(
        "store", description="A photo with a near-duplicate in the user's gallery or the job: stored (and counted in "
        "near_duplicates), skipped (counted in skipped_duplicates), or not compared.")
    keys_uri: str | None = Field(
        None, description="Where the API key table is, for a job started through the API: the job stops once its "
        "user has no key left there (every key revoked). None for an operator's job, which no key started.")
    keys_table: str = Field("api_keys", description="The key table's name at keys_uri.")
    safety: dict[str, Any] | None = Field(
        None, description="The content policy (models.policy.Safety) the photos' verdicts are flagged by, as "
        "the Ingress had it when the job was made; none: its defaults.")


class JobError(BaseModel):
    name: str
    code: str
    message: str


class JobStatus(BaseModel):
    """The public shape of GET /api/init/upload/{job_id}; times are Unix seconds."""

    job_id: str
    state: State
    total: int = 0
    done: int = 0
    skipped_duplicates: int = 0
    failed: int = 0
    near_duplicates: int = Field(0, description="Of the files done, those stored with a near-duplicate in the user's "
                                 "gallery or the same job (GET /api/duplicates lists them).")
    errors: list[JobError] = Field(default_factory=list, description=(
        "The first 100 error entries of the job's current attempt (file names cut to 256 characters); "
        "`errors_total` counts them all, GET /api/init/upload/{job_id}/errors pages through every one."))
    errors_total: int = Field(0, description="Error entries of the job's current attempt, shown or not.")
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    message: str | None = Field(None, description="Why a job failed as a whole (its driver died, a bad source), "
                                                   "or what a job that succeeded lived through (a node lost).")


def job_id_for(user_id: str, basis: str) -> str:
    """Deterministic: the same user and the same basis (Idempotency-Key, manifest, sources) give the same job."""
    return hashlib.sha256(f"{user_id}\x00{basis}".encode()).hexdigest()[:32]


def absolute_storage(settings: StorageSettings) -> StorageSettings:
    """Local paths made absolute: a job's tasks run in worker processes whose folder may differ."""
    update = {}
    if "://" not in settings.lancedb_uri:
        update["lancedb_uri"] = str(Path(settings.lancedb_uri).resolve())
    if settings.blob_backend == "local":
        update["blob_root"] = str(Path(settings.blob_root).resolve())
    return settings.model_copy(update=update)
