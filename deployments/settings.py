"""Secrets and paths of the service, from the environment only (env prefix ATELIER_)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ATELIER_", extra="ignore")

    keys_uri: str | None = Field(
        None,
        description="LanceDB location of the API key table (a folder or object-store URI); None means the "
        "gallery's database, ATELIER_LANCEDB_URI. Every proxy and replica reads it from the environment, "
        "so it is the same on every node.",
    )
    keys_table: str = Field("api_keys", description="Name of the API key table (sha256 digests, never keys).")
    url_secret: SecretStr | None = Field(None, description="Secret that signs image URLs.")
    url_secret_file: str = Field(
        "data/url_secret", description="File holding the URL-signing secret when ATELIER_URL_SECRET is not set."
    )
