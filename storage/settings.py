"""Where the storage layer keeps things and the limits it enforces; one settings class, env prefix ATELIER_."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic_settings import BaseSettings, SettingsConfigDict


class StorageSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ATELIER_", extra="ignore")

    lancedb_uri: str = Field(
        "data/lancedb",
        description="LanceDB location: a local folder (embedded, the default) or an object-store URI such as s3://bucket/prefix.",
    )
    gallery_table: str = Field("gallery", description="Name of the gallery table.")

    blob_backend: Literal["local", "s3"] = Field("local", description="Where image bytes live.")
    blob_root: str = Field("data/blobs", description="Folder of the local blob backend.")
    s3_bucket: str | None = Field(None, description="Bucket of the S3 blob backend.")
    s3_prefix: str = Field("blobs", description="Key prefix inside the bucket.")
    s3_endpoint_url: str | None = Field(
        None, description="Custom endpoint of an S3-compatible store (MinIO, moto, R2...); None means AWS."
    )
    s3_region: str = Field("us-east-1", description="Region of the S3 blob backend.")
    # Credentials come from the environment only (ATELIER_S3_ACCESS_KEY_ID ...), never a file in the repo.
    s3_access_key_id: str | None = Field(None, description="S3 access key id (secret: environment only).")
    s3_secret_access_key: str | None = Field(None, description="S3 secret key (secret: environment only).")

    max_upload_bytes: int = Field(10 * 1024 * 1024, gt=0, description="Largest accepted upload, in bytes.")
    max_pixels: int = Field(
        40_000_000, gt=0, description="Largest accepted width*height; beyond it an image is a decompression bomb."
    )
    display_max_side: int = Field(1600, ge=64, description="Longest side of the stored display copy, in pixels.")
    display_quality: int = Field(85, ge=30, le=100, description="JPEG/WebP quality of the display copy.")
    display_format: Literal["jpeg", "webp"] = Field(
        "jpeg", description="Encoding of the display copy: JPEG encodes fastest, WebP is smaller."
    )
    original_quality: int = Field(
        95,
        ge=70,
        le=100,
        description="JPEG quality used when an EXIF-rotated original must be re-encoded upright "
        "(the only lossy step; unrotated originals are stripped byte-for-byte).",
    )
    blob_timeout_s: float = Field(30.0, gt=0, description="Timeout of one blob-store request, in seconds.")

    ann_min_rows: int = Field(
        50_000, ge=256, description="Build the ANN index once the table holds this many rows; below it search is exact."
    )
    ann_nprobes: int = Field(32, ge=1, description="IVF partitions probed per ANN query.")
    ann_refine_factor: int = Field(10, ge=1, description="ANN candidates re-ranked exactly, as a multiple of k.")
    flat_search_max_rows: int = Field(
        20_000, ge=0, description="A user with at most this many rows is searched exactly, bypassing the ANN index."
    )
    vector_cache_mb: int = Field(
        256,
        ge=0,
        description="Memory per process for users' vectors kept in RAM: a search ranks a cached user's vectors "
        "in numpy and takes only its top rows from LanceDB. Least recently searched users leave first; 0 turns it off.",
    )
    vector_cache_ttl_s: float = Field(
        300.0, gt=0, description="A cached user's vectors are reloaded in full at least this often, in seconds."
    )
    optimize_every_rows: int = Field(
        5_000, ge=1, description="Compact and re-index after this many inserted rows (also `Gallery.optimize()`)."
    )
    optimize_every_commits: int = Field(
        50,
        ge=1,
        description="...or after this many inserting commits, whichever comes first: every commit leaves a fragment "
        "that each later upsert's key lookup scans, so one-row uploads slow down linearly until the next compaction.",
    )
    read_consistency_s: float = Field(
        0.0, ge=0, description="How stale a reader's view of the gallery may be; 0 re-checks the latest version on every read."
    )
    lancedb_storage_options: dict[str, str] = Field(
        default_factory=dict,
        description="Object-store options for LanceDB (endpoint, region, credentials from the environment), "
        "as JSON in ATELIER_LANCEDB_STORAGE_OPTIONS.",
    )
    ann_index_type: Literal["IVF_PQ", "IVF_HNSW_SQ"] = Field(
        "IVF_PQ", description="Vector index: IVF_PQ builds fastest on CPUs; IVF_HNSW_SQ needs fewer probes."
    )
    ann_num_partitions: int | None = Field(
        None, ge=1, description="IVF partitions; None lets Lance pick (about one per 8192 rows)."
    )
    ann_num_sub_vectors: int | None = Field(
        None, ge=1, description="PQ sub-vectors; None means dim/8 (must divide the dimension)."
    )
    ann_max_iterations: int = Field(
        50, ge=1, description="k-means iterations when training the IVF centroids and PQ codebooks; "
        "the build time grows with it."
    )
    ann_ef: int = Field(64, ge=1, description="HNSW candidate list per query (IVF_HNSW_SQ only).")
    search_max_k: int = Field(100, ge=1, description="Largest k a search may ask for.")
    list_max_limit: int = Field(200, ge=1, description="Largest page a gallery listing may ask for.")
    write_retry_attempts: int = Field(8, ge=1, description="Tries of one gallery commit before a 503.")
    purge_within_s: float = Field(
        300.0,
        gt=0,
        description="Deleted images (DELETE /api/images/{id}, DELETE /api/me) are physically gone from every "
        "table version, data file and index within this many seconds (the gallery writer's purge); their blobs "
        "go at once.",
    )
    writer_label_selector: dict[str, str] | None = Field(
        None,
        description="Ray node labels the gallery writer must run on (a Ray label selector, e.g. "
        "{\"atelier/pool\": \"cpu\"}): on a cluster, keep its commits and compactions off the head and the "
        "GPU nodes. When its node goes, Ray restarts it on another node that matches. None: any node.",
    )
    duplicate_hash_bits: int = Field(
        4, ge=0, le=32,
        description="A new photo whose perceptual hash is within this many bits (of 64) of a stored one's is the "
        "same picture (re-encoded, resized, re-saved); measured: such copies 0-2 bits, other photos 20 or more.",
    )
    near_shot_cosine: dict[str, float] = Field(
        default_factory=lambda: {"default": 0.95},
        description="Embedding cosine at or above which a new photo is a near shot (a burst) of a stored one, by "
        "embedding model id (each model's scale differs), `default` for the others.",
    )
    near_duplicate_candidates: int = Field(
        8, ge=1, le=100, description="Nearest photos of the user's gallery a new photo is compared with.")
    version_retention_s: float = Field(
        3600.0,
        ge=0,
        description="optimize() removes table versions older than this; deleted rows survive in old versions "
        "until then, and readers still on a removed version fail.",
    )


# Credentials never come from a config file: a serve config that names them is refused.
SECRET_FIELDS = ("s3_access_key_id", "s3_secret_access_key")


class _StorageArgsBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def settings(self) -> StorageSettings:
        """The storage settings: the values given here, then ATELIER_* environment variables, then defaults."""
        return StorageSettings(**self.model_dump(exclude_unset=True))


StorageArgs = create_model(
    "StorageArgs",
    __base__=_StorageArgsBase,
    __doc__="The `storage` section of a serve config: StorageSettings' fields (secrets excepted), typed and "
            "strict, so a misspelt key is refused when the config loads instead of silently ignored.",
    **{name: (field.annotation, field) for name, field in StorageSettings.model_fields.items()
       if name not in SECRET_FIELDS},
)
