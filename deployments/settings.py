"""Secrets and paths of the service, from the environment only (env prefix ATELIER_)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ATELIER_", extra="ignore")

    keys_file: str = Field(
        "data/keys.json", description="JSON file of API keys, stored as sha256 hashes mapped to user ids."
    )
    url_secret: SecretStr | None = Field(None, description="Secret that signs image URLs.")
    url_secret_file: str = Field(
        "data/url_secret", description="File holding the URL-signing secret when ATELIER_URL_SECRET is not set."
    )
